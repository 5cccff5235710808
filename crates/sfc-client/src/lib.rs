//! The client library that every binding wraps.
//!
//! A [`Client`] registers one service instance (or, as an observer, only queries and watches),
//! reports every interval (sampled metrics, the health and gauges the application sets, and
//! runtime figures a binding supplies), answers commands, and keeps a lookup cache current with
//! watches. It reconnects with capped exponential backoff and full jitter, fails over between
//! registry addresses, and never blocks or crashes the host: problems arrive as
//! [`ClientEvent`]s. It runs on the caller's tokio runtime when there is one, otherwise on a
//! small runtime thread of its own.
//!
//! # Layout
//! - [`Client`] (this file): the handle, its events, lookups and watches.
//! - `config`: [`ClientBuilder`] and the `SFC_*` environment fallbacks.
//! - `connection`: one session with a registry (handshake, report tick, incoming frames) and
//!   the reconnect loop around it.
//! - [`metrics`]: host and process sampling with sysinfo.
//! - `ticker`: the session's one timer, one wake-up of the client's thread per report.
//! - [`tls`]: the client's rustls configuration, and the TLS handshake that tells a v1
//!   registry (ALPN `sfc/1`) from one that predates v1.
//! - `legacy`: the legacy fallback's document and its delivery, one connection per report.
//!
//! The data model and the protocol come from `sfc-proto`, re-exported here ([`model`],
//! [`protocol`], [`limits`], [`duration`]) so that a binding needs only this crate.
//!
//! # The path of a report
//! Every interval the session task samples [`metrics`], adds the health and gauges the
//! application set, encodes one `report` frame with the negotiated codec and writes it on the
//! session's TLS connection. The registry records it and forwards it to the watchers whose
//! filter matches (see `sfc-registry`).

mod config;
mod connection;
mod legacy;
pub mod metrics;
mod ticker;
pub mod tls;

pub use sfc_proto::{duration, error, limits, model, protocol, Error, Result, VERSION};

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use config::{split_host_port, ClientBuilder, ClientConfig, DEFAULT_REGISTRY};

use crate::model::{Event, Filter, Health, InstanceRecord, Status};
use crate::protocol::{Command, CommandResult, ErrorCode};

/// Something the application may want to know; none of these is fatal.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Connected { registry: String, session: u64 },
    Disconnected { registry: String, reason: String },
    /// A command from the registry. Answer it with [`Client::respond`]; `shutdown` asks the
    /// application to stop.
    Command(Command),
    /// A problem the client recovers from by itself (bad certificate, refused hello...).
    Error { code: Option<ErrorCode>, message: String },
}

/// Narrows a lookup within a group.
#[derive(Debug, Clone, Default)]
pub struct LookupOptions {
    /// Only `online` instances whose health is `passing`.
    pub healthy_only: bool,
    pub service: Option<String>,
    pub tag: Option<String>,
}

/// A lookup answer. `stale` is true when the registry is unreachable and the answer comes
/// from the last known state.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub instances: Vec<InstanceRecord>,
    pub stale: bool,
}

/// A stream of events matching a watch filter. Dropping it cancels the watch.
pub struct WatchStream {
    rx: mpsc::UnboundedReceiver<Event>,
    _cancel: WatchGuard,
}

struct WatchGuard {
    id: u64,
    ctl: mpsc::UnboundedSender<connection::Control>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.ctl.send(connection::Control::Unwatch(self.id));
    }
}

