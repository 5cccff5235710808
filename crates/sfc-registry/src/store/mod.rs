//! Durable registry state. One interface, chosen with `--store`:
//! - `sqlite` (default): `<data-dir>/registry.db`, instance records and the event history
//!   (the newest events within a [`HistoryBudget`] of count and bytes, and `--history-retention`);
//! - `memory`: nothing survives a restart;
//! - `etcd` (feature `etcd`): several registries share one fleet; see [`etcd`]. It keeps no
//!   event history (each registry's is in memory) and compacts etcd's key history each minute.
//!
//! The registry calls [`Store::transition`] for every state transition *before* it broadcasts
//! it, so whatever a watcher or an operator has seen is on disk. Metric snapshots are written
//! in batches on a timer ([`Store::snapshot`]), never on the report path.

#[cfg(feature = "etcd")]
pub mod etcd;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

pub use sqlite::SqliteStore;

use crate::error::{Error, Result};
use crate::model::{Event, InstanceRecord};

/// How much event history a store keeps on disk (RELIABILITY.md "Budgets"): the newest
/// events within `events` and within `bytes` (each event's stored JSON), the newest one always.
/// The same bounds as the in-memory history (10,000 events, 256 MiB), so a restart finds what
/// the registry held; `--max-history-bytes` sets `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBudget {
    pub events: usize,
    pub bytes: u64,
}

impl Default for HistoryBudget {
    fn default() -> Self {
        HistoryBudget { events: 10_000, bytes: crate::registry::state::HISTORY_BYTES as u64 }
    }
}

/// What a store hands back at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub instances: Vec<InstanceRecord>,
    /// The newest events, oldest first.
    pub events: Vec<Event>,
    /// Highest event sequence number ever written (0 when none).
    pub last_seq: u64,
}

pub trait Store: Send + Sync + 'static {
    /// `sqlite`, `memory`, ...
    fn kind(&self) -> &'static str;
    /// Loads the records and the newest `history` events.
    fn load(&self, history: usize) -> Result<Snapshot>;
    /// Durably records one transition and the record after it (None: the record is gone).
    fn transition(&self, event: &Event, record: Option<&InstanceRecord>) -> Result<()>;
    /// Durably records these transitions, in order and all or nothing; each event's record
    /// is the one it carries (`event.instance`, None once evicted). The group commit's writer
    /// thread calls it with everything that queued up while it wrote the previous batch.
    fn transitions(&self, events: &[std::sync::Arc<Event>]) -> Result<()> {
        for ev in events {
            self.transition(ev, ev.instance.as_deref())?;
        }
        Ok(())
    }
    /// Like [`Store::transition`], and returns the number the store gave the write when it
    /// numbers writes for every registry sharing it (`etcd`: the revision). Such a store
    /// numbers the events ([`Store::numbers_events`]).
    fn transition_numbered(&self, event: &Event, record: Option<&InstanceRecord>) -> Result<Option<u64>> {
        self.transition(event, record).map(|()| None)
    }
    /// [`Store::transition_numbered`] for transitions of different instances at once (one
    /// each), in no particular order: one result per event. The writer of a store that
    /// numbers events (`registry::numbered`) calls it with a wave of what queued up.
    fn transitions_numbered(&self, events: &[std::sync::Arc<Event>]) -> Vec<Result<Option<u64>>> {
        events.iter().map(|ev| self.transition_numbered(ev, ev.instance.as_deref())).collect()
    }
    /// True when every registry sharing the store numbers events alike, by the store's own
    /// numbering (`etcd`: an event's `seq` is the etcd revision that wrote it), so that a
    /// cursor is valid on each of them. Events are then published in that order, once the
    /// registry sees them come back from the store (`registry::cluster`).
    fn numbers_events(&self) -> bool {
        false
    }
    /// True when transitions go through the group commit (a writer thread that writes them in
    /// batches, off the state lock, and broadcasts them once committed). False: each is
    /// written under the state lock, one at a time (`memory`, which writes nothing). A store
    /// that numbers events (`etcd`) has its own writer thread (`registry::numbered`).
    fn group_commit(&self) -> bool {
        false
    }
    /// Writes the latest state of these records, in one batch.
    fn snapshot(&self, records: &[InstanceRecord]) -> Result<()>;
    /// Deletes history events older than `before_ms` (Unix ms), and the oldest beyond the
    /// store's [`HistoryBudget`]; returns how many.
    fn prune_events(&self, before_ms: u64) -> Result<usize>;
    /// False while the store could not be opened (the registry then serves from memory).
    fn available(&self) -> bool {
        true
    }
}

/// A transition another registry made (`--store etcd`), as it travels through the shared
/// store to the registries that apply it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoteTransition {
    pub kind: crate::model::EventKind,
    /// When the owner made it, Unix ms.
    pub at: u64,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// State kept in memory only.
pub struct MemoryStore;

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn load(&self, _: usize) -> Result<Snapshot> {
        Ok(Snapshot::default())
    }
    fn transition(&self, _: &Event, _: Option<&InstanceRecord>) -> Result<()> {
        Ok(())
    }
    fn snapshot(&self, _: &[InstanceRecord]) -> Result<()> {
        Ok(())
    }
    fn prune_events(&self, _: u64) -> Result<usize> {
        Ok(0)
    }
}

/// Opens the store named by `--store`; `budget` bounds the history it keeps.
pub fn open(kind: &str, data_dir: &Path, budget: HistoryBudget) -> Result<Arc<dyn Store>> {
    match kind {
        "memory" => Ok(Arc::new(MemoryStore)),
        "sqlite" => Ok(Arc::new(SqliteStore::open_or_wait(&data_dir.join("registry.db"), budget))),
        other => Err(Error::invalid("--store", format!("{other:?} is not a store (expected sqlite or memory)"))),
    }
}
