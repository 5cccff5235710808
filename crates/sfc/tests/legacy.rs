//! The original module's wire format (PROTOCOL.md §15): one TLS connection per report carrying
//! one JSON document. A real Node.js `tls` client lands in the fleet and goes offline by the
//! registry's own timer; malformed or out-of-limit documents are logged, counted in /metrics and
//! never recorded, while a well-behaved client on the same registry carries on; and the edge
//! cases (JOIN, LEAVE, leading whitespace, a FIN without close_notify, a live v1 owner, the
//! interval limits) each do what PROTOCOL.md says.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sfc_client::model::{EventKind, InstanceRecord, OfflineReason, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

const LEGACY_CLIENT: &str = r#"
const tls = require('tls');
const fs = require('fs');
const [host, port, ca, hostname] = process.argv.slice(2);
const mem = process.memoryUsage();
const doc = { action: 'HEALTH', payload: {
  serviceName: 'legacy-billing', groupingKey: 'legacy-group', time: new Date().toISOString(),
  metrics: { rss: mem.rss, heapTotal: mem.heapTotal, heapUsed: mem.heapUsed, external: mem.external,
    hostname, numCpus: 2, freemem: 123456789, loadadv: [0.5, 0.25, 0.1], user: 'node', uptime: 4242,
    updateIntervalSeconds: 1 } } };
const socket = tls.connect({ host, port: Number(port), ca: fs.readFileSync(ca) }, () => {
  socket.end(JSON.stringify(doc));
});
socket.on('error', (e) => { console.error('legacy client error:', e.message); process.exit(1); });
socket.on('close', () => process.exit(0));
"#;

fn status_json(reg: &RegistryProc) -> Vec<InstanceRecord> {
    let out = Command::new(sfc_bin())
        .args(["status", "--json", "--registry", &reg.addr, "--ca"])
        .arg(reg.ca())
        .output()
        .expect("sfc status");
    assert!(out.status.success(), "sfc status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status --json is a JSON array of records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_node_tls_client_appears_in_sfc_status() {
    let reg = RegistryProc::start(&["--missed-reports", "2"]);
    // Watching before the report: the watch sees every transition whatever the timing.
    let mut watch = raw_watch(&reg, json!({"group": "legacy-group"})).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("legacy-client.js");
    std::fs::write(&script, LEGACY_CLIENT).unwrap();
    let (host, port) = reg.addr.rsplit_once(':').unwrap();
    let st = Command::new("node")
        .arg(&script)
        .args([host, port])
        .arg(reg.ca())
        .arg("legacy-host-1")
        .status()
        .expect("node is installed");
    assert!(st.success(), "legacy client failed");

    let joined = next_event(&mut watch).await;
    assert_eq!((joined.kind, joined.id.as_str()), (EventKind::Joined, "legacy-group/legacy-host-1"), "{joined:?}");
    let rec = joined.instance.expect("a joined event carries the record");
    assert_eq!(rec.status, Status::Online);
    assert_eq!(rec.service, "legacy-billing");
    assert_eq!(rec.group, "legacy-group");
    assert_eq!(rec.instance_id, "legacy-host-1");
    assert_eq!(rec.wire, "legacy");
    assert_eq!(rec.interval_ms, 1000);
    assert_eq!(rec.pid, 0);
    assert_eq!(rec.connected_since, None);
    // The report itself was applied (the metrics arrive with it, in the same critical section).
    let shown = status_json(&reg).into_iter().find(|r| r.id == rec.id).expect("sfc status lists the legacy record");
    assert_eq!(shown.wire, "legacy");
    assert_eq!(shown.metrics.host.load_average, Some([0.5, 0.25, 0.1]));
    assert_eq!(shown.metrics.process.user.as_deref(), Some("node"));
    assert!(shown.metrics.runtime.contains_key("heap_used_bytes"));

    // With no further traffic at all, the registry's timer takes it offline (2 x 1 s), always
    // with reason missed-reports, and nothing else happens to it in between.
    let off = next_event(&mut watch).await;
    assert_eq!((off.kind, off.id.as_str()), (EventKind::Offline, rec.id.as_str()), "{off:?}");
    assert_eq!(off.instance.as_ref().and_then(|r| r.offline_reason), Some(OfflineReason::MissedReports), "{off:?}");
    let r = status_json(&reg).into_iter().find(|r| r.id == rec.id).expect("record kept");
    assert_eq!((r.status, r.offline_reason), (Status::Offline, Some(OfflineReason::MissedReports)));
}

/// How a legacy client ends its connection after the document.
#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// TLS close_notify, then FIN (what Node's `socket.end()` does).
    Notify,
    /// A TCP FIN with no close_notify before it.
    FinOnly,
}

