//! `sfc bench --peer etcd`: the same fleet as etcd leases, in the same run.
//!
//! After the sfc run, the bench starts a real etcd (Debian's etcd-server) on a loopback port
//! with a fresh data directory, and drives as many clients as leases: each grants one lease
//! with TTL = the registry's liveness window (missed-reports x interval, rounded up to whole
//! seconds, as etcd counts), puts one key carrying a report-sized value under it, and opens a
//! keep-alive stream that sends one keep-alive per interval. A watcher on the key prefix (its
//! own connection) hears each key's DELETE. `crash` drops the keep-alive streams of the same
//! share of the fleet at once and measures from that moment to each DELETE at the watcher.
//! etcd's CPU and memory come from /proc; etcd is stopped by PID at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::etcd_server::EtcdProcess;
use super::target::{cpu_percent, ProcWatch};
use super::{wait_until, BenchArgs, Detection, Latency, Scenario};
use sfc_client::error::{Error, Result};

const PREFIX: &str = "/sfc-bench-peer/";
/// Leases per client connection (one HTTP/2 connection each; one gRPC stream per lease).
const LEASES_PER_CONNECTION: usize = 1_000;
/// Lease setups (grant, put, keep-alive stream) in flight at once. Unbounded, a ramp at the
/// bench's default 2,000 clients/s queued 6,000 raft proposals a second on this 2-core machine
/// and etcd answered most setups and renewals with "request timed out, waiting for the applied
/// index took too long" (its apply a second behind its commits): 5,208 and 7,679 of 10,000
/// setups failed in two runs. With this bound etcd sets leases up as fast as it applies them.
const SETUP_IN_FLIGHT: usize = 64;
/// Longest wait for any one etcd request or stream step. etcd-client's own timeout covers a
/// unary request once a connection is ready, but not a request queued in its balanced channel
/// while no connection is (nor a stream's first message), so every await on etcd here is
/// bounded by this as well: the run always ends with figures or an error.
const ETCD_WAIT: Duration = Duration::from_secs(15);

