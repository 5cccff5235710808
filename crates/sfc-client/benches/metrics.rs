//! Cost of one metrics sample, as every client pays it on every report tick.
//!
//! `cargo bench -p sfc-client --bench metrics`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sfc_client::metrics::Sampler;

fn sample(c: &mut Criterion) {
    let mut sampler = Sampler::new();
    c.bench_function("metrics/sample", |b| b.iter(|| black_box(sampler.sample())));
}

criterion_group!(benches, sample);
criterion_main!(benches);
