//! A full in-process request through the stack: a hyper client -> `RunningGateway`
//! (listen 127.0.0.1:0) -> a tiny hyper instance on loopback, all on one current-thread
//! Tokio runtime, against the same client going straight to the instance.
//!
//! Before Criterion runs, a counting `#[global_allocator]` measures heap allocations per
//! request, direct and through the gateway; the difference is the gateway's own
//! allocations per proxied request (printed; the client and the instance do the same
//! work in both cases).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scf_gateway::RunningGateway;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc_zeroed`, passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `realloc`: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout` (every allocation here does).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const EVENT: &[u8] = br#"{"key1":"value1","key2":"value2","n":42,"source":"bench"}"#;
static OK_BODY: &[u8] = br#"{"ok":true}"#;

/// A minimal instance: answers everything with `{"ok":true}` after reading the body.
async fn start_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut res = Response::new(Full::new(Bytes::from_static(OK_BODY)));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn start_gateway(instance: SocketAddr) -> RunningGateway {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\
         [credentials]\nsecret_id = \"AKIDbenchmarksecretid0000000000000\"\n\
         secret_key = \"benchmarksecretkey000000000000000\"\n\
         session_token = \"benchmarksessiontoken0000000000000000000000000000\"\n\
         [[functions]]\nname = \"hello\"\ninstance_concurrency = 16\ninstances = [\"{instance}\"]\n"
    );
    let config =
        scf_gateway::config::parse(&text, Path::new("bench.toml"), &|_| None).expect("valid");
    let gw = RunningGateway::start(&config)
        .await
        .expect("gateway starts");
    // Let the keeper open its warm connections.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    gw
}

async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn one(sender: &mut SendRequest<Full<Bytes>>, path: &'static str) {
    sender.ready().await.unwrap();
    let req = Request::post(path)
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(EVENT)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.into_body().collect().await.unwrap();
}

const INVOKE: &str = "/v1/functions/hello/invocations";

struct Stack {
    rt: Runtime,
    _gateway: RunningGateway,
    via_gateway: SendRequest<Full<Bytes>>,
    direct: SendRequest<Full<Bytes>>,
}

fn stack() -> Stack {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (gateway, via_gateway, direct) = rt.block_on(async {
        let instance = start_instance().await;
        let gateway = start_gateway(instance).await;
        let via = client(gateway.listen_addr()).await;
        let direct = client(instance).await;
        (gateway, via, direct)
    });
    Stack {
        rt,
        _gateway: gateway,
        via_gateway,
        direct,
    }
}

/// Allocations (count, bytes) per request over `n` sequential requests.
fn count(stack: &mut Stack, path: &'static str, n: u64, via: bool) -> (f64, f64) {
    let Stack {
        rt,
        via_gateway,
        direct,
        ..
    } = stack;
    let sender = if via { via_gateway } else { direct };
    rt.block_on(async {
        for _ in 0..200 {
            one(sender, path).await;
        }
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        for _ in 0..n {
            one(sender, path).await;
        }
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
    })
}

fn report_allocations(stack: &mut Stack) {
    // ALLOC_N: requests per measurement (e.g. small under valgrind --tool=dhat).
    let n = std::env::var("ALLOC_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let (direct, direct_bytes) = count(stack, "/event-invoke", n, false);
    let (via, via_bytes) = count(stack, INVOKE, n, true);
    let line = format!(
        "allocations per request: direct {direct:.1} ({direct_bytes:.0} B), through the gateway {via:.1} \
         ({via_bytes:.0} B); the gateway's own: {:.1} allocations, {:.0} B per proxied request \
         (client and instance allocations included in both figures)",
        via - direct,
        via_bytes - direct_bytes
    );
    println!("{line}");
    // Also kept for the README / CI logs.
    let out = std::env::var("ALLOC_REPORT").unwrap_or_else(|_| {
        format!(
            "{}/allocations.txt",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
        )
    });
    let _ = std::fs::write(out, format!("{line}\n"));
}

fn bench(c: &mut Criterion) {
    let mut stack = stack();
    report_allocations(&mut stack);
    if std::env::var_os("ALLOC_ONLY").is_some() {
        // Just the allocation report (for heap profilers): skip the timing.
        std::process::exit(0);
    }

    let mut g = c.benchmark_group("full_request_loopback");
    g.bench_function("direct_to_instance", |b| {
        b.iter_custom(|iters| {
            let Stack { rt, direct, .. } = &mut stack;
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one(direct, "/event-invoke").await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("through_gateway", |b| {
        b.iter_custom(|iters| {
            let Stack {
                rt, via_gateway, ..
            } = &mut stack;
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one(via_gateway, INVOKE).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
