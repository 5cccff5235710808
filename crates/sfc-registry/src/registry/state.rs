//! The fleet state: every instance record, which session owns it, the event history, and
//! pending commands. One mutex guards it; every critical section is short and never awaits.
//! Each transition goes through [`State::emit`], which numbers the event, keeps it in the
//! history and broadcasts it while the lock is held, so watchers see transitions in order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::model::{
    now_ms, Event, EventKind, Filter, Health, InstanceRecord, OfflineReason, Registration, Status,
};
use crate::protocol::{CommandResult, Message, Report};
use crate::store::{RemoteTransition, Snapshot, Store};

/// What a session's writer is asked to do.
#[derive(Debug)]
pub enum Outbound {
    Send(Message),
    /// Send this frame, then close the connection.
    Close(Message),
}

/// A session's outbound queue. Messages travel boxed: a slot is then one pointer instead of a
/// whole `Message` (~500 bytes), and tokio allocates a queue 32 slots at a time, so this saves
/// ~16 KiB per connection (`sfc bench`, BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct OutboundTx(mpsc::Sender<Box<Outbound>>);

impl OutboundTx {
    pub fn channel(capacity: usize) -> (OutboundTx, mpsc::Receiver<Box<Outbound>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (OutboundTx(tx), rx)
    }

    pub fn try_send(&self, ob: Outbound) -> Result<(), mpsc::error::TrySendError<Box<Outbound>>> {
        self.0.try_send(Box::new(ob))
    }

    pub async fn send(&self, ob: Outbound) -> Result<(), mpsc::error::SendError<Box<Outbound>>> {
        self.0.send(Box::new(ob)).await
    }
}

/// The live session that owns an instance.
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub id: u64,
    pub tx: OutboundTx,
}

/// One point of an instance's recent history, for sparklines.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub at: u64,
    pub cpu_percent: Option<f64>,
    pub resident_bytes: Option<u64>,
}

/// A [`Sample`] as an instance keeps it: 25 bytes instead of 40 (`Option<f64>` and
/// `Option<u64>` take 16 bytes each), the same values. An instance keeps up to
/// [`SAMPLES_KEPT`] in a `VecDeque` that grows to 128 slots: 3.2 KiB instead of 5 KiB per
/// instance once a registry has run that long (BENCHMARKS.md, "Memory per connected instance").
/// Packed: its fields are only ever copied out, never borrowed.
#[derive(Clone, Copy)]
#[repr(C, packed)]
pub struct PackedSample {
    at: u64,
    cpu_percent: f64,
    resident_bytes: u64,
    /// Bit 0: `cpu_percent` is there; bit 1: `resident_bytes` is.
    present: u8,
}

impl PackedSample {
    pub fn new(s: Sample) -> Self {
        PackedSample {
            at: s.at,
            cpu_percent: s.cpu_percent.unwrap_or_default(),
            resident_bytes: s.resident_bytes.unwrap_or_default(),
            present: u8::from(s.cpu_percent.is_some()) | u8::from(s.resident_bytes.is_some()) << 1,
        }
    }

    pub fn get(self) -> Sample {
        let present = self.present;
        Sample {
            at: self.at,
            cpu_percent: (present & 1 != 0).then_some(self.cpu_percent),
            resident_bytes: (present & 2 != 0).then_some(self.resident_bytes),
        }
    }

    pub fn at(self) -> u64 {
        self.at
    }
}

/// The most the in-memory event history holds, in bytes (estimated), besides its count
/// (`event_history`, 10,000). RELIABILITY.md "Budgets".
pub const HISTORY_BYTES: usize = 256 * 1024 * 1024;

/// How many samples each instance keeps (2 minutes at a 1 s interval).
pub const SAMPLES_KEPT: usize = 120;

pub struct Instance {
    /// Shared with queries, `/metrics` and per-report watchers: they take an `Arc` clone
    /// under the lock and read or serialize it after releasing it. Changes go through
    /// `Arc::make_mut`, which copies the record only while a reader still holds the old one.
    pub record: Arc<InstanceRecord>,
    pub session: Option<SessionRef>,
    /// For instances with no session (legacy instances, and online instances loaded at
    /// start that have not reconnected yet): when they go offline, and with which reason.
    pub deadline: Option<(tokio::time::Instant, OfflineReason)>,
    pub timer_armed: bool,
    /// Which deadline task is current: a legacy document that shortens the deadline starts
    /// a new task and bumps this; an older task then ends when it wakes.
    pub timer_gen: u64,
    pub samples: VecDeque<PackedSample>,
    /// Reported since the last metric snapshot was written.
    pub dirty: bool,
    /// `--store etcd`: the registry that owns this record (its session is connected there).
    /// None for records this registry owns. Local liveness timers never touch remote records.
    pub remote: Option<String>,
}

/// The records by id, and the ids of each group (keyed by the group's name in ASCII lowercase:
/// DNS names are case-insensitive). Reads go through `Deref` to the map; every insertion and
/// removal goes through this type, so the index cannot miss one. A lookup of one group (a
/// client's query by group, a DNS question) walks that group, not the fleet.
#[derive(Default)]
pub struct Instances {
    map: HashMap<String, Instance>,
    by_group: HashMap<String, HashSet<String>>,
}

