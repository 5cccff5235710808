//! The etcd store (`--store etcd`): several registries share one fleet through an etcd
//! cluster. Each registry owns the sessions connected to it and writes their records under
//! its own lease; every registry reads the whole fleet from a local cache that an etcd watch
//! keeps current (see `registry::cluster`).
//!
//! Keyspace, all under `/sfc/v1/`:
//! - `instances/<group>/<instance_id>`: `{"owner", "record", "event"}`, under the owner's
//!   lease. `event` is the transition that wrote it (absent for a metric snapshot).
//! - `registries/<registry id>`: `{"id", "hostname", "pid", "started_at"}`, under its lease.
//! - `commands/<owner>/<sender>/<command id>`: a command for an instance that `owner` holds,
//!   under the sender's lease.
//! - `results/<sender>/<command id>`: its outcome, under the owner's lease.
//!
//! The [`Store`] methods are synchronous (the registry calls `transition` under its state
//! lock, before it broadcasts). They run the etcd call on the store's own small runtime and
//! wait for it, bounded by the operation timeout. After a failure the store fails at once until
//! a probe reaches etcd again, so an unreachable etcd does not hold the registry's lock once per
//! transition.
//! The event history stays in each registry's memory: etcd holds the fleet, not the history.
//! Events are numbered by the revision of the write that made them
//! ([`Store::transition_numbered`]), the same number on every registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{RemoteTransition, Snapshot, Store};
use crate::error::{Error, Result};
use crate::model::{Event, InstanceRecord};
use crate::tls::PemSource;

/// Every key this registry writes starts with this.
pub const PREFIX: &str = "/sfc/v1/";
pub const INSTANCES: &str = "/sfc/v1/instances/";
pub const REGISTRIES: &str = "/sfc/v1/registries/";
pub const COMMANDS: &str = "/sfc/v1/commands/";
pub const RESULTS: &str = "/sfc/v1/results/";

/// Most puts in one etcd transaction (etcd refuses more than `--max-txn-ops`, 128 by default).
const TXN_OPS: usize = 100;
/// How often a failing store checks whether etcd answers again.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// `--etcd-*` flags.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`; several for a cluster.
    pub endpoints: Vec<String>,
    /// CA that signs the etcd servers' certificates (https endpoints).
    pub ca: Option<PemSource>,
    /// Client certificate and key, when etcd requires them.
    pub cert: Option<PemSource>,
    pub key: Option<PemSource>,
    /// This registry's records expire this long after it stops renewing its lease.
    pub lease_ttl: Duration,
    /// Longest wait for one etcd call.
    pub op_timeout: Duration,
    /// Most metric snapshot records this registry writes to etcd per second (on average);
    /// the records that reported longest ago in etcd go first, the others wait for a later
    /// tick. Transitions are never held back by it.
    pub snapshot_rate: u32,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            lease_ttl: Duration::from_secs(10),
            op_timeout: Duration::from_secs(3),
            snapshot_rate: 500,
        }
    }
}

/// The value of an instance key.
#[derive(Debug, Serialize, Deserialize)]
pub struct InstanceValue {
    pub owner: String,
    pub record: InstanceRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RemoteTransition>,
}

/// Writes this registry made, for SCALING.md and logs.
#[derive(Default, Debug)]
pub struct EtcdStats {
    /// Keys put (instances, commands, results, registry key).
    pub puts: AtomicU64,
    /// Round trips that wrote (a put, a delete or a transaction).
    pub writes: AtomicU64,
    /// Bytes of values written.
    pub bytes: AtomicU64,
    /// Metric snapshot records written, and those left for a later tick by the rate bound.
    pub snapshots_written: AtomicU64,
    pub snapshots_deferred: AtomicU64,
    /// Snapshot transactions whose guard failed (a key changed meanwhile), so that their
    /// records were written one by one.
    pub snapshot_txns_failed: AtomicU64,
}

