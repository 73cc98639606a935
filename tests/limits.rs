//! Request body limits and the keep-alive race, against in-process instances.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

const SEVEN_MB: usize = 7 * 1024 * 1024;
const LIMIT: usize = 6 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_7mb_body_with_content_length_is_refused_before_any_instance_is_touched() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .body(Full::new(Bytes::from(vec![b'a'; SEVEN_MB])))
        .unwrap();
    let answer = send(gw.listen_addr(), req)
        .await
        .expect("the client reads the answer");
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), 406);
    let message = answer.error_message();
    assert!(message.contains("6291456"), "names the limit: {message}");
    assert!(!answer.request_id().is_empty());
    assert_eq!(instance.record.count(), 0);
    assert_eq!(instance.record.bytes_received.load(Ordering::SeqCst), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_7mb_chunked_body_is_cut_at_the_limit() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let (tx, body) = ChannelBody::new(None);
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .body(body)
        .unwrap();
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        for _ in 0..SEVEN_MB / chunk.len() {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let answer = send(gw.listen_addr(), req)
        .await
        .expect("the client reads the answer");
    feeder.await.unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), 406);
    let received = instance.record.bytes_received.load(Ordering::SeqCst);
    assert!(
        received <= LIMIT,
        "the instance got {received} bytes, over the limit"
    );
    assert_eq!(
        instance.record.count(),
        0,
        "the instance never saw a complete request"
    );
    // The function is not harmed: the next invocation succeeds.
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_limit_pass_with_their_framing() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .body(Full::new(Bytes::from(vec![b'a'; LIMIT])))
        .unwrap();
    assert_eq!(
        send(gw.listen_addr(), req).await.unwrap().status,
        StatusCode::OK
    );
    let (tx, body) = ChannelBody::new(None);
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .body(body)
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..3 {
            let _ = tx.send(Bytes::from_static(b"chunk")).await;
        }
    });
    assert_eq!(
        send(gw.listen_addr(), req).await.unwrap().status,
        StatusCode::OK
    );
    let seen = instance.record.seen();
    assert_eq!(seen[0].body_len, LIMIT);
    assert_eq!(
        seen[0].headers["content-length"],
        LIMIT.to_string().as_str()
    );
    assert_eq!(seen[1].body_len, 15);
    assert_eq!(seen[1].headers["transfer-encoding"], "chunked");
    assert!(seen[1].headers.get("content-length").is_none());
    gw.shutdown().await;
}

/// Real servers close idle keep-alive connections; a request must never be lost to
/// that, nor sent twice.
///
/// The instance closes a connection after 20 ms idle, and the gateway, told nothing
/// (`upstream_idle_timeout` 5 s), keeps pooling it. The pauses between POSTs sweep 12
/// to 23 ms across that timeout, so a request finds the connection the last one used
/// alive, dead, or being closed at that very moment. Found closed before a byte went
/// out, the request must go out once on a fresh connection; cut after it went out, it
/// must fail, not be resent. What makes the race is the pause against the idle timeout,
/// not their size: a sweep across it meets the closing moment far more often than a
/// fixed pause beyond it, so a few hundred requests in a few seconds run the race more
/// often than 500 requests paused 130 ms against a 100 ms timeout did in over a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_closing_idle_connections_loses_and_duplicates_nothing() {
    const REQUESTS: usize = 200;
    let instance = IdleClosingInstance::start(Duration::from_millis(20)).await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await;
    let mut succeeded = HashSet::new();
    let mut failed = 0;
    for i in 0..REQUESTS {
        let body = format!("{{\"seq\":{i}}}");
        let answer = invoke(gw.listen_addr(), "hello", &[], &body).await;
        if answer.status == StatusCode::OK {
            succeeded.insert(body);
        } else {
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
            assert_eq!(answer.error_code(), 405);
            failed += 1;
        }
        // The pause is the scenario.
        tokio::time::sleep(Duration::from_millis(12 + i as u64 % 12)).await;
    }
    let answered = instance.answered.lock().clone();
    let unique: HashSet<String> = answered.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        answered.len(),
        "no invocation reached the instance twice"
    );
    assert_eq!(
        unique, succeeded,
        "what the instance received is what succeeded"
    );
    // Only requests cut after they went out may fail; a gateway that sent requests on
    // the connections it found closed would fail about every other one.
    assert!(
        failed <= REQUESTS / 20,
        "failures stay rare: {failed} of {REQUESTS}"
    );
    // The race was run: the instance closed pooled connections under the gateway.
    let closed = instance.idle_closed.load(Ordering::SeqCst);
    assert!(closed >= REQUESTS / 4, "{closed} idle connections closed");
    gw.shutdown().await;
}
