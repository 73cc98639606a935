//! Route lookup with 10,000 functions: half event functions (invocation API, spread over
//! 10 namespaces), half web functions behind 5,000 `[[routes]]` entries. Lookups must
//! cost the same whatever the table size (hash probes, one per path segment at most).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use scf_gateway::routing::Router;

const FUNCTIONS: usize = 10_000;

fn config_text(n: usize) -> String {
    let mut t = String::with_capacity(n * 120);
    let half = n / 2;
    for i in 0..half {
        t.push_str(&format!(
            "[[functions]]\nname = \"fn-{i}\"\nnamespace = \"ns{}\"\ninstances = [\"127.0.0.1:9000\"]\n",
            i % 10
        ));
    }
    for i in 0..n - half {
        t.push_str(&format!(
            "[[functions]]\nname = \"web-{i}\"\ntype = \"http\"\ninstances = [\"127.0.0.1:9000\"]\n"
        ));
    }
    for i in 0..n - half {
        t.push_str(&format!(
            "[[routes]]\npath_prefix = \"/app{i}/api\"\nfunction = \"web-{i}\"\nstrip_prefix = true\n"
        ));
    }
    t
}

fn bench(c: &mut Criterion) {
    let text = config_text(FUNCTIONS);
    let config = scf_gateway::config::parse(&text, Path::new("bench.toml"), &|_| None)
        .expect("generated config is valid");
    let router = Router::new(&config);
    let post = Method::POST;
    let get = Method::GET;

    let mut g = c.benchmark_group("route_10k_functions");
    g.bench_function("invoke_default_namespace", |b| {
        b.iter(|| {
            router.route(
                black_box(&post),
                black_box("/v1/functions/fn-4990/invocations"),
                black_box(None),
                black_box(Some("127.0.0.1:8080")),
            )
        })
    });
    g.bench_function("invoke_namespace_and_qualifier", |b| {
        b.iter(|| {
            router.route(
                black_box(&post),
                black_box("/v1/functions/fn-4991/invocations"),
                black_box(Some("namespace=ns1&qualifier=%24LATEST")),
                black_box(Some("127.0.0.1:8080")),
            )
        })
    });
    g.bench_function("web_route_deep_path", |b| {
        b.iter(|| {
            router.route(
                black_box(&get),
                black_box("/app4321/api/v2/users/42/profile"),
                black_box(Some("x=1")),
                black_box(Some("Example.COM:8080")),
            )
        })
    });
    g.bench_function("unknown_function_404", |b| {
        b.iter(|| {
            router.route(
                black_box(&post),
                black_box("/v1/functions/nope/invocations"),
                black_box(None),
                black_box(None),
            )
        })
    });
    g.finish();

    c.bench_function("config_parse_and_build_10k", |b| {
        b.iter(|| {
            let config =
                scf_gateway::config::parse(black_box(&text), Path::new("bench.toml"), &|_| None)
                    .expect("valid");
            Router::new(&config)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
