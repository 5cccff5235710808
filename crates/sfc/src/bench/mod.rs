//! `sfc bench`: what a registry carries on this hardware.
//!
//! N simulated service instances ([`sim`]), each a real TLS connection speaking protocol v1,
//! run as tasks in this process against a registry ([`target`]: one spawned as a child
//! process, or one already running), while an observer session ([`observer`]) watches every
//! transition and the per-report updates of a sample of the fleet. The run has phases: the
//! fleet connects at `--connect-rate`, then `--duration` is measured (with the scenario's
//! action part way through), then every client confirms what the registry processed with a
//! ping. Timings are printed, never asserted.

mod etcd_server;
mod multi;
pub mod observer;
#[cfg(feature = "etcd")]
pub mod peer;
pub mod sim;
pub mod target;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::value::parse_duration;
use sfc_client::error::{Error, Result};
use sfc_client::protocol::{Codec, Compression, Message, Report, Wire};
use sfc_client::tls::{ClientTlsOptions, PemSource};
use sim::{Action, Fleet, Phase};
use target::{ProcSample, ProcWatch, Spawned};

/// What the run does besides reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every client reports once per interval.
    Steady,
    /// Every client sends reports back to back (windows of 16, each confirmed by a ping):
    /// the registry's maximum throughput.
    Max,
    /// A batch of clients drops its connections abruptly half way through.
    Crash,
    /// A batch of clients stops sending a quarter of the way through, sockets left open.
    Hang,
    /// The spawned registry is killed and restarted a third of the way through.
    Storm,
    /// Every client drops its connection a third of the way through and joins again at once,
    /// resuming its TLS session: re-joins per second with abbreviated handshakes.
    Rejoin,
}

/// Another system driven with the same fleet in the same run (`--peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// A real etcd on this machine (Debian's etcd-server): one lease with a keep-alive stream
    /// and one key per client.
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Simulated clients, one connection each.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Report interval of every client (100ms ..= 1h).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Length of the measured phase, after the whole fleet has connected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// New connections per second while the fleet connects.
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u32,
    /// Pad every report with custom gauges to about this many bytes of JSON (0: a sampled
    /// report as it is).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Start `sfc registry` as a child process (on 127.0.0.1, a fresh data directory).
    #[arg(long, conflicts_with = "registry")]
    pub spawn: bool,
    /// Address of a running registry (host:port).
    #[arg(long, required_unless_present_any = ["spawn", "worker"])]
    pub registry: Option<String>,
    /// CA that signed the running registry's certificate (PEM file).
    #[arg(long, requires = "registry")]
    pub ca: Option<String>,
    /// PID of the running registry, to read its CPU and memory from /proc.
    #[arg(long, requires = "registry")]
    pub registry_pid: Option<u32>,
    /// Extra flag for the spawned registry, e.g. --registry-arg=--store=memory (repeatable).
    #[arg(long = "registry-arg", requires = "spawn", allow_hyphen_values = true)]
    pub registry_args: Vec<String>,
    /// Codec the simulated clients offer (the only one; the registry must pick it): json or
    /// protobuf.
    #[arg(long, default_value = "json", value_parser = parse_codec)]
    pub codec: Codec,
    /// Frame compression the simulated clients offer: none or zstd (frames above the
    /// threshold only).
    #[arg(long, default_value = "none", value_parser = ["none", "zstd"])]
    pub compression: String,
    /// Loopback source addresses (127.0.0.2, 127.0.0.3, ...) to spread connections over;
    /// 0: one per 1,000 clients.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// After the sfc run, drive the same clients against this system and print both side by
    /// side (steady and crash; etcd needs the `etcd` build feature and etcd on PATH).
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// Spawn this many registries sharing one store (with --spawn, scenario steady or crash):
    /// with --registry-arg=--store=etcd the bench also starts a real etcd (Debian's
    /// etcd-server, on PATH) for them. Clients are spread round-robin; figures per registry
    /// and for the fleet, etcd's CPU and writes/s, and with crash how soon a watcher on
    /// another registry hears of it.
    #[arg(long, default_value_t = 1)]
    pub registries: usize,
    /// Load-generator processes (this binary re-executed) driving the clients: auto (one per
    /// 18,000 clients, under a process's 20,000 open files) or a number. Implies the
    /// several-registry mode (also with --registries 1).
    #[arg(long)]
    pub workers: Option<String>,
    /// Internal: run as one of those load-generator processes (spec and phases on stdin).
    #[arg(long, hide = true)]
    pub worker: bool,
}

fn parse_codec(s: &str) -> std::result::Result<Codec, String> {
    Codec::from_name(s).ok_or_else(|| format!("unknown codec {s:?} (expected json or protobuf)"))
}

impl BenchArgs {
    /// `--compression` (clap allows only `none` and `zstd`).
    fn compression(&self) -> Option<Compression> {
        Compression::from_name(&self.compression)
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Max => "max",
            Scenario::Crash => "crash",
            Scenario::Hang => "hang",
            Scenario::Storm => "storm",
            Scenario::Rejoin => "rejoin",
        }
    }
}

/// Clients per loopback source address. Ports picked by bind() come from half of the
/// ~28,000 ephemeral ports, and the kernel search for a free one slows as they fill up.
const CLIENTS_PER_SOURCE: usize = 1_000;

