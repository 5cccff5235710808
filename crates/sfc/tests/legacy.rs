//! The original module's wire format, sent by a real Node.js `tls` client, lands in the fleet
//! and goes offline by the registry's own timer.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sfc_client::model::{InstanceRecord, OfflineReason, Status};

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

#[test]
fn legacy_node_tls_client_appears_in_sfc_status() {
    let reg = RegistryProc::start(&["--missed-reports", "2"]);
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

    let start = Instant::now();
    let rec = loop {
        if let Some(r) = status_json(&reg).into_iter().find(|r| r.id == "legacy-group/legacy-host-1") {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "legacy record never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec.service, "legacy-billing");
    assert_eq!(rec.group, "legacy-group");
    assert_eq!(rec.instance_id, "legacy-host-1");
    assert_eq!(rec.wire, "legacy");
    assert_eq!(rec.interval_ms, 1000);
    assert_eq!(rec.metrics.host.load_average, Some([0.5, 0.25, 0.1]));
    assert_eq!(rec.metrics.process.user.as_deref(), Some("node"));
    assert!(rec.metrics.runtime.contains_key("heap_used_bytes"));

    // With no further traffic at all, the registry's timer takes it offline (2 x 1 s).
    if rec.status == Status::Online {
        let start = Instant::now();
        loop {
            let r = status_json(&reg).into_iter().find(|r| r.id == rec.id).expect("record kept");
            if r.status == Status::Offline {
                assert_eq!(r.offline_reason, Some(OfflineReason::MissedReports));
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "legacy record never went offline");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
