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
    let message = answer.json()["errorMessage"]
        .as_str()
        .unwrap_or("")
        .to_owned();
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
/// that, nor sent twice. 500 POSTs spaced 130 ms apart against an instance that
/// closes after 100 ms idle: every pooled connection is dead by the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_closing_idle_connections_loses_and_duplicates_nothing() {
    let instance = IdleClosingInstance::start(Duration::from_millis(100)).await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await;
    let mut succeeded = HashSet::new();
    let mut failed = 0;
    for i in 0..500 {
        let body = format!("{{\"seq\":{i}}}");
        let answer = invoke(gw.listen_addr(), "hello", &[], &body).await;
        if answer.status == StatusCode::OK {
            succeeded.insert(body);
        } else {
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
            assert_eq!(answer.error_code(), 405);
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(130)).await;
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
    assert!(failed <= 5, "failures stay rare: {failed} of 500");
    gw.shutdown().await;
}