impl WatchStream {
    /// The next event; None once the client has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is already waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// Per-group lookup cache kept current by a watch.
#[derive(Default)]
pub(crate) struct GroupCache {
    pub instances: BTreeMap<String, InstanceRecord>,
    /// The watch is established on the current connection.
    pub fresh: bool,
}

pub(crate) struct Shared {
    pub config: ClientConfig,
    /// The rustls config of every connection this client makes, built once: its session
    /// store keeps the registries' TLS 1.3 tickets, so a reconnect resumes the session (no
    /// certificate chain sent or verified, no signature) instead of a full handshake.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub health: Mutex<(Health, Option<String>)>,
    pub gauges: Mutex<BTreeMap<String, f64>>,
    pub runtime_metrics: Mutex<BTreeMap<String, f64>>,
    pub cache: Mutex<HashMap<String, GroupCache>>,
    pub events: broadcast::Sender<ClientEvent>,
    pub connected: watch::Sender<bool>,
    pub ctl: mpsc::UnboundedSender<connection::Control>,
    pub next_watch: AtomicU64,
    pub stopped: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running client. Cloning is cheap; the client stops when [`Client::stop`] is called (or
/// when the last clone is dropped, without a leave).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    handle: Handle,
    guard: Arc<Guard>,
}

/// Ends the connection task (and the owned runtime) when the last clone is dropped.
struct Guard {
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: Option<RuntimeThread>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        drop(self.runtime.take());
    }
}

/// The runtime a client owns when its host has none.
struct RuntimeThread {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.stop).take() {
            let _ = tx.send(());
        }
        if let Some(t) = lock(&self.thread).take() {
            // Never join from the runtime thread itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn own_runtime() -> Result<(Handle, RuntimeThread)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sfc-client")
        .build()
        .map_err(|e| Error::Io(std::io::Error::other(format!("cannot start the client runtime: {e}"))))?;
    let handle = rt.handle().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sfc-client".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = rx.await;
            });
            // Give in-flight tasks no further time: the client is gone.
            rt.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(|e| Error::Io(std::io::Error::other(format!("cannot start the client thread: {e}"))))?;
    Ok((handle, RuntimeThread { stop: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }))
}

