//! The SQLite store (rusqlite, bundled SQLite). WAL journal with `synchronous=NORMAL`: a
//! committed transition survives a crash of the registry process (SIGKILL), which is the
//! promise we make; surviving power loss would need `synchronous=FULL` and an fsync per
//! transition.
//!
//! The event history is bounded by age (`--history-retention`) and by a [`HistoryBudget`]
//! of count and bytes: each event row carries its size (`size`, the bytes of its JSON, with
//! an index on `(seq, size)` so the budget is summed without reading the events), and the
//! oldest events beyond the budget are deleted when the store opens, on the registry's prune
//! tick (every minute), and after a commit that took the history an eighth over its budget.
//! Deleted pages are reused, and the WAL is truncated to [`JOURNAL_SIZE_LIMIT`] after each
//! checkpoint, so the files stay near the budget plus the instance records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{HistoryBudget, Snapshot, Store};
use crate::error::{Error, Result};
use crate::model::{Event, InstanceRecord};

pub struct SqliteStore {
    path: PathBuf,
    /// None while the database cannot be opened (a read-only or missing data directory):
    /// every operation tries again, so the store recovers when the disk does.
    conn: Mutex<Option<Connection>>,
    budget: HistoryBudget,
    /// Events and bytes the history table holds, as of the last count plus what was written
    /// since (updated under `conn`'s lock).
    held_events: AtomicU64,
    held_bytes: AtomicU64,
}

/// Bytes the WAL file is truncated to after a checkpoint (SQLite's `journal_size_limit`).
pub const JOURNAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

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
    event TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '1');
";