/// Sends one legacy document on its own TLS connection and waits until the registry has read
/// it to the end, applied (or rejected) it and closed the connection. It sends nothing back.
async fn send_legacy(reg: &RegistryProc, bytes: &[u8], close: Close) {
    let mut s = raw_tls(reg, None).await;
    // A document the registry stops reading (over --max-frame) may meet a closed socket.
    let sent = async {
        s.write_all(bytes).await?;
        s.flush().await?;
        match close {
            Close::Notify => s.shutdown().await,
            Close::FinOnly => s.get_mut().0.shutdown().await,
        }
    }
    .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.expect("the registry closed the connection");
    if let Err(e) = read {
        use std::io::ErrorKind::*;
        assert!(matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe), "{e} (sending: {sent:?})");
    }
    assert!(got.is_empty(), "the registry answered a legacy client: {:?}", String::from_utf8_lossy(&got));
}

/// A document as the original client builds it. Its interval is an hour, so that no record
/// goes offline by its timer in the middle of a test, however slow the machine.
fn doc(action: &str, group: &str, hostname: &str) -> Value {
    json!({"action": action, "payload": {"serviceName": "legacy-svc", "groupingKey": group,
        "time": "2026-01-01T00:00:00.000Z", "metrics": {"rss": 1000, "heapTotal": 1, "heapUsed": 2,
        "external": 3, "hostname": hostname, "numCpus": 2, "freemem": 1000, "loadadv": [0.1, 0.2, 0.3],
        "user": "node", "uptime": 10, "updateIntervalSeconds": 3600}}})
}

fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn counter(reg: &RegistryProc, name: &str) -> f64 {
    let text = metrics_text(reg);
    metric(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

const ERRORS: &str = "sfc_registry_protocol_errors_total";
const LEGACY_REPORTS: &str = "sfc_registry_legacy_reports_total";

fn ids(reg: &RegistryProc) -> Vec<String> {
    let mut v: Vec<String> = http_instances(reg).into_iter().map(|r| r.id).collect();
    v.sort();
    v
}

fn record(reg: &RegistryProc, id: &str) -> Option<InstanceRecord> {
    http_instances(reg).into_iter().find(|r| r.id == id)
}

/// Sends a document the registry must reject: it is counted once in /metrics as a protocol
/// error (and not as a legacy report), a log line names the problem (every piece of `names`),
/// and the registry's records are the same ids as before.
async fn assert_rejected(reg: &RegistryProc, bytes: &[u8], close: Close, names: &[&str]) {
    let (errors, reports, before) = (counter(reg, ERRORS), counter(reg, LEGACY_REPORTS), ids(reg));
    let lines_before = reg.log().lines().filter(|l| l.contains("legacy report rejected")).count();
    send_legacy(reg, bytes, close).await;
    assert_eq!(counter(reg, ERRORS), errors + 1.0, "a rejected document is counted once ({names:?})");
    assert_eq!(counter(reg, LEGACY_REPORTS), reports, "a rejected document is no report ({names:?})");
    let line = eventually(LIMIT, "the rejection in the log", || {
        reg.log().lines().filter(|l| l.contains("legacy report rejected")).nth(lines_before).map(str::to_string)
    })
    .await;
    for n in names {
        assert!(line.contains(n), "the log line does not name {n:?}: {line}");
    }
    assert_eq!(ids(reg), before, "a rejected document changed the records ({names:?})");
}

/// RELIABILITY.md: a legacy document that is malformed or out of limits is logged and counted,
/// and nothing is recorded; a well-behaved client on the same registry never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_legacy_documents_are_logged_counted_and_never_recorded() {
    let reg = RegistryProc::start(&["--max-frame", "65536"]);
    let mut steady = WellBehaved::start_settled(reg.service("steady", "s-1")).await;

    assert_rejected(&reg, b"{not json at all", Close::Notify, &["legacy document is not valid"]).await;
    let mut two = bytes(&doc("HEALTH", "lg", "two-docs"));
    two.extend(bytes(&doc("HEALTH", "lg", "two-docs-b")));
    assert_rejected(&reg, &two, Close::Notify, &["legacy document is not valid", "trailing"]).await;
    assert_rejected(&reg, &bytes(&doc("SHUTDOWN", "lg", "h1")), Close::Notify, &["SHUTDOWN", "not supported"])
        .await;
    assert_rejected(&reg, &bytes(&doc("health", "lg", "h1")), Close::Notify, &["health", "not supported"]).await;

    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"].as_object_mut().unwrap().remove("groupingKey");
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["missing field", "groupingKey"]).await;
    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"]["metrics"].as_object_mut().unwrap().remove("hostname");
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["missing field", "hostname"]).await;
    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"].as_object_mut().unwrap().remove("metrics");
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["missing field", "metrics"]).await;
    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"]["metrics"]["hostname"] = json!(42);
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["invalid type"]).await;
    assert_rejected(&reg, &bytes(&doc("HEALTH", "lg", "")), Close::Notify, &["payload.metrics.hostname is empty"]).await;

    // Strings over the documented limits (PROTOCOL.md §12).
    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"]["serviceName"] = json!("s".repeat(200));
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["service", "200 bytes", "128"]).await;
    assert_rejected(&reg, &bytes(&doc("HEALTH", "lg", &"h".repeat(129))), Close::Notify, &["instance_id", "129 bytes", "128"])
        .await;
    // A document longer than --max-frame is not read to its end.
    let mut v = doc("HEALTH", "lg", "h1");
    v["payload"]["metrics"]["user"] = json!("u".repeat(70_000));
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["exceeds the maximum of 65536 bytes"]).await;

    // Nothing of it reached the fleet, and the steady client never noticed.
    assert_eq!(ids(&reg), vec!["steady/s-1".to_string()]);
    steady.assert_undisturbed().await;
}

