//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4): the registry's own
//! figures, one small set of series per group (`sfc_group_*`, labelled `group`), and, only when
//! asked for with `--metrics-instances all|N`, one set of gauges per instance (`sfc_instance_*`,
//! labelled `group`, `service` and `instance`). Per-instance series are opt-in because they
//! grow with the fleet: about 10 per instance, 500,000 at 50,000 instances.
//! Label values are escaped as the format requires (backslash, double quote, newline), so any
//! name an application chooses keeps the output parseable.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::str::FromStr;
use std::sync::Arc;

use crate::model::{Health, InstanceRecord, Status};
use crate::registry::Registry;

use super::SelfFigures;

/// Which instances get `sfc_instance_*` series (`--metrics-instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsInstances {
    /// None: registry and per-group series only (the default).
    #[default]
    None,
    /// Every instance.
    All,
    /// At most this many instances, the first by id; `sfc_registry_metrics_instances_omitted`
    /// says how many were left out.
    Max(usize),
}

impl FromStr for MetricsInstances {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "0" => Ok(MetricsInstances::None),
            "all" => Ok(MetricsInstances::All),
            n => n
                .parse::<usize>()
                .map(MetricsInstances::Max)
                .map_err(|_| format!("{s:?} is not none, all or a number of instances")),
        }
    }
}

impl std::fmt::Display for MetricsInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsInstances::None => f.write_str("none"),
            MetricsInstances::All => f.write_str("all"),
            MetricsInstances::Max(n) => write!(f, "{n}"),
        }
    }
}

/// What `/metrics` says about one group, summed from the shared records after the state lock
/// is released.
#[derive(Default)]
struct GroupFigures {
    status: [u64; 3],
    health: [u64; 3],
    cpu_sum: f64,
    rss_sum: f64,
}

fn status_index(s: Status) -> usize {
    match s {
        Status::Online => 0,
        Status::Offline => 1,
        Status::Left => 2,
    }
}

fn health_index(h: Health) -> usize {
    match h {
        Health::Passing => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as the format spells it (`NaN`, `+Inf`, `-Inf`, or a float).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value(v));
    }
}