/// A token bucket of snapshot records: `rate` a second, at most [`SnapshotBudget::BURST`]
/// seconds' worth saved up.
#[derive(Debug)]
pub struct SnapshotBudget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl SnapshotBudget {
    const BURST: f64 = 10.0;

    pub fn new(rate: u32, now: Instant) -> SnapshotBudget {
        SnapshotBudget { rate: f64::from(rate.max(1)), tokens: 0.0, last: now }
    }

    /// How many of `wanted` records may be written now; takes them from the bucket.
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.last = now;
        self.tokens = (self.tokens + earned).min(self.rate * Self::BURST);
        // (The epsilon: ten 0.3 s ticks add up to 2.999... records' worth, not 3.)
        let n = ((self.tokens + 1e-9).floor() as usize).min(wanted);
        self.tokens -= n as f64;
        n
    }
}

/// The `n` records whose newest write to etcd is oldest (lowest revision): with a bounded
/// rate every reporting record gets its turn.
fn oldest_first<T>(mut candidates: Vec<(T, i64)>, n: usize) -> Vec<(T, i64)> {
    if candidates.len() > n {
        candidates.sort_by_key(|(_, rev)| *rev);
        candidates.truncate(n);
    }
    candidates
}

/// What the store and the cluster tasks share.
pub struct EtcdInner {
    /// This registry's id: `<hostname>-<pid>-<random>`, new at every start.
    pub id: String,
    pub client: Client,
    /// The store's own runtime, where every etcd call runs.
    pub handle: tokio::runtime::Handle,
    lease: AtomicI64,
    pub lease_ttl: Duration,
    pub op_timeout: Duration,
    /// Revision of this registry's newest write of each instance it owns. A watch event at or
    /// below it is older than what this registry wrote, and is ignored.
    pub own_rev: Mutex<HashMap<String, i64>>,
    /// When the newest transition of each instance this registry owns was written (Unix ms).
    last_event_at: Mutex<HashMap<String, u64>>,
    /// Set when a call failed; calls then fail at once (the registry must not wait for etcd
    /// under its lock once per transition) until a probe finds etcd answering again.
    failing: std::sync::atomic::AtomicBool,
    /// Revision to compact etcd to on the next prune tick (the current one from a tick ago).
    compact_next: Mutex<Option<i64>>,
    /// Bounds the metric snapshot records written per second (`--etcd-snapshot-rate`).
    snapshot_budget: Mutex<SnapshotBudget>,
    pub endpoints: String,
    pub stats: EtcdStats,
}

pub struct EtcdStore {
    inner: Arc<EtcdInner>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

fn etcd_err(endpoints: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unreachable(format!("etcd at {endpoints}: {what} failed: {e}"))
}

fn read_pem(src: &PemSource, flag: &str) -> Result<Vec<u8>> {
    match src {
        PemSource::File(p) => {
            std::fs::read(p).map_err(|e| Error::invalid(flag, format!("cannot read {}: {e}", p.display())))
        }
        PemSource::Text(t) => Ok(t.as_bytes().to_vec()),
    }
}

/// Errors worth another try: the balanced channel picked a member that is down (etcd-client
/// leaves health checking to its user; see [`health_loop`]).
fn retriable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes 14 (unavailable) and 2 (unknown: a broken HTTP/2 stream).
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 14 | 2),
        _ => false,
    }
}

