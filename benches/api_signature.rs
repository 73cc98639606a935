//! Tencent Cloud API 3.0 signature verification: what every API call costs before its
//! action runs (parse the `Authorization` header, rebuild the canonical request, derive
//! the key, compare), for a typical small body and for a large one, where hashing the
//! body dominates.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{HeaderMap, HeaderValue};
use scf_gateway::api::signature::{sign, verify, Authorization, SignedRequest};

const SECRET_ID: &str = "AKIDbenchmarksecretid00000000000000";
const SECRET_KEY: &str = "benchmarksecretkey000000000000000";
const TIMESTAMP: &str = "1767268800";
const NOW: u64 = 1_767_268_800;

/// An `Invoke` body of `len` bytes, as the SDK sends it: JSON with an escaped event.
fn body(len: usize) -> Vec<u8> {
    let head = br#"{"FunctionName": "hello", "InvocationType": "RequestResponse", "ClientContext": "{\"k\":\""#;
    let tail = br#"\"}"}"#;
    let mut body = head.to_vec();
    body.extend((0..len - head.len() - tail.len()).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(tail);
    body
}

/// The headers the Python SDK sends with a call, signed ones and not.
fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:9000"),
        ("content-type", "application/json"),
        ("user-agent", "python-requests/2.34.2"),
        ("accept-encoding", "gzip, deflate"),
        ("accept", "*/*"),
        ("x-tc-action", "Invoke"),
        ("x-tc-requestclient", "SDK_PYTHON_3.1.100"),
        ("x-tc-timestamp", TIMESTAMP),
        ("x-tc-version", "2018-04-16"),
        ("x-tc-region", "ap-guangzhou"),
        ("x-tc-language", "zh-CN"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h
}

fn bench(c: &mut Criterion) {
    let headers = headers();
    let mut g = c.benchmark_group("api_signature_verify");
    for (name, len) in [("body_200_bytes", 200), ("body_64_kib", 64 * 1024)] {
        let body = body(len);
        assert_eq!(body.len(), len);
        let request = SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers: &headers,
            body: &body,
            timestamp: TIMESTAMP,
        };
        let authorization = sign(&request, SECRET_ID, SECRET_KEY).expect("sign");
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let parsed =
                    Authorization::parse(black_box(authorization.as_bytes())).expect("parse");
                verify(&parsed, black_box(&request), NOW, SECRET_KEY).expect("verifies")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
