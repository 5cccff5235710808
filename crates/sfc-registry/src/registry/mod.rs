//! The registry server.
//!
//! [`Registry`] holds the fleet state and answers queries, watches and commands; [`serve`]
//! accepts connections on a listener until a shutdown future completes (tests bind
//! `127.0.0.1:0`). Each connection runs in [`session`]; liveness is decided by the registry's
//! own timers: a session with no frame for `missed_reports` x interval is closed and its
//! instance goes offline with reason `missed-reports`, and a legacy instance (no connection)
//! has a timer of its own.

#[cfg(feature = "etcd")]
pub(crate) mod cluster;
pub(crate) mod commit;
pub(crate) mod numbered;
pub mod policy;
pub mod session;
pub mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use futures_util::future::Either;
use tokio::sync::broadcast;

use crate::error::Error;
use crate::model::{Event, Filter, InstanceRecord, Status};
use crate::protocol::{Command, CommandResult, ErrorCode};
pub use state::Sample;
use state::State;

/// Registry settings. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct RegistryConfig {
    /// None means plaintext (`--insecure-plaintext`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub missed_reports: u32,
    pub retention: Duration,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    /// Interval for services that do not ask for one, and for observers.
    pub default_interval: Duration,
    pub max_connections: usize,
    /// How many transitions the in-memory event history keeps.
    pub event_history: usize,
    /// Where state survives restarts (`memory` keeps nothing).
    pub store: Arc<dyn crate::store::Store>,
    /// How often metric snapshots of reporting instances are written to the store.
    pub snapshot_interval: Duration,
    /// How long the store keeps the event history.
    pub history_retention: Duration,
    /// Identity binding (`--policy`): None lets every client that passed TLS do anything a
    /// client can.
    pub policy: Option<Arc<policy::Policy>>,
    /// Frames per second one session may send (reports, queries, pings...); twice that as a
    /// burst. Beyond it frames are dropped with a `rate-limited` error.
    pub max_frame_rate: u32,
    /// Codecs a session may negotiate (`--codecs`); the client's preference order decides
    /// among them. `json` alone behaves like a registry from before the protobuf codec.
    pub codecs: Vec<crate::protocol::Codec>,
    /// Frame compressions a session may negotiate (`--compression`).
    pub compression: Vec<crate::protocol::Compression>,
    /// Budgets and whether legacy documents are accepted.
    pub admission: Admission,
    /// `--store etcd`: the shared state of the etcd store, which the registry's cluster tasks
    /// (fleet cache, cross-registry commands) use. Set together with `store`.
    #[cfg(feature = "etcd")]
    pub cluster: Option<Arc<crate::store::etcd::EtcdInner>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            tls: None,
            missed_reports: 3,
            retention: Duration::from_secs(24 * 3600),
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            default_interval: Duration::from_secs(1),
            max_connections: 100_000,
            event_history: 10_000,
            store: Arc::new(crate::store::MemoryStore),
            snapshot_interval: Duration::from_secs(5),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            policy: None,
            max_frame_rate: 100,
            codecs: crate::protocol::Codec::ALL.to_vec(),
            compression: crate::protocol::Compression::ALL.to_vec(),
            admission: Admission::default(),
            #[cfg(feature = "etcd")]
            cluster: None,
        }
    }
}

/// Budgets (issue 15, RELIABILITY.md "Budgets") and whether legacy documents are accepted:
/// one set for [`RegistryConfig`] and [`crate::RegistryOptions`] (`sfc registry`'s flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Bytes one session (or SSE watch) may have queued for its peer before it is closed with
    /// `slow-consumer` and the queue freed (`--max-outbound`).
    pub max_outbound: usize,
    /// Records (any status) the registry holds at most (`--max-instances`); a new identity
    /// beyond is refused with `too-many-instances`.
    pub max_instances: usize,
    /// Records one group holds at most (`--max-group-instances`).
    pub max_group_instances: usize,
    /// Legacy records held at most, in all and per group (`--max-legacy-instances`,
    /// `--max-legacy-group-instances`): anonymous legacy writers are limited further.
    pub max_legacy_instances: usize,
    pub max_legacy_group_instances: usize,
    /// Whether documents of the original module's wire format are accepted at all
    /// (`--legacy on|off`).
    pub legacy: bool,
    /// Bytes of event history the store keeps on disk, besides its count (the in-memory
    /// history's `event_history`) and `history_retention` (`--max-history-bytes`).
    pub max_history_bytes: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            max_outbound: 32 * 1024 * 1024,
            max_instances: 200_000,
            max_group_instances: 200_000,
            max_legacy_instances: 10_000,
            max_legacy_group_instances: 1_000,
            legacy: true,
            max_history_bytes: state::HISTORY_BYTES as u64,
        }
    }
}

