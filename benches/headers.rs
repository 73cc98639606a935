//! Header strip + stamp: what every invocation does to the client's headers before they
//! go to the instance, and to the instance's headers on the way back.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use scf_gateway::headers::{new_request_id, strip_request, strip_response, Stamp};

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// What wrk/k6/SDK clients typically send with an invocation.
fn typical_request() -> HeaderMap {
    map(&[
        ("host", "127.0.0.1:8080"),
        ("content-type", "application/json"),
        ("content-length", "57"),
        ("user-agent", "tencentcloud-sdk-go/1.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip"),
    ])
}

/// A hostile one: forged X-Scf headers in several spellings, hop-by-hop headers and a
/// Connection list.
fn forged_request() -> HeaderMap {
    map(&[
        ("host", "127.0.0.1:8080"),
        ("content-type", "application/json"),
        ("content-length", "57"),
        ("connection", "keep-alive, x-custom"),
        ("keep-alive", "timeout=5"),
        ("x-custom", "hop"),
        ("x-scf-request-id", "forged"),
        ("x_scf_secret_key", "forged"),
        ("x-scf-uin", "forged"),
        ("accept", "a"),
        ("accept", "b"),
    ])
}

fn typical_response() -> HeaderMap {
    map(&[
        ("content-type", "application/json"),
        ("content-length", "11"),
        ("x-request-body-bytes", "57"),
        ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
    ])
}

fn bench(c: &mut Criterion) {
    let text = "[credentials]\nsecret_id = \"AKIDbenchmarksecretid0000000000000\"\n\
                secret_key = \"benchmarksecretkey000000000000000\"\n\
                session_token = \"benchmarksessiontoken0000000000000000000000000000\"\n\
                [[functions]]\nname = \"hello\"\ninstances = [\"127.0.0.1:9000\"]\n";
    let config =
        scf_gateway::config::parse(text, Path::new("bench.toml"), &|_| None).expect("valid");
    let stamp = Stamp::new(&config, &config.functions[0]);
    assert_eq!(stamp.len(), 12, "twelve stamped headers");

    c.bench_function("request_id_uuid_v4", |b| b.iter(new_request_id));

    let mut g = c.benchmark_group("strip_and_stamp");
    for (name, make) in [
        ("typical_6_headers", typical_request as fn() -> HeaderMap),
        ("forged_11_headers", forged_request),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                make,
                |h| {
                    let id = new_request_id();
                    // What the request path does: strip in place, encode the head with
                    // the prebuilt stamp lines.
                    let out = strip_request(h, 4).headers;
                    let mut head = Vec::with_capacity(1024);
                    for (name, value) in &out {
                        head.extend_from_slice(name.as_str().as_bytes());
                        head.extend_from_slice(b": ");
                        head.extend_from_slice(value.as_bytes());
                        head.extend_from_slice(b"\r\n");
                    }
                    for lines in stamp.lines(&id) {
                        head.extend_from_slice(lines);
                    }
                    head
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("strip_response", |b| {
        let id = HeaderValue::from_static("2f1e7c4a-9a51-4c52-8f0e-3b1d2c4e5f60");
        b.iter_batched(
            typical_response,
            |mut h| {
                strip_response(&mut h, black_box(&id));
                h
            },
            BatchSize::SmallInput,
        )
    });
    // The batch set-up itself (building the input map), to subtract from the above.
    g.bench_function("baseline_build_typical_map", |b| b.iter(typical_request));
    g.finish();

    // `X-Scf-Log-Type: Tail`: the last 4 KB of an invocation's log, base64-encoded into
    // `X-Scf-Log-Result`.
    let tail: String = (0..4096)
        .map(|i| char::from(b' ' + (i % 95) as u8))
        .collect();
    c.bench_function("log_result_base64_4k", |b| {
        b.iter(|| scf_gateway::instance::logs::base64(black_box(tail.as_bytes())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
