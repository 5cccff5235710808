//! The SQLite store (rusqlite, bundled SQLite). WAL journal with `synchronous=NORMAL`: a
//! committed transition survives a crash of the registry process (SIGKILL), which is the
//! promise we make; surviving power loss would need `synchronous=FULL` and an fsync per
//! transition.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Snapshot, Store};
use crate::error::{Error, Result};
use crate::model::{Event, InstanceRecord};

pub struct SqliteStore {
    path: PathBuf,
    /// None while the database cannot be opened (a read-only or missing data directory):
    /// every operation tries again, so the store recovers when the disk does.
    conn: Mutex<Option<Connection>>,
}

fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    Error::File {
        action: "database error",
        path: path.display().to_string(),
        source: std::io::Error::other(format!("{what}: {e}")),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '1');
";

impl SqliteStore {
    /// Opens the database, or fails.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Ok(SqliteStore { path: path.to_path_buf(), conn: Mutex::new(Some(Self::connect(path)?)) })
    }

    /// Opens the database if it can; otherwise returns a store that is unavailable until a
    /// later operation manages to open it.
    pub fn open_or_wait(path: &Path) -> SqliteStore {
        match Self::connect(path) {
            Ok(c) => SqliteStore { path: path.to_path_buf(), conn: Mutex::new(Some(c)) },
            Err(e) => {
                tracing::error!(target: "sfc::store", error = %e,
                    "STORE UNAVAILABLE: serving from memory until {} can be opened", path.display());
                SqliteStore { path: path.to_path_buf(), conn: Mutex::new(None) }
            }
        }
    }

    fn connect(path: &Path) -> Result<Connection> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::write_file(dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, "open", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| db_err(path, "busy_timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| db_err(path, "journal_mode", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| db_err(path, "synchronous", e))?;
        conn.execute_batch(SCHEMA).map_err(|e| db_err(path, "schema", e))?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(path, "schema version", e))?;
        if version.as_deref() != Some("1") {
            return Err(Error::invalid(
                "registry database",
                format!("{} has schema {version:?}; this registry reads schema 1", path.display()),
            ));
        }
        Ok(conn)
    }

    /// Runs `f` on the connection, opening it first if it is not open yet. A failed operation
    /// drops the connection, and the next one opens the file again: a connection whose file
    /// system went away (turned read-only, remounted after a repair, the volume replaced)
    /// never recovers by itself, while a fresh open finds the repaired file.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Self::connect(&self.path)?);
            tracing::warn!(target: "sfc::store", path = %self.path.display(), "store opened");
        }
        let Some(c) = guard.as_mut() else { return Err(Error::invalid("store", "not open")) };
        let out = f(c);
        if out.is_err() {
            *guard = None;
        }
        out
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> Error {
        db_err(&self.path, what, e)
    }
}

/// Records per metric-snapshot transaction.
const SNAPSHOT_CHUNK: usize = 500;

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn available(&self) -> bool {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn load(&self, history: usize) -> Result<Snapshot> {
        self.with(|conn| self.load_from(conn, history))
    }

    fn transition(&self, event: &Event, record: Option<&InstanceRecord>) -> Result<()> {
        self.with(|conn| self.write_transition(conn, event, record))
    }

    fn transitions(&self, events: &[std::sync::Arc<Event>]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.with(|conn| self.write_transitions(conn, events))
    }

    fn group_commit(&self) -> bool {
        true
    }

    fn snapshot(&self, records: &[InstanceRecord]) -> Result<()> {
        // In transactions of SNAPSHOT_CHUNK records, serialized before the connection is
        // taken: the group commit's writer waits for one chunk at most, never for the whole
        // fleet's snapshot.
        for chunk in records.chunks(SNAPSHOT_CHUNK) {
            let json: Vec<String> = chunk.iter().map(to_json).collect();
            self.with(|conn| self.write_snapshot(conn, chunk, &json))?;
        }
        Ok(())
    }

    fn prune_events(&self, before_ms: u64) -> Result<usize> {
        self.with(|conn| {
            conn.execute("DELETE FROM events WHERE at < ?1", params![before_ms as i64])
                .map_err(|e| self.err("prune events", e))
        })
    }
}