/// Counters for `/metrics` and the bench.
#[derive(Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub sessions_current: AtomicU64,
    pub reports_total: AtomicU64,
    pub legacy_reports_total: AtomicU64,
    pub protocol_errors_total: AtomicU64,
    pub commands_total: AtomicU64,
    pub refused_connections_total: AtomicU64,
    /// Hellos and legacy reports refused by `--policy`.
    pub refused_not_authorized_total: AtomicU64,
    /// TLS handshakes refused for the client certificate, by surface and reason.
    pub refused_certificates: CertRefusals,
    /// HTTP deregistrations and commands refused for want of an admin credential.
    pub refused_admin_calls_total: AtomicU64,
    /// The second (Unix time) of the last connection-limit audit line.
    pub(crate) refused_connections_logged_at: AtomicU64,
    /// Frames dropped by the per-session rate limit.
    pub rate_limited_total: AtomicU64,
    /// Sessions closed with `slow-consumer` (protocol sessions and SSE watches).
    pub slow_consumers_total: AtomicU64,
    /// Registrations (hello or legacy) refused by `--max-instances` and the group caps.
    pub refused_instances_total: AtomicU64,
    /// TLS handshakes completed on the protocol port: full ones, and resumed ones (a client
    /// presenting a session ticket from this registry process).
    pub tls_handshakes_full_total: AtomicU64,
    pub tls_handshakes_resumed_total: AtomicU64,
    /// DNS queries (`--dns`) by type and answer code, and those over the rate limit.
    pub dns: crate::dns::DnsStats,
}

/// Where a TLS handshake was refused.
#[derive(Clone, Copy, Debug)]
pub enum Surface {
    /// The protocol port (`--listen`).
    Protocol,
    /// The HTTP API (`--http`) served over TLS.
    Http,
}

impl Surface {
    pub const ALL: [Surface; 2] = [Surface::Protocol, Surface::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Protocol => "protocol",
            Surface::Http => "http",
        }
    }
}

/// Counters of [`crate::tls::CertRefusal`]s, one per surface and reason.
#[derive(Default)]
pub struct CertRefusals([[AtomicU64; 3]; 2]);

impl CertRefusals {
    fn slot(&self, surface: Surface, why: crate::tls::CertRefusal) -> &AtomicU64 {
        &self.0[surface as usize][why as usize]
    }

    pub fn count(&self, surface: Surface, why: crate::tls::CertRefusal) -> u64 {
        self.slot(surface, why).load(Ordering::Relaxed)
    }

    /// Counts the refusal and writes the audit line: who (the peer address) and why.
    pub fn refuse(&self, surface: Surface, peer: std::net::SocketAddr, why: crate::tls::CertRefusal, text: &str) {
        self.slot(surface, why).fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "sfc::audit",
            %peer,
            surface = surface.as_str(),
            reason = why.as_str(),
            "refused: {peer} {text}"
        );
    }
}

pub(crate) struct Shared {
    pub config: RegistryConfig,
    pub state: Mutex<State>,
    pub events_tx: broadcast::Sender<Arc<Event>>,
    pub reports_tx: broadcast::Sender<Arc<Event>>,
    pub next_session: AtomicU64,
    pub next_command: AtomicU64,
    pub stats: Stats,
    pub started_at: u64,
    /// `--store etcd`: the watch, the lease and command forwarding.
    #[cfg(feature = "etcd")]
    pub(crate) cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

/// A handle to one registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub(crate) shared: Arc<Shared>,
}