/// Renders every metric family; per-instance ones as `instances` says.
pub fn render(registry: &Registry, figures: &SelfFigures, instances: MetricsInstances) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(4096);
    let stats = registry.stats();
    // The lock is held only to take the records, shared (no copy); everything is summed and
    // written after it is released.
    let all = registry.state().query(&crate::model::Filter::default());
    let mut groups: BTreeMap<String, GroupFigures> = BTreeMap::new();
    for r in &all {
        let g = match groups.get_mut(&r.group) {
            Some(g) => g,
            None => groups.entry(r.group.clone()).or_default(),
        };
        g.status[status_index(r.status)] += 1;
        g.health[health_index(r.health)] += 1;
        if r.status == Status::Online {
            g.cpu_sum += r.metrics.process.cpu_percent.unwrap_or(0.0);
            g.rss_sum += r.metrics.process.resident_bytes.unwrap_or(0) as f64;
        }
    }
    let total = all.len();
    let records: Vec<Arc<InstanceRecord>> = match instances {
        MetricsInstances::None => Vec::new(),
        MetricsInstances::All | MetricsInstances::Max(_) => {
            let mut records = all;
            crate::registry::state::sort_by_id(&mut records);
            if let MetricsInstances::Max(n) = instances {
                records.truncate(n);
            }
            records
        }
    };
    let events_total = registry.state().events_total();

    Family::new(
        &mut out,
        "sfc_registry_info",
        "gauge",
        "Registry build information.",
    )
    .sample("sfc_registry_info", &[("version", crate::VERSION)], 1.0);
    Family::new(
        &mut out,
        "sfc_registry_start_time_seconds",
        "gauge",
        "When the registry started, Unix seconds.",
    )
    .sample(
        "sfc_registry_start_time_seconds",
        &[],
        registry.started_at() as f64 / 1000.0,
    );
    for (name, kind, help, v) in [
        (
            "sfc_registry_sessions",
            "gauge",
            "Protocol sessions connected now.",
            stats.sessions_current.load(Relaxed),
        ),
        (
            "sfc_registry_connections_total",
            "counter",
            "Connections accepted.",
            stats.connections_total.load(Relaxed),
        ),
        (
            "sfc_registry_refused_connections_total",
            "counter",
            "Connections refused at the connection limit.",
            stats.refused_connections_total.load(Relaxed),
        ),
        (
            "sfc_registry_reports_total",
            "counter",
            "Reports received (v1 and legacy).",
            stats.reports_total.load(Relaxed),
        ),
        (
            "sfc_registry_legacy_reports_total",
            "counter",
            "Reports received in the legacy format.",
            stats.legacy_reports_total.load(Relaxed),
        ),
        (
            "sfc_registry_protocol_errors_total",
            "counter",
            "Protocol errors.",
            stats.protocol_errors_total.load(Relaxed),
        ),
        (
            "sfc_registry_refused_not_authorized_total",
            "counter",
            "Hellos and legacy reports refused by the identity policy (--policy).",
            stats.refused_not_authorized_total.load(Relaxed),
        ),
        (
            "sfc_registry_refused_admin_calls_total",
            "counter",
            "HTTP deregistrations and commands refused for want of an admin credential (401/403).",
            stats.refused_admin_calls_total.load(Relaxed),
        ),
        (
            "sfc_registry_rate_limited_frames_total",
            "counter",
            "Frames dropped by the per-session rate limit (--max-frame-rate).",
            stats.rate_limited_total.load(Relaxed),
        ),
        (
            "sfc_registry_slow_consumers_total",
            "counter",
            "Sessions and SSE watches closed with slow-consumer: their outbound queue went over --max-outbound.",
            stats.slow_consumers_total.load(Relaxed),
        ),
        (
            "sfc_registry_refused_instances_total",
            "counter",
            "Registrations refused by --max-instances, --max-group-instances or the legacy caps.",
            stats.refused_instances_total.load(Relaxed),
        ),
        (
            "sfc_registry_store_up",
            "gauge",
            "1 while the store accepts writes, 0 while the registry serves from memory only.",
            u64::from(registry.store_status().1.is_none()),
        ),
        (
            "sfc_registry_events_total",
            "counter",
            "Events recorded in the history.",
            events_total,
        ),
        (
            "sfc_registry_commands_total",
            "counter",
            "Commands sent to instances.",
            stats.commands_total.load(Relaxed),
        ),
    ] {
        Family::new(&mut out, name, kind, help).sample(name, &[], v as f64);
    }
    Family::new(
        &mut out,
        "sfc_registry_reports_per_second",
        "gauge",
        "Reports per second over the last few seconds.",
    )
    .sample(
        "sfc_registry_reports_per_second",
        &[],
        figures.reports_per_second,
    );
    {
        use crate::registry::Surface;
        use crate::tls::CertRefusal;
        let name = "sfc_registry_refused_certificates_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "TLS handshakes refused for the client certificate (--mtls), by surface and reason.",
        );
        for surface in Surface::ALL {
            for why in CertRefusal::ALL {
                let n = stats.refused_certificates.count(surface, why);
                f.sample(
                    name,
                    &[("surface", surface.as_str()), ("reason", why.as_str())],
                    n as f64,
                );
            }
        }
    }
    {
        let name = "sfc_registry_tls_handshakes_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "TLS handshakes completed on the protocol port, by kind: full, or resumed with a session ticket.",
        );
        for (kind, n) in [
            ("full", &stats.tls_handshakes_full_total),
            ("resumed", &stats.tls_handshakes_resumed_total),
        ] {
            f.sample(name, &[("kind", kind)], n.load(Relaxed) as f64);
        }
    }
    {
        // The DNS interface (--dns): only the (type, rcode) pairs seen so far.
        let name = "sfc_registry_dns_queries_total";
        let mut f = Family::new(&mut out, name, "counter", "DNS queries answered (--dns), by query type and answer code.");
        for (qtype, rcode, n) in stats.dns.queries() {
            f.sample(name, &[("type", qtype), ("rcode", rcode)], n as f64);
        }
        let name = "sfc_registry_dns_rate_limited_total";
        Family::new(&mut out, name, "counter", "DNS queries over the per-source rate limit (--dns-rate-limit): UDP dropped, TCP refused.")
            .sample(name, &[], stats.dns.rate_limited() as f64);
    }
    {
        let mut f = Family::new(
            &mut out,
            "sfc_registry_instances",
            "gauge",
            "Known instances by status.",
        );
        for s in [Status::Online, Status::Offline, Status::Left] {
            let n: u64 = groups.values().map(|g| g.status[status_index(s)]).sum();
            f.sample(
                "sfc_registry_instances",
                &[("status", s.as_str())],
                n as f64,
            );
        }
    }
    Family::new(
        &mut out,
        "sfc_registry_groups",
        "gauge",
        "Groups with at least one known instance.",
    )
    .sample("sfc_registry_groups", &[], groups.len() as f64);
    Family::new(
        &mut out,
        "sfc_registry_metrics_instances_omitted",
        "gauge",
        "Instances without sfc_instance_* series in this scrape (--metrics-instances).",
    )
    .sample(
        "sfc_registry_metrics_instances_omitted",
        &[],
        total.saturating_sub(records.len()) as f64,
    );
    if let Some(c) = figures.cpu_percent {
        Family::new(
            &mut out,
            "sfc_registry_process_cpu_percent",
            "gauge",
            "CPU used by the registry process, percent of one core.",
        )
        .sample("sfc_registry_process_cpu_percent", &[], c);
    }
    if let Some(r) = figures.resident_bytes {
        Family::new(
            &mut out,
            "sfc_registry_process_resident_bytes",
            "gauge",
            "Resident memory of the registry process.",
        )
        .sample("sfc_registry_process_resident_bytes", &[], r as f64);
    }

    group_families(&mut out, &groups);
    instance_families(&mut out, &records);
    out
}