impl BenchArgs {
    fn check(&self) -> Result<()> {
        if self.clients == 0 || self.clients > 1_000_000 {
            return Err(Error::invalid(
                "--clients",
                format!("{} is outside 1 ..= 1000000", self.clients),
            ));
        }
        sfc_client::limits::check_interval_ms(self.interval.as_millis() as u64).map_err(|_| {
            Error::invalid(
                "--interval",
                format!(
                    "{} is outside 100ms ..= 1h",
                    sfc_client::duration::format(self.interval)
                ),
            )
        })?;
        if self.duration.is_zero() {
            return Err(Error::invalid("--duration", "must be longer than 0s"));
        }
        if self.connect_rate == 0 {
            return Err(Error::invalid(
                "--connect-rate",
                "must be at least 1 connection per second",
            ));
        }
        if self.payload_bytes > sfc_client::protocol::DEFAULT_MAX_FRAME / 2 {
            return Err(Error::invalid(
                "--payload-bytes",
                format!(
                    "{} is over the limit of {}",
                    self.payload_bytes,
                    sfc_client::protocol::DEFAULT_MAX_FRAME / 2
                ),
            ));
        }
        if self.source_addrs > 250 {
            return Err(Error::invalid(
                "--source-addrs",
                format!(
                    "{} is over 250 (127.0.0.2 ..= 127.0.0.251)",
                    self.source_addrs
                ),
            ));
        }
        if self.peer.is_some() && !matches!(self.scenario, Scenario::Steady | Scenario::Crash) {
            return Err(Error::invalid(
                "--peer",
                format!(
                    "runs with --scenario steady or crash, not {}",
                    self.scenario.name()
                ),
            ));
        }
        if self.peer == Some(Peer::Etcd) && !cfg!(feature = "etcd") {
            return Err(Error::invalid(
                "--peer",
                "etcd needs an sfc built with the etcd feature (cargo build --features sfc/etcd)",
            ));
        }
        if self.registries == 0 || self.registries > 16 {
            return Err(Error::invalid(
                "--registries",
                format!("{} is outside 1 ..= 16", self.registries),
            ));
        }
        if self.multi() {
            if !self.spawn {
                return Err(Error::invalid("--registries", "needs --spawn (the bench starts them)"));
            }
            if !matches!(self.scenario, Scenario::Steady | Scenario::Crash) {
                return Err(Error::invalid(
                    "--registries",
                    format!("runs with --scenario steady or crash, not {}", self.scenario.name()),
                ));
            }
            if self.peer.is_some() {
                return Err(Error::invalid("--peer", "runs with one registry, not with --registries or --workers"));
            }
            multi::workers_for(self)?;
        }
        if self.scenario == Scenario::Storm && !self.spawn {
            return Err(Error::invalid(
                "--scenario",
                "storm restarts the registry, so it needs --spawn",
            ));
        }
        Ok(())
    }

    /// Several registries or worker processes (`multi`).
    fn multi(&self) -> bool {
        self.registries > 1 || self.workers.is_some()
    }

    /// Clients that crash or hang: a tenth of the fleet, at most 1,000.
    fn batch(&self) -> usize {
        match self.scenario {
            Scenario::Crash | Scenario::Hang => (self.clients / 10).clamp(1, 1000),
            Scenario::Rejoin => self.clients,
            _ => 0,
        }
    }
}

/// Raises this process's open-file limit so that it holds `want` descriptors: the hard limit
/// too when allowed (root), which a spawned registry inherits. Returns the soft limit reached.
fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((1024, 1024));
    if hard < want {
        if let Err(e) = rlimit::setrlimit(Resource::NOFILE, want, want) {
            tracing::warn!(target: "sfc::bench", hard, want, error = %e, "cannot raise the hard open-file limit");
        }
    }
    rlimit::increase_nofile_limit(want.max(soft)).unwrap_or(soft)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.worker {
        return multi::worker();
    }
    a.check()?;
    if a.multi() {
        return multi::run(&a);
    }
    // Each client is one socket here and one in the registry; leave room for the rest.
    let nofile = raise_nofile(a.clients as u64 + 4096);
    if nofile < a.clients as u64 + 64 {
        eprintln!(
            "warning: open-file limit is {nofile}, below {} clients; expect connect errors",
            a.clients
        );
    }
    let rt = crate::cli::runtime()?;
    let results = rt.block_on(bench(&a, nofile))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results)
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
        );
    } else {
        print!("{}", results.render());
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut v: Vec<u64>) -> Option<Latency> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let pick = |q: f64| {
            v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
        };
        Some(Latency {
            samples: v.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        })
    }

    fn render(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.samples
        )
    }
}

/// Time from a batch's crash or hang to the registry's `offline` event at the observer.
#[derive(Debug, Serialize)]
pub struct Detection {
    pub batch: usize,
    pub detected: usize,
    /// For `hang`: missed-reports x interval, from the welcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<u64>,
    pub latency: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub struct Storm {
    /// From the kill to the new registry's listening line.
    pub restart_ms: u64,
    /// Clients connected again (counted at the clients).
    pub reconnected: usize,
    /// From the new registry listening to the last client's welcome.
    pub all_online_ms: Option<u64>,
    /// Most welcomes within any one second after the restart.
    pub peak_connects_per_s: usize,
    pub connect_errors: u64,
    /// Online in the registry's view (the observer's) at the end.
    pub online_at_end: u64,
    /// The re-joins, from the new registry listening: their handshakes are full, since the
    /// new process has new ticket keys.
    pub joins: Joins,
}

/// Joins the simulated clients made in one part of the run: counted at the clients (a
/// welcome), with their TLS handshakes by kind as rustls reports it on the client side (the
/// registry's `sfc_registry_tls_handshakes_total{kind}` counts the same handshakes).
#[derive(Debug, Serialize)]
pub struct Joins {
    pub joins: usize,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
    /// From the start (of the ramp, of the drop, of the new registry listening) to the last
    /// welcome.
    pub ms: u64,
    pub per_s: f64,
    /// CPU time the registry and the load generator spent over the same span, per join: what
    /// a join costs each side, whatever else the shared machine was doing.
    pub registry_cpu_us_per_join: Option<f64>,
    pub bench_cpu_us_per_join: Option<f64>,
}

impl Joins {
    /// Welcomes since `from`, and the handshakes counted since `(handshakes, resumed)` were
    /// read from the counters.
    fn since(fleet: &Fleet, from: Instant, (handshakes, resumed): (u64, u64)) -> Joins {
        let welcomes = fleet.marks.welcomes.lock().unwrap_or_else(|e| e.into_inner());
        let mut joins = 0;
        let mut last = from;
        for w in welcomes.iter().filter(|w| **w >= from) {
            joins += 1;
            last = last.max(*w);
        }
        let c = &fleet.counters;
        let resumed_now = c.resumed.load(Ordering::Relaxed).saturating_sub(resumed);
        let all = c.handshakes.load(Ordering::Relaxed).saturating_sub(handshakes);
        let secs = last.duration_since(from).as_secs_f64();
        Joins {
            joins,
            full_handshakes: all.saturating_sub(resumed_now),
            resumed_handshakes: resumed_now,
            ms: (secs * 1000.0) as u64,
            per_s: if secs > 0.0 { joins as f64 / secs } else { 0.0 },
            registry_cpu_us_per_join: None,
            bench_cpu_us_per_join: None,
        }
    }