impl Registry {
    /// A registry with the state its store holds. Instances that were online are held online
    /// for one liveness window, waiting for their clients; those that do not come back go
    /// offline with reason `registry-restart`. Must be called inside a tokio runtime.
    pub fn open(config: RegistryConfig) -> Result<Registry, Error> {
        if !config.store.available() {
            // Nothing to load; everything is written once the store opens.
            let reg = Registry::new(config);
            reg.state().store_error = Some("the store could not be opened at start".into());
            return Ok(reg);
        }
        let snap = config.store.load(config.event_history.max(1))?;
        let (n, last) = (snap.instances.len(), snap.last_seq);
        let reg = Registry::new(config);
        let missed = reg.shared.config.missed_reports;
        let held = reg.state().restore(snap, |interval_ms| Duration::from_millis(interval_ms) * missed);
        if n > 0 || last > 0 {
            tracing::info!(target: "sfc::store", instances = n, held_online = held.len(), last_event = last,
                store = reg.shared.config.store.kind(), "state loaded");
        }
        for id in held {
            if let Some(i) = reg.state().instances.get_mut(&id) {
                i.timer_armed = true;
            }
            reg.arm_deadline(id);
        }
        // `--store etcd`: the rest of the fleet, kept current by a watch.
        #[cfg(feature = "etcd")]
        if let Some(etcd) = reg.shared.config.cluster.clone() {
            let cluster = cluster::start(&reg, etcd)?;
            let _ = reg.shared.cluster.set(cluster);
        }
        Ok(reg)
    }

    /// A registry with empty state (the store, if any, is written to but not read).
    pub fn new(config: RegistryConfig) -> Registry {
        let (events_tx, _) = broadcast::channel(4096);
        let (reports_tx, _) = broadcast::channel(16384);
        let mut state = State::new(config.event_history.max(1), events_tx.clone(), reports_tx.clone(), config.store.clone());
        state.set_history_bytes(usize::try_from(config.admission.max_history_bytes).unwrap_or(usize::MAX));
        Registry {
            shared: Arc::new_cyclic(|shared| {
                // Group commit (commit.rs): a writer thread writes transitions in batches.
                if config.store.group_commit() {
                    state.set_writer(commit::Writer::start(shared.clone(), config.store.clone(), config.event_history.max(1)));
                }
                // A store that numbers events (etcd): written off the lock too (numbered.rs).
                if config.store.numbers_events() {
                    state.set_numbered(numbered::Writer::start(shared.clone(), config.store.clone()));
                }
                Shared {
                    config,
                    state: Mutex::new(state),
                    events_tx,
                    reports_tx,
                    next_session: AtomicU64::new(1),
                    next_command: AtomicU64::new(1),
                    stats: Stats::default(),
                    started_at: crate::model::now_ms(),
                    #[cfg(feature = "etcd")]
                    cluster: std::sync::OnceLock::new(),
                }
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.shared.config
    }

    /// When this registry started, Unix ms.
    pub fn started_at(&self) -> u64 {
        self.shared.started_at
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The state behind its lock. Public only for the benches in crates/sfc-registry/benches; not an API.
    #[doc(hidden)]
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would poison it; the state is still consistent
        // field by field, so keep serving rather than take the whole registry down.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every transition made before the call is committed to the store and
    /// broadcast (group commit, commit.rs; at once for stores written under the lock). What
    /// a client is told after this (welcome, a query answer) survives a crash.
    pub async fn durable(&self) {
        let barrier = self.state().barrier();
        if let Some(b) = barrier {
            let _ = b.await;
        }
    }

    /// `--store etcd`: waits (bounded) until this registry has seen everything up to
    /// `cursor`, a cursor another registry of the fleet may have given (events are numbered
    /// by etcd revision on every registry). At once otherwise.
    pub async fn caught_up(&self, cursor: u64) {
        #[cfg(feature = "etcd")]
        if let Some(c) = self.shared.cluster.get() {
            if self.state().cursor() < cursor {
                c.caught_up(cursor).await;
            }
        }
        #[cfg(not(feature = "etcd"))]
        let _ = cursor;
    }

    /// Records matching `filter`, sorted by id. Shared, not copied: the state lock is held
    /// only to pick them, and they are sorted (and serialized) after it is released.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<InstanceRecord>> {
        let mut records = self.state().query(filter);
        state::sort_by_id(&mut records);
        records
    }

    /// Records grouped by group (the original module's `getServiceFleetStatus` shape).
    pub fn fleet(&self, filter: &Filter) -> BTreeMap<String, Vec<Arc<InstanceRecord>>> {
        let records = self.state().query(filter);
        state::by_group(records)
    }

    /// The current record of `id`, shared (no copy is made under the lock). Per-report
    /// watchers, protocol sessions and SSE streams alike, take the record they deliver with
    /// each (thin) report event from here.
    pub fn current_record(&self, id: &str) -> Option<Arc<InstanceRecord>> {
        self.state().record(id)
    }

    /// How many records the registry holds.
    pub fn instance_count(&self) -> usize {
        self.state().instances.len()
    }

    /// How many records the registry holds, and how many of them are online.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.state();
        (st.instances.len(), st.instances.values().filter(|i| i.record.status == Status::Online).count())
    }

    /// Recent samples of one instance, oldest first.
    pub fn samples(&self, id: &str) -> Option<Vec<Sample>> {
        self.state().instances.get(id).map(|i| i.samples.iter().map(|x| x.get()).collect())
    }

    /// Transitions, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.events_tx.subscribe()
    }

    /// Per-report updates, as they happen.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.reports_tx.subscribe()
    }

