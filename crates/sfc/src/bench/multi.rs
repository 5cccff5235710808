//! `sfc bench --spawn --registries N [--workers auto|K]`: several registries sharing one store
//! (with `--registry-arg=--store=etcd`, a real etcd the bench starts), driven by load-generator
//! worker processes.
//!
//! The parent starts etcd, then N `sfc registry` processes (each its own data directory and
//! OS-assigned ports, all serving the first one's certificate so one CA is trusted), one
//! observer session per registry, and K workers: this same binary re-executed as
//! `sfc bench --worker`. A worker reads its slice of the fleet as one JSON line on stdin, runs
//! those clients ([`super::sim`], client `i` on registry `i % N`), prints `{"ready": ...}` once
//! they are connected, follows the phase commands the parent writes to its stdin (`run`,
//! `act`, `drain`, `stop`, one a line) and prints its figures as `{"done": ...}` after the
//! drain. A process holds at most about 20,000 descriptors here, so `auto` takes one worker per
//! [`CLIENTS_PER_WORKER`] clients.
//!
//! Per registry the parent measures accepted reports, false offline (its observer's offline
//! events outside the crashed batch), memory per instance (its RSS with the fleet minus
//! before), its CPU, and how many instances it sees online (`GET /v1/summary` and its
//! observer); for etcd its CPU (/proc) and writes/s (its /metrics). With `--scenario crash`,
//! how soon a watcher on a different registry than the crashed client's hears it go offline.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::etcd_server::{http_get, EtcdCounters, EtcdProcess};
use super::sim::{self, now_us, Action, Fleet, Phase};
use super::target::{cpu_percent, ProcSample, ProcWatch};
use super::{observer, raise_nofile, wait_until, BenchArgs, Latency, Scenario, CLIENTS_PER_SOURCE};
use sfc_client::error::{Error, Result};
use sfc_client::protocol::{Codec, Compression, Wire};
use sfc_client::tls::{ClientTlsOptions, PemSource};

/// Clients per worker with `--workers auto`: under the 20,000 open files a process may hold
/// on these machines, with room for the rest.
pub(super) const CLIENTS_PER_WORKER: usize = 18_000;
/// How long a registry may take to print its two listening lines.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `--workers`: auto or a count.
pub(super) fn workers_for(a: &BenchArgs) -> Result<usize> {
    match a.workers.as_deref() {
        None | Some("auto") => Ok(a.clients.div_ceil(CLIENTS_PER_WORKER).max(1)),
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) && n <= a.clients => Ok(n),
            _ => Err(Error::invalid(
                "--workers",
                format!("{n:?} is not auto or a number in 1 ..= 64 (and at most --clients)"),
            )),
        },
    }
}

/// What one worker drives, sent as one JSON line on its stdin.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerSpec {
    registries: Vec<SocketAddr>,
    ca: String,
    /// Global client indices `first..end` (client `i` uses registry `i % registries.len()`).
    first: usize,
    end: usize,
    total: usize,
    interval_ms: u64,
    connect_rate: u32,
    codec: String,
    compression: String,
    payload_bytes: usize,
    crash: bool,
    /// The crashed batch: global indices `batch_start..total`.
    batch_start: usize,
    sources: usize,
}