/// Takes members that do not answer out of the client's balanced channel, and puts them back
/// once they answer again, probing each one every second on a connection of its own.
async fn health_loop(inner: std::sync::Weak<EtcdInner>, endpoints: Vec<String>, options: ConnectOptions) {
    let mut probes = Vec::new();
    for e in &endpoints {
        match Client::connect([e.as_str()], Some(options.clone())).await {
            Ok(c) => probes.push((e.clone(), c)),
            Err(err) => tracing::warn!(target: "sfc::store", endpoint = %e, error = %err, "cannot probe etcd member"),
        }
    }
    let mut out: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        for (url, c) in probes.iter_mut() {
            let healthy = matches!(tokio::time::timeout(Duration::from_secs(1), c.status()).await, Ok(Ok(_)));
            if !healthy && !out.contains(url.as_str()) && out.len() + 1 < endpoints.len() {
                if inner.client.remove_endpoint(url.as_str()).await.is_ok() {
                    tracing::warn!(target: "sfc::store", endpoint = %url, "etcd member not answering; using the others");
                    out.insert(url.clone());
                }
            } else if healthy && out.contains(url.as_str()) && inner.client.add_endpoint(url.as_str()).await.is_ok() {
                tracing::info!(target: "sfc::store", endpoint = %url, "etcd member answering again");
                out.remove(url.as_str());
            }
        }
    }
}