    /// Sets the CPU per join from samples of the registry and of this process taken before
    /// and after the joins.
    fn with_cpu(mut self, registry: [Option<ProcSample>; 2], bench: [Option<ProcSample>; 2]) -> Joins {
        let per_join = |[a, b]: [Option<ProcSample>; 2]| {
            let ms = b?.cpu_ms.checked_sub(a?.cpu_ms)?;
            (self.joins > 0).then(|| ms as f64 * 1000.0 / self.joins as f64)
        };
        self.registry_cpu_us_per_join = per_join(registry);
        self.bench_cpu_us_per_join = per_join(bench);
        self
    }

    /// The counters `since` starts from.
    fn mark(fleet: &Fleet) -> (u64, u64) {
        let c = &fleet.counters;
        (c.handshakes.load(Ordering::Relaxed), c.resumed.load(Ordering::Relaxed))
    }

    fn render(&self) -> String {
        let us = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0} µs"));
        format!(
            "{} in {:.2} s: {:.0}/s ({} full TLS handshakes, {} resumed); CPU per join: registry {}, load generator {}",
            self.joins,
            self.ms as f64 / 1000.0,
            self.per_s,
            self.full_handshakes,
            self.resumed_handshakes,
            us(self.registry_cpu_us_per_join),
            us(self.bench_cpu_us_per_join),
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub scenario: Scenario,
    /// `--codec` and `--compression` of the simulated clients.
    pub codec: &'static str,
    pub compression: &'static str,
    pub clients: usize,
    pub interval_ms: u64,
    /// Missed-reports x interval, from the registry's welcome.
    pub liveness_ms: u64,
    pub measured_ms: u64,
    pub registry: String,
    pub registry_pid: Option<u32>,
    pub open_file_limit: u64,
    /// 1-minute load average when the run started and when it ended: other work on the
    /// machine competes with the registry and the load generator.
    pub load_average: [f64; 2],
    pub source_addrs: usize,
    /// Connected when the ramp ended.
    pub connected: u64,
    pub connected_at_end: u64,
    pub connect_errors: u64,
    pub ramp_ms: u64,
    /// The ramp's joins: fresh ones (full handshakes), at most `--connect-rate` a second.
    pub ramp_joins: Joins,
    pub connect_rate: u32,
    pub online_seen: u64,
    pub reports_offered: u64,
    pub offered_per_s: f64,
    pub reports_accepted: u64,
    pub accepted_per_s: f64,
    pub registry_cpu_percent: Option<f64>,
    pub registry_rss_bytes: Option<u64>,
    pub registry_rss_baseline_bytes: Option<u64>,
    pub memory_per_instance_bytes: Option<f64>,
    pub bench_cpu_percent: Option<f64>,
    pub latency: Option<Latency>,
    pub report_frame_bytes: usize,
    pub wire_bytes_per_report: Option<f64>,
    pub false_offline: usize,
    /// False offline events by the reason the registry gave.
    pub false_offline_reasons: std::collections::BTreeMap<String, usize>,
    pub lost_connections: u64,
    pub error_frames: u64,
    pub rate_limited: u64,
    pub observer_lagged: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<Detection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hang: Option<Detection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
    /// `rejoin`: the whole fleet dropping its connections at once and joining again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<Joins>,
    /// `--peer etcd`: the same fleet as etcd leases, measured after the sfc run.
    #[cfg(feature = "etcd")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<peer::PeerResults>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Results {
    fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let secs = self.measured_ms as f64 / 1000.0;
        let _ = writeln!(
            s,
            "sfc bench: scenario {}, codec {}, compression {}, {} clients, interval {} ms, measured {:.1} s",
            self.scenario.name(),
            self.codec,
            self.compression,
            self.clients,
            self.interval_ms,
            secs
        );
        let _ = writeln!(
            s,
            "  registry             {} (pid {}), open-file limit {}, {} source address(es)",
            self.registry,
            self.registry_pid
                .map_or("unknown".into(), |p| p.to_string()),
            self.open_file_limit,
            self.source_addrs
        );
        let _ = writeln!(s, "  machine load         {:.2} at the start, {:.2} at the end (1-minute average, {} cpus)",
            self.load_average[0], self.load_average[1], std::thread::available_parallelism().map_or(0, |n| n.get()));
        let _ = writeln!(s, "  connected            {}/{} in {:.2} s, {} connect errors; at the end {} connected, {} online as watched",
            self.connected, self.clients, self.ramp_ms as f64 / 1000.0, self.connect_errors, self.connected_at_end, self.online_seen);
        let _ = writeln!(s, "  joins                {} from the ramp's start, --connect-rate {}",
            self.ramp_joins.render(), self.connect_rate);
        let _ = writeln!(
            s,
            "  reports/s offered    {:.0} ({} reports)",
            self.offered_per_s, self.reports_offered
        );
        let _ = writeln!(
            s,
            "  reports/s accepted   {:.0} ({} reports confirmed processed by the registry)",
            self.accepted_per_s, self.reports_accepted
        );
        match &self.latency {
            Some(l) => {
                let _ = writeln!(s, "  report->watcher      {}", l.render());
            }
            None if self.scenario == Scenario::Max => {
                let _ = writeln!(
                    s,
                    "  report->watcher      not timed in max (queues are full by design)"
                );
            }
            None => {
                let _ = writeln!(s, "  report->watcher      no samples");
            }
        }
        match (self.registry_cpu_percent, self.registry_rss_bytes) {
            (Some(cpu), Some(rss)) => {
                let _ = writeln!(s, "  registry cpu         {cpu:.1} % of one core");
                let _ = writeln!(s, "  registry rss         {:.1} MiB (baseline {:.1} MiB), {} per connected instance",
                    mib(rss), mib(self.registry_rss_baseline_bytes.unwrap_or(0)),
                    self.memory_per_instance_bytes.map_or("n/a".into(), |b| format!("{:.1} KiB", b / 1024.0)));
            }
            _ => {
                let _ = writeln!(s, "  registry cpu, rss    unknown (give --registry-pid)");
            }
        }
        if let Some(c) = self.bench_cpu_percent {
            let _ = writeln!(
                s,
                "  bench cpu            {c:.1} % of one core (load generator, same machine)"
            );
        }
        let _ = writeln!(
            s,
            "  bytes per report     {} on the wire (frame {} bytes, TLS records included)",
            self.wire_bytes_per_report
                .map_or("n/a".into(), |b| format!("{b:.0}")),
            self.report_frame_bytes
        );
        let reasons: Vec<String> = self
            .false_offline_reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        let _ = writeln!(s, "  false offline        {}{} (lost connections {}, error frames {}, observer lagged {})",
            self.false_offline, if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join(", ")) },
            self.lost_connections, self.error_frames, self.observer_lagged);
        if self.rate_limited > 0 {
            let _ = writeln!(s, "  rate limited         {} error frames: the registry dropped reports over its --max-frame-rate (not counted as accepted)",
                self.rate_limited);
        }
        for (name, d) in [("crash", &self.crash), ("hang", &self.hang)] {
            if let Some(d) = d {
                let _ = writeln!(
                    s,
                    "  {name:<5} detection      {}/{} offline{}: {}",
                    d.detected,
                    d.batch,
                    d.expected_ms
                        .map_or(String::new(), |e| format!(" (expected {e} ms)")),
                    d.latency
                        .as_ref()
                        .map_or("no samples".into(), Latency::render)
                );
            }
        }
        if let Some(st) = &self.storm {
            let _ = writeln!(s, "  storm                restart {} ms; {} clients back, all online {} after listening; peak {} connects/s; {} connect errors; {} online as watched",
                st.restart_ms, st.reconnected,
                st.all_online_ms.map_or("never".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0)),
                st.peak_connects_per_s, st.connect_errors, st.online_at_end);
            let _ = writeln!(s, "  storm re-joins       {} from the new registry listening", st.joins.render());
        }
        if let Some(r) = &self.rejoin {
            let _ = writeln!(s, "  re-joins             {} from the whole fleet dropping its connections", r.render());
        }
        #[cfg(feature = "etcd")]
        if let Some(p) = &self.peer {
            s.push_str(&self.render_beside(p));
        }
        s
    }

    /// The sfc figures beside the peer's, one row per figure.
    #[cfg(feature = "etcd")]
    fn render_beside(&self, p: &peer::PeerResults) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".into(), f);
        let per_core = |rate: f64, cpu: Option<f64>| {
            cpu.filter(|c| *c > 0.0).map(|c| rate / (c / 100.0))
        };
        let det = |d: &Option<Detection>| {
            d.as_ref().map_or("-".into(), |d| {
                format!(
                    "{}/{}{}",
                    d.detected,
                    d.batch,
                    d.latency.as_ref().map_or(String::new(), |l| format!(
                        ", p50 {:.0} ms, p99 {:.0} ms",
                        l.p50_ms, l.p99_ms
                    ))
                )
            })
        };
        let _ = writeln!(s, "beside etcd (pid {}, {}, {} connection(s), one keep-alive stream per lease):", p.etcd_pid, p.endpoint, p.connections);
        let _ = writeln!(s, "  {:<34} {:>28} {:>28}", "", "sfc registry", "etcd");
        let mut row = |name: &str, a: String, b: String| {
            let _ = writeln!(s, "  {name:<34} {a:>28} {b:>28}");
        };
        row("instances / leases", format!("{}", self.connected_at_end), format!("{} ({} setup errors)", p.leases, p.setup_errors));
        row("liveness / lease TTL", format!("{} ms", self.liveness_ms), format!("{} s asked, {} s granted", p.ttl_s, p.ttl_granted_s));
        row("report / key value bytes", format!("{}", self.report_frame_bytes), format!("{}", p.value_bytes));
        row("reports / keep-alives per s", format!("{:.0}", self.accepted_per_s), format!("{:.0}", p.keepalives_per_s));
        row("server CPU, % of one core", opt(self.registry_cpu_percent, &|c| format!("{c:.1}")), opt(p.etcd_cpu_percent, &|c| format!("{c:.1}")));
        row("per s per core", opt(per_core(self.accepted_per_s, self.registry_cpu_percent), &|r| format!("{r:.0}")), opt(p.keepalives_per_core_s, &|r| format!("{r:.0}")));
        row("memory per instance / lease", opt(self.memory_per_instance_bytes, &|b| format!("{:.1} KiB", b / 1024.0)), opt(p.memory_per_lease_bytes, &|b| format!("{:.1} KiB", b / 1024.0)));
        row("false offline / expired", format!("{}", self.false_offline), format!("{} ({} streams lost)", p.false_expired, p.lost_streams));
        row("crash -> watcher hears", det(&self.crash), det(&p.crash));
        row("bench CPU, % of one core", opt(self.bench_cpu_percent, &|c| format!("{c:.1}")), opt(p.bench_cpu_percent, &|c| format!("{c:.1}")));
        for (what, e) in [("first etcd setup error", &p.first_setup_error), ("first keep-alive stream error", &p.first_stream_error)] {
            if let Some(e) = e {
                let _ = writeln!(s, "  {what}: {e}");
            }
        }
        s
    }
}