/// One worker's counts for the clients it drove on one registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counts {
    clients: usize,
    connected_after_ramp: u64,
    connected_at_end: u64,
    connect_errors: u64,
    lost: u64,
    error_frames: u64,
    sent_in_phase: u64,
    confirmed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum WorkerLine {
    #[serde(rename = "ready")]
    Ready { connected: u64, ramp_ms: u64 },
    #[serde(rename = "done")]
    Done {
        per_registry: Vec<Counts>,
        /// Crashed clients: (index, Unix µs of the crash).
        crashed: Vec<(usize, u64)>,
        cpu_percent: Option<f64>,
    },
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

fn wire_of(codec: &str, compression: &str) -> Result<Wire> {
    let codec = Codec::from_name(codec).ok_or_else(|| Error::invalid("--codec", codec))?;
    Ok(Wire::new(codec, Compression::from_name(compression)))
}

fn tls_for(ca: &str) -> Result<Arc<rustls::ClientConfig>> {
    sfc_client::tls::client_config(&ClientTlsOptions {
        ca: Some(PemSource::parse(ca)),
        cert: None,
        key: None,
    })
}

// ---------------------------------------------------------------------------------------
// The worker (`sfc bench --worker`).

/// Runs as a worker: the spec on stdin's first line, then phase commands.
pub(super) fn worker() -> Result<()> {
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let spec: WorkerSpec = serde_json::from_str(&line)
        .map_err(|e| Error::invalid("worker spec (stdin)", e.to_string()))?;
    if spec.registries.is_empty() || spec.first >= spec.end || spec.end > spec.total {
        return Err(Error::invalid(
            "worker spec (stdin)",
            "no registries or an empty slice",
        ));
    }
    raise_nofile((spec.end - spec.first) as u64 + 1024);
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    // Commands from the parent; end of stdin (the parent gone) stops the worker.
    std::thread::spawn(move || {
        for l in stdin.lines() {
            let p = match l.as_deref().map(str::trim) {
                Ok("run") => Phase::Run,
                Ok("act") => Phase::Act,
                Ok("drain") => Phase::Drain,
                Ok("stop") | Err(_) => Phase::Stop,
                Ok(_) => continue,
            };
            let _ = phase_tx.send(p);
            if p == Phase::Stop {
                return;
            }
        }
        let _ = phase_tx.send(Phase::Stop);
    });
    let rt = crate::cli::runtime()?;
    rt.block_on(worker_run(spec, phase_rx))
}

fn say(line: &WorkerLine) -> Result<()> {
    let text = serde_json::to_string(line).map_err(io_err)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

async fn worker_run(spec: WorkerSpec, mut phase: watch::Receiver<Phase>) -> Result<()> {
    let epoch = Instant::now();
    let tls = tls_for(&spec.ca)?;
    let server_name = sfc_proto::tls::server_name("127.0.0.1")?;
    let wire = wire_of(&spec.codec, &spec.compression)?;
    let interval = Duration::from_millis(spec.interval_ms);
    let metrics = {
        let bytes = spec.payload_bytes;
        tokio::task::spawn_blocking(move || super::payload(bytes))
            .await
            .map_err(io_err)?
    };
    // Source addresses by global index, as one process would use them.
    let sources: Vec<std::net::IpAddr> = (0..spec.sources.min(250))
        .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect();
    let fleets: Vec<Arc<Fleet>> = spec
        .registries
        .iter()
        .map(|addr| {
            Arc::new(Fleet {
                addr: *addr,
                tls: tls.clone(),
                server_name: server_name.clone(),
                sources: sources.clone(),
                interval,
                blast: false,
                action: if spec.crash {
                    Action::Crash
                } else {
                    Action::None
                },
                batch: spec.batch_start..spec.total,
                // Report latency is not timed here (no observer in the worker).
                lat_stride: spec.total + 1,
                metrics: metrics.clone(),
                connect_timeout: Duration::from_secs(10),
                epoch,
                counters: Default::default(),
                marks: Default::default(),
                wire,
            })
        })
        .collect();
    let n = fleets.len();
    let mut own = ProcWatch::new(std::process::id());

    // Ramp at this worker's share of --connect-rate.
    let start = Instant::now();
    let count = spec.end - spec.first;
    let mut tasks = Vec::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = spec.connect_rate.max(1) as f64 / 100.0;
    let mut budget = 0.0;
    let mut i = spec.first;
    while i < spec.end {
        tick.tick().await;
        budget += per_tick;
        while budget >= 1.0 && i < spec.end {
            budget -= 1.0;
            tasks.push(tokio::spawn(sim::run(
                fleets[i % n].clone(),
                i,
                phase.clone(),
            )));
            i += 1;
        }
    }
    let connected = || -> u64 {
        fleets
            .iter()
            .map(|f| f.counters.connected.load(Ordering::Relaxed))
            .sum()
    };
    let limit = Duration::from_secs_f64(count as f64 / spec.connect_rate.max(1) as f64 + 30.0);
    wait_until(limit.saturating_sub(start.elapsed()), || {
        connected() >= count as u64
    })
    .await;
    let after_ramp: Vec<u64> = fleets
        .iter()
        .map(|f| f.counters.connected.load(Ordering::Relaxed))
        .collect();
    say(&WorkerLine::Ready {
        connected: connected(),
        ramp_ms: start.elapsed().as_millis() as u64,
    })?;

    let _ = phase.wait_for(|p| *p != Phase::Ramp).await;
    let cpu0 = own.sample();
    let sent0: Vec<u64> = fleets
        .iter()
        .map(|f| f.counters.sent_in_phase.load(Ordering::Relaxed))
        .collect();
    let _ = phase
        .wait_for(|p| matches!(p, Phase::Drain | Phase::Stop))
        .await;
    let cpu1 = own.sample();
    let at_end: Vec<u64> = fleets
        .iter()
        .map(|f| f.counters.connected.load(Ordering::Relaxed))
        .collect();
    let drained = || -> bool {
        fleets.iter().all(|f| {
            let c = &f.counters;
            c.drained.load(Ordering::Relaxed) >= c.connected.load(Ordering::Relaxed)
        })
    };
    wait_until(Duration::from_secs(20) + interval, drained).await;
    // Marks are Instants in this process: sent as Unix µs, as the parent's observers see.
    let (now_i, now_u) = (Instant::now(), now_us());
    let mut crashed = Vec::new();
    let mut per_registry = Vec::with_capacity(n);
    for (r, f) in fleets.iter().enumerate() {
        let c = &f.counters;
        for (idx, at) in f
            .marks
            .crashed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            crashed.push((*idx, now_u - now_i.duration_since(*at).as_micros() as u64));
        }
        per_registry.push(Counts {
            clients: (spec.first..spec.end).filter(|i| i % n == r).count(),
            connected_after_ramp: after_ramp[r],
            connected_at_end: at_end[r],
            connect_errors: c.connect_errors.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            error_frames: c.error_frames.load(Ordering::Relaxed),
            sent_in_phase: c.sent_in_phase.load(Ordering::Relaxed) - sent0[r],
            confirmed: c.confirmed.load(Ordering::Relaxed),
        });
    }
    say(&WorkerLine::Done {
        per_registry,
        crashed,
        cpu_percent: match (cpu0, cpu1) {
            (Some(x), Some(y)) => Some(cpu_percent(&x, &y)),
            _ => None,
        },
    })?;
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        phase.wait_for(|p| *p == Phase::Stop),
    )
    .await;
    let finish = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), finish).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent.

