//! The registry's hot paths without the network: applying a report to the state, a query
//! over 10,000 instances, and fanning one event out to 1,000 watchers.
//!
//! `cargo bench -p sfc-registry --bench registry`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sfc_registry::model::{Event, EventKind, Filter, InstanceRecord, Registration};
use sfc_registry::protocol::{Codec, EventMessage, Message, QueryResult, Report};
use sfc_registry::registry::state::{Outbound, OutboundTx, SessionRef};
use sfc_registry::registry::{Registry, RegistryConfig};
use tokio::sync::{broadcast, mpsc};

const INSTANCES: usize = 10_000;
const GROUPS: usize = 10;
const WATCHERS: usize = 1_000;

fn sampled_report() -> Report {
    let mut sampler = sfc_client::metrics::Sampler::new();
    std::thread::sleep(std::time::Duration::from_millis(250));
    let mut metrics = sampler.sample();
    metrics.custom.insert("queue_depth".into(), 17.0);
    Report {
        seq: 1,
        sent_at: Some(sfc_registry::model::now_ms()),
        health: None,
        health_note: None,
        metrics,
    }
}

/// A registry holding `n` online instances in `GROUPS` groups, each owned by a session, with
/// one report applied to each. The receivers keep the sessions' queues open.
fn fleet(n: usize, report: &Report) -> (Registry, Vec<mpsc::Receiver<Box<Outbound>>>) {
    let reg = Registry::new(RegistryConfig::default());
    let mut queues = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = OutboundTx::channel(8);
        queues.push(rx);
        let r = Registration {
            group: format!("g{}", i % GROUPS),
            instance_id: format!("i{i}"),
            service: format!("svc{}", i % GROUPS),
            hostname: "bench-host".into(),
            pid: 1000 + i as u32,
            tags: vec!["bench".into()],
            ..Default::default()
        };
        let id = format!("{}/{}", r.group, r.instance_id);
        let mut st = reg.state();
        st.register(
            r,
            1000,
            Some(SessionRef {
                id: i as u64 + 1,
                tx,
            }),
            None,
            "v1",
            serde_json::Value::Null,
        );
        st.apply_report(&id, Some(i as u64 + 1), report.clone());
    }
    (reg, queues)
}

fn apply_report(c: &mut Criterion) {
    let report = sampled_report();
    let (reg, _queues) = fleet(INSTANCES, &report);
    let wire = Codec::Json.encode(&Message::Report(report.clone()));
    let mut g = c.benchmark_group("registry");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("apply_report_10k", |b| {
        b.iter_batched(
            || report.clone(),
            |r| {
                i = (i + 1) % INSTANCES;
                let id = format!("g{}/i{i}", i % GROUPS);
                black_box(reg.state().apply_report(&id, Some(i as u64 + 1), r))
            },
            BatchSize::SmallInput,
        )
    });
    // What the session does per report frame after TLS: decode the JSON, then apply it.
    g.bench_function("decode_and_apply_report_10k", |b| {
        b.iter(|| {
            i = (i + 1) % INSTANCES;
            let id = format!("g{}/i{i}", i % GROUPS);
            let Ok(Message::Report(r)) = Codec::Json.decode(&wire) else {
                unreachable!()
            };
            black_box(reg.state().apply_report(&id, Some(i as u64 + 1), r))
        })
    });
    g.finish();
}

fn query(c: &mut Criterion) {
    let report = sampled_report();
    let (reg, _queues) = fleet(INSTANCES, &report);
    let mut g = c.benchmark_group("query_10k");
    g.sample_size(20);
    g.bench_function("all", |b| {
        b.iter(|| black_box(reg.query(&Filter::default()).len()))
    });
    // Only what is done under the state lock: pick the records, shared (no copy, no sort).
    g.bench_function("all_under_lock", |b| {
        b.iter(|| black_box(reg.state().query(&Filter::default()).len()))
    });
    // What `GET /v1/instances` and `/v1/fleet` do after the lock: sort, then write JSON.
    g.bench_function("all_json", |b| {
        b.iter(|| black_box(serde_json::to_vec(&reg.query(&Filter::default())).unwrap().len()))
    });
    g.bench_function("one_group", |b| {
        b.iter(|| black_box(reg.query(&Filter::group("g3")).len()))
    });
    // As a session answers it: query, copy the records into the frame, encode it.
    g.bench_function("one_group_encoded", |b| {
        b.iter(|| {
            let instances: Vec<InstanceRecord> =
                reg.query(&Filter::group("g3")).into_iter().map(Arc::unwrap_or_clone).collect();
            black_box(
                Codec::Json
                    .encode(&Message::Result(QueryResult {
                        id: 1,
                        instances,
                        cursor: 0,
                    }))
                    .len(),
            )
        })
    });
    g.finish();
}

/// One transition reaching 1,000 watcher sessions: the broadcast, each session's filter, and
/// each session encoding its event frame (frames differ by watch id).
fn fanout(c: &mut Criterion) {
    let report = sampled_report();
    let (reg, _queues) = fleet(1, &report);
    let record = reg.current_record("g0/i0").unwrap();
    let ev = Arc::new(Event {
        seq: 7,
        at: sfc_registry::model::now_ms(),
        kind: EventKind::HealthChanged,
        id: record.id.clone(),
        group: record.group.clone(),
        service: record.service.clone(),
        instance: Some(Arc::clone(&record)),
        detail: serde_json::json!({ "health": "warning", "note": null }),
    });
    let (tx, _) = broadcast::channel::<Arc<Event>>(16);
    // Half the watchers want this group, half another one.
    let mut watchers: Vec<(broadcast::Receiver<Arc<Event>>, Filter)> = (0..WATCHERS)
        .map(|i| {
            (
                tx.subscribe(),
                Filter::group(if i % 2 == 0 { "g0" } else { "g1" }),
            )
        })
        .collect();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(WATCHERS as u64));
    g.bench_function("event_to_1000_watchers", |b| {
        b.iter(|| {
            tx.send(ev.clone()).unwrap();
            let mut bytes = 0;
            for (w, (rx, filter)) in watchers.iter_mut().enumerate() {
                let ev = rx.try_recv().unwrap();
                if ev.instance.as_deref().is_some_and(|r| filter.matches(r)) {
                    let msg = Message::Event(EventMessage {
                        watch: w as u64,
                        event: (*ev).clone(),
                    });
                    bytes += Codec::Json.encode(&msg).len();
                }
            }
            black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, apply_report, query, fanout);
criterion_main!(benches);
