//! Issue 9: bytes and CPU per frame for each codec and compression, on the three payloads
//! the issue names: a typical report, a record carrying a large API document in its metadata,
//! and a query result over 10,000 instances. Prints one table; nothing is asserted.
//!
//! `cargo bench -p sfc-client --bench codec`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use sfc_client::model::{Health, InstanceRecord, Metrics, Status};
use sfc_client::protocol::{Codec, Compression, Message, QueryResult, Report, Wire};

/// A report as a client sends it: one real sample of this machine plus two custom gauges.
fn sampled_metrics() -> Metrics {
    let mut sampler = sfc_client::metrics::Sampler::new();
    std::thread::sleep(Duration::from_millis(250));
    let mut metrics = sampler.sample();
    metrics.custom.insert("queue_depth".into(), 17.0);
    metrics.custom.insert("requests_per_s".into(), 1234.5);
    metrics
}

fn record(i: usize, metrics: &Metrics, metadata: BTreeMap<String, String>) -> InstanceRecord {
    InstanceRecord {
        id: format!("billing/billing-{i:05}"),
        group: "billing".into(),
        service: "billing-api".into(),
        instance_id: format!("billing-{i:05}"),
        hostname: format!("node-{:03}.dc1.example.net", i % 300),
        pid: 1000 + i as u32,
        status: Status::Online,
        offline_reason: None,
        health: Health::Passing,
        health_note: None,
        endpoints: vec![sfc_client::model::Endpoint {
            name: "http".into(),
            host: format!("10.0.{}.{}", i / 250, i % 250),
            port: 8080,
            protocol: "tcp".into(),
        }],
        tags: vec!["prod".into(), "eu-west".into()],
        metadata,
        version: Some("2.14.3".into()),
        api: None,
        interval_ms: 1000,
        connected_since: Some(1_764_000_000_000 + i as u64),
        last_report_at: Some(1_764_000_360_000 + i as u64),
        tls_identity: None,
        metrics: metrics.clone(),
        wire: "v1".into(),
        clock_skew_ms: Some(3),
        status_since: 1_764_000_000_000,
    }
}

/// An OpenAPI-like document of about 60 KB, as a service might publish in its metadata.
fn api_document() -> String {
    let mut paths = serde_json::Map::new();
    for i in 0..150 {
        paths.insert(
            format!("/v2/accounts/{{account_id}}/invoices/{i}"),
            serde_json::json!({"get": {"summary": format!("Fetch invoice batch {i}"), "operationId": format!("getInvoice{i}"),
                "parameters": [{"name": "account_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the invoice", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Invoice"}}}},
                    "404": {"description": "no such invoice"}}}}),
        );
    }
    serde_json::json!({"openapi": "3.1.0", "info": {"title": "billing", "version": "2.14.3"}, "paths": paths}).to_string()
}

fn time_per_op(mut f: impl FnMut()) -> Duration {
    // At least 5 runs and about 300 ms; the median of runs in batches.
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5
        || (start.elapsed() < Duration::from_millis(300) && samples.len() < 10_000)
    {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let metrics = sampled_metrics();
    let report = Message::Report(Report {
        seq: 42,
        sent_at: Some(1_764_000_000_000),
        health: Some(Health::Passing),
        health_note: None,
        metrics: metrics.clone(),
    });
    let doc = BTreeMap::from([("openapi".to_string(), api_document())]);
    let big_record = Message::Result(QueryResult {
        id: 1,
        instances: vec![record(0, &metrics, doc)],
        cursor: 9,
    });
    let small_meta = BTreeMap::from([
        ("team".to_string(), "payments".to_string()),
        ("commit".to_string(), "4f2a9c1".to_string()),
    ]);
    let fleet = Message::Result(QueryResult {
        id: 1,
        instances: (0..10_000)
            .map(|i| record(i, &metrics, small_meta.clone()))
            .collect(),
        cursor: 123_456,
    });
    let wires = [
        ("json", Wire::JSON),
        (
            "json+zstd",
            Wire {
                threshold: 0,
                ..Wire::new(Codec::Json, Some(Compression::Zstd))
            },
        ),
        ("protobuf", Wire::new(Codec::Protobuf, None)),
        (
            "protobuf+zstd",
            Wire {
                threshold: 0,
                ..Wire::new(Codec::Protobuf, Some(Compression::Zstd))
            },
        ),
    ];
    println!("| payload | wire | bytes | encode | decode |");
    println!("|---|---|---:|---:|---:|");
    for (name, msg) in [
        ("report", &report),
        ("record with 60 KB API document", &big_record),
        ("result, 10,000 instances", &fleet),
    ] {
        for (wname, w) in &wires {
            let bytes = w.encode(msg);
            let enc = time_per_op(|| {
                black_box(w.encode(black_box(msg)));
            });
            let dec = time_per_op(|| {
                black_box(w.decode(black_box(&bytes), 1 << 30).unwrap());
            });
            println!(
                "| {name} | {wname} | {} | {:.1} µs | {:.1} µs |",
                bytes.len(),
                enc.as_secs_f64() * 1e6,
                dec.as_secs_f64() * 1e6
            );
        }
    }
}