impl std::ops::Deref for Instances {
    type Target = HashMap<String, Instance>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Instances {
    pub fn insert(&mut self, id: String, inst: Instance) -> Option<Instance> {
        let group = inst.record.group.to_ascii_lowercase();
        let old = self.map.insert(id.clone(), inst);
        if let Some(old) = &old {
            // A record keeps its group (the id starts with it); drop a stale entry anyway.
            self.unindex(&old.record.group, &id);
        }
        self.by_group.entry(group).or_default().insert(id);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let old = self.map.remove(id)?;
        self.unindex(&old.record.group, id);
        Some(old)
    }

    fn unindex(&mut self, group: &str, id: &str) {
        let key = group.to_ascii_lowercase();
        if let Some(ids) = self.by_group.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_group.remove(&key);
            }
        }
    }

    /// Mutable access to a record's instance. Callers may change the record but not its id
    /// or group (both are the map's and the index's keys).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        self.map.get_mut(id)
    }

    pub fn values_mut(&mut self) -> std::collections::hash_map::ValuesMut<'_, String, Instance> {
        self.map.values_mut()
    }

    /// The instances of the group named `group`, compared ASCII case-insensitively.
    pub fn group_ignore_case<'a>(&'a self, group: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        let ids = self.by_group.get(&group.to_ascii_lowercase());
        ids.into_iter().flatten().filter_map(|id| self.map.get(id))
    }

    /// The instances of the group named exactly `group`.
    pub fn group<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.group_ignore_case(group).filter(move |i| i.record.group == group)
    }
}

impl Instance {
    fn new(record: Arc<InstanceRecord>, session: Option<SessionRef>) -> Self {
        Instance {
            record,
            session,
            deadline: None,
            timer_armed: false,
            timer_gen: 0,
            samples: VecDeque::new(),
            dirty: false,
            remote: None,
        }
    }
}

struct PendingCommand {
    instance: String,
    session: u64,
    name: String,
    /// The instance's answer, or why it will never come (it went offline, left, ...).
    reply: oneshot::Sender<Result<CommandResult, String>>,
}

pub struct State {
    pub instances: Instances,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// What the history holds, estimated (`session::event_size`); kept under
    /// `history_bytes_cap` (`--max-history-bytes`) as well as `history_cap` events.
    history_bytes: usize,
    history_bytes_cap: usize,
    next_seq: u64,
    pending: HashMap<u64, PendingCommand>,
    events_tx: broadcast::Sender<Arc<Event>>,
    reports_tx: broadcast::Sender<Arc<Event>>,
    store: Arc<dyn Store>,
    /// Set while the store fails; the registry keeps serving from memory.
    pub store_error: Option<String>,
    /// Newest event the store holds; on recovery, what came after is written again.
    persisted_seq: u64,
    /// Events that other registries wrote (`--store etcd`) while the store failed: never
    /// written again by this one.
    remote_seqs: std::collections::HashSet<u64>,
    /// The group commit's writer thread (stores with [`Store::group_commit`]): transitions
    /// are queued to it and broadcast once committed. None: written and broadcast in `emit`.
    writer: Option<super::commit::Writer>,
    /// Newest event in the history (broadcast); queued transitions come after it. With a
    /// store that numbers events (`etcd`), the newest revision this registry has seen: its
    /// state reflects everything up to it.
    published_seq: u64,
    /// Events after this number may have been dropped from the history (it holds what came
    /// after it): a resume from an older cursor has a gap.
    dropped_through: u64,
    /// The store numbers events for every registry sharing it ([`Store::numbers_events`],
    /// `--store etcd`): an event's `seq` is the revision that wrote it, and events are
    /// published in revision order as the cluster's watch sees them (`registry::cluster`).
    shared_seq: bool,
    /// Shared numbering: this registry's transitions written to the store, by revision,
    /// waiting for the watch to reach them.
    written: BTreeMap<u64, Arc<Event>>,
    /// Events published since the start (for `/metrics` with shared numbering, where the
    /// cursor is an etcd revision, not a count).
    published_count: u64,
    /// Shared numbering: the writer thread (numbered.rs) that writes transitions off the lock.
    numbered: Option<super::numbered::Writer>,
    /// Shared numbering: transitions per instance queued to the writer and not yet written.
    writing: HashMap<String, usize>,
}

/// What registering a session did.
pub struct Registered {
    pub superseded: Option<SessionRef>,
}

impl State {
    pub fn new(
        history_cap: usize,
        events_tx: broadcast::Sender<Arc<Event>>,
        reports_tx: broadcast::Sender<Arc<Event>>,
        store: Arc<dyn Store>,
    ) -> Self {
        State {
            instances: Instances::default(),
            history: VecDeque::with_capacity(history_cap.min(4096)),
            history_cap,
            history_bytes: 0,
            history_bytes_cap: HISTORY_BYTES,
            next_seq: 1,
            pending: HashMap::new(),
            events_tx,
            reports_tx,
            store_error: None,
            persisted_seq: 0,
            remote_seqs: Default::default(),
            writer: None,
            published_seq: 0,
            dropped_through: 0,
            shared_seq: store.numbers_events(),
            written: BTreeMap::new(),
            published_count: 0,
            numbered: None,
            writing: HashMap::new(),
            store,
        }
    }

    /// The history's byte budget (`--max-history-bytes`; [`HISTORY_BYTES`] by default).
    pub(crate) fn set_history_bytes(&mut self, bytes: usize) {
        self.history_bytes_cap = bytes.max(1);
    }

    /// Hands transitions to the group commit's writer thread from now on.
    pub(crate) fn set_writer(&mut self, writer: super::commit::Writer) {
        self.writer = Some(writer);
    }

    /// Shared numbering: hands transitions to the writer thread of numbered.rs.
    pub(crate) fn set_numbered(&mut self, writer: super::numbered::Writer) {
        self.numbered = Some(writer);
    }

    /// Shared numbering: the writer's gate, which the cluster's watch waits on.
    /// Transitions the numbering writer has not written yet (0 without one).
    pub(crate) fn transitions_pending(&self) -> usize {
        self.numbered.as_ref().map_or(0, |w| w.pending())
    }