    /// History after `cursor` (exclusive), oldest first, at most `limit`, and the newest cursor.
    pub fn events_after(&self, cursor: u64, limit: usize) -> (Vec<Arc<Event>>, u64) {
        let st = self.state();
        (st.events_after(cursor, limit), st.cursor())
    }

    /// Number of sessions connected right now.
    pub fn session_count(&self) -> u64 {
        self.shared.stats.sessions_current.load(Ordering::Relaxed)
    }

    /// A command with a fresh registry-assigned id; the name must not be empty.
    pub(crate) fn new_command(
        &self,
        name: &str,
        reason: Option<String>,
        payload: serde_json::Value,
        issued_by: Option<String>,
    ) -> Result<Command, Error> {
        if name.is_empty() {
            return Err(Error::invalid("command", "name must not be empty"));
        }
        let command_id = self.shared.next_command.fetch_add(1, Ordering::Relaxed);
        Ok(Command { command_id, name: name.to_string(), reason, payload, issued_by })
    }

    /// Sends a command to an online instance and waits up to `timeout` for its result.
    pub async fn send_command(
        &self,
        id: &str,
        name: &str,
        reason: Option<String>,
        payload: serde_json::Value,
        issued_by: Option<String>,
        timeout: Duration,
    ) -> Result<CommandResult, Error> {
        let cmd = self.new_command(name, reason, payload, issued_by)?;
        // `--store etcd`: an instance connected to another registry is reached through etcd.
        #[cfg(feature = "etcd")]
        if let Some(cluster) = self.shared.cluster.get() {
            let owner = self.state().remote_owner(id);
            if let Some((owner, Status::Online)) = owner {
                self.shared.stats.commands_total.fetch_add(1, Ordering::Relaxed);
                return cluster.forward(&owner, id, cmd, timeout).await;
            }
        }
        self.send_command_here(id, cmd, timeout).await
    }