/// `fut`, or a timeout error naming `what` after `limit`.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| etcd_error(what, e)),
        Err(_) => Err(Error::Timeout(format!(
            "etcd {what}: no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// The peer's figures, beside the sfc run's.
#[derive(Debug, Serialize)]
pub struct PeerResults {
    pub peer: &'static str,
    pub endpoint: String,
    pub etcd_pid: u32,
    /// Client connections the leases are spread over (each lease: its own keep-alive stream).
    pub connections: usize,
    pub leases: u64,
    pub setup_errors: u64,
    /// TTL asked for (seconds) and as granted by etcd (it raises TTLs below its minimum).
    pub ttl_s: i64,
    pub ttl_granted_s: i64,
    pub value_bytes: usize,
    pub ramp_ms: u64,
    pub measured_ms: u64,
    pub keepalives_sent: u64,
    /// Keep-alive responses (TTL renewed) received in the measured phase.
    pub keepalives_acked: u64,
    pub keepalives_per_s: f64,
    pub etcd_cpu_percent: Option<f64>,
    /// Keep-alives per second per core of etcd CPU.
    pub keepalives_per_core_s: Option<f64>,
    pub etcd_rss_bytes: Option<u64>,
    pub etcd_rss_baseline_bytes: Option<u64>,
    pub memory_per_lease_bytes: Option<f64>,
    pub bench_cpu_percent: Option<f64>,
    /// Keys deleted outside the crashed batch (leases that expired although kept alive).
    pub false_expired: usize,
    /// Keep-alive stream errors outside the crash (each stream is opened again while its lease
    /// lives, as clientv3 does).
    pub lost_streams: u64,
    /// The first setup error and the first keep-alive stream error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_setup_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_stream_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<Detection>,
}

fn etcd_error(what: &str, e: etcd_client::Error) -> Error {
    Error::Io(std::io::Error::other(format!("etcd {what}: {e}")))
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(30))
}

#[derive(Default)]
struct Counters {
    ready: AtomicU64,
    setup_errors: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    lost: AtomicU64,
    granted_ttl: AtomicU64,
    /// The first setup error and the first stream error, as etcd or the client said them.
    first_errors: Mutex<(Option<String>, Option<String>)>,
}

impl Counters {
    fn error(&self, setup: bool, e: String) {
        let mut f = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        let slot = if setup { &mut f.0 } else { &mut f.1 };
        slot.get_or_insert(e);
    }
}

/// 0: run; 1: the crash batch drops its streams; 2: stop.
type Stage = watch::Receiver<u8>;

/// One client's lease: granted, its key put, its keep-alive stream opened. Waits for a setup
/// slot first (see [`SETUP_IN_FLIGHT`]).
async fn setup(
    c: &mut Client,
    i: usize,
    value: &[u8],
    ttl: i64,
    k: &Counters,
    slots: &Semaphore,
) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream)> {
    let _slot = slots
        .acquire()
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let lease = bounded("lease grant", ETCD_WAIT, c.lease_grant(ttl, None)).await?;
    k.granted_ttl.store(lease.ttl() as u64, Ordering::Relaxed);
    let opts = PutOptions::new().with_lease(lease.id());
    bounded(
        "put",
        ETCD_WAIT,
        c.put(format!("{PREFIX}{i}"), value, Some(opts)),
    )
    .await?;
    let (keeper, stream) = bounded(
        "lease keep-alive stream",
        ETCD_WAIT,
        c.lease_keep_alive(lease.id()),
    )
    .await?;
    Ok((lease.id(), keeper, stream))
}

#[allow(clippy::too_many_arguments)]
async fn lease_client(
    mut c: Client,
    i: usize,
    value: Arc<Vec<u8>>,
    ttl: i64,
    interval: Duration,
    crashes: bool,
    k: Arc<Counters>,
    slots: Arc<Semaphore>,
    mut stage: Stage,
) {
    let (lease, mut keeper, mut stream) = match setup(&mut c, i, &value, ttl, &k, &slots).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(target: "sfc::bench", client = i, error = %e, "etcd lease setup failed");
            k.setup_errors.fetch_add(1, Ordering::Relaxed);
            k.error(true, e.to_string());
            return;
        }
    };
    k.ready.fetch_add(1, Ordering::Relaxed);
    // Spread the fleet's keep-alives over the interval, as sfc's clients spread reports.
    let offset = interval.mul_f64((i % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let failed = tokio::select! {
            _ = tick.tick() => {
                // The send waits while the stream's queue is full (etcd or the connection not
                // taking requests): bounded by one interval.
                match bounded("keep-alive send", interval, keeper.keep_alive()).await {
                    Ok(()) => { k.sent.fetch_add(1, Ordering::Relaxed); None }
                    Err(e) => Some(e.to_string()),
                }
            }
            m = stream.message() => match m {
                Ok(Some(r)) if r.ttl() > 0 => { k.acked.fetch_add(1, Ordering::Relaxed); None }
                Ok(Some(_)) => {
                    // Expired: the key is gone; the watcher counts it.
                    k.error(false, "lease expired (keep-alive answered with TTL 0)".into());
                    return;
                }
                Err(e) => Some(e.to_string()),
                Ok(None) => Some("keep-alive stream ended".into()),
            },
            r = stage.changed() => {
                let s = *stage.borrow();
                if r.is_err() || s >= 2 || (crashes && s >= 1) {
                    // Dropping the keeper and the stream ends the keep-alives.
                    return;
                }
                None
            }
        };
        if let Some(e) = failed {
            // As etcd's own clientv3 does, the keep-alive stream is opened again while the
            // lease lives (etcd answers "request timed out" when its apply lags; the lease
            // itself is fine until its TTL passes).
            k.lost.fetch_add(1, Ordering::Relaxed);
            k.error(false, e);
            if *stage.borrow() >= 2 {
                return;
            }
            match bounded(
                "lease keep-alive stream",
                ETCD_WAIT,
                c.lease_keep_alive(lease),
            )
            .await
            {
                Ok((kp, st)) => (keeper, stream) = (kp, st),
                Err(e) => {
                    k.error(false, e.to_string());
                    return;
                }
            }
        }
    }
}

