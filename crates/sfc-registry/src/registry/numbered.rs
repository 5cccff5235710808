//! The writer of a store that numbers events (`--store etcd`): transitions reach etcd from
//! one writer thread, off the state lock, and each gets the revision of its write as its
//! number.
//!
//! [`State::emit`](super::state::State::emit) applies a transition to the in-memory record
//! under the state lock, queues the event here and returns. The writer thread takes what
//! queued up and writes it in waves: a wave holds the oldest waiting transition of each
//! instance (so two transitions of one instance are written in the order they happened),
//! written concurrently (etcd's raft batches them). Then, under the state lock for a moment,
//! it keeps each written event by its revision ([`State::written_at`]); the cluster's watch
//! publishes them in revision order when it reaches them (`State::publish_through`), as
//! before. Nothing is published that was not written.
//!
//! Two orderings the watch relies on, which used to come from writing under the lock:
//! - **The gate.** The cluster applies a watch batch only once every wave issued before the
//!   batch arrived is recorded ([`Gate::settled_through`]): a revision of ours the watch reaches is
//!   then known, and published in its place.
//! - **Pending writes own their key.** While this registry has a transition of an instance
//!   queued or being written ([`State::writing`]), a change of its key the watch shows is
//!   older than that write (which lands at a later revision): it is handled as stale, as
//!   when this registry's newest write of the key is newer.
//!
//! While etcd fails, the transitions stay queued in order and are written once it answers
//! again: on the next transition, or when the sweeper asks ([`Writer::retry`]).
//! A barrier ([`Writer::barrier`]) completes once everything queued before it is written and
//! recorded (or failed and kept): sessions wait for one before answering a query or a watch.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model::Event;
use crate::store::Store;

/// Most transitions written concurrently in one wave.
const MAX_WAVE: usize = 512;
/// Fewest transitions a wave may be cut down to.
const MIN_WAVE: usize = 16;
/// A wave that takes longer than this means etcd is queueing: the next wave is halved. etcd
/// renews leases only once it has applied what it committed, and gives up after a second;
/// waves that keep its queue longer than that let this registry's lease (and every record
/// under it) expire.
const SLOW_WAVE: Duration = Duration::from_millis(600);

/// How many transitions the next wave may hold: halved after a slow wave, grown after a
/// fast full one (additive increase, multiplicative decrease, as TCP does).
#[derive(Debug)]
struct WaveSize(usize);

impl WaveSize {
    fn next(&mut self, written: usize, took: Duration) {
        if took > SLOW_WAVE {
            self.0 = (self.0 / 2).max(MIN_WAVE);
        } else if written >= self.0 && took < SLOW_WAVE / 2 {
            self.0 = (self.0 + MIN_WAVE).min(MAX_WAVE);
        }
    }
}

enum Item {
    Write(Arc<Event>),
    Barrier(oneshot::Sender<()>),
    Retry,
}

/// Waves issued and recorded, for the cluster's watch ([`Gate::settled_through`]).
pub struct Gate {
    /// Transitions handed to the writer and not yet written (or kept after a failure).
    pending: AtomicUsize,
    issued: AtomicU64,
    recorded: tokio::sync::watch::Sender<u64>,
}

impl Gate {
    /// Completes once every wave issued before the call is recorded: each of this registry's
    /// writes that etcd may already have shown to the watch has its revision kept.
    /// Waves issued so far: taken when a watch batch arrives, for [`Gate::settled_through`].
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    /// Completes once the first `issued` waves are recorded. A batch the watch received
    /// shows only writes issued before it arrived: it waits for those waves, not for the
    /// ones issued since (under steady writing that would be one more wave per batch).
    pub async fn settled_through(&self, issued: u64) {
        let mut rx = self.recorded.subscribe();
        let _ = rx.wait_for(|r| *r >= issued).await;
    }
}

/// The state's handle on the writer thread. The thread ends when this is dropped.
pub struct Writer {
    tx: mpsc::Sender<Item>,
    gate: Arc<Gate>,
}

