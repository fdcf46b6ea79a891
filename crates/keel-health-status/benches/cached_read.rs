//! A cached health read against a bare `ArcSwap` load in the same run.
//!
//! Run with `cargo xtask bench -p keel-health-status --bench cached_read`.

use std::hint::black_box;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::Status;
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let groups = MandatoryList::new(vec![Mandatory::new("g", Mode::Quorum, ["a", "b", "c"])]).expect("groups");
    let health = runtime.block_on(async {
        let health = Health::new(groups, Mode::Must);
        for name in ["a", "b", "c", "d"] {
            health
                .register(ComponentSpec::new(name).interval(Duration::from_secs(3600)), || async { Report::ok() })
                .expect("register");
        }
        health.first_checks().await;
        health
    });
    let baseline = ArcSwap::from_pointee(Status::Ok);

    let mut group = c.benchmark_group("cached_read");
    group.bench_function("bare_arcswap_load", |b| b.iter(|| black_box(**black_box(&baseline).load() == Status::Ok)));
    group.bench_function("is_cache_healthy", |b| b.iter(|| black_box(black_box(&health).is_cache_healthy())));
    group.bench_function("is_healthy_live", |b| b.iter(|| black_box(black_box(&health).is_healthy())));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