/// A sampled report, padded with custom gauges to about `bytes` of JSON.
fn payload(bytes: usize) -> sfc_client::model::Metrics {
    let mut sampler = sfc_client::metrics::Sampler::new();
    // CPU figures need two readings 200 ms apart; a real client's reports have them.
    std::thread::sleep(Duration::from_millis(250));
    let mut metrics = sampler.sample();
    metrics
        .custom
        .insert(sim::SENT_GAUGE.to_string(), sim::now_us() as f64);
    let mut n = 0;
    while encoded_len(&metrics, &Wire::JSON) < bytes && n < 100_000 {
        metrics.custom.insert(format!("pad_{n:05}"), 1234.5678);
        n += 1;
    }
    metrics
}

fn encoded_len(metrics: &sfc_client::model::Metrics, wire: &Wire) -> usize {
    let msg = Message::Report(Report {
        seq: 1,
        sent_at: Some(1),
        health: Some(sfc_client::model::Health::Passing),
        health_note: None,
        metrics: metrics.clone(),
    });
    wire.encode(&msg).len()
}

/// Waits until `done` holds or `limit` passes; polls every 20 ms. True if it held.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(target::cpu_percent(&a?, &b?))
}

/// The registry under test: spawned by the bench (`--spawn`) or given by address.
struct Target {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    /// The registry's pid, when known: its CPU and memory are measured.
    pid: Option<u32>,
    spawned: Option<Spawned>,
}