impl SqliteStore {
    fn load_from(&self, conn: &mut Connection, history: usize) -> Result<Snapshot> {
        let mut instances = Vec::new();
        let mut stmt = conn.prepare("SELECT id, record FROM instances").map_err(|e| self.err("load", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err("load instances", e))?;
        for row in rows {
            let (id, json) = row.map_err(|e| self.err("load instances", e))?;
            match serde_json::from_str::<InstanceRecord>(&json) {
                Ok(r) => instances.push(r),
                // One unreadable row must not cost the rest of the fleet.
                Err(e) => tracing::error!(target: "sfc::store", id, error = %e, "skipping unreadable instance record"),
            }
        }
        let mut stmt = conn
            .prepare("SELECT event FROM (SELECT seq, event FROM events ORDER BY seq DESC LIMIT ?1) ORDER BY seq ASC")
            .map_err(|e| self.err("load", e))?;
        let rows = stmt
            .query_map([history as i64], |r| r.get::<_, String>(0))
            .map_err(|e| self.err("load events", e))?;
        let mut events = Vec::new();
        for row in rows {
            let json = row.map_err(|e| self.err("load events", e))?;
            match serde_json::from_str::<Event>(&json) {
                Ok(ev) => events.push(ev),
                Err(e) => tracing::error!(target: "sfc::store", error = %e, "skipping unreadable event"),
            }
        }
        let last_seq: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err("load", e))?;
        Ok(Snapshot { instances, events, last_seq: last_seq as u64 })
    }

    fn write_transition(&self, conn: &mut Connection, event: &Event, record: Option<&InstanceRecord>) -> Result<()> {
        let tx = conn.transaction().map_err(|e| self.err("begin", e))?;
        tx.execute(
            "INSERT OR REPLACE INTO events(seq, at, kind, id, event) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![event.seq as i64, event.at as i64, event.kind.as_str(), event.id, to_json(event)],
        )
        .map_err(|e| self.err("write event", e))?;
        match record {
            Some(r) => tx.execute(
                "INSERT OR REPLACE INTO instances(id, record, updated_at) VALUES (?1, ?2, ?3)",
                params![r.id, to_json(r), event.at as i64],
            ),
            None => tx.execute("DELETE FROM instances WHERE id = ?1", params![event.id]),
        }
        .map_err(|e| self.err("write instance", e))?;
        tx.commit().map_err(|e| self.err("commit", e))
    }