    /// Sends a command to an instance whose session is connected to this registry.
    pub(crate) async fn send_command_here(
        &self,
        id: &str,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, Error> {
        let (command_id, name) = (cmd.command_id, cmd.name.clone());
        let rx = self.state().start_command(id, cmd).map_err(|code| Error::Remote {
            code,
            message: match code {
                ErrorCode::UnknownInstance => format!("no instance {id:?}"),
                _ => format!("instance {id:?} is not online"),
            },
        })?;
        self.shared.stats.commands_total.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(why))) => Err(Error::Remote {
                code: ErrorCode::NotOnline,
                message: format!("command {name:?} to {id:?} failed: {why}"),
            }),
            Ok(Err(_)) => Err(Error::Remote {
                code: ErrorCode::NotOnline,
                message: format!("instance {id:?} went away before answering command {name:?}"),
            }),
            Err(_) => {
                self.state().abandon_command(command_id);
                Err(Error::Remote {
                    code: ErrorCode::CommandTimeout,
                    message: format!(
                        "instance {id:?} did not answer command {name:?} within {}",
                        crate::duration::format(timeout)
                    ),
                })
            }
        }
    }

    /// Removes a record that is offline or left. `by` names who asked, for the event history.
    pub fn deregister(&self, id: &str, by: &str) -> Result<(), Error> {
        self.state().deregister(id, by).map_err(|code| Error::Remote {
            code,
            message: match code {
                ErrorCode::UnknownInstance => format!("no instance {id:?}"),
                _ => format!("instance {id:?} is online; send it shutdown instead of deregistering it"),
            },
        })
    }

    /// Starts the registry's own timers (retention sweep). `serve` calls it.
    fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let reg = self.clone();
        let cfg = &self.shared.config;
        let retention = cfg.retention;
        let tick = (retention / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let snapshot_every = cfg.snapshot_interval.max(Duration::from_millis(50));
        let history_retention = cfg.history_retention;
        tokio::spawn(async move {
            let mut t = tokio::time::interval(tick);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut snap = tokio::time::interval(snapshot_every);
            snap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut prune = tokio::time::interval(Duration::from_secs(60));
            // The registry's own health (Lifeguard): a tick that comes late means the whole
            // process was (paused, starved); deadlines are then not charged to clients.
            let mut clock = tokio::time::interval(session::lateness::TICK);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_tick = tokio::time::Instant::now();
            // The snapshot being written, polled beside the other timers: a slow store (etcd
            // writing 17,000 records) must not hold up the liveness clock and the retention
            // sweep, or the registry would take itself for starved. One at a time.
            let mut flushing: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
            loop {
                tokio::select! {
                    _ = async { if let Some(f) = flushing.as_mut() { f.await } }, if flushing.is_some() => flushing = None,
                    _ = clock.tick() => {
                        let now = tokio::time::Instant::now();
                        session::lateness::observe_tick(last_tick, now);
                        last_tick = now;
                    }
                    _ = t.tick() => {
                        let n = reg.state().evict_expired(retention);
                        if n > 0 {
                            tracing::info!(target: "sfc::registry", evicted = n, "evicted records past retention");
                        }
                    }
                    _ = snap.tick(), if flushing.is_none() => {
                        let reg = reg.clone();
                        flushing = Some(Box::pin(async move { reg.flush_snapshots().await }));
                    }
                    _ = prune.tick() => {
                        let store = reg.state().store();
                        let before = crate::model::now_ms().saturating_sub(history_retention.as_millis() as u64);
                        match tokio::task::spawn_blocking(move || store.prune_events(before)).await {
                            Ok(Ok(n)) if n > 0 => tracing::info!(target: "sfc::store", pruned = n, "pruned old events"),
                            Ok(Err(e)) => tracing::warn!(target: "sfc::store", error = %e, "pruning events failed"),
                            _ => {}
                        }
                    }
                }
            }
        })
    }

    /// Arms the liveness timer of an instance that has no session (a legacy instance, or one
    /// held online after a restart): one task per instance, reused while its deadline moves.
    /// A task sleeps at most a minute at a time and ends when a newer one took over
    /// (`timer_gen`: a legacy document shortened the deadline). A deadline that passes while
    /// the registry itself was late (paused, starved: [`session::lateness`]) is not charged
    /// to the client: it gets one fresh window from when the registry resumed.
    pub(crate) fn arm_deadline(&self, id: String) {
        let reg = self.clone();
        tokio::spawn(async move {
            let mut gen = None;
            loop {
                let deadline = {
                    let mut st = reg.state();
                    let missed = reg.shared.config.missed_reports;
                    let Some(inst) = st.instances.get_mut(&id) else { return };
                    if *gen.get_or_insert(inst.timer_gen) != inst.timer_gen {
                        return; // a newer task watches this instance
                    }
                    match inst.deadline {
                        Some((d, reason)) if inst.record.status == Status::Online && inst.session.is_none() => {
                            let now = tokio::time::Instant::now();
                            if d <= now {
                                let window = Duration::from_millis(inst.record.interval_ms) * missed;
                                if let Some(fresh) = session::lateness::excused(d, now, window) {
                                    inst.deadline = Some((fresh, reason));
                                    continue;
                                }
                                inst.timer_armed = false;
                                inst.deadline = None;
                                st.mark_offline(&id, None, reason);
                                return;
                            }
                            d.min(now + Duration::from_secs(60))
                        }
                        _ => {
                            inst.timer_armed = false;
                            inst.deadline = None;
                            return;
                        }
                    }
                };
                tokio::time::sleep_until(deadline).await;
            }
        });
    }

    /// Kind of store and, while it fails, its error (for `/readyz` and `/metrics`).
    pub fn store_status(&self) -> (&'static str, Option<String>) {
        self.state().store_status()
    }

    /// Writes the metric snapshots of instances that reported since the last call.
    pub async fn flush_snapshots(&self) {
        let (dirty, store) = {
            let mut st = self.state();
            st.retry_store();
            // `--store etcd`: transitions first. The records stay marked, for a later tick.
            let pending = st.transitions_pending();
            if pending > 0 {
                tracing::debug!(target: "sfc::store", pending, "metric snapshot put off: transitions are being written");
                return;
            }
            (st.take_dirty(), st.store())
        };
        if dirty.is_empty() {
            return;
        }
        let n = dirty.len();
        let started = std::time::Instant::now();
        // Copied for the store here, off the state lock.
        let write = move || {
            let records: Vec<InstanceRecord> = dirty.iter().map(|r| InstanceRecord::clone(r)).collect();
            store.snapshot(&records)
        };
        match tokio::task::spawn_blocking(write).await {
            Ok(Ok(())) => tracing::debug!(target: "sfc::store", records = n, ms = started.elapsed().as_millis() as u64,
                "metric snapshot written"),
            Ok(Err(e)) => tracing::warn!(target: "sfc::store", error = %e, "metric snapshot failed"),
            Err(e) => tracing::warn!(target: "sfc::store", error = %e, "metric snapshot task failed"),
        }
    }
}