/// One registry of the fleet, killed by PID when dropped.
struct Registry {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    http: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ADDR` from `PREFIX ADDR (mode)`.
fn addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    line.strip_prefix(prefix)?.split(' ').next()?.parse().ok()
}

impl Registry {
    fn start(dir: PathBuf, args: &[String]) -> Result<Registry> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::write_file(&dir, e))?;
        let exe = std::env::current_exe()?;
        let log = dir.join("registry.log");
        let log_file = std::fs::File::create(&log).map_err(|e| Error::write_file(&log, e))?;
        let mut child = Command::new(&exe)
            .args([
                "registry",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SFC_BENCH_REGISTRY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| io_err(format!("cannot start {} registry: {e}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io_err("registry stdout is not piped"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining stdout so the registry never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut reg = Registry {
            child,
            dir,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let end = std::time::Instant::now() + READY_TIMEOUT;
        let (mut addr, mut http) = (None, None);
        while addr.is_none() || http.is_none() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                return Err(Error::Timeout(format!(
                    "spawned registry did not print its listening lines within {} s (log: {})",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                )));
            };
            addr = addr.or(addr_after(&line, "sfc registry listening on "));
            http = http.or(addr_after(&line, "sfc http listening on "));
        }
        (reg.addr, reg.http) = (addr.unwrap_or(reg.addr), http.unwrap_or(reg.http));
        Ok(reg)
    }

    fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(name)
    }
}

/// Instances the registry at `http` reports online (`GET /v1/summary`, totals.online).
fn online_of(http: SocketAddr) -> Option<u64> {
    let body = http_get(
        &format!("http://{http}/v1/summary"),
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("totals")?.get("online")?.as_u64()
}

/// A worker process, stopped by PID when dropped.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    fn tell(&mut self, what: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{what}").and_then(|_| s.flush());
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Serialize)]
pub struct RegistryFigures {
    pub addr: String,
    pub http: String,
    pub pid: u32,
    /// Clients assigned to it and connected at the end of the measured phase.
    pub clients: usize,
    pub connected_at_end: u64,
    pub reports_offered: u64,
    pub reports_accepted: u64,
    pub accepted_per_s: f64,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub rss_baseline_bytes: Option<u64>,
    /// (RSS at the end - RSS before the fleet) / clients connected to it.
    pub memory_per_instance_bytes: Option<f64>,
    /// Online in its own view at the end of the measured phase: `GET /v1/summary` and its
    /// watcher's count.
    pub online_summary: Option<u64>,
    pub online_watch: u64,
    /// Offline events its watcher saw for clients outside the crashed batch (any registry's).
    pub false_offline: usize,
    pub lost_connections: u64,
    pub connect_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct EtcdFigures {
    pub pid: u32,
    pub endpoint: String,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub puts_per_s: Option<f64>,
    pub deletes_per_s: Option<f64>,
    pub txns_per_s: Option<f64>,
    pub wal_fsyncs_per_s: Option<f64>,
    pub proposals_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct CrashAcross {
    pub batch: usize,
    /// Crashed clients whose own registry's watcher heard them go offline, and how soon.
    pub detected_home: usize,
    pub home: Option<Latency>,
    /// Crashed clients that the watchers on every other registry heard go offline; latency
    /// over every (client, other registry) pair.
    pub detected_elsewhere: usize,
    pub other_registries: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub struct MultiResults {
    pub scenario: Scenario,
    pub codec: &'static str,
    pub clients: usize,
    pub registries: usize,
    pub workers: usize,
    pub interval_ms: u64,
    pub measured_ms: u64,
    pub ramp_ms: u64,
    pub load_average: [f64; 2],
    pub store_args: Vec<String>,
    pub connected_at_end: u64,
    pub accepted_per_s: f64,
    pub false_offline: usize,
    /// The fewest instances any registry reported online (`/v1/summary`) at the end.
    pub min_online_summary: Option<u64>,
    /// Sum of the registries' RSS growth / clients connected.
    pub memory_per_instance_bytes: Option<f64>,
    pub per_registry: Vec<RegistryFigures>,
    pub worker_cpu_percent: Vec<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<CrashAcross>,
}

/// `--store=etcd` or `--store etcd` among the registry flags.
fn wants_etcd(args: &[String]) -> bool {
    args.iter().any(|a| a == "--store=etcd")
        || args.windows(2).any(|w| w[0] == "--store" && w[1] == "etcd")
}

pub(super) fn run(a: &BenchArgs) -> Result<()> {
    let workers = workers_for(a)?;
    // Registries inherit this limit: each holds its share of the fleet.
    raise_nofile((a.clients.div_ceil(a.registries) + 4096) as u64);
    let rt = crate::cli::runtime()?;
    let results = rt.block_on(parent(a, workers))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(io_err)?
        );
    } else {
        print!("{}", render(&results));
    }
    Ok(())
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let h = tokio::task::spawn_blocking(f);
    async move { h.await.map_err(io_err) }
}

async fn parent(a: &BenchArgs, n_workers: usize) -> Result<MultiResults> {
    let load_start = sysinfo::System::load_average().map_or(0.0, |l| l.one);
    let n = a.registries;
    let etcd = if wants_etcd(&a.registry_args)
        && !a
            .registry_args
            .iter()
            .any(|x| x.starts_with("--etcd-endpoints"))
    {
        Some(blocking(|| EtcdProcess::start("--registries")).await??)
    } else {
        None
    };
    let stamp = format!("{}-{}", std::process::id(), sfc_client::model::now_ms());
    let mut regs: Vec<Registry> = Vec::with_capacity(n);
    for r in 0..n {
        let mut args = a.registry_args.clone();
        if let Some(e) = &etcd {
            args.extend(["--etcd-endpoints".to_string(), e.endpoint.clone()]);
        }
        if let Some(first) = regs.first() {
            // One certificate (and so one CA) for the whole fleet.
            args.push("--tls-cert".into());
            args.push(
                first
                    .tls_file(sfc_registry::certs::SERVER)
                    .display()
                    .to_string(),
            );
            args.push("--tls-key".into());
            args.push(
                first
                    .tls_file(sfc_registry::certs::SERVER_KEY)
                    .display()
                    .to_string(),
            );
        }
        let dir = std::env::temp_dir().join(format!("sfc-bench-{stamp}-r{r}"));
        regs.push(blocking(move || Registry::start(dir, &args)).await??);
    }
    let ca = regs[0]
        .tls_file(sfc_registry::certs::CA)
        .display()
        .to_string();
    let tls = tls_for(&ca)?;
    let server_name = sfc_proto::tls::server_name("127.0.0.1")?;
    let epoch = Instant::now();

    // One watcher per registry, before any client.
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let mut seen = Vec::with_capacity(n);
    let mut observers = Vec::with_capacity(n);
    for reg in &regs {
        let fleet = Arc::new(Fleet {
            addr: reg.addr,
            tls: tls.clone(),
            server_name: server_name.clone(),
            sources: Vec::new(),
            interval: a.interval,
            blast: false,
            action: Action::None,
            batch: 0..0,
            lat_stride: 1,
            metrics: Default::default(),
            connect_timeout: Duration::from_secs(10),
            epoch,
            counters: Default::default(),
            marks: Default::default(),
            wire: Wire::JSON,
        });
        let s = Arc::new(observer::Observed::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        observers.push(tokio::spawn(observer::run(
            fleet,
            s.clone(),
            false,
            phase_rx.clone(),
            ready_tx,
        )));
        match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            _ => {
                return Err(Error::Timeout(format!(
                    "observer could not watch {}",
                    reg.addr
                )))
            }
        }
        seen.push(s);
    }
    let mut reg_watch: Vec<ProcWatch> = regs.iter().map(|r| ProcWatch::new(r.child.id())).collect();
    let mut etcd_watch = etcd.as_ref().map(|e| ProcWatch::new(e.pid()));
    let baseline: Vec<Option<ProcSample>> = reg_watch.iter_mut().map(ProcWatch::sample).collect();

    // Workers: contiguous slices of the global indices; the crashed batch is the last tenth.
    let batch = a.batch();
    let batch_start = a.clients - batch;
    let exe = std::env::current_exe()?;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<(usize, Option<String>)>();
    let mut workers = Vec::with_capacity(n_workers);
    for w in 0..n_workers {
        let (first, end) = (a.clients * w / n_workers, a.clients * (w + 1) / n_workers);
        let spec = WorkerSpec {
            registries: regs.iter().map(|r| r.addr).collect(),
            ca: ca.clone(),
            first,
            end,
            total: a.clients,
            interval_ms: a.interval.as_millis() as u64,
            connect_rate: (a.connect_rate as usize).div_ceil(n_workers) as u32,
            codec: a.codec.name().to_string(),
            compression: a.compression.clone(),
            payload_bytes: a.payload_bytes,
            crash: a.scenario == Scenario::Crash,
            batch_start,
            sources: if a.source_addrs > 0 {
                a.source_addrs
            } else {
                a.clients.div_ceil(CLIENTS_PER_SOURCE)
            },
        };
        let mut child = Command::new(&exe)
            .args(["bench", "--worker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io_err(format!("cannot start worker {}: {e}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io_err("worker stdout is not piped"))?;
        let tx = line_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send((w, Some(line)));
            }
            let _ = tx.send((w, None));
        });
        let mut wk = Worker {
            stdin: child.stdin.take(),
            child,
        };
        wk.tell(&serde_json::to_string(&spec).map_err(io_err)?);
        workers.push(wk);
    }
    // Next line of each kind from the workers, bounded; a worker that ends early is an error.
    let mut collect = async |what: &str, limit: Duration| -> Result<Vec<WorkerLine>> {
        let mut got: Vec<Option<WorkerLine>> = (0..n_workers).map(|_| None).collect();
        let end = Instant::now() + limit;
        while got.iter().any(Option::is_none) {
            let next = tokio::time::timeout_at(end, line_rx.recv()).await;
            match next {
                Ok(Some((w, Some(line)))) => {
                    let l: WorkerLine = serde_json::from_str(&line)
                        .map_err(|e| Error::invalid("worker output", format!("{line:?}: {e}")))?;
                    got[w] = Some(l);
                }
                Ok(Some((w, None))) if got[w].is_none() => {
                    return Err(io_err(format!("worker {w} ended before it was {what}")))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "{} of {n_workers} workers not {what} within {} s",
                        got.iter().filter(|g| g.is_none()).count(),
                        limit.as_secs()
                    )))
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    };
    let ramp_start = Instant::now();
    let ramp_limit = Duration::from_secs_f64(a.clients as f64 / a.connect_rate as f64 + 60.0);
    collect("ready", ramp_limit).await?;
    let ramp_ms = ramp_start.elapsed().as_millis() as u64;
    tokio::time::sleep(a.interval).await;

    // Measure.
    let tell =
        |workers: &mut Vec<Worker>, what: &str| workers.iter_mut().for_each(|w| w.tell(what));
    tell(&mut workers, "run");
    let _ = phase_tx.send(Phase::Run);
    let t0 = Instant::now();
    let cpu0: Vec<Option<ProcSample>> = reg_watch.iter_mut().map(ProcWatch::sample).collect();
    let etcd0 = (
        etcd_watch.as_mut().and_then(ProcWatch::sample),
        etcd.as_ref().and_then(EtcdProcess::counters),
    );
    if a.scenario == Scenario::Crash {
        tokio::time::sleep_until(t0 + a.duration / 2).await;
        tell(&mut workers, "act");
        let _ = phase_tx.send(Phase::Act);
    }
    tokio::time::sleep_until(t0 + a.duration).await;
    let t1 = Instant::now();
    let cpu1: Vec<Option<ProcSample>> = reg_watch.iter_mut().map(ProcWatch::sample).collect();
    let etcd1 = (
        etcd_watch.as_mut().and_then(ProcWatch::sample),
        etcd.as_ref().and_then(EtcdProcess::counters),
    );
    let https: Vec<SocketAddr> = regs.iter().map(|r| r.http).collect();
    let online_summary: Vec<Option<u64>> =
        blocking(move || https.into_iter().map(online_of).collect()).await?;
    let online_watch: Vec<u64> = seen
        .iter()
        .map(|s| s.online.load(Ordering::Relaxed))
        .collect();
    tell(&mut workers, "drain");
    let _ = phase_tx.send(Phase::Drain);
    let done = collect(
        "done",
        Duration::from_secs(40) + a.interval + Duration::from_millis(a.clients as u64 / 10),
    )
    .await;
    tell(&mut workers, "stop");
    let _ = phase_tx.send(Phase::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for o in observers {
            let _ = o.await;
        }
    })
    .await;
    let done = done?;
    // Workers exit on `stop`; any still there after 15 s is killed (by its PID) on drop.
    let ws: Vec<Worker> = std::mem::take(&mut workers);
    let _ = blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(15);
        let mut ws = ws;
        for w in ws.iter_mut() {
            drop(w.stdin.take());
            while std::time::Instant::now() < end && !matches!(w.child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .await;

    // Figures.
    let measured_s = t1.duration_since(t0).as_secs_f64();
    let mut counts = vec![Counts::default(); n];
    let mut crashed: Vec<(usize, u64)> = Vec::new();
    let mut worker_cpu = Vec::with_capacity(n_workers);
    for l in done {
        if let WorkerLine::Done {
            per_registry,
            crashed: c,
            cpu_percent,
        } = l
        {
            for (r, x) in per_registry.into_iter().enumerate().take(n) {
                let t = &mut counts[r];
                t.clients += x.clients;
                t.connected_at_end += x.connected_at_end;
                t.connect_errors += x.connect_errors;
                t.lost += x.lost;
                t.sent_in_phase += x.sent_in_phase;
                t.confirmed += x.confirmed;
            }
            crashed.extend(c);
            worker_cpu.push(cpu_percent);
        }
    }
    let in_batch = |i: usize| i >= batch_start;
    // Observer Instants as Unix µs.
    let (now_i, now_u) = (Instant::now(), now_us());
    let unix = |t: Instant| now_u - now_i.duration_since(t).as_micros() as u64;
    let offline: Vec<Vec<(usize, u64)>> = seen
        .iter()
        .map(|s| {
            s.offline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(i, t, _)| (*i, unix(*t)))
                .collect()
        })
        .collect();
    let mut per_registry = Vec::with_capacity(n);
    for (r, reg) in regs.iter().enumerate() {
        let c = &counts[r];
        let rss = cpu1[r].map(|s| s.rss_bytes);
        let base = baseline[r].map(|s| s.rss_bytes);
        per_registry.push(RegistryFigures {
            addr: reg.addr.to_string(),
            http: reg.http.to_string(),
            pid: reg.child.id(),
            clients: c.clients,
            connected_at_end: c.connected_at_end,
            reports_offered: c.sent_in_phase,
            reports_accepted: c.confirmed,
            accepted_per_s: c.confirmed as f64 / measured_s,
            cpu_percent: match (cpu0[r], cpu1[r]) {
                (Some(x), Some(y)) => Some(cpu_percent(&x, &y)),
                _ => None,
            },
            rss_bytes: rss,
            rss_baseline_bytes: base,
            memory_per_instance_bytes: match (rss, base) {
                (Some(x), Some(b)) if c.connected_at_end > 0 => {
                    Some(x.saturating_sub(b) as f64 / c.connected_at_end as f64)
                }
                _ => None,
            },
            online_summary: online_summary[r],
            online_watch: online_watch[r],
            false_offline: offline[r].iter().filter(|(i, _)| !in_batch(*i)).count(),
            lost_connections: c.lost,
            connect_errors: c.connect_errors,
        });
    }
    let crash = (a.scenario == Scenario::Crash).then(|| {
        let first_seen = |r: usize, i: usize, at: u64| {
            offline[r]
                .iter()
                .filter(|(j, t)| *j == i && *t >= at)
                .map(|(_, t)| *t)
                .min()
        };
        let (mut home, mut other, mut everywhere) = (Vec::new(), Vec::new(), 0);
        for (i, at) in &crashed {
            if let Some(t) = first_seen(i % n, *i, *at) {
                home.push(t - at);
            }
            let elsewhere: Vec<u64> = (0..n)
                .filter(|r| *r != i % n)
                .filter_map(|r| first_seen(r, *i, *at).map(|t| t - at))
                .collect();
            if elsewhere.len() == n - 1 {
                everywhere += 1;
            }
            other.extend(elsewhere);
        }
        CrashAcross {
            batch,
            detected_home: home.len(),
            home: Latency::of(home),
            detected_elsewhere: everywhere,
            other_registries: Latency::of(other),
        }
    });
    let etcd_figures = etcd.as_ref().map(|e| {
        let rate = |f: fn(&EtcdCounters) -> f64| match (etcd0.1, etcd1.1) {
            (Some(x), Some(y)) => Some((f(&y) - f(&x)) / measured_s),
            _ => None,
        };
        EtcdFigures {
            pid: e.pid(),
            endpoint: e.endpoint.clone(),
            cpu_percent: match (etcd0.0, etcd1.0) {
                (Some(x), Some(y)) => Some(cpu_percent(&x, &y)),
                _ => None,
            },
            rss_bytes: etcd1.0.map(|s| s.rss_bytes),
            puts_per_s: rate(|c| c.puts),
            deletes_per_s: rate(|c| c.deletes),
            txns_per_s: rate(|c| c.txns),
            wal_fsyncs_per_s: rate(|c| c.wal_fsyncs),
            proposals_per_s: rate(|c| c.proposals_committed),
        }
    });
    let connected_at_end: u64 = counts.iter().map(|c| c.connected_at_end).sum();
    let grown: Option<u64> = per_registry
        .iter()
        .map(|r| Some(r.rss_bytes?.saturating_sub(r.rss_baseline_bytes?)))
        .sum();
    let results = MultiResults {
        scenario: a.scenario,
        codec: a.codec.name(),
        clients: a.clients,
        registries: n,
        workers: n_workers,
        interval_ms: a.interval.as_millis() as u64,
        measured_ms: (measured_s * 1000.0) as u64,
        ramp_ms,
        load_average: [
            load_start,
            sysinfo::System::load_average().map_or(0.0, |l| l.one),
        ],
        store_args: a.registry_args.clone(),
        connected_at_end,
        accepted_per_s: per_registry.iter().map(|r| r.accepted_per_s).sum(),
        false_offline: per_registry.iter().map(|r| r.false_offline).sum(),
        min_online_summary: per_registry
            .iter()
            .map(|r| r.online_summary)
            .min()
            .flatten(),
        memory_per_instance_bytes: grown
            .filter(|_| connected_at_end > 0)
            .map(|g| g as f64 / connected_at_end as f64),
        per_registry,
        worker_cpu_percent: worker_cpu,
        etcd: etcd_figures,
        crash,
    };
    drop(regs);
    drop(etcd);
    Ok(results)
}

fn render(r: &MultiResults) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.1}{unit}"));
    let _ = writeln!(
        s,
        "sfc bench: {} clients over {} registries ({}), {} worker process(es), {} ms interval, {} ({}), ramp {:.1} s, measured {:.1} s, load {:.2} -> {:.2}",
        r.clients, r.registries, r.store_args.join(" "), r.workers, r.interval_ms,
        r.scenario.name(), r.codec, r.ramp_ms as f64 / 1000.0, r.measured_ms as f64 / 1000.0,
        r.load_average[0], r.load_average[1]
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>8} {:>9} {:>11} {:>8} {:>12} {:>10} {:>10} {:>8}",
        "registry",
        "clients",
        "connected",
        "accepted/s",
        "CPU %",
        "KiB/instance",
        "online",
        "(watch)",
        "false off"
    );
    for g in &r.per_registry {
        let _ = writeln!(
            s,
            "  {:<22} {:>8} {:>9} {:>11.0} {:>8} {:>12} {:>10} {:>10} {:>8}",
            g.addr,
            g.clients,
            g.connected_at_end,
            g.accepted_per_s,
            opt(g.cpu_percent, ""),
            opt(g.memory_per_instance_bytes.map(|b| b / 1024.0), ""),
            g.online_summary.map_or("n/a".into(), |o| o.to_string()),
            g.online_watch,
            g.false_offline
        );
    }
    let _ = writeln!(
        s,
        "  {:<22} {:>8} {:>9} {:>11.0} {:>8} {:>12} {:>10} {:>10} {:>8}",
        "fleet",
        r.clients,
        r.connected_at_end,
        r.accepted_per_s,
        "",
        opt(r.memory_per_instance_bytes.map(|b| b / 1024.0), ""),
        r.min_online_summary
            .map_or("n/a".into(), |o| format!("min {o}")),
        "",
        r.false_offline
    );
    if let Some(e) = &r.etcd {
        let _ = writeln!(
            s,
            "etcd (pid {}): CPU {} % of a core, RSS {}, puts {}/s, deletes {}/s, txns {}/s, WAL fsyncs {}/s, proposals {}/s",
            e.pid, opt(e.cpu_percent, ""),
            e.rss_bytes.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            opt(e.puts_per_s, ""), opt(e.deletes_per_s, ""), opt(e.txns_per_s, ""),
            opt(e.wal_fsyncs_per_s, ""), opt(e.proposals_per_s, "")
        );
    }
    let cpus: Vec<String> = r.worker_cpu_percent.iter().map(|c| opt(*c, " %")).collect();
    let _ = writeln!(s, "workers' CPU: {}", cpus.join(", "));
    if let Some(c) = &r.crash {
        let l = |l: &Option<Latency>| l.as_ref().map_or("none".into(), Latency::render);
        let _ = writeln!(s, "crash of {}: own registry's watcher heard {} ({}); watchers on every other registry heard {} ({})",
            c.batch, c.detected_home, l(&c.home), c.detected_elsewhere, l(&c.other_registries));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_etcd_store_flag() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants_etcd(&v(&["--store=etcd"])));
        assert!(wants_etcd(&v(&[
            "--missed-reports",
            "3",
            "--store",
            "etcd"
        ])));
        assert!(!wants_etcd(&v(&["--store=memory"])));
    }

    #[test]
    fn reads_listening_lines() {
        assert_eq!(
            addr_after(
                "sfc http listening on 127.0.0.1:80 (plaintext)",
                "sfc http listening on "
            ),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(addr_after("hello", "sfc http listening on "), None);
    }
}
