//! Group commit: transitions reach the store from one writer thread, in batches, and are
//! broadcast only once their batch is committed.
//!
//! [`State::emit`](super::state::State::emit) numbers a transition and applies it to the
//! in-memory record under the state lock, then queues the event here and returns: nothing
//! is written under the lock. The writer thread takes everything that queued up while it
//! wrote the previous batch, writes it in one store transaction ([`Store::transitions`]),
//! and then, under the state lock for a moment, keeps the events in the history and
//! broadcasts them, in sequence order. So a watcher, a replayed history and a cursor only
//! ever hold committed transitions, and a burst of 1,000 transitions costs a few commits
//! instead of 1,000 under the lock.
//!
//! A barrier ([`Writer::barrier`]) completes once everything queued before it is committed
//! and broadcast: sessions wait for one before they answer a query or a watch, and the HTTP
//! API before it answers a deregistration, so what an observer was shown is on disk. (Welcome
//! does not wait: a client may hear of its session a moment before watchers hear of its
//! `joined`, and one lost to a crash registers again when it reconnects.)
//!
//! While the store fails, batches are broadcast anyway (the registry serves from memory),
//! and kept to be written once the store works again: on the next transition, or when the
//! sweeper asks ([`Writer::retry`]) on the snapshot timer.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use tokio::sync::oneshot;

use crate::model::Event;
use crate::store::Store;

/// Most transitions written in one store transaction.
const MAX_BATCH: usize = 4096;
/// Most bytes (estimated, [`super::session::event_size`]) of events in one store
/// transaction: each event carries its record (up to ~340 KiB), and SQLite's WAL grows by a
/// whole transaction before it is checkpointed, so a flood of large records is written in
/// transactions of this size rather than one of gigabytes.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

enum Item {
    /// Write, then broadcast.
    Write(Arc<Event>),
    /// Completes once everything queued before it is committed (or failed) and broadcast.
    Barrier(oneshot::Sender<()>),
    /// The store failed: try again to write what it missed.
    Retry,
}

/// The state's handle on the writer thread. The thread ends when this is dropped.
pub struct Writer {
    tx: mpsc::Sender<Item>,
}

impl Writer {
    /// Starts the writer thread. `state` is the lock it broadcasts under; `keep` is how many
    /// unwritten events it keeps in order while the store fails (beyond that, the newest
    /// unwritten event of each instance, so every record is still written on recovery).
    pub(crate) fn start(state: Weak<super::Shared>, store: Arc<dyn Store>, keep: usize) -> Writer {
        let (tx, rx) = mpsc::channel();
        let failing = !store.available();
        std::thread::Builder::new()
            .name("sfc-commit".into())
            .spawn(move || run(rx, state, store, keep, failing))
            .expect("start the store's writer thread");
        Writer { tx }
    }

    /// Queues a transition.
    pub fn write(&self, ev: Arc<Event>) {
        let _ = self.tx.send(Item::Write(ev));
    }

    /// A receiver that completes once every transition queued before is committed and
    /// broadcast (or, while the store fails, broadcast and kept for later).
    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Item::Barrier(tx));
        rx
    }

    /// Asks a failing store to take what it missed.
    pub fn retry(&self) {
        let _ = self.tx.send(Item::Retry);
    }
}

/// What the store missed while it failed.
#[derive(Default)]
struct Backlog {
    /// Oldest first.
    events: VecDeque<Arc<Event>>,
    /// Events pushed out of `events` by the cap: the newest per instance, so its record is
    /// right after recovery (the history on disk then lacks the ones in between).
    overflow: HashMap<String, Arc<Event>>,
}

impl Backlog {
    fn push(&mut self, ev: Arc<Event>, keep: usize) {
        self.events.push_back(ev);
        while self.events.len() > keep.max(1) {
            if let Some(old) = self.events.pop_front() {
                self.overflow.insert(old.id.clone(), old);
            }
        }
    }

    /// Everything, in sequence order.
    fn all(&self) -> Vec<Arc<Event>> {
        let mut out: Vec<Arc<Event>> = self.overflow.values().cloned().collect();
        out.sort_by_key(|e| e.seq);
        out.extend(self.events.iter().cloned());
        out
    }
}