/// Starts the registry (`--spawn`) or resolves `--registry`, and builds the clients' TLS config.
async fn connect_target(a: &BenchArgs) -> Result<Target> {
    let mut spawned = None;
    let (addr, server_name, ca, pid) = if a.spawn {
        let dir = std::env::temp_dir().join(format!(
            "sfc-bench-{}-{}",
            std::process::id(),
            sfc_client::model::now_ms()
        ));
        let extra = a.registry_args.clone();
        let s = tokio::task::spawn_blocking(move || Spawned::start("127.0.0.1:0", dir, extra))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let out = (
            s.addr,
            "127.0.0.1".to_string(),
            Some(s.ca().display().to_string()),
            Some(s.pid()),
        );
        spawned = Some(s);
        out
    } else {
        let text = a.registry.clone().unwrap_or_default();
        let (host, port) = sfc_client::split_host_port(&text)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::invalid("--registry", format!("cannot resolve {text:?}: {e}")))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| Error::invalid("--registry", format!("{text:?} has no IPv4 address")))?;
        (addr, host, a.ca.clone(), a.registry_pid)
    };
    let tls = sfc_client::tls::client_config(&ClientTlsOptions {
        ca: ca.as_deref().map(PemSource::parse),
        cert: None,
        key: None,
    })?;
    let server_name = sfc_proto::tls::server_name(&server_name)?;

    Ok(Target { addr, tls, server_name, pid, spawned })
}

