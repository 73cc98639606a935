//! Instance selection across 1,000 instances: `Pool::acquire` (the pick is private) and
//! the drop of the slot, which releases it. The pool is built from a parsed config and
//! never started, so nothing connects. Three loads: an idle pool, a pool with 90% of
//! its slots busy (power-of-two choices usually misses, so the fallback scan runs), and
//! one with a single free slot.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use scf_gateway::metrics::Registry;
use scf_gateway::pool::{Pool, Slot};

const INSTANCES: usize = 1_000;

fn pool() -> std::sync::Arc<Pool> {
    let list: Vec<String> = (0..INSTANCES)
        .map(|i| format!("\"127.0.0.1:{}\"", 20000 + i))
        .collect();
    let text = format!(
        "[[functions]]\nname = \"big\"\ninstances = [{}]\n",
        list.join(", ")
    );
    let config =
        scf_gateway::config::parse(&text, Path::new("bench.toml"), &|_| None).expect("valid");
    let registry = Registry::new();
    let f = &config.functions[0];
    Pool::new(
        f,
        Duration::from_secs(1),
        registry.function(&f.name, &f.namespace),
        None,
        &Default::default(),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("pool_1000_instances");
    for busy in [0usize, 900, 999] {
        let pool = pool();
        // Hold `busy` slots (instance_concurrency = 1, so one instance each).
        let held: Vec<Slot> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..busy {
                v.push(pool.acquire().await.expect("free slot"));
            }
            v
        });
        g.bench_function(format!("acquire_release_{busy}_busy"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let slot = pool.acquire().await.expect("free slot");
                        drop(std::hint::black_box(slot));
                    }
                    start.elapsed()
                })
            })
        });
        drop(held);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