/// Eight series per group: instances by status and by health, CPU and memory of the online ones.
fn group_families(out: &mut String, groups: &BTreeMap<String, GroupFigures>) {
    if groups.is_empty() {
        return;
    }
    let name = "sfc_group_instances";
    let mut f = Family::new(out, name, "gauge", "Instances of the group by status.");
    for (g, v) in groups {
        for s in [Status::Online, Status::Offline, Status::Left] {
            f.sample(
                name,
                &[("group", g), ("status", s.as_str())],
                v.status[status_index(s)] as f64,
            );
        }
    }
    let name = "sfc_group_health";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Instances of the group by the health they last reported (any status).",
    );
    for (g, v) in groups {
        for h in [Health::Passing, Health::Warning, Health::Critical] {
            f.sample(
                name,
                &[("group", g), ("health", h.as_str())],
                v.health[health_index(h)] as f64,
            );
        }
    }
    let name = "sfc_group_process_cpu_percent_sum";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "CPU of the group's online instances' processes, summed, percent of one core.",
    );
    for (g, v) in groups {
        f.sample(name, &[("group", g)], v.cpu_sum);
    }
    let name = "sfc_group_process_resident_bytes_sum";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Resident memory of the group's online instances' processes, summed.",
    );
    for (g, v) in groups {
        f.sample(name, &[("group", g)], v.rss_sum);
    }
}