/// The simulated fleet's shared settings: source addresses, the report each client sends, the
/// scenario's action and its batch. Also returns the size of one report frame.
async fn fleet_for(a: &BenchArgs, target: &Target, epoch: Instant) -> Result<(Arc<Fleet>, usize)> {
    let addr = target.addr;
    // Loopback source addresses only make sense for a loopback target.
    let sources: Vec<IpAddr> = if addr.ip().is_loopback() {
        let n = if a.source_addrs > 0 {
            a.source_addrs
        } else {
            a.clients.div_ceil(CLIENTS_PER_SOURCE)
        };
        (0..n.min(250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect()
    } else {
        Vec::new()
    };
    let metrics = tokio::task::spawn_blocking({
        let bytes = a.payload_bytes;
        move || payload(bytes)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let wire = Wire::new(a.codec, a.compression());
    let report_frame_bytes =
        encoded_len(&metrics, &wire) + sfc_client::protocol::frame::FRAME_HEADER_LEN;
    // Time about 500 report updates a second at the observer, at least one client.
    let per_second = (a.clients as f64 / a.interval.as_secs_f64()).max(1.0);
    let lat_stride = ((per_second / 500.0).ceil() as usize).max(1);
    let batch = a.batch();
    let fleet = Arc::new(Fleet {
        addr,
        tls: target.tls.clone(),
        server_name: target.server_name.clone(),
        sources,
        interval: a.interval,
        blast: a.scenario == Scenario::Max,
        action: match a.scenario {
            Scenario::Crash => Action::Crash,
            Scenario::Hang => Action::Hang,
            Scenario::Rejoin => Action::Rejoin,
            _ => Action::None,
        },
        batch: a.clients - batch..a.clients,
        lat_stride,
        metrics,
        connect_timeout: Duration::from_secs(10),
        epoch,
        counters: Default::default(),
        marks: Default::default(),
        wire,
    });
    Ok((fleet, report_frame_bytes))
}

/// Starts the clients at `--connect-rate` and waits until they are connected (or the ramp's
/// limit passes). Returns their tasks, how long the ramp took and how many connected.
async fn ramp(a: &BenchArgs, fleet: &Arc<Fleet>, phase_rx: &watch::Receiver<Phase>) -> (Vec<tokio::task::JoinHandle<()>>, u64, u64) {
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
            tasks.push(tokio::spawn(sim::run(
                fleet.clone(),
                tasks.len(),
                phase_rx.clone(),
            )));
        }
        if per_tick < 1.0 && budget < 1.0 {
            continue;
        }
    }
    let c = &fleet.counters;
    let n = a.clients as u64;
    let ramp_limit = Duration::from_secs_f64(a.clients as f64 / a.connect_rate as f64 + 30.0);
    wait_until(ramp_limit, || c.connected.load(Ordering::Relaxed) >= n).await;
    let ramp_ms = ramp_start.elapsed().as_millis() as u64;
    let connected_after_ramp = c.connected.load(Ordering::Relaxed);

    (tasks, ramp_ms, connected_after_ramp)
}

/// `storm`: restarts the spawned registry and measures how the fleet comes back. Returns the
/// figures and a fresh watch on the new registry process.
async fn restart_storm(
    a: &BenchArgs,
    fleet: &Arc<Fleet>,
    seen: &observer::Observed,
    spawned: &mut Option<Spawned>,
) -> Result<(Storm, ProcWatch)> {
    let c = &fleet.counters;
    let n = a.clients as u64;
    let mut s = spawned
        .take()
        .ok_or_else(|| Error::invalid("--scenario", "storm needs --spawn"))?;
    let kill_at = Instant::now();
    let joins0 = Joins::mark(fleet);
    let (s, restarted) = tokio::task::spawn_blocking(move || {
        let r = s.restart();
        (s, r)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    restarted?;
    let ready_at = Instant::now();
    let mut watch = ProcWatch::new(s.pid());
    let reg0 = watch.sample();
    let mut own = ProcWatch::new(std::process::id());
    let own0 = own.sample();
    *spawned = Some(s);
    let storm_errors0 = c.connect_errors.load(Ordering::Relaxed);
    let limit =
        Duration::from_secs(60).max(Duration::from_secs_f64(a.clients as f64 / 500.0));
    // Connected again means a welcome after the restart, counted at the clients.
    let back = || {
        fleet
            .marks
            .welcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|w| **w >= kill_at)
            .count()
    };
    wait_until(limit, || back() >= a.clients).await;
    let joins = Joins::since(fleet, ready_at, joins0).with_cpu([reg0, watch.sample()], [own0, own.sample()]);
    let mut welcomes: Vec<Instant> = fleet
        .marks
        .welcomes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .filter(|w| *w >= kill_at)
        .collect();
    welcomes.sort_unstable();
    let mut peak = 0;
    let mut lo = 0;
    for hi in 0..welcomes.len() {
        while welcomes[hi].duration_since(welcomes[lo]) >= Duration::from_secs(1) {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    // The observer reconnects with its own backoff; give it a moment to catch up.
    wait_until(Duration::from_secs(5), || {
        seen.online.load(Ordering::Relaxed) >= n
    })
    .await;
    let storm = Storm {
        restart_ms: ready_at.duration_since(kill_at).as_millis() as u64,
        reconnected: welcomes.len(),
        all_online_ms: (welcomes.len() >= a.clients)
            .then(|| {
                welcomes
                    .last()
                    .map(|w| w.saturating_duration_since(ready_at).as_millis() as u64)
            })
            .flatten(),
        peak_connects_per_s: peak,
        connect_errors: c.connect_errors.load(Ordering::Relaxed) - storm_errors0,
        online_at_end: seen.online.load(Ordering::Relaxed),
        joins,
    };
    Ok((storm, watch))
}

/// Offline events the observer saw: those outside the scenario's batch are false, and for
/// `crash` and `hang` how soon each of the batch was seen offline after its mark.
fn offline_figures(
    a: &BenchArgs,
    fleet: &Fleet,
    seen: &observer::Observed,
    liveness: Duration,
) -> (usize, std::collections::BTreeMap<String, usize>, Option<Detection>, Option<Detection>) {
    let batch = a.batch();
    let offline = std::mem::take(&mut *seen.offline.lock().unwrap_or_else(|e| e.into_inner()));
    let in_batch = |i: usize| fleet.batch.contains(&i);
    let false_offline = offline.iter().filter(|(i, _, _)| !in_batch(*i)).count();
    let mut false_offline_reasons = std::collections::BTreeMap::new();
    for (_, _, reason) in offline.iter().filter(|(i, _, _)| !in_batch(*i)) {
        *false_offline_reasons.entry(reason.clone()).or_insert(0) += 1;
    }
    let detect = |marks: &[(usize, Instant)], expected_ms: Option<u64>| {
        let delays: Vec<u64> = marks
            .iter()
            .filter_map(|(i, at)| {
                offline
                    .iter()
                    .find(|(j, seen, _)| j == i && seen >= at)
                    .map(|(_, seen, _)| seen.duration_since(*at).as_micros() as u64)
            })
            .collect();
        Detection {
            batch,
            detected: delays.len(),
            expected_ms,
            latency: Latency::of(delays),
        }
    };
    let crash = (a.scenario == Scenario::Crash).then(|| {
        detect(
            &fleet
                .marks
                .crashed_at
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            None,
        )
    });
    let hang = (a.scenario == Scenario::Hang).then(|| {
        detect(
            &fleet
                .marks
                .hung_last_sent
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            Some(liveness.as_millis() as u64),
        )
    });
    (false_offline, false_offline_reasons, crash, hang)
}

async fn bench(a: &BenchArgs, nofile: u64) -> Result<Results> {
    let epoch = Instant::now();
    let load_start = sysinfo::System::load_average().map_or(0.0, |l| l.one);
    let mut target = connect_target(a).await?;
    let (addr, pid) = (target.addr, target.pid);
    let mut spawned = target.spawned.take();

    let (fleet, report_frame_bytes) = fleet_for(a, &target, epoch).await?;
    let mut proc_watch = pid.map(ProcWatch::new);
    let mut own = ProcWatch::new(std::process::id());
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);

    // The observer first, so it sees every join.
    let seen = Arc::new(observer::Observed::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let observer = tokio::spawn(observer::run(
        fleet.clone(),
        seen.clone(),
        a.scenario != Scenario::Max,
        phase_rx.clone(),
        ready_tx,
    ));
    match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        _ => return Err(Error::Timeout(format!("observer could not watch {addr}"))),
    }
    let baseline = proc_watch.as_mut().and_then(ProcWatch::sample);

    let own_ramp0 = own.sample();
    let ramp_start = Instant::now();
    let (tasks, ramp_ms, connected_after_ramp) = ramp(a, &fleet, &phase_rx).await;
    let ramp_joins = Joins::since(&fleet, ramp_start, (0, 0)).with_cpu(
        [baseline, proc_watch.as_mut().and_then(ProcWatch::sample)],
        [own_ramp0, own.sample()],
    );
    let c = &fleet.counters;
    // One interval so every client is on its own schedule before measuring.
    tokio::time::sleep(a.interval).await;

    // Measure.
    let liveness = Duration::from_millis(
        c.liveness_ms
            .load(Ordering::Relaxed)
            .max(a.interval.as_millis() as u64 * 3),
    );
    let mut measured = a.duration;
    let act_at = match a.scenario {
        Scenario::Crash => Some(a.duration / 2),
        Scenario::Hang => Some(a.duration / 4),
        Scenario::Storm | Scenario::Rejoin => Some(a.duration / 3),
        _ => None,
    };
    if a.scenario == Scenario::Hang {
        // The hung batch must be able to go offline inside the measured phase.
        measured = measured
            .max(act_at.unwrap_or_default() + liveness.mul_f64(1.5) + Duration::from_secs(1));
    }
    let _ = phase_tx.send(Phase::Run);
    let t0 = Instant::now();
    let cpu0 = proc_watch.as_mut().and_then(ProcWatch::sample);
    let own0 = own.sample();
    let bytes0 = c.bytes_written.load(Ordering::Relaxed);
    let sent0 = c.sent_in_phase.load(Ordering::Relaxed);
    let errors0 = c.connect_errors.load(Ordering::Relaxed);
    let mut storm = None;
    let mut rejoin = None;
    if let Some(at) = act_at {
        tokio::time::sleep_until(t0 + at).await;
        if a.scenario == Scenario::Storm {
            let (s, watch) = restart_storm(a, &fleet, &seen, &mut spawned).await?;
            proc_watch = Some(watch);
            storm = Some(s);
            // The new registry's CPU is measured from here.
            measured = measured.max(t0.elapsed() + Duration::from_secs(1));
        } else if a.scenario == Scenario::Rejoin {
            let reg0 = proc_watch.as_mut().and_then(ProcWatch::sample);
            let own0 = own.sample();
            let (from, joins0) = (Instant::now(), Joins::mark(&fleet));
            let _ = phase_tx.send(Phase::Act);
            let back = || {
                let w = fleet.marks.welcomes.lock().unwrap_or_else(|e| e.into_inner());
                w.iter().filter(|w| **w >= from).count()
            };
            let limit = Duration::from_secs(60).max(Duration::from_secs_f64(a.clients as f64 / 500.0));
            wait_until(limit, || back() >= a.clients).await;
            rejoin = Some(Joins::since(&fleet, from, joins0).with_cpu(
                [reg0, proc_watch.as_mut().and_then(ProcWatch::sample)],
                [own0, own.sample()],
            ));
            measured = measured.max(t0.elapsed() + Duration::from_secs(1));
        } else {
            let _ = phase_tx.send(Phase::Act);
        }
    }
    let cpu0 = if a.scenario == Scenario::Storm {
        proc_watch.as_mut().and_then(ProcWatch::sample)
    } else {
        cpu0
    };
    let t_cpu0 = if a.scenario == Scenario::Storm {
        Instant::now()
    } else {
        t0
    };
    let end_at = (t0 + measured).max(t_cpu0 + Duration::from_secs(1));
    tokio::time::sleep_until(end_at).await;
    let t1 = Instant::now();
    let cpu1 = proc_watch.as_mut().and_then(ProcWatch::sample);
    let own1 = own.sample();
    // Drain: every live client confirms its reports with a ping.
    let _ = phase_tx.send(Phase::Drain);
    let bytes = c.bytes_written.load(Ordering::Relaxed) - bytes0;
    let sent_for_bytes = c.sent_in_phase.load(Ordering::Relaxed) - sent0;
    let connected_at_end = c.connected.load(Ordering::Relaxed);
    let online_seen = seen.online.load(Ordering::Relaxed);
    let drain_limit =
        Duration::from_secs(20) + a.interval + Duration::from_millis(a.clients as u64 / 10);
    wait_until(drain_limit, || {
        c.drained.load(Ordering::Relaxed) >= c.connected.load(Ordering::Relaxed)
    })
    .await;
    let _ = phase_tx.send(Phase::Stop);
    let finish = async {
        for t in tasks {
            let _ = t.await;
        }
        let _ = observer.await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), finish).await;

    // Clients count what they sent until they saw the phase end, as they count confirmations.
    let sent_in_phase = c.sent_in_phase.load(Ordering::Relaxed) - sent0;
    let confirmed = c.confirmed.load(Ordering::Relaxed);
    let last_confirm = epoch + Duration::from_micros(c.last_confirm_us.load(Ordering::Relaxed));
    // Drain pings go out at each client's next tick, up to one interval after the end; what
    // arrives later than that is the registry's backlog and counts against it.
    let spread = if a.scenario == Scenario::Max {
        Duration::ZERO
    } else {
        a.interval
    };
    let accepted_window = last_confirm
        .saturating_duration_since(t0)
        .saturating_sub(spread)
        .max(t1.duration_since(t0));
    let measured_s = t1.duration_since(t0).as_secs_f64();

    let (false_offline, false_offline_reasons, crash, hang) = offline_figures(a, &fleet, &seen, liveness);
    let latencies =
        std::mem::take(&mut *seen.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
    let rss = cpu1.map(|s| s.rss_bytes);
    let base_rss = baseline.map(|s| s.rss_bytes);
    let per_instance = match (rss, base_rss) {
        (Some(r), Some(b)) if connected_at_end > 0 && a.scenario != Scenario::Storm => {
            Some(r.saturating_sub(b) as f64 / connected_at_end as f64)
        }
        // After a restart there is no baseline of the new process.
        (Some(r), _) if connected_at_end > 0 => Some(r as f64 / connected_at_end as f64),
        _ => None,
    };
    let results = Results {
        scenario: a.scenario,
        codec: a.codec.name(),
        compression: a.compression().map_or("none", |c| c.name()),
        clients: a.clients,
        interval_ms: a.interval.as_millis() as u64,
        liveness_ms: liveness.as_millis() as u64,
        measured_ms: (measured_s * 1000.0) as u64,
        registry: addr.to_string(),
        registry_pid: spawned.as_ref().map(Spawned::pid).or(pid),
        open_file_limit: nofile,
        load_average: [
            load_start,
            sysinfo::System::load_average().map_or(0.0, |l| l.one),
        ],
        source_addrs: fleet.sources.len(),
        connected: connected_after_ramp,
        connected_at_end,
        connect_errors: errors0,
        ramp_ms,
        ramp_joins,
        connect_rate: a.connect_rate,
        online_seen,
        reports_offered: sent_in_phase,
        offered_per_s: sent_in_phase as f64 / measured_s,
        reports_accepted: confirmed,
        accepted_per_s: confirmed as f64 / accepted_window.as_secs_f64(),
        registry_cpu_percent: cpu_between(cpu0, cpu1),
        registry_rss_bytes: rss,
        registry_rss_baseline_bytes: base_rss,
        memory_per_instance_bytes: per_instance,
        bench_cpu_percent: cpu_between(own0, own1),
        latency: Latency::of(latencies),
        report_frame_bytes,
        wire_bytes_per_report: (sent_for_bytes > 0).then(|| bytes as f64 / sent_for_bytes as f64),
        false_offline,
        false_offline_reasons,
        lost_connections: c.lost.load(Ordering::Relaxed),
        error_frames: c.error_frames.load(Ordering::Relaxed),
        rate_limited: c.rate_limited.load(Ordering::Relaxed),
        observer_lagged: seen.lagged.load(Ordering::Relaxed),
        crash,
        hang,
        storm,
        rejoin,
        #[cfg(feature = "etcd")]
        peer: None,
    };
    drop(spawned);
    #[cfg(feature = "etcd")]
    let results = match a.peer {
        Some(Peer::Etcd) => Results {
            peer: Some(peer::run(a, liveness, report_frame_bytes).await?),
            ..results
        },
        None => results,
    };
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let l = Latency::of((1..=100).map(|v| v * 1000).collect()).unwrap();
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.max_ms, l.samples),
            (50.0, 99.0, 100.0, 100)
        );
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn arguments_are_checked() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.b)
        };
        let e = parse(&["--spawn", "--clients", "0"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--clients"), "{e}");
        let e = parse(&["--spawn", "--interval", "10ms"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--interval") && e.contains("10ms"), "{e}");
        let e = parse(&["--registry", "127.0.0.1:1", "--scenario", "storm"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("storm") && e.contains("--spawn"), "{e}");
        assert!(
            parse(&["--clients", "5"]).is_err(),
            "needs --spawn or --registry"
        );
        assert!(parse(&["--spawn", "--duration", "soon"]).is_err());
        let e = parse(&["--spawn", "--peer", "etcd", "--scenario", "max"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--peer") && e.contains("max"), "{e}");
        assert!(parse(&["--spawn", "--peer", "consul"]).is_err());
        let err = |args: &[&str]| parse(args).unwrap().check().unwrap_err().to_string();
        assert!(err(&["--registry", "h:1", "--registries", "2"]).contains("needs --spawn"));
        assert!(err(&["--spawn", "--registries", "2", "--scenario", "max"]).contains("max"));
        assert!(err(&["--spawn", "--workers", "none"]).contains("--workers"));
        assert!(err(&["--spawn", "--registries", "17"]).contains("1 ..= 16"));
        let ok = parse(&["--spawn", "--clients", "51000", "--registries", "3"]).unwrap();
        assert!(ok.check().is_ok());
        assert_eq!(multi::workers_for(&ok).unwrap(), 3);
    }
}