fn registry_id() -> String {
    let host: String = sysinfo::System::host_name()
        .ok()
        .unwrap_or_else(|| "registry".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

pub fn instance_key(id: &str) -> String {
    format!("{INSTANCES}{id}")
}

impl EtcdStore {
    /// Connects, grants this registry's lease and announces it under `registries/`.
    /// Must not be called from inside an async task (it waits for etcd).
    /// What the registry's cluster tasks share with this store: the client, the lease and the
    /// fleet cache. Given to the registry in [`RegistryConfig::cluster`](crate::RegistryConfig).
    pub fn cluster(&self) -> Arc<EtcdInner> {
        self.inner.clone()
    }

    pub fn connect(opts: &EtcdOptions) -> Result<EtcdStore> {
        if opts.endpoints.is_empty() {
            return Err(Error::invalid("--etcd-endpoints", "--store etcd needs at least one endpoint"));
        }
        for e in &opts.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::invalid("--etcd-endpoints", format!("{e:?} is not an http:// or https:// URL")));
            }
        }
        let ttl_secs = opts.lease_ttl.as_secs();
        if !(2..=3600).contains(&ttl_secs) {
            return Err(Error::invalid("--etcd-lease-ttl", format!("{ttl_secs}s is outside 2s..=1h")));
        }
        if opts.snapshot_rate == 0 {
            return Err(Error::invalid("--etcd-snapshot-rate", "must be at least 1 record per second"));
        }
        let tls = opts.endpoints.iter().any(|e| e.starts_with("https://"));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(opts.op_timeout)
            .with_timeout(opts.op_timeout)
            .with_keep_alive(Duration::from_secs(2), opts.op_timeout)
            .with_keep_alive_while_idle(true);
        if tls {
            let mut t = etcd_client::TlsOptions::new();
            t = match &opts.ca {
                Some(ca) => t.ca_certificate(etcd_client::Certificate::from_pem(read_pem(ca, "--etcd-ca")?)),
                None => t.with_native_roots(),
            };
            match (&opts.cert, &opts.key) {
                (Some(c), Some(k)) => {
                    t = t.identity(etcd_client::Identity::from_pem(
                        read_pem(c, "--etcd-cert")?,
                        read_pem(k, "--etcd-key")?,
                    ))
                }
                (None, None) => {}
                _ => return Err(Error::invalid("--etcd-cert", "--etcd-cert and --etcd-key go together")),
            }
            options = options.with_tls(t);
        } else if opts.ca.is_some() || opts.cert.is_some() || opts.key.is_some() {
            return Err(Error::invalid("--etcd-ca", "etcd TLS options need https:// endpoints"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sfc-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Io(std::io::Error::other(format!("cannot start the etcd runtime: {e}"))))?;
        let endpoints = opts.endpoints.join(",");
        let eps = opts.endpoints.clone();
        let probe_options = options.clone();
        let (client, lease) =
            wait(&runtime.handle().clone(), opts.op_timeout * 2, &endpoints, "connect", async move {
                let mut client = Client::connect(&eps, Some(options)).await?;
                let mut attempt = 0;
                let lease = loop {
                    match client.lease_grant(ttl_secs as i64, None).await {
                        Err(e) if retriable(&e) && attempt < 5 => attempt += 1,
                        r => break r?.id(),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                Ok::<_, etcd_client::Error>((client, lease))
            })?;
        let inner = Arc::new(EtcdInner {
            id: registry_id(),
            client,
            handle: runtime.handle().clone(),
            lease: AtomicI64::new(lease),
            lease_ttl: opts.lease_ttl,
            op_timeout: opts.op_timeout,
            own_rev: Mutex::new(HashMap::new()),
            last_event_at: Mutex::new(HashMap::new()),
            failing: Default::default(),
            compact_next: Mutex::new(None),
            snapshot_budget: Mutex::new(SnapshotBudget::new(opts.snapshot_rate, Instant::now())),
            endpoints,
            stats: EtcdStats::default(),
        });
        let i = inner.clone();
        wait(&inner.handle, opts.op_timeout, &inner.endpoints, "announce", async move { i.announce().await })?;
        if opts.endpoints.len() > 1 {
            runtime.spawn(health_loop(Arc::downgrade(&inner), opts.endpoints.clone(), probe_options));
        }
        tracing::info!(target: "sfc::store", registry = %inner.id, endpoints = %inner.endpoints,
            lease_ttl = ?opts.lease_ttl, "joined the etcd fleet");
        Ok(EtcdStore { inner, runtime: Mutex::new(Some(runtime)) })
    }

    pub fn inner(&self) -> Arc<EtcdInner> {
        self.inner.clone()
    }

    /// Runs `f` on the store's runtime and waits. After a failure, fails at once until a
    /// background probe reaches etcd again.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T> {
        let inner = &self.inner;
        if inner.failing.load(Ordering::Acquire) {
            return Err(self.not_answering(what));
        }
        let r = wait(&inner.handle, inner.op_timeout, &inner.endpoints, what, f);
        if r.is_err() {
            self.failed();
        }
        r
    }

    fn not_answering(&self, what: &str) -> Error {
        etcd_err(&self.inner.endpoints, what, "etcd is not answering (checking again every 500ms)")
    }

    /// An operation failed: fail at once from now on, until a background probe reaches etcd.
    fn failed(&self) {
        let inner = &self.inner;
        if inner.failing.swap(true, Ordering::AcqRel) {
            return;
        }
        let probe = inner.clone();
        inner.handle.spawn(async move {
            let key = format!("{REGISTRIES}{}", probe.id);
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let mut c = probe.client.clone();
                if let Ok(Ok(_)) = tokio::time::timeout(probe.op_timeout, c.get(key.clone(), None)).await {
                    probe.failing.store(false, Ordering::Release);
                    tracing::info!(target: "sfc::store", "etcd answers again");
                    return;
                }
            }
        });
    }
}

/// Writes one transition: a put of the record it carries, or a delete once evicted.
/// Returns the revision of the write (0: nothing deleted, the key was gone already).
fn write_transition(
    inner: Arc<EtcdInner>,
    event: &Event,
) -> impl std::future::Future<Output = Result<i64, etcd_client::Error>> + Send + 'static {
    let id = event.id.clone();
    let put = event.instance.clone().map(|r| {
        let t = RemoteTransition { kind: event.kind, at: event.at, detail: event.detail.clone() };
        inner.last_event_at.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), event.at);
        (r, t)
    });
    async move {
        if let Some((r, t)) = put {
            return inner.put_record(&r, Some(t)).await;
        }
        inner.count(0, 0);
        let key = instance_key(&id);
        let resp = inner
            .retry(|mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        inner.own_rev.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        inner.last_event_at.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        // Nothing deleted (the key was gone already): no revision of its own.
        Ok(if resp.deleted() > 0 { resp.header().map(|h| h.revision()).unwrap_or(0) } else { 0 })
    }
}

fn revision(rev: i64) -> Option<u64> {
    u64::try_from(rev).ok().filter(|r| *r > 0)
}