/// Runs the peer with `a`'s clients, interval, duration and scenario; `liveness` is the sfc
/// registry's window (missed-reports x interval), `value_bytes` the size of one report frame.
pub async fn run(a: &BenchArgs, liveness: Duration, value_bytes: usize) -> Result<PeerResults> {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start("--peer"))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let pid = etcd.pid();
    let mut proc = ProcWatch::new(pid);
    let mut own = ProcWatch::new(std::process::id());
    let ttl = (liveness.as_millis() as i64 + 999) / 1000;

    // The watcher first, on its own connection, so it hears every DELETE.
    let mut wc = bounded(
        "connect",
        ETCD_WAIT,
        Client::connect([etcd.endpoint.clone()], Some(options())),
    )
    .await?;
    let mut ws = bounded(
        "watch",
        ETCD_WAIT,
        wc.watch(PREFIX, Some(WatchOptions::new().with_prefix())),
    )
    .await?;
    // The first response confirms the watch is in place.
    match tokio::time::timeout(Duration::from_secs(15), ws.message()).await {
        Ok(Ok(Some(r))) if r.created() => {}
        Ok(Err(e)) => return Err(etcd_error("watch", e)),
        _ => {
            return Err(Error::Timeout(format!(
                "etcd at {} did not confirm the watch",
                etcd.endpoint
            )))
        }
    }
    let deletes: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let watcher = {
        let deletes = deletes.clone();
        tokio::spawn(async move {
            let _keep = wc;
            while let Ok(Some(resp)) = ws.message().await {
                let now = Instant::now();
                for ev in resp.events() {
                    if ev.event_type() != EventType::Delete {
                        continue;
                    }
                    let i = ev
                        .kv()
                        .and_then(|kv| kv.key_str().ok())
                        .and_then(|k| k.strip_prefix(PREFIX))
                        .and_then(|n| n.parse::<usize>().ok());
                    if let Some(i) = i {
                        deletes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, now));
                    }
                }
            }
        })
    };
    let baseline = proc.sample();

    let connections = a.clients.div_ceil(LEASES_PER_CONNECTION).max(1);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(
            bounded(
                "connect",
                ETCD_WAIT,
                Client::connect([etcd.endpoint.clone()], Some(options())),
            )
            .await?,
        );
    }
    let batch = a.batch();
    // Spread over the fleet: every step-th client, `batch` of them.
    let step = a.clients.checked_div(batch).unwrap_or(1).max(1);
    let in_batch = |i: usize| batch > 0 && i.is_multiple_of(step) && i / step < batch;
    let value = Arc::new(vec![b'x'; value_bytes.max(1)]);
    let k = Arc::new(Counters::default());
    let (stage_tx, stage_rx) = watch::channel(0u8);
    let slots = Arc::new(Semaphore::new(SETUP_IN_FLIGHT));

    // Ramp at --connect-rate, as the sfc fleet did.
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = a.connect_rate as f64 / 100.0;
    let mut budget = 0.0;
    while tasks.len() < a.clients {
        tick.tick().await;
        budget += per_tick;
        while budget >= 1.0 && tasks.len() < a.clients {
            budget -= 1.0;
            let i = tasks.len();
            tasks.push(tokio::spawn(lease_client(
                conns[i % connections].clone(),
                i,
                value.clone(),
                ttl,
                a.interval,
                in_batch(i),
                k.clone(),
                slots.clone(),
                stage_rx.clone(),
            )));
        }
    }
    let n = a.clients as u64;
    // etcd sets leases up at its own pace (SETUP_IN_FLIGHT): allow 200 a second and more.
    let ramp_limit = Duration::from_secs_f64(a.clients as f64 / 200.0 + 30.0);
    wait_until(ramp_limit, || {
        k.ready.load(Ordering::Relaxed) + k.setup_errors.load(Ordering::Relaxed) >= n
    })
    .await;
    let ramp_ms = ramp_start.elapsed().as_millis() as u64;
    tokio::time::sleep(a.interval).await;

    // Measure.
    let t0 = Instant::now();
    let cpu0 = proc.sample();
    let own0 = own.sample();
    let acked0 = k.acked.load(Ordering::Relaxed);
    let sent0 = k.sent.load(Ordering::Relaxed);
    let mut act_at = None;
    if a.scenario == Scenario::Crash {
        tokio::time::sleep_until(t0 + a.duration / 2).await;
        act_at = Some(Instant::now());
        let _ = stage_tx.send(1);
        // Until every crashed key is deleted, or twice the TTL and more have passed.
        let granted = k.granted_ttl.load(Ordering::Relaxed).max(ttl as u64);
        let limit = Duration::from_secs(granted * 2 + 5);
        let seen = || {
            deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(i, _)| in_batch(*i))
                .count()
        };
        wait_until(limit, || seen() >= batch).await;
    }
    tokio::time::sleep_until(t0 + a.duration).await;
    let t1 = Instant::now();
    let cpu1 = proc.sample();
    let own1 = own.sample();
    let acked = k.acked.load(Ordering::Relaxed) - acked0;
    let sent = k.sent.load(Ordering::Relaxed) - sent0;
    let _ = stage_tx.send(2);
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let finish = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), finish).await;
    // Whatever did not stop by itself (a task inside a bounded wait) is stopped here.
    for t in aborts {
        t.abort();
    }
    watcher.abort();
    drop(conns);

    let measured_s = t1.duration_since(t0).as_secs_f64();
    let deletes = std::mem::take(&mut *deletes.lock().unwrap_or_else(|e| e.into_inner()));
    let false_expired = deletes.iter().filter(|(i, _)| !in_batch(*i)).count();
    let crash = act_at.map(|at| {
        let delays: Vec<u64> = deletes
            .iter()
            .filter(|(i, seen)| in_batch(*i) && *seen >= at)
            .map(|(_, seen)| seen.duration_since(at).as_micros() as u64)
            .collect();
        Detection {
            batch,
            detected: delays.len(),
            expected_ms: None,
            latency: Latency::of(delays),
        }
    });
    let cpu = match (cpu0, cpu1) {
        (Some(x), Some(y)) => Some(cpu_percent(&x, &y)),
        _ => None,
    };
    let keepalives_per_s = acked as f64 / measured_s;
    let leases = k.ready.load(Ordering::Relaxed);
    // Memory with the leases: sampled at the start of the measured phase (before a crash).
    let rss = cpu0.map(|s| s.rss_bytes);
    let base = baseline.map(|s| s.rss_bytes);
    // Taken in a statement of its own: a guard in the struct expression below would live to
    // its end, and a second lock of the same mutex there would never return (the hang seen in
    // the WIP runs, found with gdb: the main thread waiting in this lock, etcd idle).
    let (first_setup_error, first_stream_error) =
        std::mem::take(&mut *k.first_errors.lock().unwrap_or_else(|e| e.into_inner()));
    let results = PeerResults {
        peer: "etcd",
        endpoint: etcd.endpoint.clone(),
        etcd_pid: pid,
        connections,
        leases,
        setup_errors: k.setup_errors.load(Ordering::Relaxed),
        ttl_s: ttl,
        ttl_granted_s: k.granted_ttl.load(Ordering::Relaxed) as i64,
        value_bytes: value.len(),
        ramp_ms,
        measured_ms: (measured_s * 1000.0) as u64,
        keepalives_sent: sent,
        keepalives_acked: acked,
        keepalives_per_s,
        etcd_cpu_percent: cpu,
        keepalives_per_core_s: cpu
            .filter(|c| *c > 0.0)
            .map(|c| keepalives_per_s / (c / 100.0)),
        etcd_rss_bytes: rss,
        etcd_rss_baseline_bytes: base,
        memory_per_lease_bytes: match (rss, base) {
            (Some(r), Some(b)) if leases > 0 => Some(r.saturating_sub(b) as f64 / leases as f64),
            _ => None,
        },
        bench_cpu_percent: match (own0, own1) {
            (Some(x), Some(y)) => Some(cpu_percent(&x, &y)),
            _ => None,
        },
        false_expired,
        lost_streams: k.lost.load(Ordering::Relaxed),
        first_setup_error,
        first_stream_error,
        crash,
    };
    drop(etcd);
    Ok(results)
}
