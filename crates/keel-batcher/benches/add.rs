//! `Batcher::add` throughput against a bare `tokio::sync::mpsc::try_send`
//! into a channel of the same capacity that a task drains.
//!
//! Run with `cargo xtask bench -p keel-batcher --bench add`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_batcher::{BatchSink, Batcher, BatcherConfig, SinkFuture, Stamped};

#[derive(Clone)]
struct Value(SystemTime);

impl Stamped for Value {
    fn stamp(&self) -> SystemTime {
        self.0
    }
}

struct Discard;

impl BatchSink<u64, Value> for Discard {
    fn write<'a>(&'a self, _batch: &'a [(u64, Value)]) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

const PER_ITER: u64 = 1000;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let config = BatcherConfig { flush_interval: Duration::from_millis(100), ..BatcherConfig::default() };
    let capacity = config.max_batch_size * config.channel_multiplier;
    let batcher: Batcher<u64, Value> =
        runtime.block_on(async { Batcher::start("bench", config, Arc::new(Discard)).expect("batcher") });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Value)>(capacity);
    runtime.spawn(async move { while rx.recv().await.is_some() {} });
    let now = SystemTime::now();

    let mut group = c.benchmark_group("batcher_add");
    group.throughput(Throughput::Elements(PER_ITER));
    group.bench_function("mpsc_try_send", |b| {
        let mut key = 0u64;
        b.iter(|| {
            for _ in 0..PER_ITER {
                key = key.wrapping_add(1);
                let _ = black_box(tx.try_send((key % 10_000, Value(now))));
            }
        });
    });
    group.bench_function("batcher_add", |b| {
        let mut key = 0u64;
        b.iter(|| {
            for _ in 0..PER_ITER {
                key = key.wrapping_add(1);
                let _ = black_box(batcher.add(key % 10_000, Value(now)));
            }
        });
    });
    group.finish();
    let stats = batcher.stats();
    eprintln!("batcher during the bench: offered {} dropped {} (channel full)", stats.offered, stats.dropped_full);
}

criterion_group!(benches, bench);
criterion_main!(benches);