fn run(rx: mpsc::Receiver<Item>, state: Weak<super::Shared>, store: Arc<dyn Store>, keep: usize, mut failing: bool) {
    let mut backlog = Backlog::default();
    while let Ok(first) = rx.recv() {
        let size = |item: &Item| match item {
            Item::Write(ev) => super::session::event_size(ev),
            _ => 0,
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += size(&item);
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        let mut barriers = Vec::new();
        let mut retry = false;
        for item in batch {
            match item {
                Item::Write(ev) => writes.push(ev),
                Item::Barrier(b) => barriers.push(b),
                Item::Retry => retry = true,
            }
        }
        let started = std::time::Instant::now();
        let n = writes.len();
        // Write: the batch, after what the store missed while it failed.
        let mut outcome: Option<Result<(), String>> = None;
        if !failing {
            if !writes.is_empty() {
                outcome = Some(store.transitions(&writes).map_err(|e| e.to_string()));
            }
        } else if !writes.is_empty() || retry {
            let mut all = backlog.all();
            all.extend(writes.iter().cloned());
            outcome = Some(store.transitions(&all).map_err(|e| e.to_string()));
        }
        let newest = writes.last().map(|e| e.seq);
        let written = started.elapsed();
        match &outcome {
            Some(Ok(())) if failing => {
                failing = false;
                backlog = Backlog::default();
                tracing::warn!(target: "sfc::store", seq = ?newest, "store recovered; writing resumed");
            }
            Some(Err(e)) => {
                if !failing {
                    tracing::error!(target: "sfc::store", error = %e,
                        "STORE FAILING: transitions are kept in memory only until it recovers");
                }
                failing = true;
                for ev in &writes {
                    backlog.push(ev.clone(), keep);
                }
            }
            _ => {
                if failing {
                    for ev in &writes {
                        backlog.push(ev.clone(), keep);
                    }
                }
            }
        }
        // Broadcast, in order, under the lock that orders events for watchers.
        let Some(shared) = state.upgrade() else { return };
        {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Some(Ok(())) => st.store_error = None,
                Some(Err(e)) => st.store_error = Some(e),
                None => {}
            }
            for ev in writes {
                st.publish_committed(ev);
            }
        }
        drop(shared);
        if n > 0 {
            tracing::debug!(target: "sfc::store", events = n, seq = ?newest, write_us = written.as_micros() as u64,
                publish_us = (started.elapsed() - written).as_micros() as u64, "group commit");
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The group commit against a store whose writes the test holds and releases: a watcher
    //! hears of a transition only once its batch is committed, the state lock is free while
    //! the store writes, and what a failing store missed is written first, in order, on
    //! recovery. (The SIGKILL side runs against the real binary in crates/sfc/tests/durability.rs.)
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    use crate::model::{Event, EventKind, Filter, InstanceRecord, Registration};
    use crate::registry::{Registry, RegistryConfig};
    use crate::store::{Snapshot, Store};

    /// A store whose `transitions` announces itself and then waits to be let through.
    struct HeldStore {
        entered: Mutex<mpsc::Sender<Vec<u64>>>,
        release: Mutex<mpsc::Receiver<bool>>,
        committed: Mutex<Vec<Vec<u64>>>,
        up: AtomicBool,
    }

    impl Store for HeldStore {
        fn kind(&self) -> &'static str {
            "held"
        }
        fn load(&self, _: usize) -> crate::Result<Snapshot> {
            Ok(Snapshot::default())
        }
        fn transition(&self, _: &Event, _: Option<&InstanceRecord>) -> crate::Result<()> {
            unreachable!("the group commit writes batches")
        }
        fn transitions(&self, events: &[Arc<Event>]) -> crate::Result<()> {
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            self.entered.lock().unwrap().send(seqs.clone()).unwrap();
            // true: commit; false: fail like a full disk.
            if !self.release.lock().unwrap().recv().unwrap() {
                self.up.store(false, Ordering::SeqCst);
                return Err(crate::Error::invalid("store", "disk full"));
            }
            self.up.store(true, Ordering::SeqCst);
            self.committed.lock().unwrap().push(seqs);
            Ok(())
        }
        fn group_commit(&self) -> bool {
            true
        }
        fn snapshot(&self, _: &[InstanceRecord]) -> crate::Result<()> {
            Ok(())
        }
        fn prune_events(&self, _: u64) -> crate::Result<usize> {
            Ok(0)
        }
    }

    fn setup() -> (Registry, Arc<HeldStore>, mpsc::Receiver<Vec<u64>>, mpsc::Sender<bool>) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let store = Arc::new(HeldStore {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
            committed: Mutex::default(),
            up: AtomicBool::new(true),
        });
        let reg = Registry::new(RegistryConfig { store: store.clone(), ..Default::default() });
        (reg, store, entered, release)
    }

    /// Registers `g/<instance>` as a session would (also used by `numbered`'s tests).
    pub(in crate::registry) fn join(reg: &Registry, instance: &str) {
        let r: Registration =
            serde_json::from_value(serde_json::json!({ "group": "g", "instance_id": instance, "service": "s" })).unwrap();
        reg.state().register(r, 1000, None, None, "v1", serde_json::json!({}));
    }

    pub(in crate::registry) const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_transition_is_broadcast_only_once_committed_and_never_written_under_the_lock() {
        let (reg, store, entered, release) = setup();
        let mut rx = reg.subscribe();
        join(&reg, "a");
        // The writer is inside the store's write now.
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![1]);
        // The state lock is free meanwhile: queries and new transitions go on.
        assert_eq!(reg.query(&Filter::default()).len(), 1);
        join(&reg, "b");
        join(&reg, "c");
        // Nobody has heard of the uncommitted transitions; the history holds none of them.
        assert!(rx.try_recv().is_err());
        assert_eq!(reg.events_after(0, 10), (vec![], 0));
        release.send(true).unwrap();
        // What queued up during that write is one batch.
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![2, 3]);
        assert_eq!(rx.recv().await.unwrap().seq, 1);
        assert!(rx.try_recv().is_err(), "2 and 3 are not committed yet");
        release.send(true).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert_eq!([rx.recv().await.unwrap().seq, rx.recv().await.unwrap().seq], [2, 3]);
        assert_eq!(reg.events_after(0, 10).1, 3);
        assert_eq!(*store.committed.lock().unwrap(), vec![vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn a_failing_store_is_served_from_memory_and_gets_what_it_missed_in_order() {
        let (reg, store, entered, release) = setup();
        let mut rx = reg.subscribe();
        join(&reg, "a");
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![1]);
        release.send(false).unwrap();
        // Broadcast anyway, and said.
        assert_eq!(rx.recv().await.unwrap().kind, EventKind::Joined);
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert!(reg.store_status().1.is_some());
        // The next transition writes the missed one first, in the same batch.
        join(&reg, "b");
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![1, 2]);
        release.send(true).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().seq, 2);
        assert!(reg.store_status().1.is_none());
        assert!(store.up.load(Ordering::SeqCst));
        // A retry with nothing missed writes nothing.
        reg.state().retry_store();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert!(entered.try_recv().is_err());
    }
}
