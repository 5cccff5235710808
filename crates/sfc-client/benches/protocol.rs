//! Frame encode and decode: what every report costs each side before TLS.
//!
//! `cargo bench -p sfc-client --bench protocol`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sfc_client::protocol::frame::length_codec;
use sfc_client::protocol::{Codec, Message, Report};
use tokio_util::codec::{Decoder, Encoder};

/// A report as a client sends it: one real sample of this machine plus two custom gauges.
fn report() -> Message {
    let mut sampler = sfc_client::metrics::Sampler::new();
    std::thread::sleep(std::time::Duration::from_millis(250));
    let mut metrics = sampler.sample();
    metrics.custom.insert("queue_depth".into(), 17.0);
    metrics.custom.insert("requests_per_s".into(), 1234.5);
    Message::Report(Report {
        seq: 42,
        sent_at: Some(1_700_000_000_000),
        health: None,
        health_note: None,
        metrics,
    })
}

fn frames(c: &mut Criterion) {
    let msg = report();
    let payload = Codec::Json.encode(&msg);
    let mut codec = length_codec(sfc_client::protocol::DEFAULT_MAX_FRAME);
    let mut wire = BytesMut::new();
    codec.encode(payload.clone(), &mut wire).unwrap();
    let wire = wire.freeze();

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode_report", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            codec
                .encode(Codec::Json.encode(black_box(&msg)), &mut buf)
                .unwrap();
            black_box(buf.len())
        })
    });
    g.bench_function("decode_report", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            black_box(Codec::Json.decode(&frame).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