/// `JOIN` is a report like `HEALTH`; `LEAVE` makes a known legacy record `left` and is ignored
/// for an identity the registry does not know (PROTOCOL.md §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_registers_and_leave_ends_a_legacy_record() {
    let reg = RegistryProc::start(&[]);
    let mut watch = raw_watch(&reg, json!({"group": "lg"})).await;

    send_legacy(&reg, &bytes(&doc("JOIN", "lg", "joiner")), Close::Notify).await;
    let r = record(&reg, "lg/joiner").expect("JOIN registers the instance");
    assert_eq!((r.status, r.wire.as_str(), r.service.as_str()), (Status::Online, "legacy", "legacy-svc"));
    assert_eq!(r.metrics.host.load_average, Some([0.1, 0.2, 0.3]));
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.kind, ev.id.as_str()), (EventKind::Joined, "lg/joiner"));

    send_legacy(&reg, &bytes(&doc("LEAVE", "lg", "joiner")), Close::Notify).await;
    let r = record(&reg, "lg/joiner").expect("a record that left is kept");
    assert_eq!((r.status, r.offline_reason), (Status::Left, None));
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.kind, ev.id.as_str()), (EventKind::Left, "lg/joiner"));
    assert_eq!(ev.detail["reason"], "legacy LEAVE", "{ev:?}");

    // LEAVE for an identity nobody registered: accepted, and nothing is recorded.
    let errors = counter(&reg, ERRORS);
    send_legacy(&reg, &bytes(&doc("LEAVE", "lg", "stranger")), Close::Notify).await;
    assert_eq!(counter(&reg, ERRORS), errors, "a LEAVE for an unknown identity is not an error");
    assert!(record(&reg, "lg/stranger").is_none(), "a LEAVE created a record");

    // A HEALTH report brings the instance that left back online.
    send_legacy(&reg, &bytes(&doc("HEALTH", "lg", "joiner")), Close::Notify).await;
    assert_eq!(record(&reg, "lg/joiner").unwrap().status, Status::Online);
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.kind, ev.id.as_str()), (EventKind::Online, "lg/joiner"), "no event for the stranger before it");
}

/// ASCII whitespace before the `{` still selects the legacy format (PROTOCOL.md §3, §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_whitespace_before_the_document_is_accepted() {
    let reg = RegistryProc::start(&[]);
    for (host, lead) in [("spaces", &b"   "[..]), ("newline", &b"\n"[..]), ("mixed", &b"\r\n\t \x0c"[..])] {
        let mut v = lead.to_vec();
        v.extend(bytes(&doc("HEALTH", "ws", host)));
        send_legacy(&reg, &v, Close::Notify).await;
        let r = record(&reg, &format!("ws/{host}")).unwrap_or_else(|| panic!("{lead:?} before the document lost it"));
        assert_eq!((r.status, r.wire.as_str()), (Status::Online, "legacy"));
    }
    assert_eq!(counter(&reg, ERRORS), 0.0);
    assert_eq!(counter(&reg, LEGACY_REPORTS), 3.0);
}