impl Writer {
    pub(crate) fn start(state: Weak<super::Shared>, store: Arc<dyn Store>) -> Writer {
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Gate {
            pending: AtomicUsize::new(0),
            issued: AtomicU64::new(0),
            recorded: tokio::sync::watch::Sender::new(0),
        });
        let g = gate.clone();
        std::thread::Builder::new()
            .name("sfc-etcd-writer".into())
            .spawn(move || run(rx, state, store, g))
            .expect("start the store's writer thread");
        Writer { tx, gate }
    }

    pub fn write(&self, ev: Arc<Event>) {
        self.gate.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Item::Write(ev));
    }

    /// Transitions queued or being written: metric snapshots wait while there are any, so
    /// that transitions never queue in etcd behind them.
    pub fn pending(&self) -> usize {
        self.gate.pending.load(Ordering::SeqCst)
    }

    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Item::Barrier(tx));
        rx
    }

    pub fn retry(&self) {
        let _ = self.tx.send(Item::Retry);
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }
}

/// Takes the oldest transition of each instance (at most `max`) out of `queue`.
fn next_wave(queue: &mut VecDeque<Arc<Event>>, max: usize) -> Vec<Arc<Event>> {
    let mut ids = HashSet::new();
    let mut wave = Vec::new();
    let mut rest = VecDeque::with_capacity(queue.len());
    for ev in queue.drain(..) {
        // Once an instance is in this wave or left for the next, so are its later transitions.
        if ids.insert(ev.id.clone()) && wave.len() < max {
            wave.push(ev);
        } else {
            rest.push_back(ev);
        }
    }
    *queue = rest;
    wave
}