fn labels(r: &InstanceRecord) -> [(&'static str, &str); 3] {
    [
        ("group", &r.group),
        ("service", &r.service),
        ("instance", &r.instance_id),
    ]
}

/// One family per figure, every instance that has the figure in it.
fn instance_families(out: &mut String, records: &[Arc<InstanceRecord>]) {
    type Get = fn(&InstanceRecord) -> Option<f64>;
    let simple: [(&str, &str, Get); 8] = [
        (
            "sfc_instance_up",
            "1 when the instance is online, 0 otherwise.",
            |r| Some(if r.status == Status::Online { 1.0 } else { 0.0 }),
        ),
        (
            "sfc_instance_cpu_percent",
            "CPU used by the instance's process, percent of one core.",
            |r| r.metrics.process.cpu_percent,
        ),
        (
            "sfc_instance_resident_bytes",
            "Resident memory of the instance's process.",
            |r| r.metrics.process.resident_bytes.map(|v| v as f64),
        ),
        (
            "sfc_instance_host_cpu_percent",
            "CPU used on the instance's host, percent of all cores.",
            |r| r.metrics.host.cpu_percent,
        ),
        (
            "sfc_instance_host_memory_used_bytes",
            "Memory used on the instance's host.",
            |r| r.metrics.host.memory_used_bytes.map(|v| v as f64),
        ),
        (
            "sfc_instance_last_report_timestamp_seconds",
            "When the last report arrived, Unix seconds (registry clock).",
            |r| r.last_report_at.map(|t| t as f64 / 1000.0),
        ),
        (
            "sfc_instance_heap_used_bytes",
            "JavaScript heap in use (Node.js instances).",
            |r| r.metrics.runtime.get("heap_used_bytes").copied(),
        ),
        (
            "sfc_instance_heap_total_bytes",
            "JavaScript heap reserved (Node.js instances).",
            |r| r.metrics.runtime.get("heap_total_bytes").copied(),
        ),
    ];
    for (name, help, get) in simple {
        let present: Vec<(&InstanceRecord, f64)> = records
            .iter()
            .filter_map(|r| get(r).map(|v| (&**r, v)))
            .collect();
        if present.is_empty() {
            continue;
        }
        let mut f = Family::new(out, name, "gauge", help);
        for (r, v) in present {
            f.sample(name, &labels(r), v);
        }
    }
    if !records.is_empty() {
        let mut f = Family::new(
            out,
            "sfc_instance_health",
            "gauge",
            "Health the instance reports: 1 for its current state.",
        );
        for r in records {
            for h in [Health::Passing, Health::Warning, Health::Critical] {
                let [g, s, i] = labels(r);
                f.sample(
                    "sfc_instance_health",
                    &[g, s, i, ("health", h.as_str())],
                    if r.health == h { 1.0 } else { 0.0 },
                );
            }
        }
    }
    for (name, help, pick) in [
        (
            "sfc_instance_custom",
            "Gauges the application sets by name.",
            (|r| &r.metrics.custom)
                as fn(&InstanceRecord) -> &std::collections::BTreeMap<String, f64>,
        ),
        (
            "sfc_instance_runtime",
            "Figures the language runtime supplies (Node.js heap, Go GC...).",
            |r| &r.metrics.runtime,
        ),
    ] {
        if records.iter().all(|r| pick(r).is_empty()) {
            continue;
        }
        let mut f = Family::new(out, name, "gauge", help);
        for r in records {
            for (k, v) in pick(r) {
                let [g, s, i] = labels(r);
                f.sample(name, &[g, s, i, ("name", k)], *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrape size and render time at 50,000 instances in 100 groups, for BENCHMARKS.md
    /// ("Operator surfaces"); prints, asserts only that per-instance series are opt-in:
    /// `cargo test --release -p sfc-registry --lib -- --ignored metrics_at_50000 --nocapture`
    #[test]
    #[ignore]
    fn metrics_at_50000_instances() {
        use crate::model::Registration;
        use crate::registry::state::{OutboundTx, SessionRef};
        use crate::registry::RegistryConfig;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let reg = Registry::new(RegistryConfig::default());
        let mut sampler = sfc_client::metrics::Sampler::new();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let report = crate::protocol::Report {
            seq: 1,
            sent_at: Some(crate::model::now_ms()),
            health: None,
            health_note: None,
            metrics: sampler.sample(),
        };
        let mut queues = Vec::new();
        for i in 0..50_000usize {
            let (tx, rx) = OutboundTx::channel(8);
            queues.push(rx);
            let r = Registration {
                group: format!("g{}", i % 100),
                instance_id: format!("i{i}"),
                service: format!("svc{}", i % 100),
                hostname: "bench-host".into(),
                pid: 1000 + i as u32,
                ..Default::default()
            };
            let id = format!("{}/{}", r.group, r.instance_id);
            let mut st = reg.state();
            let session = Some(SessionRef {
                id: i as u64 + 1,
                tx,
            });
            st.register(r, 1000, session, None, "v1", serde_json::Value::Null);
            st.apply_report(&id, Some(i as u64 + 1), report.clone());
        }
        let figures = SelfFigures::default();
        // What a scrape holds the state lock for: taking the records, shared.
        let mut held = Vec::new();
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let n = reg.state().query(&crate::model::Filter::default()).len();
            held.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(n, 50_000);
        }
        held.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("state lock held per scrape: {:.2}-{:.2} ms (median {:.2})", held[0], held[4], held[2]);
        for mode in [
            MetricsInstances::None,
            MetricsInstances::Max(500),
            MetricsInstances::All,
        ] {
            let mut times = Vec::new();
            let mut text = String::new();
            for _ in 0..5 {
                let t = std::time::Instant::now();
                text = render(&reg, &figures, mode);
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let series = text.lines().filter(|l| !l.starts_with('#')).count();
            println!(
                "--metrics-instances {mode}: {series} series, {} bytes, render {:.1}-{:.1} ms (median {:.1})",
                text.len(),
                times[0],
                times[4],
                times[2]
            );
            if mode == MetricsInstances::None {
                assert!(!text.contains("\nsfc_instance_"));
            }
        }
        drop(queues);
    }

    #[test]
    fn metrics_instances_parses_none_all_and_a_bound() {
        assert_eq!("none".parse(), Ok(MetricsInstances::None));
        assert_eq!("all".parse(), Ok(MetricsInstances::All));
        assert_eq!("250".parse(), Ok(MetricsInstances::Max(250)));
        assert!("some".parse::<MetricsInstances>().is_err());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label("plain"), "plain");
    }

    #[test]
    fn special_values_are_spelled_as_the_format_wants() {
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(1.5), "1.5");
    }
}