impl Client {
    /// A builder; see [`ClientBuilder`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Starts a client from a built config.
    pub fn start(config: ClientConfig) -> Result<Client> {
        let (handle, runtime) = match Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let (h, rt) = own_runtime()?;
                (h, Some(rt))
            }
        };
        Self::start_on(config, handle, runtime)
    }

    /// Starts on its own runtime thread even when called inside a tokio runtime (bindings whose
    /// host runtime must not be borrowed).
    pub fn start_detached(config: ClientConfig) -> Result<Client> {
        let (h, rt) = own_runtime()?;
        Self::start_on(config, h, Some(rt))
    }

    fn start_on(config: ClientConfig, handle: Handle, runtime: Option<RuntimeThread>) -> Result<Client> {
        if config.tls.is_none() {
            tracing::warn!(target: "sfc::client", "insecure plaintext: reports and commands are not encrypted");
        }
        let tls = config.tls.as_ref().map(crate::tls::client_config).transpose()?;
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let shared_for_task;
        let (events, _) = broadcast::channel(1024);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            tls,
            health: Mutex::new((Health::Passing, None)),
            gauges: Mutex::new(BTreeMap::new()),
            runtime_metrics: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(HashMap::new()),
            events,
            connected,
            ctl: ctl_tx,
            next_watch: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
        });
        shared_for_task = shared.clone();
        let events = shared.events.clone();
        let task = handle.spawn(async move {
            use futures_util::FutureExt;
            // A bug here must not pass silently as a lost connection.
            if let Err(p) = std::panic::AssertUnwindSafe(connection::run(shared_for_task, ctl_rx)).catch_unwind().await {
                let what = p.downcast_ref::<&str>().map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(target: "sfc::client", panic = %what, "client connection task panicked; the client is stopped");
                let _ = events.send(ClientEvent::Error { code: Some(ErrorCode::Internal), message: format!("client task panicked: {what}") });
            }
        });
        Ok(Client { shared, handle, guard: Arc::new(Guard { task: Mutex::new(Some(task)), runtime }) })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// `<group>/<instance_id>` of this instance (empty for observers).
    pub fn id(&self) -> String {
        let r = &self.shared.config.registration;
        if r.group.is_empty() {
            String::new()
        } else {
            InstanceRecord::make_id(&r.group, &r.instance_id)
        }
    }

    /// Events: connected, disconnected, commands, errors. Each call makes a new subscriber;
    /// one that falls more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }

    /// Whether a session with a registry is established now.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Waits until connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.connected.subscribe();
        // `stop` wakes the waiters (see there): a stop ends the wait at once, not at the timeout.
        let stopped = &self.shared.stopped;
        tokio::time::timeout(timeout, rx.wait_for(|c| *c || stopped.load(Ordering::Acquire)))
            .await
            .map_err(|_| Error::Timeout(format!("not connected to {:?} within {timeout:?}", self.shared.config.registries)))?
            .map_err(|_| Error::Stopped)?;
        self.check_running()
    }

    fn check_running(&self) -> Result<()> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        Ok(())
    }

    /// Sets the health reported from now on; a change is sent at once, not at the next tick.
    pub fn set_health(&self, health: Health, note: Option<String>) -> Result<()> {
        self.check_running()?;
        if let Some(n) = &note {
            crate::limits::check_health_note(n)?;
        }
        let changed = {
            let mut h = lock(&self.shared.health);
            let changed = *h != (health, note.clone());
            *h = (health, note);
            changed
        };
        if changed {
            let _ = self.shared.ctl.send(connection::Control::ReportNow);
        }
        Ok(())
    }

    /// Sets a custom gauge reported with every report.
    pub fn set_gauge(&self, name: &str, value: f64) -> Result<()> {
        self.check_running()?;
        crate::limits::check_gauge(name, value)?;
        let mut g = lock(&self.shared.gauges);
        if !g.contains_key(name) && g.len() >= crate::limits::MAX_GAUGES {
            return Err(Error::invalid("gauges", format!("more than {} gauges", crate::limits::MAX_GAUGES)));
        }
        g.insert(name.to_string(), value);
        Ok(())
    }

    /// Removes a custom gauge.
    pub fn remove_gauge(&self, name: &str) {
        lock(&self.shared.gauges).remove(name);
    }

    /// Replaces the runtime figures a binding supplies (Node.js heap, event-loop delay...).
    pub fn set_runtime_metrics(&self, metrics: BTreeMap<String, f64>) -> Result<()> {
        self.check_running()?;
        for (k, v) in &metrics {
            crate::limits::check_gauge(k, *v)?;
        }
        *lock(&self.shared.runtime_metrics) = metrics;
        Ok(())
    }

    /// Instances of `group`, answered from a local cache that a watch keeps current. The first
    /// lookup of a group waits for the registry (up to the connect timeout); later ones never
    /// wait. With the registry unreachable, the cached answer comes back marked stale.
    pub async fn lookup(&self, group: &str, opts: &LookupOptions) -> Result<Lookup> {
        self.check_running()?;
        if group.is_empty() {
            return Err(Error::invalid("group", "must not be empty"));
        }
        let pick = |gc: &GroupCache, stale: bool| Lookup {
            instances: gc
                .instances
                .values()
                .filter(|r| !opts.healthy_only || (r.status == Status::Online && r.health == Health::Passing))
                .filter(|r| opts.service.as_deref().is_none_or(|s| s == r.service))
                .filter(|r| opts.tag.as_deref().is_none_or(|t| r.tags.iter().any(|x| x == t)))
                .cloned()
                .collect(),
            stale,
        };
        let connected = self.is_connected();
        if let Some(gc) = lock(&self.shared.cache).get(group) {
            if gc.fresh || !connected {
                return Ok(pick(gc, !gc.fresh));
            }
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.ctl.send(connection::Control::WatchGroup(group.to_string(), tx));
        match tokio::time::timeout(self.shared.config.connect_timeout, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(Error::Stopped),
            Err(_) => {}
        }
        match lock(&self.shared.cache).get(group) {
            Some(gc) => Ok(pick(gc, !gc.fresh)),
            None => Err(Error::Unreachable(format!(
                "no answer from {:?} and nothing cached for group {group:?}",
                self.shared.config.registries
            ))),
        }
    }

    /// Asks the registry directly (no cache): every record matching `filter`.
    pub async fn query(&self, filter: Filter) -> Result<Vec<InstanceRecord>> {
        self.check_running()?;
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.ctl.send(connection::Control::Query(filter, tx));
        match tokio::time::timeout(self.shared.config.connect_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Unreachable(format!("no answer from {:?}", self.shared.config.registries))),
        }
    }

    /// A stream of events matching `filter`; with `reports`, also every report of a matching
    /// instance. Across reconnects the watch resumes from the last event it saw, so nothing the
    /// registry still remembers is missed.
    pub fn watch(&self, filter: Filter, reports: bool) -> Result<WatchStream> {
        self.watch_from(filter, reports, None)
    }

    /// Like [`Client::watch`], but first replays the history events after `cursor` (an event
    /// `seq` the application saved earlier), as far as the registry still remembers them.
    pub fn watch_after(&self, filter: Filter, reports: bool, cursor: u64) -> Result<WatchStream> {
        self.watch_from(filter, reports, Some(cursor))
    }

    fn watch_from(&self, filter: Filter, reports: bool, cursor: Option<u64>) -> Result<WatchStream> {
        self.check_running()?;
        let id = self.shared.next_watch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.shared.ctl.send(connection::Control::Watch { id, filter, reports, tx, cursor });
        Ok(WatchStream { rx, _cancel: WatchGuard { id, ctl: self.shared.ctl.clone() } })
    }

    /// Answers a command received as [`ClientEvent::Command`].
    pub fn respond(&self, command_id: u64, result: std::result::Result<serde_json::Value, String>) -> Result<()> {
        self.check_running()?;
        let (ok, result, error) = match result {
            Ok(v) => (true, v, None),
            Err(e) => (false, serde_json::Value::Null, Some(e)),
        };
        let _ = self
            .shared
            .ctl
            .send(connection::Control::Respond(CommandResult { command_id, ok, result, error }));
        Ok(())
    }

    /// Runs `handler` for every command and sends its result back. The handler runs on the
    /// client's runtime (keep it short, or spawn).
    pub fn on_command<F>(&self, handler: F)
    where
        F: Fn(&Command) -> std::result::Result<serde_json::Value, String> + Send + Sync + 'static,
    {
        let mut rx = self.subscribe();
        // Holding only the control sender (not the client) lets the client drop, which closes
        // the event channel and ends this task.
        let ctl = self.shared.ctl.clone();
        self.handle.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ClientEvent::Command(c)) => {
                        let (ok, result, error) = match handler(&c) {
                            Ok(v) => (true, v, None),
                            Err(e) => (false, serde_json::Value::Null, Some(e)),
                        };
                        let r = CommandResult { command_id: c.command_id, ok, result, error };
                        let _ = ctl.send(connection::Control::Respond(r));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Sends leave and closes, within the configured stop timeout. Idempotent. `Ok(true)` when
    /// the registry confirmed the leave (the instance is `left` there); `Ok(false)` when the
    /// client closed without that confirmation (no session at the time, the connection ended
    /// first, or already stopped); `Err(Timeout)` when the confirmation did not come in time.
    pub async fn stop(&self) -> Result<bool> {
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        // Wakes every `wait_connected`, which then sees `stopped`.
        self.shared.connected.send_modify(|_| {});
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.ctl.send(connection::Control::Stop(tx));
        let timeout = self.shared.config.stop_timeout;
        let left = tokio::time::timeout(timeout, rx).await;
        let task = lock(&self.guard.task).take();
        if let Some(t) = task {
            t.abort();
        }
        let _ = self.shared.connected.send_replace(false);
        match left {
            Ok(confirmed) => Ok(confirmed.unwrap_or(false)),
            Err(_) => Err(Error::Timeout(format!("leave not confirmed within {timeout:?}; closed anyway"))),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Closes the connection now, without a leave (the registry marks the instance offline,
    /// connection-lost), as dropping the last clone does; but other clones (a binding's
    /// watches) stay valid: they see the client stopped and their streams end. Idempotent.
    pub fn abort(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        // Wakes every `wait_connected`, which then sees `stopped`.
        self.shared.connected.send_modify(|_| {});
        if let Some(t) = lock(&self.guard.task).take() {
            t.abort();
        }
        let _ = self.shared.connected.send_replace(false);
    }

    /// Runs a future on the client's runtime from a thread that is not a runtime thread
    /// (the C ABI and other blocking hosts).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// The runtime the client runs on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
    }
}