impl SqliteStore {
    fn closed(path: &Path, budget: HistoryBudget) -> SqliteStore {
        SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
            budget,
            held_events: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
        }
    }

    /// Opens the database, or fails. The history beyond `budget` is deleted first.
    pub fn open(path: &Path, budget: HistoryBudget) -> Result<SqliteStore> {
        let s = Self::closed(path, budget);
        let conn = s.connect_within_budget()?;
        *s.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        Ok(s)
    }

    /// Opens the database if it can; otherwise returns a store that is unavailable until a
    /// later operation manages to open it.
    pub fn open_or_wait(path: &Path, budget: HistoryBudget) -> SqliteStore {
        let s = Self::closed(path, budget);
        match s.connect_within_budget() {
            Ok(conn) => *s.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn),
            Err(e) => tracing::error!(target: "sfc::store", error = %e,
                "STORE UNAVAILABLE: serving from memory until {} can be opened", path.display()),
        }
        s
    }

    /// Opens the file and deletes whatever an earlier run (or an older registry) left beyond
    /// the budget, before anything is loaded.
    fn connect_within_budget(&self) -> Result<Connection> {
        let conn = Self::connect(&self.path, self.budget)?;
        // A prune that fails (a full disk) leaves the store usable: the next one tries again.
        if let Err(e) = self.keep_budget(&conn) {
            tracing::warn!(target: "sfc::store", error = %e, "pruning the event history to its budget failed");
        }
        Ok(conn)
    }

    fn connect(path: &Path, budget: HistoryBudget) -> Result<Connection> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::write_file(dir, e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| db_err(path, "open", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| db_err(path, "busy_timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| db_err(path, "journal_mode", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| db_err(path, "synchronous", e))?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
            .map_err(|e| db_err(path, "journal_size_limit", e))?;
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
        // A database from before the history budget has no `size` column: add it (an older
        // registry still reads and writes the table; the rows it adds count 0 bytes). The
        // events beyond the budget go first, so that only those kept are rewritten with their
        // size (the history of such a database may be gigabytes).
        let has_size: bool = conn
            .query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'size'", [], |r| r.get(0))
            .map_err(|e| db_err(path, "schema", e))?;
        if !has_size {
            let migrate = |conn: &mut Connection| -> rusqlite::Result<usize> {
                let tx = conn.transaction()?;
                let gone = tx.execute(
                    "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM (
                         SELECT seq, SUM(length(CAST(event AS BLOB))) OVER w AS total, ROW_NUMBER() OVER w AS n
                         FROM events
                         WINDOW w AS (ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
                     WHERE n > 1 AND (n > ?1 OR total > ?2))",
                    params![budget.events.min(i64::MAX as usize) as i64, budget.bytes.min(i64::MAX as u64) as i64],
                )?;
                tx.execute_batch(
                    "ALTER TABLE events ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
                     UPDATE events SET size = length(CAST(event AS BLOB));",
                )?;
                tx.commit()?;
                Ok(gone)
            };
            let gone = migrate(&mut conn).map_err(|e| db_err(path, "adding the events' size column", e))?;
            tracing::info!(target: "sfc::store", pruned = gone, "the event history now has a size budget");
        }
        // A database from before the `state` column: add it. Rows without it (written before,
        // or by an older registry, which leaves it NULL) are compared field by field, from the
        // record's JSON, by the snapshot.
        let has_state: bool = conn
            .query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('instances') WHERE name = 'state'", [], |r| r.get(0))
            .map_err(|e| db_err(path, "schema", e))?;
        if !has_state {
            conn.execute_batch("ALTER TABLE instances ADD COLUMN state TEXT;")
                .map_err(|e| db_err(path, "adding the instances' state column", e))?;
        }
        conn.execute_batch("CREATE INDEX IF NOT EXISTS events_size ON events(seq, size);")
            .map_err(|e| db_err(path, "schema", e))?;
        Ok(conn)
    }

    /// The newest event beyond the budget (everything up to it goes), from the `(seq, size)`
    /// index alone. The newest event is always kept.
    fn cutoff(&self, conn: &Connection, events: usize) -> Result<Option<i64>> {
        conn.query_row(
            "SELECT MAX(seq) FROM (
                 SELECT seq, SUM(size) OVER w AS total, ROW_NUMBER() OVER w AS n
                 FROM events INDEXED BY events_size
                 WINDOW w AS (ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
             WHERE n > 1 AND (n > ?1 OR total > ?2)",
            params![events.min(i64::MAX as usize) as i64, self.budget.bytes.min(i64::MAX as u64) as i64],
            |r| r.get(0),
        )
        .map_err(|e| self.err("history budget", e))
    }

    /// Deletes the oldest events beyond the budget and counts what is left; returns how many
    /// went.
    fn keep_budget(&self, conn: &Connection) -> Result<usize> {
        let gone = match self.cutoff(conn, self.budget.events)? {
            Some(seq) => conn
                .execute("DELETE FROM events WHERE seq <= ?1", params![seq])
                .map_err(|e| self.err("prune events", e))?,
            None => 0,
        };
        let (n, bytes): (i64, i64) = conn
            .query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events INDEXED BY events_size", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err("history budget", e))?;
        self.held_events.store(n.max(0) as u64, Ordering::Relaxed);
        self.held_bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
        if gone > 0 {
            tracing::info!(target: "sfc::store", pruned = gone, events = n, bytes,
                budget_events = self.budget.events, budget_bytes = self.budget.bytes,
                "pruned the oldest events beyond the history budget");
        }
        Ok(gone)
    }

    /// After a commit of `events` events of `bytes` bytes: prunes once the history is an
    /// eighth over its budget (so a flood deletes in batches, not once per commit).
    fn wrote(&self, conn: &Connection, events: u64, bytes: u64) {
        let n = self.held_events.fetch_add(events, Ordering::Relaxed) + events;
        let b = self.held_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let budget = self.budget;
        if n > budget.events as u64 + (budget.events as u64 / 8).max(1) || b > budget.bytes + budget.bytes / 8 {
            // The batch is committed whatever happens here: a failed prune is only logged (the
            // next commit or tick tries again), never reported as a failed write.
            if let Err(e) = self.keep_budget(conn) {
                tracing::warn!(target: "sfc::store", error = %e, "pruning the event history to its budget failed");
            }
        }
    }

    /// Runs `f` on the connection, opening it first if it is not open yet. A failed operation
    /// drops the connection, and the next one opens the file again: a connection whose file
    /// system went away (turned read-only, remounted after a repair, the volume replaced)
    /// never recovers by itself, while a fresh open finds the repaired file.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.connect_within_budget()?);
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

/// What a snapshot must find unchanged before it overwrites a row (see
/// [`SqliteStore::write_snapshot`]): the record's status, status_since, health and note,
/// kept in a column of their own so that the check reads no JSON.
fn state_key(r: &InstanceRecord) -> String {
    let note = match &r.health_note {
        Some(n) => format!("+{n}"),
        None => "-".to_string(),
    };
    format!("{}|{}|{}|{note}", r.status.as_str(), r.status_since, r.health.as_str())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// An event as `to_json(event)` writes it, byte for byte, but with its instance record given
/// already serialized: the group commit serializes a transition's record once, for its
/// `instances` row, and puts the same text in the event's row (it was serialized twice, a
/// tenth of a re-join's registry instructions; scripts/profile-join-path.sh). The fields and
/// their order are `model::Event`'s (a test compares the two).
#[derive(serde::Serialize)]
struct EventRow<'a> {
    seq: u64,
    at: u64,
    kind: &'a crate::model::EventKind,
    id: &'a str,
    group: &'a str,
    service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "is_null")]
    detail: &'a serde_json::Value,
}

fn is_null(v: &&serde_json::Value) -> bool {
    v.is_null()
}

/// The event's JSON and its record's JSON (None when the event has no record), the record
/// serialized once.
fn event_and_record_json(event: &Event) -> (String, Option<String>) {
    let Some(record) = event.instance.as_deref() else {
        return (to_json(event), None);
    };
    let Ok(raw) = serde_json::value::to_raw_value(record) else {
        // Never seen (a record always serializes): the plain path, as before.
        return (to_json(event), Some(to_json(record)));
    };
    let row = EventRow {
        seq: event.seq,
        at: event.at,
        kind: &event.kind,
        id: &event.id,
        group: &event.group,
        service: &event.service,
        instance: Some(&raw),
        detail: &event.detail,
    };
    let json = to_json(&row);
    (json, Some(Box::<str>::from(raw).into()))
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
            let old = conn
                .execute("DELETE FROM events WHERE at < ?1", params![before_ms.min(i64::MAX as u64) as i64])
                .map_err(|e| self.err("prune events", e))?;
            Ok(old + self.keep_budget(conn)?)
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
        // The newest `history` events within the byte budget (the store was pruned to it when
        // it opened; this holds if that failed).
        let after = self.cutoff(conn, history)?.unwrap_or(0);
        let mut stmt = conn.prepare("SELECT event FROM events WHERE seq > ?1 ORDER BY seq ASC").map_err(|e| self.err("load", e))?;
        let rows = stmt
            .query_map([after], |r| r.get::<_, String>(0))
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
        let json = to_json(event);
        let size = json.len() as u64;
        tx.execute(
            "INSERT OR REPLACE INTO events(seq, at, kind, id, event, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![event.seq as i64, event.at as i64, event.kind.as_str(), event.id, json, size as i64],
        )
        .map_err(|e| self.err("write event", e))?;
        match record {
            Some(r) => tx.execute(
                "INSERT OR REPLACE INTO instances(id, record, updated_at, state) VALUES (?1, ?2, ?3, ?4)",
                params![r.id, to_json(r), event.at as i64, state_key(r)],
            ),
            None => tx.execute("DELETE FROM instances WHERE id = ?1", params![event.id]),
        }
        .map_err(|e| self.err("write instance", e))?;
        tx.commit().map_err(|e| self.err("commit", e))?;
        self.wrote(conn, 1, size);
        Ok(())
    }

    /// One SQLite transaction for the whole batch: a SIGKILL keeps all of it or none of it,
    /// and batches commit in order, so the history on disk is always a prefix of the one the
    /// registry numbered (never a hole).
    fn write_transitions(&self, conn: &mut Connection, events: &[std::sync::Arc<Event>]) -> Result<()> {
        let tx = conn.transaction().map_err(|e| self.err("begin", e))?;
        let mut bytes = 0u64;
        {
            let mut put_event = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO events(seq, at, kind, id, event, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err("write event", e))?;
            let mut put_record = tx
                .prepare_cached("INSERT OR REPLACE INTO instances(id, record, updated_at, state) VALUES (?1, ?2, ?3, ?4)")
                .map_err(|e| self.err("write instance", e))?;
            let mut delete_record =
                tx.prepare_cached("DELETE FROM instances WHERE id = ?1").map_err(|e| self.err("write instance", e))?;
            for event in events {
                let (json, record_json) = event_and_record_json(event);
                bytes += json.len() as u64;
                put_event
                    .execute(params![event.seq as i64, event.at as i64, event.kind.as_str(), event.id, json, json.len() as i64])
                    .map_err(|e| self.err("write event", e))?;
                match event.instance.as_deref() {
                    Some(r) => put_record.execute(params![r.id, record_json.unwrap_or_default(), event.at as i64, state_key(r)]),
                    None => delete_record.execute(params![event.id]),
                }
                .map_err(|e| self.err("write instance", e))?;
            }
        }
        tx.commit().map_err(|e| self.err("commit", e))?;
        self.wrote(conn, events.len() as u64, bytes);
        Ok(())
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
                    "UPDATE instances SET record = ?2, updated_at = ?3, state = ?8
                     WHERE id = ?1
                       AND CASE WHEN state IS NULL THEN
                             json_extract(record, '$.status') = ?4
                             AND json_extract(record, '$.status_since') = ?5
                             AND json_extract(record, '$.health') = ?6
                             AND json_extract(record, '$.health_note') IS ?7
                           ELSE state = ?8 END",
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
                    r.health_note,
                    state_key(r)
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
            let s = SqliteStore::open(&path, HistoryBudget::default()).unwrap();
            s.transition(&event(1, EventKind::Joined, "g/a"), Some(&record("g/a"))).unwrap();
            s.transition(&event(2, EventKind::Joined, "g/b"), Some(&record("g/b"))).unwrap();
            s.transition(&event(3, EventKind::Evicted, "g/b"), None).unwrap();
        }
        let s = SqliteStore::open(&path, HistoryBudget::default()).unwrap();
        let snap = s.load(10).unwrap();
        assert_eq!(snap.instances.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["g/a"]);
        assert_eq!(snap.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(snap.last_seq, 3);
        assert_eq!(s.load(2).unwrap().events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.prune_events(25).unwrap(), 2);
    }

    /// The group commit serializes a transition's record once and writes the event's row with
    /// it: the rows hold exactly what serializing the event and the record writes (with and
    /// without a record and a detail), and load back as the same event and record.
    #[test]
    fn group_commit_rows_are_the_plain_serialization() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("registry.db"), HistoryBudget::default()).unwrap();
        let mut joined = event(1, EventKind::Joined, "g/a");
        joined.instance = Some(std::sync::Arc::new(record("g/a")));
        let mut offline = event(2, EventKind::Offline, "g/a");
        offline.instance = Some(std::sync::Arc::new(record("g/a")));
        offline.detail = serde_json::json!({"reason": "connection-lost"});
        let evicted = event(3, EventKind::Evicted, "g/b");
        let events: Vec<_> = [joined, offline, evicted].into_iter().map(std::sync::Arc::new).collect();
        s.transitions(&events).unwrap();
        let rows: Vec<(i64, String)> = s.with(|c| {
            let mut q = c.prepare("SELECT seq, event FROM events ORDER BY seq").unwrap();
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect();
            Ok(rows)
        }).unwrap();
        let want: Vec<(i64, String)> = events.iter().map(|e| (e.seq as i64, to_json(&**e))).collect();
        assert_eq!(rows, want);
        let record: String = s.with(|c| Ok(c.query_row("SELECT record FROM instances WHERE id = 'g/a'", [], |r| r.get(0)).unwrap())).unwrap();
        assert_eq!(record, to_json(&record_of(&events[1])));
        let snap = s.load(10).unwrap();
        assert_eq!(snap.events, events.iter().map(|e| (**e).clone()).collect::<Vec<_>>());
    }

    fn record_of(e: &Event) -> InstanceRecord {
        (**e.instance.as_ref().unwrap()).clone()
    }

    fn big_event(seq: u64, kib: usize) -> Event {
        let mut ev = event(seq, EventKind::HealthChanged, "g/a");
        ev.detail = serde_json::json!({"pad": "x".repeat(kib * 1024)});
        ev
    }

    /// The events the table holds (not what `load` picks from them).
    fn seqs(s: &SqliteStore) -> Vec<u64> {
        s.with(|c| {
            let mut stmt = c.prepare("SELECT seq FROM events ORDER BY seq").unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap();
            Ok(rows.map(|r| r.unwrap() as u64).collect())
        })
        .unwrap()
    }

    /// The history keeps the newest events within its count and byte budgets: after commits
    /// that take it an eighth over, at the prune tick, and when the store opens (a larger
    /// history left by an earlier run with a larger budget). Counted from the index.
    #[test]
    fn the_history_is_kept_within_its_count_and_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let big = HistoryBudget { events: 1000, bytes: 100 * 1024 * 1024 };
        {
            let s = SqliteStore::open(&path, big).unwrap();
            let evs: Vec<std::sync::Arc<Event>> = (1..=200).map(|i| std::sync::Arc::new(big_event(i, 10))).collect();
            for chunk in evs.chunks(7) {
                s.transitions(chunk).unwrap();
            }
            assert_eq!(seqs(&s).len(), 200);
        }
        // 100 KiB: about 9 events of 10 KiB. Opening prunes.
        let small = HistoryBudget { events: 1000, bytes: 100 * 1024 };
        let s = SqliteStore::open(&path, small).unwrap();
        let kept = seqs(&s);
        assert!((8..=10).contains(&kept.len()) && kept.last() == Some(&200), "{kept:?}");
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        // Commits beyond the budget prune as they go: never more than an eighth over (plus
        // the batch that crossed it).
        for i in 201..=400 {
            s.transition(&big_event(i, 10), Some(&record("g/a"))).unwrap();
            let bytes: i64 = s.with(|c| Ok(c.query_row("SELECT SUM(size) FROM events", [], |r| r.get(0)).unwrap())).unwrap();
            assert!(bytes as u64 <= small.bytes + small.bytes / 8 + 11 * 1024, "{bytes} bytes held after event {i}");
        }
        assert_eq!(seqs(&s).last(), Some(&400));
        // The prune tick takes it back within the budget; the count budget holds the same way.
        s.prune_events(0).unwrap();
        let kept = seqs(&s);
        assert!((8..=10).contains(&kept.len()), "{kept:?}");
        drop(s);
        let s = SqliteStore::open(&path, HistoryBudget { events: 3, bytes: 100 * 1024 * 1024 }).unwrap();
        assert_eq!(seqs(&s), vec![398, 399, 400]);
        // The newest event stays even when it alone is over the budget.
        let s = SqliteStore::open(&path, HistoryBudget { events: 3, bytes: 1 }).unwrap();
        assert_eq!(seqs(&s), vec![400]);
        assert_eq!(s.load(10).unwrap().last_seq, 400);
    }

    /// A database written before the history budget (no `size` column) gets the column and
    /// its sizes when it opens, and is pruned to the budget.
    #[test]
    fn a_database_from_before_the_budget_is_sized_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let c = Connection::open(&path).unwrap();
            let before = SCHEMA.replace(",\n    size INTEGER NOT NULL DEFAULT 0", "");
            assert!(!before.contains("size"));
            c.execute_batch(&before).unwrap();
            for i in 1..=50u64 {
                c.execute(
                    "INSERT INTO events(seq, at, kind, id, event) VALUES (?1, ?2, 'health', 'g/a', ?3)",
                    params![i as i64, (i * 10) as i64, to_json(&big_event(i, 10))],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&path, HistoryBudget { events: 1000, bytes: 50 * 1024 }).unwrap();
        let kept = seqs(&s);
        assert!((4..=5).contains(&kept.len()) && kept.last() == Some(&50), "{kept:?}");
        assert_eq!(s.load(1000).unwrap().events.iter().map(|e| e.seq).collect::<Vec<_>>(), kept);
        let sized: i64 = s.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM events WHERE size > 10240", [], |r| r.get(0)).unwrap())).unwrap();
        assert_eq!(sized as usize, kept.len(), "every kept event has its size");
    }

    #[test]
    fn a_late_snapshot_never_undoes_a_transition() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("registry.db"), HistoryBudget::default()).unwrap();
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

    /// Rows written by a registry from before the `state` column (NULL there) are checked
    /// field by field from their JSON: a late snapshot does not undo them either, and one of
    /// the same state updates the row and fills the column.
    #[test]
    fn rows_without_a_state_are_checked_from_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("registry.db"), HistoryBudget::default()).unwrap();
        let online = record("g/a");
        let mut left = online.clone();
        left.status = crate::model::Status::Left;
        left.status_since = 99;
        let older_registry_writes = |r: &InstanceRecord| {
            s.with(|c| {
                c.execute("INSERT OR REPLACE INTO instances(id, record, updated_at) VALUES (?1, ?2, 1)", params![r.id, to_json(r)])
                    .map_err(|e| s.err("test", e))
            })
            .unwrap();
        };
        older_registry_writes(&left);
        s.snapshot(std::slice::from_ref(&online)).unwrap();
        assert_eq!(s.load(10).unwrap().instances[0].status, crate::model::Status::Left);
        older_registry_writes(&online);
        let mut fresher = online.clone();
        fresher.metrics.custom.insert("x".into(), 1.0);
        s.snapshot(&[fresher.clone()]).unwrap();
        assert_eq!(s.load(10).unwrap().instances[0].metrics.custom.get("x"), Some(&1.0));
        let state: Option<String> =
            s.with(|c| Ok(c.query_row("SELECT state FROM instances", [], |r| r.get(0)).unwrap())).unwrap();
        assert_eq!(state, Some(state_key(&fresher)));
        // From then on the column decides: a late snapshot of another state changes nothing.
        let mut critical = fresher.clone();
        critical.health = crate::model::Health::Critical;
        s.snapshot(&[critical]).unwrap();
        assert_eq!(s.load(10).unwrap().instances[0].health, crate::model::Health::Passing);
    }

    #[test]
    fn a_directory_that_cannot_hold_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = SqliteStore::open(&file.join("registry.db"), HistoryBudget::default()).err().unwrap().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