    pub(crate) fn numbered_gate(&self) -> Option<Arc<super::numbered::Gate>> {
        self.numbered.as_ref().map(|w| w.gate())
    }

    /// Completes once every transition emitted before is committed (or, while the store
    /// fails, kept for later) and broadcast (with shared numbering: written, and published
    /// when the watch reaches its revision). None: there is nothing to wait for (no writer
    /// thread: `emit` wrote and broadcast it already).
    pub fn barrier(&self) -> Option<oneshot::Receiver<()>> {
        match (&self.writer, &self.numbered) {
            (Some(w), _) => Some(w.barrier()),
            (None, Some(w)) => Some(w.barrier()),
            (None, None) => None,
        }
    }

    /// Restores what the store had. Records that were online are held online, without a
    /// session, for one liveness window (`hold(interval)`), waiting for their clients to
    /// reconnect; then they go offline with reason `registry-restart`. Returns their ids.
    pub fn restore(&mut self, snap: Snapshot, hold: impl Fn(u64) -> Duration) -> Vec<String> {
        self.next_seq = snap.last_seq + 1;
        self.persisted_seq = snap.last_seq;
        self.published_seq = snap.last_seq;
        self.dropped_through = snap.events.first().map_or(snap.last_seq, |e| e.seq.saturating_sub(1));
        for ev in snap.events {
            self.keep_in_history(Arc::new(ev));
        }
        let now = tokio::time::Instant::now();
        let mut held = Vec::new();
        for r in snap.instances {
            let mut inst = Instance::new(Arc::new(r), None);
            if inst.record.status == Status::Online {
                inst.deadline = Some((now + hold(inst.record.interval_ms), OfflineReason::RegistryRestart));
                held.push(inst.record.id.clone());
            }
            self.instances.insert(inst.record.id.clone(), inst);
        }
        held
    }

    /// Kind of store, and its error while it fails.
    pub fn store_status(&self) -> (&'static str, Option<String>) {
        (self.store.kind(), self.store_error.clone())
    }

    /// Makes a transition durable before anyone hears of it. A failing store does not stop
    /// the registry: it keeps serving from memory, says so loudly, and writes what it missed
    /// once the store works again.
    fn persist(&mut self, ev: &Event, record: Option<&InstanceRecord>) {
        let result = if self.store_error.is_some() {
            self.catch_up(ev.seq).and_then(|_| self.store.transition(ev, record))
        } else {
            self.store.transition(ev, record)
        };
        match result {
            Ok(()) => {
                if self.store_error.take().is_some() {
                    tracing::warn!(target: "sfc::store", seq = ev.seq, "store recovered; writing resumed");
                }
                self.persisted_seq = ev.seq;
            }
            Err(e) => {
                if self.store_error.is_none() {
                    tracing::error!(target: "sfc::store", error = %e,
                        "STORE FAILING: transitions are kept in memory only until it recovers");
                }
                self.store_error = Some(e.to_string());
            }
        }
    }

    /// While the store fails, tries to write what it missed. The sweeper calls this on the
    /// snapshot timer, so a registry with no new transition still recovers.
    pub fn retry_store(&mut self) {
        if self.store_error.is_none() {
            return;
        }
        if let Some(w) = &self.numbered {
            w.retry();
            return;
        }
        if let Some(w) = &self.writer {
            w.retry();
            return;
        }
        match self.catch_up(self.next_seq) {
            Ok(()) => {
                self.store_error = None;
                tracing::warn!(target: "sfc::store", seq = self.persisted_seq, "store recovered; writing resumed");
            }
            Err(e) => self.store_error = Some(e.to_string()),
        }
    }

    /// After an outage: the history events and records the store missed.
    fn catch_up(&mut self, upto: u64) -> crate::Result<()> {
        let missed: Vec<Arc<Event>> = self
            .history
            .iter()
            .filter(|e| e.seq > self.persisted_seq && e.seq < upto && !self.remote_seqs.contains(&e.seq))
            .cloned()
            .collect();
        self.remote_seqs.retain(|s| *s >= upto);
        for ev in missed {
            let rec = self.instances.get(&ev.id).map(|i| i.record.clone());
            self.store.transition(&ev, rec.as_deref())?;
            self.persisted_seq = ev.seq;
        }
        Ok(())
    }

