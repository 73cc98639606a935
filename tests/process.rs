//! The real `scf-gateway` binary: streaming memory and graceful shutdown.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};

/// A 64 MB body streams through while the client is still sending, and the gateway's
/// memory does not grow by anything like the body's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64mb_body_streams_through_without_growing_the_gateway() {
    const TOTAL: usize = 64 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let instance = FakeInstance::start().await;
    let gw = GatewayProcess::start(
        "stream",
        "max_body_bytes = 134217728",
        &event_function("hello", &[instance.addr], "timeout = \"60s\""),
    );
    // Warm up so connection pools and buffers exist before measuring.
    assert_eq!(
        invoke(gw.listen, "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.reset_peak();
    let before = gw.status_kb("VmHWM");

    let (tx, body) = ChannelBody::new(Some(TOTAL as u64));
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .header("content-length", TOTAL.to_string())
        .body(body)
        .unwrap();
    let listen = gw.listen;
    let client = tokio::spawn(async move { send(listen, req).await });
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let first_bytes = instance.record.got_bytes.notified();
    tx.send(chunk.clone()).await.unwrap();
    // The instance must see bytes while the client has sent only 1/256 of the body.
    tokio::time::timeout(Duration::from_secs(10), first_bytes)
        .await
        .expect("the instance saw the first bytes before the client finished");
    for _ in 1..TOTAL / CHUNK {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let answer = client.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(instance.record.seen()[1].body_len, TOTAL);
    let grown_kb = gw.status_kb("VmHWM").saturating_sub(before);
    eprintln!("gateway peak RSS: {before} kB before, grew by {grown_kb} kB for 64 MB");
    assert!(
        grown_kb < 8 * 1024,
        "the gateway's peak RSS grew by {grown_kb} kB for a 64 MB body"
    );
}

/// SIGTERM with slow invocations in flight: they complete, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_invocations_finish_then_exits_0() {
    let instance = FakeInstance::start().await;
    let mut gw = GatewayProcess::start(
        "sigterm",
        "",
        &event_function("hello", &[instance.addr], "instance_concurrency = 4"),
    );
    let listen = gw.listen;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                invoke(listen, "hello", &[("x-test-sleep-ms", "1000")], "{}").await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        instance
            .record
            .inflight
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    let signalled = Instant::now();
    gw.signal("TERM");
    // Readiness turns off while draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = admin_get(gw.admin, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    for task in slow {
        let answer = task.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "in-flight invocation completed"
        );
    }
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

/// The daemon is linked with jemalloc and reads its built-in settings (src/main.rs): pages
/// freed by parked connections go back by jemalloc's background thread after about a
/// second. A wrong symbol name or a missing NUL would leave jemalloc on its defaults.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[test]
fn the_daemon_runs_on_jemalloc_with_its_built_in_settings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    // Added to the built-in settings, not replacing them: jemalloc prints its options at exit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
        "opt.tcache_nslots_small_min: 128",
        "opt.tcache_nslots_large: 128",
        "opt.tcache_gc_incr_bytes: 4194304",
    ] {
        assert!(stats.contains(option), "{option} missing from:\n{stats}");
    }
}