fn run(rx: mpsc::Receiver<Item>, state: Weak<super::Shared>, store: Arc<dyn Store>, gate: Arc<Gate>) {
    let mut queue: VecDeque<Arc<Event>> = VecDeque::new();
    let mut failing = false;
    let mut size = WaveSize(MAX_WAVE / 4);
    while let Ok(first) = rx.recv() {
        let mut barriers = Vec::new();
        let mut attempt = false;
        for item in std::iter::once(first).chain(rx.try_iter()) {
            match item {
                Item::Write(ev) => {
                    queue.push_back(ev);
                    attempt = true;
                }
                Item::Barrier(b) => barriers.push(b),
                Item::Retry => attempt |= failing,
            }
        }
        while attempt && !queue.is_empty() {
            let wave = next_wave(&mut queue, size.0);
            let issued = gate.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let started = Instant::now();
            let results = store.transitions_numbered(&wave);
            size.next(wave.len(), started.elapsed());
            let mut failed = VecDeque::new();
            let mut error = None;
            let mut written = 0usize;
            {
                let Some(shared) = state.upgrade() else { return };
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                for (ev, r) in wave.into_iter().zip(results) {
                    match r {
                        Ok(rev) => {
                            st.written_at(&ev, rev);
                            written += 1;
                        }
                        Err(e) => {
                            error.get_or_insert(e.to_string());
                            failed.push_back(ev);
                        }
                    }
                }
                match &error {
                    None if failing => {
                        failing = false;
                        st.store_error = None;
                        tracing::warn!(target: "sfc::store", "store recovered; writing resumed");
                    }
                    Some(e) => {
                        if !failing {
                            tracing::error!(target: "sfc::store", error = %e,
                                "STORE FAILING: transitions are kept in memory only until it recovers");
                        }
                        failing = true;
                        st.store_error = Some(e.clone());
                    }
                    None => {}
                }
            }
            gate.recorded.send_replace(issued);
            gate.pending.fetch_sub(written, Ordering::SeqCst);
            if !failed.is_empty() {
                // Kept first, in order, before the later transitions of their instances.
                failed.extend(queue.drain(..));
                queue = failed;
                break;
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a store that numbers writes like etcd's revisions (by ten) and
    //! whose writes the test holds and releases. (The real-etcd side: crates/sfc/tests/etcd.rs.)
    use std::sync::{mpsc, Arc, Mutex};

    use crate::model::{Event, EventKind, Filter, InstanceRecord};
    use crate::registry::{Registry, RegistryConfig};
    use crate::store::{Snapshot, Store};

    struct HeldNumbering {
        /// Each wave as it enters the store: (the registry's own sequence, kind) per event.
        entered: Mutex<mpsc::Sender<Vec<(u64, EventKind)>>>,
        /// true: written; false: fails like an etcd that does not answer.
        release: Mutex<mpsc::Receiver<bool>>,
        rev: Mutex<u64>,
        /// How many records each metric snapshot held.
        snapshots: Mutex<Vec<usize>>,
    }

    impl HeldNumbering {
        /// The store, the waves as they enter it, and the switch that lets each one through.
        #[allow(clippy::type_complexity)]
        fn new() -> (Arc<Self>, mpsc::Receiver<Vec<(u64, EventKind)>>, mpsc::Sender<bool>) {
            let (entered_tx, entered) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let store = Arc::new(HeldNumbering {
                entered: Mutex::new(entered_tx),
                release: Mutex::new(release_rx),
                rev: Mutex::new(0),
                snapshots: Mutex::new(Vec::new()),
            });
            (store, entered, release)
        }
    }

    impl Store for HeldNumbering {
        fn kind(&self) -> &'static str {
            "held-numbering"
        }
        fn load(&self, _: usize) -> crate::Result<Snapshot> {
            Ok(Snapshot::default())
        }
        fn transition(&self, _: &Event, _: Option<&InstanceRecord>) -> crate::Result<()> {
            unreachable!("the writer writes waves")
        }
        fn transitions_numbered(&self, events: &[Arc<Event>]) -> Vec<crate::Result<Option<u64>>> {
            self.entered.lock().unwrap().send(events.iter().map(|e| (e.seq, e.kind)).collect()).unwrap();
            let ok = self.release.lock().unwrap().recv().unwrap();
            let mut rev = self.rev.lock().unwrap();
            events
                .iter()
                .map(|_| {
                    if !ok {
                        return Err(crate::Error::Unreachable("etcd does not answer".into()));
                    }
                    *rev += 10;
                    Ok(Some(*rev))
                })
                .collect()
        }
        fn numbers_events(&self) -> bool {
            true
        }
        fn snapshot(&self, records: &[InstanceRecord]) -> crate::Result<()> {
            self.snapshots.lock().unwrap().push(records.len());
            Ok(())
        }
        fn prune_events(&self, _: u64) -> crate::Result<usize> {
            Ok(0)
        }
    }

    use crate::registry::commit::tests::{join, WAIT};

    /// The state lock is free while etcd writes: queries and other sessions' transitions go
    /// on. A wave takes one transition per instance, in order; events are numbered by the
    /// store and published in that order once the watch reaches them; what a failing store
    /// did not take is kept, in order, and written on the retry.
    #[tokio::test]
    async fn etcd_writes_are_made_off_the_lock_in_order_and_published_by_revision() {
        let (store, entered, release) = HeldNumbering::new();
        let reg = Registry::new(RegistryConfig { store, ..Default::default() });
        reg.state().loaded_at(5);
        let mut rx = reg.subscribe();
        // A join on another thread (with the old behaviour it would hold the lock until the
        // store answers).
        let (r, (joined_tx, joined)) = (reg.clone(), mpsc::channel());
        std::thread::spawn(move || {
            join(&r, "a");
            let _ = joined_tx.send(());
        });
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(1, EventKind::Joined)]);
        joined.recv_timeout(WAIT).expect("the join returned only once the store had written it");
        // The writer is inside the store's write now, and the state lock is free.
        assert!(reg.shared.state.try_lock().is_ok(), "the state lock is held across the store's write");
        assert_eq!(reg.query(&Filter::default()).len(), 1);
        join(&reg, "b");
        reg.state().mark_left("g/b", None, None);
        join(&reg, "c");
        assert!(reg.state().writing("g/b"));
        release.send(true).unwrap();
        // One transition of each instance per wave: b's second waits for its first.
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(2, EventKind::Joined), (4, EventKind::Joined)]);
        release.send(true).unwrap();
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(3, EventKind::Left)]);
        // etcd does not answer: kept, said, and nothing published.
        release.send(false).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert!(reg.store_status().1.is_some());
        assert!(reg.state().writing("g/b"));
        // Numbered 10, 20, 30 (a, b, c); published when the watch reaches them, in order.
        assert!(rx.try_recv().is_err(), "published before the watch reached it");
        reg.state().seen_through(30);
        let seqs: Vec<(u64, String)> = (0..3).map(|_| rx.try_recv().unwrap()).map(|e| (e.seq, e.id.clone())).collect();
        assert_eq!(seqs, [(10, "g/a".into()), (20, "g/b".into()), (30, "g/c".into())]);
        assert!(rx.try_recv().is_err(), "the unwritten transition has no number");
        // Retried once etcd answers: written at 40, published like the rest.
        reg.state().retry_store();
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(3, EventKind::Left)]);
        release.send(true).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        assert!(reg.store_status().1.is_none());
        assert!(!reg.state().writing("g/b"));
        reg.state().seen_through(40);
        let ev = rx.try_recv().unwrap();
        assert_eq!((ev.seq, ev.kind, ev.id.as_str()), (40, EventKind::Left, "g/b"));
        assert_eq!(reg.state().events_after(0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10, 20, 30, 40]);
        assert!(!reg.state().complete_after(4) && reg.state().complete_after(5), "the history begins at the load");
    }

    /// Metric snapshots wait while transitions are queued or being written (in etcd they
    /// would queue ahead of them); the records stay marked and go on a later tick.
    #[tokio::test]
    async fn metric_snapshots_wait_for_the_transitions_being_written() {
        let (store, entered, release) = HeldNumbering::new();
        let reg = Registry::new(RegistryConfig { store: store.clone(), ..Default::default() });
        reg.state().loaded_at(5);
        join(&reg, "a");
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(1, EventKind::Joined)]);
        release.send(true).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        let mut metrics = crate::model::Metrics::default();
        metrics.process.cpu_percent = Some(3.0);
        let report = crate::protocol::Report { seq: 1, sent_at: None, health: None, health_note: None, metrics };
        assert!(reg.state().apply_report("g/a", None, report));
        // b's join is inside the store's write: the snapshot of a waits.
        join(&reg, "b");
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), vec![(2, EventKind::Joined)]);
        reg.flush_snapshots().await;
        assert!(store.snapshots.lock().unwrap().is_empty(), "a snapshot went to the store ahead of a transition");
        release.send(true).unwrap();
        tokio::time::timeout(WAIT, reg.durable()).await.unwrap();
        reg.flush_snapshots().await;
        assert_eq!(*store.snapshots.lock().unwrap(), vec![1], "the record reported meanwhile was not written");
    }

    /// Waves shrink when etcd queues (a slow wave) and grow back when it keeps up.
    #[test]
    fn waves_halve_when_slow_and_grow_when_fast() {
        use std::time::Duration;

        use super::{WaveSize, MAX_WAVE, MIN_WAVE, SLOW_WAVE};
        let mut w = WaveSize(128);
        w.next(128, SLOW_WAVE * 2);
        assert_eq!(w.0, 64);
        (0..10).for_each(|_| w.next(w.0, SLOW_WAVE * 2));
        assert_eq!(w.0, MIN_WAVE);
        // A fast wave that was not full (nothing more was queued) does not grow it.
        w.next(1, Duration::ZERO);
        assert_eq!(w.0, MIN_WAVE);
        w.next(w.0, Duration::ZERO);
        assert_eq!(w.0, 2 * MIN_WAVE);
        (0..100).for_each(|_| w.next(w.0, Duration::ZERO));
        assert_eq!(w.0, MAX_WAVE);
    }
}
