//! The original `service_fleet_control` wire format: one TLS connection per report carrying one
//! JSON document `{"action":"HEALTH","payload":{...}}`, then the connection ends. The registry
//! accepts it on the v1 port (a v1 connection starts with `SFCP`, a legacy one with `{`).

use serde::Deserialize;

use super::message::{ErrorCode, ProtocolError, Report};
use crate::model::{HostMetrics, Metrics, ProcessMetrics, Registration};

/// What a legacy document asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyAction {
    /// `HEALTH` (and `JOIN`): create or update the instance.
    Report,
    /// `LEAVE`: the instance leaves gracefully.
    Leave,
}

/// A parsed legacy document, already mapped to our model.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyReport {
    pub action: LegacyAction,
    pub registration: Registration,
    pub report: Report,
    pub interval_ms: u64,
}

#[derive(Deserialize)]
struct Doc {
    action: String,
    payload: Payload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    service_name: String,
    grouping_key: String,
    #[serde(default)]
    time: Option<String>,
    metrics: LegacyMetrics,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyMetrics {
    hostname: String,
    #[serde(default)]
    rss: Option<f64>,
    #[serde(default)]
    heap_total: Option<f64>,
    #[serde(default)]
    heap_used: Option<f64>,
    #[serde(default)]
    external: Option<f64>,
    /// `process.memoryUsage().arrayBuffers` (Node.js 13+), which the original passed through.
    #[serde(default)]
    array_buffers: Option<f64>,
    #[serde(default)]
    num_cpus: Option<u32>,
    #[serde(default)]
    freemem: Option<u64>,
    #[serde(default)]
    loadadv: Option<[f64; 3]>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    uptime: Option<f64>,
    #[serde(default)]
    update_interval_seconds: Option<f64>,
}

/// Default interval for a legacy report that does not say (the original examples used 1 s).
pub const LEGACY_DEFAULT_INTERVAL_MS: u64 = 1000;

/// Parses one legacy document.
pub fn parse(bytes: &[u8]) -> Result<LegacyReport, ProtocolError> {
    // Any ASCII whitespace selects the legacy format (form feed included), but JSON itself
    // allows only space, tab, CR and LF around a document.
    let doc: Doc = serde_json::from_slice(bytes.trim_ascii()).map_err(|e| {
        ProtocolError::new(ErrorCode::BadJson, format!("legacy document is not valid: {e}"))
    })?;
    let action = match doc.action.as_str() {
        "HEALTH" | "JOIN" => LegacyAction::Report,
        "LEAVE" => LegacyAction::Leave,
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownMessage,
                format!("legacy action {other:?} is not supported (expected HEALTH, JOIN or LEAVE)"),
            ))
        }
    };
    let p = doc.payload;
    let m = p.metrics;
    for (what, v) in [("payload.groupingKey", &p.grouping_key), ("payload.metrics.hostname", &m.hostname)] {
        if v.is_empty() {
            return Err(ProtocolError::new(ErrorCode::InvalidField, format!("{what} is empty")));
        }
    }
    // The v1 interval limits apply (a v1 hello outside them is refused too); out of them the
    // document is rejected like any other out-of-limits document, naming the legacy field.
    let (lo, hi) = (crate::limits::MIN_INTERVAL_MS, crate::limits::MAX_INTERVAL_MS);
    let interval_ms = match m.update_interval_seconds {
        Some(s) if s.is_finite() && (lo as f64..=hi as f64).contains(&(s * 1000.0).round()) => (s * 1000.0).round() as u64,
        Some(s) => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "payload.metrics.updateIntervalSeconds is {s}; it must be within {} ..= {} seconds",
                    lo as f64 / 1000.0,
                    hi / 1000
                ),
            ))
        }
        None => LEGACY_DEFAULT_INTERVAL_MS,
    };
    let sent_at = p.time.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok()).and_then(|t| {
        t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
    });
    let mut runtime = std::collections::BTreeMap::new();
    for (k, v) in [
        ("heap_total_bytes", m.heap_total),
        ("heap_used_bytes", m.heap_used),
        ("external_bytes", m.external),
        ("array_buffers_bytes", m.array_buffers),
    ] {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            runtime.insert(k.to_string(), v);
        }
    }
    let metrics = Metrics {
        host: HostMetrics {
            hostname: Some(m.hostname.clone()),
            cpu_count: m.num_cpus,
            memory_available_bytes: m.freemem,
            load_average: m.loadadv,
            uptime_seconds: m.uptime.filter(|u| u.is_finite() && *u >= 0.0).map(|u| u as u64),
            ..Default::default()
        },
        process: ProcessMetrics {
            resident_bytes: m.rss.filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64),
            user: m.user,
            ..Default::default()
        },
        runtime,
        custom: Default::default(),
    };
    Ok(LegacyReport {
        action,
        registration: Registration {
            group: p.grouping_key,
            instance_id: m.hostname.clone(),
            service: p.service_name,
            hostname: m.hostname,
            ..Default::default()
        },
        report: Report { seq: 0, sent_at, health: None, health_note: None, metrics },
        interval_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_document() {
        let doc = br#"{"action":"HEALTH","payload":{"serviceName":"billing","groupingKey":"billing-eu",
          "time":"2018-02-14T00:28:07.123Z","metrics":{"rss":30000000,"heapTotal":1,"heapUsed":2,
          "external":3,"hostname":"web-1","numCpus":2,"freemem":1000,"loadadv":[0.1,0.2,0.3],
          "user":"node","uptime":99.5,"updateIntervalSeconds":2}}}"#;
        let r = parse(doc).unwrap();
        assert_eq!(r.action, LegacyAction::Report);
        assert_eq!(r.registration.group, "billing-eu");
        assert_eq!(r.registration.instance_id, "web-1");
        assert_eq!(r.registration.service, "billing");
        assert_eq!(r.interval_ms, 2000);
        assert_eq!(r.report.metrics.process.resident_bytes, Some(30_000_000));
        assert_eq!(r.report.metrics.host.load_average, Some([0.1, 0.2, 0.3]));
        assert_eq!(r.report.sent_at, Some(1518568087123));
    }

    #[test]
    fn rejects_bad_documents_by_name() {
        assert_eq!(parse(b"{").unwrap_err().code, ErrorCode::BadJson);
        let e = parse(br#"{"action":"DANCE","payload":{"serviceName":"a","groupingKey":"g","metrics":{"hostname":"h"}}}"#)
            .unwrap_err();
        assert!(e.message.contains("DANCE"));
        let e = parse(br#"{"action":"HEALTH","payload":{"serviceName":"a","groupingKey":"","metrics":{"hostname":"h"}}}"#)
            .unwrap_err();
        assert!(e.message.contains("groupingKey"));
    }
}