    /// Records reported since the last snapshot; clears their flag. Shared, not copied: the
    /// caller copies them for the store after releasing the lock.
    pub fn take_dirty(&mut self) -> Vec<Arc<InstanceRecord>> {
        self.instances
            .values_mut()
            .filter_map(|i| std::mem::take(&mut i.dirty).then(|| i.record.clone()))
            .collect()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Sequence number of the newest event in the history (0 when there is none).
    pub fn cursor(&self) -> u64 {
        self.published_seq
    }

    /// Numbers, records and broadcasts one transition.
    pub fn emit(&mut self, kind: EventKind, id: &str, detail: serde_json::Value) -> Arc<Event> {
        let ev = self.number_event(kind, id, now_ms(), detail);
        // Group commit: written off the lock, broadcast once committed (commit.rs).
        if let Some(w) = &self.writer {
            w.write(ev.clone());
            return ev;
        }
        // Numbered by the store: written off the lock (numbered.rs), published when the
        // cluster's watch reaches its revision.
        if let Some(w) = &self.numbered {
            *self.writing.entry(id.to_string()).or_default() += 1;
            w.write(ev.clone());
            return ev;
        }
        // The event carries the record after the transition (none once evicted).
        self.persist(&ev, ev.instance.as_deref());
        self.publish(ev)
    }

    /// Shared numbering: the writer wrote `ev` at revision `rev` (None: nothing written, an
    /// eviction whose key was gone already: no number, and no registry hears of it). Kept by
    /// its revision for [`State::publish_through`].
    pub(crate) fn written_at(&mut self, ev: &Event, rev: Option<u64>) {
        match rev {
            Some(rev) => {
                self.written.insert(rev, Arc::new(Event { seq: rev, ..ev.clone() }));
            }
            None => tracing::debug!(target: "sfc::store", id = %ev.id, kind = ev.kind.as_str(), "transition not numbered by the store"),
        }
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.writing.entry(ev.id.clone()) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Shared numbering: whether a transition of `id` is queued or being written here. A
    /// change of its key seen by the watch meanwhile is older than that write.
    pub(crate) fn writing(&self, id: &str) -> bool {
        self.writing.contains_key(id)
    }

    /// Shared numbering: publishes this registry's own transitions written at revisions up to
    /// `rev`, in order. True when one was written at `rev` itself.
    pub(crate) fn publish_through(&mut self, rev: u64) -> bool {
        let mut hit = false;
        while let Some(entry) = self.written.first_entry() {
            if *entry.key() > rev {
                break;
            }
            hit |= *entry.key() == rev;
            let ev = entry.remove();
            self.publish(ev);
        }
        hit
    }

    /// Shared numbering: the cluster's watch has applied everything up to `rev`.
    pub(crate) fn seen_through(&mut self, rev: u64) {
        if !self.shared_seq {
            return;
        }
        self.publish_through(rev);
        self.published_seq = self.published_seq.max(rev);
    }

    /// Shared numbering: the fleet was loaded at `rev`; this registry's history begins there.
    pub(crate) fn loaded_at(&mut self, rev: u64) {
        if !self.shared_seq {
            return;
        }
        self.seen_through(rev);
        if self.history.is_empty() {
            self.dropped_through = self.dropped_through.max(rev);
        }
    }

    /// Events recorded in the history: the newest number, or with shared numbering (whose
    /// numbers are etcd revisions) how many this registry has published since it started.
    pub fn events_total(&self) -> u64 {
        if self.shared_seq {
            self.published_count
        } else {
            self.published_seq
        }
    }

    /// Whether the history still holds every event after `cursor` (none was dropped).
    pub fn complete_after(&self, cursor: u64) -> bool {
        cursor >= self.dropped_through
    }

    /// Builds the next event of the history, with the record as it is now.
    fn number_event(&mut self, kind: EventKind, id: &str, at: u64, detail: serde_json::Value) -> Arc<Event> {
        let ev = self.build_event(self.next_seq, kind, id, at, detail);
        self.next_seq += 1;
        ev
    }

    /// Event number `seq`, with the record as it is now.
    fn build_event(&self, seq: u64, kind: EventKind, id: &str, at: u64, detail: serde_json::Value) -> Arc<Event> {
        let (group, service, instance) = match self.instances.get(id) {
            Some(i) => (
                i.record.group.clone(),
                i.record.service.clone(),
                (kind != EventKind::Evicted).then(|| Arc::clone(&i.record)),
            ),
            None => {
                let (g, _) = id.split_once('/').unwrap_or((id, ""));
                (g.to_string(), String::new(), None)
            }
        };
        Arc::new(Event { seq, at, kind, id: id.to_string(), group, service, instance, detail })
    }

    /// The writer thread: a batch is committed; its events go to the history and watchers.
    pub(crate) fn publish_committed(&mut self, ev: Arc<Event>) {
        self.publish(ev);
    }

    /// Keeps an event in the history and broadcasts it.
    fn publish(&mut self, ev: Arc<Event>) -> Arc<Event> {
        let kind = ev.kind;
        let id = ev.id.as_str();
        self.published_seq = self.published_seq.max(ev.seq);
        self.published_count += 1;
        self.keep_in_history(ev.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.events_tx.send(ev.clone());
        tracing::debug!(target: "sfc::registry", seq = ev.seq, kind = kind.as_str(), id, "event");
        ev
    }

    /// Appends to the in-memory history, dropping the oldest events beyond `history_cap`
    /// events or `history_bytes_cap` bytes (the newest is always kept). A watcher resuming
    /// from further back is told it lagged and takes a snapshot.
    fn keep_in_history(&mut self, ev: Arc<Event>) {
        self.history_bytes += super::session::event_size(&ev);
        self.history.push_back(ev);
        while self.history.len() > 1 && (self.history.len() > self.history_cap || self.history_bytes > self.history_bytes_cap) {
            if let Some(old) = self.history.pop_front() {
                self.dropped_through = self.dropped_through.max(old.seq);
                self.history_bytes = self.history_bytes.saturating_sub(super::session::event_size(&old));
            }
        }
    }

    /// Events after `cursor`, oldest first, at most `limit`.
    pub fn events_after(&self, cursor: u64, limit: usize) -> Vec<Arc<Event>> {
        let start = self.history.partition_point(|e| e.seq <= cursor);
        self.history.iter().skip(start).take(limit).cloned().collect()
    }

    /// Records matching `filter`, unsorted: shared, not copied, so the lock is held only
    /// for the walk. [`sort_by_id`] and [`by_group`] order them once the lock is released.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<InstanceRecord>> {
        let pick = |i: &Instance| filter.matches(&i.record).then(|| i.record.clone());
        match filter.group.as_deref() {
            Some(group) => self.instances.group(group).filter_map(pick).collect(),
            None => self.instances.values().filter_map(pick).collect(),
        }
    }

    /// The current record of `id`, shared.
    pub fn record(&self, id: &str) -> Option<Arc<InstanceRecord>> {
        self.instances.get(id).map(|i| i.record.clone())
    }

    /// Registers (or re-registers) an identity for a session or a legacy report.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        reg: Registration,
        interval_ms: u64,
        session: Option<SessionRef>,
        tls_identity: Option<String>,
        wire: &str,
        mut detail: serde_json::Value,
    ) -> Registered {
        let id = InstanceRecord::make_id(&reg.group, &reg.instance_id);
        let now = now_ms();
        let connected_since = session.as_ref().map(|_| now);
        let existing = self.instances.get_mut(&id);
        let (kind, superseded) = match existing {
            Some(inst) => {
                let superseded = match (&inst.session, &session) {
                    (Some(old), Some(new)) if old.id != new.id => Some(old.clone()),
                    _ => None,
                };
                let was_online = inst.record.status == Status::Online;
                // `--store etcd`: a client that failed over from another registry; this one
                // owns it now, and says so (the event writes the record under its lease).
                let taken_over = inst.remote.take();
                if let (Some(from), serde_json::Value::Object(o)) = (&taken_over, &mut detail) {
                    o.insert("moved_from".into(), from.as_str().into());
                }
                let r = Arc::make_mut(&mut inst.record);
                r.service = reg.service;
                r.hostname = reg.hostname;
                r.pid = reg.pid;
                r.endpoints = reg.endpoints;
                r.tags = reg.tags;
                r.metadata = reg.metadata;
                r.version = reg.version;
                r.api = reg.api;
                r.interval_ms = interval_ms;
                r.tls_identity = tls_identity;
                r.wire = wire.to_string();
                if session.is_some() || !was_online {
                    r.connected_since = connected_since;
                }
                r.status = Status::Online;
                r.offline_reason = None;
                if !was_online {
                    r.status_since = now;
                }
                // Legacy reports carry no session; the caller never lets one replace a live
                // v1 session.
                inst.session = session;
                let quiet = was_online && superseded.is_none() && taken_over.is_none();
                (if quiet { None } else { Some(EventKind::Online) }, superseded)
            }
            None => {
                let record = InstanceRecord {
                    id: id.clone(),
                    group: reg.group,
                    service: reg.service,
                    instance_id: reg.instance_id,
                    hostname: reg.hostname,
                    pid: reg.pid,
                    status: Status::Online,
                    offline_reason: None,
                    health: Health::Passing,
                    health_note: None,
                    endpoints: reg.endpoints,
                    tags: reg.tags,
                    metadata: reg.metadata,
                    version: reg.version,
                    api: reg.api,
                    interval_ms,
                    connected_since,
                    last_report_at: Some(now),
                    tls_identity,
                    metrics: Default::default(),
                    wire: wire.to_string(),
                    clock_skew_ms: None,
                    status_since: now,
                };
                self.instances.insert(id.clone(), Instance::new(Arc::new(record), session));
                (Some(EventKind::Joined), None)
            }
        };
        if superseded.is_some() {
            self.fail_pending_for(&id, "the session that received the command was superseded");
        }
        if let Some(kind) = kind {
            self.emit(kind, &id, detail);
        }
        Registered { superseded }
    }

    /// Applies a report. Returns false when the instance is not owned by `session`.
    pub fn apply_report(&mut self, id: &str, session: Option<u64>, report: Report) -> bool {
        let Some(inst) = self.instances.get_mut(id) else { return false };
        if session.is_some() && inst.session.as_ref().map(|s| s.id) != session {
            return false;
        }
        let now = now_ms();
        let r = Arc::make_mut(&mut inst.record);
        r.last_report_at = Some(now);
        // Saturating: a client clock past i64::MAX ms must not overflow (fuzz regression,
        // fuzz/corpus/message_decode/regress-sent-at-2pow63.json).
        r.clock_skew_ms = report.sent_at.map(|t| (i128::from(t) - i128::from(now)).clamp(i64::MIN.into(), i64::MAX.into()) as i64);
        let mut health_changed = false;
        if let Some(h) = report.health {
            if h != r.health || report.health_note != r.health_note {
                health_changed = h != r.health;
                r.health = h;
                r.health_note = report.health_note;
            }
        }
        r.metrics = report.metrics;
        inst.dirty = true;
        if inst.samples.len() == SAMPLES_KEPT {
            inst.samples.pop_front();
        }
        inst.samples.push_back(PackedSample::new(Sample {
            at: now,
            cpu_percent: r.metrics.process.cpu_percent,
            resident_bytes: r.metrics.process.resident_bytes,
        }));
        if health_changed {
            let detail = serde_json::json!({ "health": r.health, "note": r.health_note });
            self.emit(EventKind::HealthChanged, id, detail);
        }
        // Per-report events are built only when someone asked for them.
        if self.reports_tx.receiver_count() > 0 {
            if let Some(inst) = self.instances.get(id) {
                let ev = Arc::new(Event {
                    seq: 0,
                    at: now,
                    kind: EventKind::Report,
                    id: id.to_string(),
                    group: inst.record.group.clone(),
                    service: inst.record.service.clone(),
                    // Thin: the broadcast ring keeps 16,384 of these whoever reads them, so
                    // it holds no record; each watcher takes the current one, shared, as it
                    // delivers (`Registry::current_record`). Budget: RELIABILITY.md "Budgets".
                    instance: None,
                    detail: serde_json::Value::Null,
                });
                let _ = self.reports_tx.send(ev);
            }
        }
        true
    }

    /// Marks an instance offline if `session` still owns it (a superseded session's end
    /// must not take the new session's record offline).
    pub fn mark_offline(&mut self, id: &str, session: Option<u64>, reason: OfflineReason) {
        let Some(inst) = self.instances.get_mut(id) else { return };
        if session.is_some() && inst.session.as_ref().map(|s| s.id) != session {
            return;
        }
        inst.session = None;
        if inst.record.status != Status::Online {
            return;
        }
        let r = Arc::make_mut(&mut inst.record);
        r.status = Status::Offline;
        r.offline_reason = Some(reason);
        r.status_since = now_ms();
        self.fail_pending_for(id, "instance went offline before answering");
        self.emit(EventKind::Offline, id, serde_json::json!({ "reason": reason }));
    }

    /// Graceful leave.
    pub fn mark_left(&mut self, id: &str, session: Option<u64>, reason: Option<String>) {
        let Some(inst) = self.instances.get_mut(id) else { return };
        if session.is_some() && inst.session.as_ref().map(|s| s.id) != session {
            return;
        }
        inst.session = None;
        let r = Arc::make_mut(&mut inst.record);
        r.status = Status::Left;
        r.offline_reason = None;
        r.status_since = now_ms();
        self.fail_pending_for(id, "instance left before answering");
        self.emit(EventKind::Left, id, serde_json::json!({ "reason": reason }));
    }

    /// Removes records that have been offline or left for longer than `retention`.
    pub fn evict_expired(&mut self, retention: Duration) -> usize {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        let expired: Vec<String> = self
            .instances
            .values()
            // Remote records are evicted by the registry that owns them.
            .filter(|i| i.remote.is_none() && i.record.status != Status::Online && i.record.status_since <= cutoff)
            .map(|i| i.record.id.clone())
            .collect();
        for id in &expired {
            self.emit(EventKind::Evicted, id, serde_json::json!({ "reason": "retention" }));
            self.instances.remove(id);
        }
        expired.len()
    }

    /// Operator deregistration of a record that is not online.
    pub fn deregister(&mut self, id: &str, by: &str) -> Result<(), crate::protocol::ErrorCode> {
        match self.instances.get(id) {
            None => Err(crate::protocol::ErrorCode::UnknownInstance),
            Some(i) if i.record.status == Status::Online => Err(crate::protocol::ErrorCode::InvalidField),
            Some(_) => {
                self.emit(EventKind::Evicted, id, serde_json::json!({ "reason": "deregistered", "by": by }));
                self.instances.remove(id);
                Ok(())
            }
        }
    }

    /// Queues a command to an online instance's session.
    pub fn start_command(
        &mut self,
        id: &str,
        command: crate::protocol::Command,
    ) -> Result<oneshot::Receiver<Result<CommandResult, String>>, crate::protocol::ErrorCode> {
        let inst = self.instances.get(id).ok_or(crate::protocol::ErrorCode::UnknownInstance)?;
        let session = match (&inst.session, inst.record.status) {
            (Some(s), Status::Online) => s.clone(),
            _ => return Err(crate::protocol::ErrorCode::NotOnline),
        };
        let (tx, rx) = oneshot::channel();
        let detail = serde_json::json!({
            "command_id": command.command_id,
            "command": command.name,
            "reason": command.reason,
            "by": command.issued_by,
        });
        self.pending.insert(
            command.command_id,
            PendingCommand { instance: id.to_string(), session: session.id, name: command.name.clone(), reply: tx },
        );
        if session.tx.try_send(Outbound::Send(Message::Command(command.clone()))).is_err() {
            self.pending.remove(&command.command_id);
            return Err(crate::protocol::ErrorCode::NotOnline);
        }
        self.emit(EventKind::CommandSent, id, detail);
        Ok(rx)
    }

    /// Delivers a command result from `session`. Returns false for an unknown command id.
    pub fn finish_command(&mut self, session: u64, result: CommandResult) -> bool {
        match self.pending.get(&result.command_id) {
            Some(p) if p.session == session => {}
            _ => return false,
        }
        let Some(p) = self.pending.remove(&result.command_id) else { return false };
        let detail = serde_json::json!({
            "command_id": result.command_id,
            "command": p.name,
            "ok": result.ok,
            "result": result.result,
            "error": result.error,
        });
        self.emit(EventKind::CommandResult, &p.instance, detail);
        let _ = p.reply.send(Ok(result));
        true
    }

    /// Forgets a command whose caller stopped waiting.
    pub fn abandon_command(&mut self, command_id: u64) {
        self.pending.remove(&command_id);
    }

    // --- `--store etcd`: records that other registries own ---------------------------------

    /// Applies a record that the registry `owner` wrote to etcd, with the transition that
    /// came with it (None for a metric snapshot). A record this registry has not seen is
    /// announced as `joined` when `announce` (the initial load is silent). Nothing is written
    /// to the store: the owner did that. Returns this registry's session for the instance,
    /// which the owner's newer write supersedes; the caller closes it.
    pub fn apply_remote(
        &mut self,
        owner: &str,
        record: InstanceRecord,
        transition: Option<RemoteTransition>,
        announce: bool,
        rev: Option<u64>,
    ) -> Option<SessionRef> {
        let id = record.id.clone();
        let is_new = !self.instances.contains_key(&id);
        let record = Arc::new(record);
        if is_new {
            self.instances.insert(id.clone(), Instance::new(record.clone(), None));
        }
        let inst = self.instances.get_mut(&id)?;
        let superseded = inst.session.take();
        inst.deadline = None;
        inst.dirty = false;
        inst.remote = Some(owner.to_string());
        let reported = record.last_report_at.filter(|at| is_new || inst.record.last_report_at != Some(*at));
        inst.record = record;
        if let Some(at) = reported {
            if inst.samples.len() == SAMPLES_KEPT {
                inst.samples.pop_front();
            }
            inst.samples.push_back(PackedSample::new(Sample {
                at,
                cpu_percent: inst.record.metrics.process.cpu_percent,
                resident_bytes: inst.record.metrics.process.resident_bytes,
            }));
        }
        if superseded.is_some() {
            self.fail_pending_for(&id, "the instance moved to another registry");
        }
        let transition = match transition {
            Some(t) => Some(t),
            None if is_new && announce => {
                Some(RemoteTransition { kind: EventKind::Joined, at: now_ms(), detail: serde_json::json!({}) })
            }
            None => None,
        };
        match transition {
            Some(t) => {
                self.emit_remote(t.kind, &id, t.at, with_registry(t.detail, owner), rev);
            }
            // A metric snapshot: per-report watchers (dashboards) hear of it.
            None if self.reports_tx.receiver_count() > 0 => {
                if let Some(inst) = self.instances.get(&id) {
                    let _ = self.reports_tx.send(Arc::new(Event {
                        seq: 0,
                        at: inst.record.last_report_at.unwrap_or_else(now_ms),
                        kind: EventKind::Report,
                        id: id.clone(),
                        group: inst.record.group.clone(),
                        service: inst.record.service.clone(),
                        // Thin, as in `apply_report`.
                        instance: None,
                        detail: serde_json::Value::Null,
                    }));
                }
            }
            None => {}
        }
        superseded
    }

    /// Removes a record that disappeared from etcd: a remote one (its owner evicted it, or
    /// the owner's lease expired), or one of ours that is not online (deregistered through
    /// another registry). Returns false when the record stays (one of ours, online).
    pub fn remove_remote(&mut self, id: &str, detail: serde_json::Value, rev: Option<u64>) -> bool {
        match self.instances.get(id) {
            Some(i) if i.remote.is_some() || i.record.status != Status::Online => {}
            _ => return false,
        }
        self.emit_remote(EventKind::Evicted, id, now_ms(), detail, rev);
        self.instances.remove(id);
        true
    }

    /// The registry that owns `id`, when another one does, and the record's status.
    pub fn remote_owner(&self, id: &str) -> Option<(String, Status)> {
        self.instances.get(id).and_then(|i| i.remote.clone().map(|o| (o, i.record.status)))
    }

    /// Records this registry owns.
    pub fn local_records(&self) -> Vec<Arc<InstanceRecord>> {
        self.instances.values().filter(|i| i.remote.is_none()).map(|i| i.record.clone()).collect()
    }

    /// An event another registry already made durable: kept and broadcast, never written.
    /// Shared numbering: its number is `rev`, the revision that wrote it; without one (a
    /// change found by reading the fleet again) there is no event.
    fn emit_remote(&mut self, kind: EventKind, id: &str, at: u64, detail: serde_json::Value, rev: Option<u64>) {
        if self.shared_seq {
            match rev {
                Some(rev) => {
                    self.publish_through(rev);
                    let ev = self.build_event(rev, kind, id, at, detail);
                    self.publish(ev);
                }
                None => tracing::debug!(target: "sfc::registry", id, kind = kind.as_str(),
                    "a change found by reading the fleet again: applied without an event"),
            }
            return;
        }
        let ev = self.number_event(kind, id, at, detail);
        if self.store_error.is_none() {
            self.persisted_seq = ev.seq;
        } else {
            self.remote_seqs.insert(ev.seq);
        }
        self.publish(ev);
    }

    /// Shared numbering: a transition another registry wrote at `rev` whose record this
    /// registry does not take (its own write of the key is newer): kept in the history and
    /// broadcast like every registry does, with the record as written, the state untouched.
    pub(crate) fn publish_remote_only(&mut self, owner: &str, record: &InstanceRecord, t: RemoteTransition, rev: u64) {
        if !self.shared_seq {
            return;
        }
        self.publish_through(rev);
        let ev = Event {
            seq: rev,
            at: t.at,
            kind: t.kind,
            id: record.id.clone(),
            group: record.group.clone(),
            service: record.service.clone(),
            instance: Some(Arc::new(record.clone())),
            detail: with_registry(t.detail, owner),
        };
        self.publish(Arc::new(ev));
    }

    fn fail_pending_for(&mut self, id: &str, why: &str) {
        let ids: Vec<u64> = self.pending.iter().filter(|(_, p)| p.instance == id).map(|(k, _)| *k).collect();
        for cid in ids {
            if let Some(p) = self.pending.remove(&cid) {
                // Not an answer: the caller gets `not-online` with the reason, never an
                // `ok: false` result as if the instance had answered.
                let _ = p.reply.send(Err(why.to_string()));
            }
        }
    }
}

/// A transition's detail with `"registry": owner` added (the registry that made it).
fn with_registry(mut detail: serde_json::Value, owner: &str) -> serde_json::Value {
    match &mut detail {
        serde_json::Value::Object(o) => {
            o.insert("registry".into(), owner.into());
        }
        v @ serde_json::Value::Null => *v = serde_json::json!({ "registry": owner }),
        _ => {}
    }
    detail
}

/// Sorts records by id (the order every query answers in), once the lock is released.
pub fn sort_by_id(records: &mut [Arc<InstanceRecord>]) {
    records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
}

/// Records by group, each group's sorted by id (the original module's
/// `getServiceFleetStatus` shape).
pub fn by_group(mut records: Vec<Arc<InstanceRecord>>) -> BTreeMap<String, Vec<Arc<InstanceRecord>>> {
    sort_by_id(&mut records);
    let mut out: BTreeMap<String, Vec<Arc<InstanceRecord>>> = BTreeMap::new();
    for r in records {
        match out.get_mut(&r.group) {
            Some(v) => v.push(r),
            None => {
                out.insert(r.group.clone(), vec![r]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance's samples are kept in 25 bytes each, and give back exactly what was put
    /// in, present or absent, NaN included (BENCHMARKS.md, "Memory per connected instance").
    #[test]
    fn samples_are_kept_small_and_whole() {
        assert!(std::mem::size_of::<PackedSample>() <= 25, "PackedSample is {} bytes", std::mem::size_of::<PackedSample>());
        let cases = [
            Sample { at: 1, cpu_percent: Some(12.3), resident_bytes: Some(u64::MAX) },
            Sample { at: u64::MAX, cpu_percent: None, resident_bytes: Some(0) },
            Sample { at: 0, cpu_percent: Some(0.0), resident_bytes: None },
            Sample { at: 7, cpu_percent: None, resident_bytes: None },
            Sample { at: 8, cpu_percent: Some(f64::NAN), resident_bytes: Some(42) },
        ];
        for s in cases {
            let back = PackedSample::new(s).get();
            assert_eq!((back.at, back.resident_bytes), (s.at, s.resident_bytes));
            assert_eq!(back.cpu_percent.map(f64::to_bits), s.cpu_percent.map(f64::to_bits), "{s:?}");
            assert_eq!(PackedSample::new(s).at(), s.at);
        }
    }

    fn state() -> State {
        let (events, _) = broadcast::channel(16);
        let (reports, _) = broadcast::channel(16);
        State::new(100, events, reports, Arc::new(crate::store::MemoryStore))
    }

    fn report(cpu: f64) -> Report {
        let mut metrics = crate::model::Metrics::default();
        metrics.process.cpu_percent = Some(cpu);
        Report { seq: 1, sent_at: None, health: None, health_note: None, metrics }
    }

    /// The index by group follows every way a record enters or leaves the state: a query by
    /// group (exact) and a DNS lookup (case-insensitive) find exactly what a walk of the whole
    /// fleet finds.
    #[test]
    fn the_group_index_follows_joins_evictions_and_remote_records() {
        let mut st = state();
        let join = |st: &mut State, group: &str, id: &str| {
            let reg: Registration = serde_json::from_value(
                serde_json::json!({ "group": group, "instance_id": id, "service": "svc" }),
            )
            .unwrap();
            st.register(reg, 1000, None, None, "v1", serde_json::Value::Null);
        };
        let ids = |mut v: Vec<Arc<InstanceRecord>>| {
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
        };
        let walk = |st: &State, group: &str| {
            ids(st.instances.values().filter(|i| i.record.group.eq_ignore_ascii_case(group)).map(|i| i.record.clone()).collect())
        };
        let lookup = |st: &State, group: &str| ids(st.instances.group_ignore_case(group).map(|i| i.record.clone()).collect());
        join(&mut st, "Pay", "a");
        join(&mut st, "pay", "b");
        join(&mut st, "other", "c");
        assert_eq!(ids(st.query(&Filter::group("Pay"))), ["Pay/a"]);
        assert_eq!(ids(st.query(&Filter::group("pay"))), ["pay/b"]);
        assert_eq!(lookup(&st, "PAY"), ["Pay/a", "pay/b"]);
        assert_eq!(lookup(&st, "PAY"), walk(&st, "PAY"));
        // Offline, then evicted or deregistered: gone from the index too.
        st.mark_offline("Pay/a", None, OfflineReason::ConnectionLost);
        st.deregister("Pay/a", "test").expect("deregister");
        assert_eq!(lookup(&st, "pay"), ["pay/b"]);
        st.mark_offline("pay/b", None, OfflineReason::ConnectionLost);
        assert_eq!(st.evict_expired(Duration::ZERO), 1);
        assert!(lookup(&st, "pay").is_empty());
        assert!(!st.instances.by_group.contains_key("pay"), "an empty group stays in the index");
        // A record another registry owns (etcd) enters and leaves the index as well.
        let mut remote = InstanceRecord::clone(&st.record("other/c").expect("other/c"));
        remote.group = "Remote".into();
        remote.id = InstanceRecord::make_id("Remote", "r");
        st.apply_remote("elsewhere", remote, None, true, None);
        assert_eq!(ids(st.query(&Filter::group("Remote"))), ["Remote/r"]);
        assert_eq!(lookup(&st, "remote"), walk(&st, "remote"));
        assert!(st.remove_remote("Remote/r", serde_json::Value::Null, None));
        assert!(lookup(&st, "remote").is_empty());
        assert_eq!(lookup(&st, "other"), ["other/c"]);
    }

    /// Queries and per-report watchers share the record instead of copying it; a reader that
    /// still holds one keeps what it took, and the next report makes a new one.
    #[test]
    fn readers_share_records_and_keep_what_they_took() {
        let mut st = state();
        let reg: Registration =
            serde_json::from_value(serde_json::json!({ "group": "g", "instance_id": "a", "service": "svc" })).unwrap();
        st.register(reg, 1000, None, None, "v1", serde_json::Value::Null);
        st.apply_report("g/a", None, report(1.0));
        let taken = st.query(&Filter::default());
        assert_eq!(taken.len(), 1);
        let current = st.record("g/a").expect("g/a");
        assert!(Arc::ptr_eq(&taken[0], &current), "a query copied the record");
        drop(current);
        st.apply_report("g/a", None, report(2.0));
        assert_eq!(taken[0].metrics.process.cpu_percent, Some(1.0));
        let now = st.record("g/a").expect("g/a");
        assert_eq!(now.metrics.process.cpu_percent, Some(2.0));
        assert!(!Arc::ptr_eq(&taken[0], &now));
        // Nobody else holds it: the next report changes it in place.
        let at = Arc::as_ptr(&now);
        drop((now, taken));
        st.apply_report("g/a", None, report(3.0));
        let last = st.record("g/a").expect("g/a");
        assert_eq!((Arc::as_ptr(&last), last.metrics.process.cpu_percent), (at, Some(3.0)));
    }
}