/// Serves connections from `listener` until `shutdown` completes, then asks every session to
/// close and waits (bounded) for them.
pub async fn serve(registry: Registry, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let sweeper = registry.spawn_sweeper();
    let (stop_tx, _) = broadcast::channel::<()>(1);
    let max = registry.shared.config.max_connections;
    let tracker = crate::listener::accept_loop(&listener, max, "protocol", shutdown, |tcp, peer, permit| {
        registry.shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let reg = registry.clone();
        Some(match permit {
            Some(permit) => {
                let stop = stop_tx.subscribe();
                Either::Left(async move {
                    session::run(reg, tcp, peer, stop).await;
                    drop(permit);
                })
            }
            None => {
                reg.shared.stats.refused_connections_total.fetch_add(1, Ordering::Relaxed);
                Either::Right(session::refuse(reg, tcp, peer))
            }
        })
    })
    .await;
    // From now on a connection is refused at once: a client that moves to another registry
    // must not wait in this one's accept queue for its connect timeout.
    drop(listener);
    tracing::info!(target: "sfc::registry", "shutting down: closing sessions");
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        tracing::warn!(target: "sfc::registry", "some sessions did not close within 5s");
    }
    sweeper.abort();
    // The transitions of the closing sessions, then the latest metrics, go to the store
    // before we exit.
    registry.durable().await;
    registry.flush_snapshots().await;
    // `--store etcd`: the records stay (under this registry's lease) until their clients have
    // registered on another registry, so that nobody sees them go (a planned stop hands its
    // sessions over; PROTOCOL.md §14, RELIABILITY.md).
    #[cfg(feature = "etcd")]
    if let Some(cluster) = registry.shared.cluster.get().cloned() {
        cluster.hand_over(&registry).await;
    }
}

/// Binds `addr` and serves; returns the bound address through `on_bound` first.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid("--listen", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