/// Runs a future on `handle` and waits for it from a plain thread or a worker of another
/// runtime (never from the store's own runtime, whose workers it could starve).
pub(crate) fn wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    endpoints: &str,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T> {
    if std::thread::current().name() == Some("sfc-etcd") {
        return Err(etcd_err(endpoints, what, "called from the etcd runtime itself (a bug)"));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = tokio::time::timeout(timeout, f).await;
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout + Duration::from_millis(500)) {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(etcd_err(endpoints, what, e)),
        Ok(Err(_)) | Err(_) => Err(Error::Timeout(format!(
            "etcd at {endpoints}: {what} took longer than {}",
            crate::duration::format(timeout)
        ))),
    }
}

impl EtcdInner {
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    pub fn set_lease(&self, lease: i64) {
        self.lease.store(lease, Ordering::Relaxed);
    }

    /// Runs an etcd call, again (a few times, briefly) when it reached a member that is down.
    pub async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match f(self.client.clone()).await {
                Err(e) if retriable(&e) && attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(target: "sfc::store", error = %e, attempt, "etcd call failed; trying again");
                    tokio::time::sleep(Duration::from_millis(50) * attempt).await;
                }
                r => return r,
            }
        }
    }

    pub fn instance_value(&self, record: &InstanceRecord, event: Option<RemoteTransition>) -> Vec<u8> {
        let v = InstanceValue { owner: self.id.clone(), record: record.clone(), event };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn count(&self, puts: usize, bytes: usize) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.puts.fetch_add(puts as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Whether etcd says `lease` is gone (expired or revoked). A keep-alive that fails may mean
    /// either that etcd is slow or that the lease expired meanwhile: only this tells them apart.
    pub async fn lease_gone(&self, lease: i64) -> bool {
        let mut c = self.client.clone();
        matches!(tokio::time::timeout(self.op_timeout, c.lease_time_to_live(lease, None)).await,
            Ok(Ok(r)) if r.ttl() <= 0)
    }

    /// Writes `registries/<id>` under the current lease.
    pub async fn announce(&self) -> Result<(), etcd_client::Error> {
        let v = serde_json::json!({
            "id": self.id,
            "hostname": sysinfo::System::host_name().ok(),
            "pid": std::process::id(),
            "started_at": crate::model::now_ms(),
        })
        .to_string();
        self.count(1, v.len());
        let key = format!("{REGISTRIES}{}", self.id);
        let lease_id = self.lease();
        self.retry(|mut c| {
            let (key, v) = (key.clone(), v.clone());
            async move { c.put(key, v, Some(PutOptions::new().with_lease(lease_id))).await }
        })
        .await?;
        Ok(())
    }

    /// Puts one record under this registry's lease and remembers the revision; returns it.
    pub async fn put_record(
        &self,
        record: &InstanceRecord,
        event: Option<RemoteTransition>,
    ) -> Result<i64, etcd_client::Error> {
        let value = self.instance_value(record, event);
        self.count(1, value.len());
        let key = instance_key(&record.id);
        let lease_id = self.lease();
        let resp = self
            .retry(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, Some(PutOptions::new().with_lease(lease_id))).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if rev > 0 {
            self.own_rev.lock().unwrap_or_else(|e| e.into_inner()).insert(record.id.clone(), rev);
        }
        Ok(rev)
    }

    /// Writes metric snapshots of records this registry still owns, in transactions of at
    /// most [`TXN_OPS`] puts. Each put is guarded by the key's revision: a snapshot never
    /// overwrites a transition written after it was taken (the registry takes snapshots under
    /// its lock, but writes them later), nor a record another registry took over.
    pub async fn put_snapshots(&self, records: &[InstanceRecord]) -> Result<(), etcd_client::Error> {
        let lease = self.lease();
        // (record, revision of our newest write of its key)
        let current: Vec<(&InstanceRecord, i64)> = {
            let own = self.own_rev.lock().unwrap_or_else(|e| e.into_inner());
            let last = self.last_event_at.lock().unwrap_or_else(|e| e.into_inner());
            records
                .iter()
                .filter(|r| {
                    // A transition at or after the record's last report may be newer than
                    // the snapshot: the transition's own write carries the record.
                    !matches!(last.get(&r.id), Some(at) if *at >= r.last_report_at.unwrap_or(0))
                })
                .filter_map(|r| own.get(&r.id).map(|rev| (r, *rev)))
                .collect()
        };
        let wanted = current.len();
        let n = self.snapshot_budget.lock().unwrap_or_else(|e| e.into_inner()).take(wanted, Instant::now());
        let current = oldest_first(current, n);
        self.stats.snapshots_deferred.fetch_add((wanted - n) as u64, Ordering::Relaxed);
        self.stats.snapshots_written.fetch_add(n as u64, Ordering::Relaxed);
        if wanted > n {
            tracing::debug!(target: "sfc::store", wanted, written = n, "metric snapshots bounded by --etcd-snapshot-rate");
        }
        for chunk in current.chunks(TXN_OPS) {
            let mut compares = Vec::with_capacity(chunk.len());
            let mut ops = Vec::with_capacity(chunk.len());
            let mut bytes = 0;
            for (r, rev) in chunk {
                let key = instance_key(&r.id);
                let value = self.instance_value(r, None);
                bytes += value.len();
                compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
                ops.push(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))));
            }
            self.count(chunk.len(), bytes);
            let txn = Txn::new().when(compares).and_then(ops);
            let resp = self
                .retry(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                let mut own = self.own_rev.lock().unwrap_or_else(|e| e.into_inner());
                for (r, before) in chunk {
                    if own.get(&r.id) == Some(before) {
                        own.insert(r.id.clone(), rev);
                    }
                }
                continue;
            }
            self.stats.snapshot_txns_failed.fetch_add(1, Ordering::Relaxed);
            // Some key changed meanwhile: write the others one by one.
            for (r, rev) in chunk {
                let key = instance_key(&r.id);
                let value = self.instance_value(r, None);
                self.count(1, value.len());
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)])
                    .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))]);
                let resp = self
                    .retry(|mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                if resp.succeeded() {
                    let new = resp.header().map(|h| h.revision()).unwrap_or(0);
                    let mut own = self.own_rev.lock().unwrap_or_else(|e| e.into_inner());
                    // Only if no transition recorded a newer write meanwhile.
                    if own.get(&r.id) == Some(rev) {
                        own.insert(r.id.clone(), new);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    /// The fleet comes from the cluster's watch, not from here; the event history starts
    /// empty (it is kept per registry, in memory).
    fn load(&self, _history: usize) -> Result<Snapshot> {
        Ok(Snapshot::default())
    }

    fn transition(&self, event: &Event, record: Option<&InstanceRecord>) -> Result<()> {
        self.transition_numbered(event, record).map(|_| ())
    }

    /// The revision of the put (or delete) is the event's number on every registry. The
    /// event carries its record (none once evicted: the key is deleted).
    fn transition_numbered(&self, event: &Event, _record: Option<&InstanceRecord>) -> Result<Option<u64>> {
        let what = if event.instance.is_some() { "put instance" } else { "delete instance" };
        self.call(what, write_transition(self.inner.clone(), event)).map(revision)
    }

    /// One wave of transitions of different instances, written concurrently (etcd's raft
    /// batches them into few proposals and fsyncs).
    fn transitions_numbered(&self, events: &[Arc<Event>]) -> Vec<Result<Option<u64>>> {
        const WHAT: &str = "write transitions";
        if self.inner.failing.load(Ordering::Acquire) {
            return events.iter().map(|_| Err(self.not_answering(WHAT))).collect();
        }
        let writes: Vec<_> = events.iter().map(|ev| write_transition(self.inner.clone(), ev)).collect();
        let inner = &self.inner;
        let all = wait(&inner.handle, inner.op_timeout, &inner.endpoints, WHAT, async move {
            Ok(futures_util::future::join_all(writes).await)
        });
        let out: Vec<Result<Option<u64>>> = match all {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map(revision).map_err(|e| etcd_err(&inner.endpoints, WHAT, e)))
                .collect(),
            Err(e) => events.iter().map(|_| Err(Error::Timeout(e.to_string()))).collect(),
        };
        if out.iter().any(|r| r.is_err()) {
            self.failed();
        }
        out
    }

    fn numbers_events(&self) -> bool {
        true
    }

    fn snapshot(&self, records: &[InstanceRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let records = records.to_vec();
        // Many transactions may be needed: allow one timeout per transaction.
        let batches = records.len().div_ceil(TXN_OPS) as u32;
        let timeout = inner.op_timeout * batches.max(1);
        wait(&inner.handle.clone(), timeout, &inner.endpoints.clone(), "write metric snapshots", async move {
            inner.put_snapshots(&records).await
        })
    }

    /// The history lives in memory; this tick compacts etcd's key history instead, to the
    /// revision seen one tick (a minute) ago, so a watcher that reconnects can still resume.
    fn prune_events(&self, _before_ms: u64) -> Result<usize> {
        let inner = self.inner.clone();
        let rev = self.call("compact", async move {
            let key = format!("{REGISTRIES}{}", inner.id);
            let now = inner
                .retry(|mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?
                .header()
                .map(|h| h.revision())
                .unwrap_or(0);
            let mut c = inner.client.clone();
            let target = inner.compact_next.lock().unwrap_or_else(|e| e.into_inner()).replace(now);
            if let Some(target) = target.filter(|t| *t > 0) {
                // Another registry may have compacted further already; that is fine.
                if let Err(e) = c.compact(target, None).await {
                    tracing::debug!(target: "sfc::store", error = %e, revision = target, "etcd compaction skipped");
                }
            }
            Ok(now)
        })?;
        tracing::trace!(target: "sfc::store", revision = rev, "etcd compaction tick");
        Ok(0)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Revoking the lease tells the other registries at once that this one is gone
            // (best effort; otherwise its records expire after the lease TTL).
            let inner = self.inner.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            rt.spawn(async move {
                let mut c = inner.client.clone();
                let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(inner.lease())).await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_millis(1500));
            // Dropping a runtime inside another runtime's task would panic.
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{oldest_first, SnapshotBudget};

    /// `--etcd-snapshot-rate`: records a second on average, fractions carried over, at most
    /// ten seconds' worth saved up.
    #[test]
    fn the_snapshot_budget_bounds_records_per_second() {
        let t0 = Instant::now();
        let mut b = SnapshotBudget::new(1000, t0);
        assert_eq!(b.take(17_000, t0 + Duration::from_secs(5)), 5000);
        // Nothing earned since.
        assert_eq!(b.take(17_000, t0 + Duration::from_secs(5)), 0);
        // Fewer wanted than allowed: the rest is saved, up to ten seconds' worth.
        assert_eq!(b.take(10, t0 + Duration::from_secs(6)), 10);
        assert_eq!(b.take(100_000, t0 + Duration::from_secs(60)), 10_000);
        // A slow rate on a fast timer: one record every third tick of 300 ms or so.
        let mut slow = SnapshotBudget::new(1, t0);
        let written: usize = (1..=10).map(|i| slow.take(2, t0 + Duration::from_millis(300 * i))).sum();
        assert_eq!(written, 3);
    }

    /// The records whose newest write is oldest go first, so that every record gets its turn.
    #[test]
    fn bounded_snapshots_take_the_longest_unwritten_records_first() {
        let candidates = vec![("c", 30), ("a", 10), ("d", 40), ("b", 20)];
        assert_eq!(oldest_first(candidates.clone(), 2), vec![("a", 10), ("b", 20)]);
        assert_eq!(oldest_first(candidates.clone(), 9), candidates);
    }
}
