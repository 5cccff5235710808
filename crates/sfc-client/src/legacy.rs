//! The legacy fallback (`ClientBuilder::legacy`): reports in the original
//! `service_fleet_control` wire format, for a registry that predates protocol v1 (it selected no
//! ALPN `sfc/1`). One TLS connection per report carries one JSON document
//! `{"action":"HEALTH","payload":{...}}` with the original keys, then ends (PROTOCOL.md §15).
//! The original registry parses the bytes when the connection ends and exits on anything that
//! is not one JSON document, so a report connection ends gracefully (close_notify, then FIN)
//! and the client reads until the registry closes too, never aborting it with a reset.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ClientConfig;
use crate::model::Metrics;
use crate::tls::TlsStream;

/// Runtime figures a binding supplies, under the keys of Node.js `process.memoryUsage()` that
/// the original client sent (its fleet record passed every one of them through).
const MEMORY_USAGE_KEYS: &[(&str, &str)] = &[
    ("rss_bytes", "rss"),
    ("heap_total_bytes", "heapTotal"),
    ("heap_used_bytes", "heapUsed"),
    ("external_bytes", "external"),
    ("array_buffers_bytes", "arrayBuffers"),
];

/// A JSON number, written as an integer when it is one (as JavaScript writes it).
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// `2018-02-14T00:28:07.123Z` (what JavaScript's `Date` turns into in JSON).
pub(crate) fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// One legacy `HEALTH` document for this client's identity and `metrics` (sampled host and
/// process figures, plus the runtime figures a binding supplies).
pub(crate) fn document(cfg: &ClientConfig, metrics: &Metrics, now_ms: u64) -> Vec<u8> {
    let r = &cfg.registration;
    let mut m = Map::new();
    let runtime: &BTreeMap<String, f64> = &metrics.runtime;
    for (ours, theirs) in MEMORY_USAGE_KEYS {
        let v = runtime.get(*ours).copied().or_else(|| match *theirs {
            "rss" => metrics.process.resident_bytes.map(|v| v as f64),
            _ => None,
        });
        if let Some(v) = v.filter(|v| v.is_finite()) {
            m.insert(theirs.to_string(), num(v));
        }
    }
    let host = &metrics.host;
    let hostname = if r.hostname.is_empty() {
        host.hostname.clone().unwrap_or_default()
    } else {
        r.hostname.clone()
    };
    m.insert("hostname".into(), Value::from(hostname));
    if let Some(v) = host.cpu_count {
        m.insert("numCpus".into(), Value::from(v));
    }
    if let Some(v) = host.memory_available_bytes {
        m.insert("freemem".into(), Value::from(v));
    }
    if let Some(v) = host.load_average {
        m.insert(
            "loadadv".into(),
            Value::from(v.iter().map(|x| num(*x)).collect::<Vec<_>>()),
        );
    }
    if let Some(v) = &metrics.process.user {
        m.insert("user".into(), Value::from(v.clone()));
    }
    if let Some(v) = host.uptime_seconds {
        m.insert("uptime".into(), Value::from(v));
    }
    m.insert(
        "updateIntervalSeconds".into(),
        num(cfg.interval.as_secs_f64()),
    );
    let doc = json!({
        "action": "HEALTH",
        "payload": {
            "serviceName": r.service,
            "groupingKey": r.group,
            "metrics": Value::Object(m),
            "time": iso8601(now_ms),
        },
    });
    serde_json::to_vec(&doc).expect("a JSON value always serializes")
}

/// Delivers one document on a report connection: writes it, ends the connection gracefully
/// (close_notify, then FIN), and reads until the registry closes its side, which it does once
/// it has read the whole document.
pub(crate) async fn deliver(mut stream: Box<TlsStream>, doc: &[u8]) -> std::io::Result<()> {
    stream.write_all(doc).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            // A registry that closes without close_notify has still read the document.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_is_what_javascript_writes() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_518_568_087_123), "2018-02-14T00:28:07.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_795_890_667_622), "2026-11-28T18:31:07.622Z");
    }

    #[test]
    fn document_has_the_original_keys_and_parses_as_legacy() {
        let cfg = crate::ClientBuilder::new()
            .ignore_env()
            .group("billing-eu")
            .service("billing")
            .instance_id("web-9")
            .hostname("web-9")
            .interval(std::time::Duration::from_secs(2))
            .build()
            .unwrap();
        let mut metrics = Metrics::default();
        metrics.host.cpu_count = Some(2);
        metrics.host.memory_available_bytes = Some(1000);
        metrics.host.load_average = Some([0.1, 0.2, 0.3]);
        metrics.host.uptime_seconds = Some(99);
        metrics.process.resident_bytes = Some(1);
        metrics.process.user = Some("node".into());
        for (k, v) in [
            ("rss_bytes", 30e6),
            ("heap_total_bytes", 1.0),
            ("heap_used_bytes", 2.0),
            ("external_bytes", 3.0),
            ("array_buffers_bytes", 4.0),
        ] {
            metrics.runtime.insert(k.into(), v);
        }
        let bytes = document(&cfg, &metrics, 1_518_568_087_123);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["action"], "HEALTH");
        let p = &v["payload"];
        assert_eq!(p["serviceName"], "billing");
        assert_eq!(p["groupingKey"], "billing-eu");
        assert_eq!(p["time"], "2018-02-14T00:28:07.123Z");
        let keys: Vec<&str> = p["metrics"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want = vec![
            "rss",
            "heapTotal",
            "heapUsed",
            "external",
            "arrayBuffers",
            "hostname",
            "numCpus",
            "freemem",
            "loadadv",
            "user",
            "uptime",
            "updateIntervalSeconds",
        ];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(p["metrics"]["rss"], 30_000_000);
        assert_eq!(p["metrics"]["updateIntervalSeconds"], 2);
        // The registry's own reader of the legacy format accepts it.
        let parsed = crate::protocol::legacy::parse(&bytes).unwrap();
        assert_eq!(parsed.registration.group, "billing-eu");
        assert_eq!(parsed.registration.instance_id, "web-9");
        assert_eq!(parsed.interval_ms, 2000);
    }
}