/// A client that ends the TCP stream without TLS close_notify still delivered its document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_without_close_notify_still_delivers_the_document() {
    let reg = RegistryProc::start(&[]);
    send_legacy(&reg, &bytes(&doc("HEALTH", "fin", "no-notify")), Close::FinOnly).await;
    let r = record(&reg, "fin/no-notify").expect("the document sent before a bare FIN was applied");
    assert_eq!((r.status, r.wire.as_str()), (Status::Online, "legacy"));
    assert_eq!(counter(&reg, ERRORS), 0.0);
    // A malformed document ended the same way is still rejected by name, not lost as a read error.
    assert_rejected(&reg, b"{\"action\":\"HEALTH\"", Close::FinOnly, &["legacy document is not valid", "EOF"]).await;
}

/// A `groupingKey` beyond the group limits (128 bytes, no '/', no control characters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_group_is_rejected_by_name() {
    let reg = RegistryProc::start(&[]);
    let mut steady = WellBehaved::start_settled(reg.service("steady", "s-1")).await;
    assert_rejected(&reg, &bytes(&doc("HEALTH", &"g".repeat(129), "h1")), Close::Notify, &["group", "129 bytes", "128"])
        .await;
    assert_rejected(&reg, &bytes(&doc("HEALTH", "a/b", "h1")), Close::Notify, &["group", "'/'"]).await;
    assert_rejected(&reg, &bytes(&doc("HEALTH", "", "h1")), Close::Notify, &["payload.groupingKey is empty"]).await;
    // 128 bytes is within the limit.
    send_legacy(&reg, &bytes(&doc("HEALTH", &"g".repeat(128), "h1")), Close::Notify).await;
    assert!(record(&reg, &format!("{}/h1", "g".repeat(128))).is_some());
    steady.assert_undisturbed().await;
}

/// A legacy document for an identity that a live v1 session owns is rejected: the record stays
/// the session's (wire, service, session start), and the session carries on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_document_cannot_take_over_a_live_v1_session() {
    let reg = RegistryProc::start(&[]);
    let mut owner = WellBehaved::start_settled(reg.service("shared", "web-1").service("orders")).await;
    let before = record(&reg, "shared/web-1").unwrap();
    assert_eq!(before.wire, "v1");

    let mut v = doc("HEALTH", "shared", "web-1");
    v["payload"]["serviceName"] = json!("impostor");
    assert_rejected(&reg, &bytes(&v), Close::Notify, &["shared/web-1", "belongs to a live v1 session"]).await;
    assert_rejected(&reg, &bytes(&doc("LEAVE", "shared", "web-1")), Close::Notify, &["belongs to a live v1 session"]).await;

    let after = record(&reg, "shared/web-1").unwrap();
    assert_eq!(
        (after.wire.as_str(), after.service.as_str(), after.status, after.connected_since, after.status_since),
        ("v1", "orders", Status::Online, before.connected_since, before.status_since),
        "{after:?}"
    );
    assert_eq!(after.metrics.process.user, before.metrics.process.user, "legacy metrics reached the v1 record");
    owner.assert_undisturbed().await;
}

/// `updateIntervalSeconds` must lie within the v1 interval limits (0.1 s ..= 3600 s); outside
/// them the document is rejected by name like any other out-of-limits document (PROTOCOL.md §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_interval_outside_the_limits_is_rejected_by_name() {
    let reg = RegistryProc::start(&[]);
    for (host, secs) in [("slow", json!(7200)), ("fast", json!(0.05)), ("zero", json!(0)), ("negative", json!(-1)),
        ("huge", json!(1e300))]
    {
        let mut v = doc("HEALTH", "iv", host);
        v["payload"]["metrics"]["updateIntervalSeconds"] = secs;
        assert_rejected(&reg, &bytes(&v), Close::Notify, &["updateIntervalSeconds", "0.1", "3600"]).await;
    }
    // The bounds themselves are accepted, and the interval is the record's.
    for (host, secs, ms) in [("min", json!(0.1), 100), ("max", json!(3600), 3_600_000), ("absent", Value::Null, 1000)] {
        let mut v = doc("HEALTH", "iv", host);
        if secs.is_null() {
            v["payload"]["metrics"].as_object_mut().unwrap().remove("updateIntervalSeconds");
        } else {
            v["payload"]["metrics"]["updateIntervalSeconds"] = secs;
        }
        send_legacy(&reg, &bytes(&v), Close::Notify).await;
        let r = record(&reg, &format!("iv/{host}")).unwrap_or_else(|| panic!("iv/{host} was not recorded"));
        // (0.1 s makes a 300 ms window: its status may already be offline on a slow machine.)
        assert_eq!((r.interval_ms, r.wire.as_str()), (ms, "legacy"), "{host}");
    }
    assert_eq!(ids(&reg), vec!["iv/absent".to_string(), "iv/max".into(), "iv/min".into()]);
}