    /// One SQLite transaction for the whole batch: a SIGKILL keeps all of it or none of it,
    /// and batches commit in order, so the history on disk is always a prefix of the one the
    /// registry numbered (never a hole).
    fn write_transitions(&self, conn: &mut Connection, events: &[std::sync::Arc<Event>]) -> Result<()> {
        let tx = conn.transaction().map_err(|e| self.err("begin", e))?;
        {
            let mut put_event = tx
                .prepare_cached("INSERT OR REPLACE INTO events(seq, at, kind, id, event) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| self.err("write event", e))?;
            let mut put_record = tx
                .prepare_cached("INSERT OR REPLACE INTO instances(id, record, updated_at) VALUES (?1, ?2, ?3)")
                .map_err(|e| self.err("write instance", e))?;
            let mut delete_record =
                tx.prepare_cached("DELETE FROM instances WHERE id = ?1").map_err(|e| self.err("write instance", e))?;
            for event in events {
                put_event
                    .execute(params![event.seq as i64, event.at as i64, event.kind.as_str(), event.id, to_json(&**event)])
                    .map_err(|e| self.err("write event", e))?;
                match event.instance.as_deref() {
                    Some(r) => put_record.execute(params![r.id, to_json(r), event.at as i64]),
                    None => delete_record.execute(params![event.id]),
                }
                .map_err(|e| self.err("write instance", e))?;
            }
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }

    /// Snapshots are copied under the registry's lock and written after it, so a transition
    /// may have been committed in between. A snapshot therefore only updates a row whose
    /// status, status_since and health are still those of the copy, and never inserts: it
    /// cannot undo a transition or bring back an evicted record.
    fn write_snapshot(&self, conn: &mut Connection, records: &[InstanceRecord], json: &[String]) -> Result<()> {
        let tx = conn.transaction().map_err(|e| self.err("begin", e))?;
        {
            let now = crate::model::now_ms() as i64;
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE instances SET record = ?2, updated_at = ?3
                     WHERE id = ?1
                       AND json_extract(record, '$.status') = ?4
                       AND json_extract(record, '$.status_since') = ?5
                       AND json_extract(record, '$.health') = ?6
                       AND json_extract(record, '$.health_note') IS ?7",
                )
                .map_err(|e| self.err("snapshot", e))?;
            for (r, json) in records.iter().zip(json) {
                stmt.execute(params![
                    r.id,
                    json,
                    now,
                    r.status.as_str(),
                    r.status_since as i64,
                    r.health.as_str(),
                    r.health_note
                ])
                .map_err(|e| self.err("snapshot", e))?;
            }
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn record(id: &str) -> InstanceRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "group": "g", "service": "s", "instance_id": id.split('/').nth(1).unwrap(),
            "hostname": "h", "pid": 1, "status": "online", "offline_reason": null, "health": "passing",
            "health_note": null, "endpoints": [], "tags": [], "metadata": {}, "version": null, "api": null,
            "interval_ms": 1000, "connected_since": 1, "last_report_at": 1, "tls_identity": null,
            "metrics": {}
        }))
        .unwrap()
    }

    fn event(seq: u64, kind: EventKind, id: &str) -> Event {
        Event { seq, at: seq * 10, kind, id: id.into(), group: "g".into(), service: "s".into(), instance: None, detail: serde_json::Value::Null }
    }

    #[test]
    fn transitions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.transition(&event(1, EventKind::Joined, "g/a"), Some(&record("g/a"))).unwrap();
            s.transition(&event(2, EventKind::Joined, "g/b"), Some(&record("g/b"))).unwrap();
            s.transition(&event(3, EventKind::Evicted, "g/b"), None).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let snap = s.load(10).unwrap();
        assert_eq!(snap.instances.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["g/a"]);
        assert_eq!(snap.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(snap.last_seq, 3);
        assert_eq!(s.load(2).unwrap().events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.prune_events(25).unwrap(), 2);
    }

    #[test]
    fn a_late_snapshot_never_undoes_a_transition() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("registry.db")).unwrap();
        let online = record("g/a");
        s.transition(&event(1, EventKind::Joined, "g/a"), Some(&online)).unwrap();
        // A snapshot of the same state lands: metrics move.
        let mut fresher = online.clone();
        fresher.metrics.custom.insert("x".into(), 1.0);
        s.snapshot(&[fresher.clone()]).unwrap();
        assert_eq!(s.load(10).unwrap().instances[0].metrics.custom.get("x"), Some(&1.0));
        // The instance leaves; a snapshot copied before that arrives late: the leave stands.
        let mut left = fresher.clone();
        left.status = crate::model::Status::Left;
        left.status_since = 99;
        s.transition(&event(2, EventKind::Left, "g/a"), Some(&left)).unwrap();
        s.snapshot(&[fresher.clone()]).unwrap();
        assert_eq!(s.load(10).unwrap().instances[0].status, crate::model::Status::Left);
        // Evicted, then a late snapshot: it does not come back.
        s.transition(&event(3, EventKind::Evicted, "g/a"), None).unwrap();
        s.snapshot(&[fresher]).unwrap();
        assert!(s.load(10).unwrap().instances.is_empty());
    }

    #[test]
    fn a_directory_that_cannot_hold_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = SqliteStore::open(&file.join("registry.db")).err().unwrap().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
