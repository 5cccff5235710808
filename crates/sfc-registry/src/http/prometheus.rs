//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4): the registry's own
//! figures and one set of gauges per instance, labelled `group`, `service` and `instance`.
//! Label values are escaped as the format requires (backslash, double quote, newline), so any
//! name an application chooses keeps the output parseable.

use std::fmt::Write;

use crate::model::{Health, InstanceRecord, Status};
use crate::registry::Registry;

use super::SelfFigures;

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

/// Renders every metric family.
pub fn render(registry: &Registry, figures: &SelfFigures) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(4096);
    let stats = registry.stats();
    let records = registry.query(&Default::default());
    let (_, events_total) = registry.events_after(u64::MAX, 0);

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
                f.sample(name, &[("surface", surface.as_str()), ("reason", why.as_str())], n as f64);
            }
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "sfc_registry_instances",
            "gauge",
            "Known instances by status.",
        );
        for s in [Status::Online, Status::Offline, Status::Left] {
            let n = records.iter().filter(|r| r.status == s).count();
            f.sample(
                "sfc_registry_instances",
                &[("status", s.as_str())],
                n as f64,
            );
        }
    }
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

    instance_families(&mut out, &records);
    out
}

fn labels(r: &InstanceRecord) -> [(&'static str, &str); 3] {
    [
        ("group", &r.group),
        ("service", &r.service),
        ("instance", &r.instance_id),
    ]
}

/// One family per figure, every instance that has the figure in it.
fn instance_families(out: &mut String, records: &[InstanceRecord]) {
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
            .filter_map(|r| get(r).map(|v| (r, v)))
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
