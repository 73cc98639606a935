//! Request bodies from the client's side, over raw sockets: a small body is read whole
//! before an instance is chosen (a slow sender holds no slot, one too slow gets 408),
//! and a body whose own chunked framing is broken is the client's 400, never the
//! instance's 502.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEAD: &str = "POST /v1/functions/hello/invocations HTTP/1.1\r\nHost: gateway.test\r\n";

/// One instance with one slot, and a queue that gives up fast: a held slot shows as 429.
fn one_slot(addr: SocketAddr, extra: &str) -> String {
    event_function(
        "hello",
        &[addr],
        &format!("instance_concurrency = 1\nqueue_timeout = \"100ms\"\n{extra}"),
    )
}

/// Reads one answer off `client` (the gateway closes the connection after it, or it
/// says how long its body is) and returns the status and body.
async fn answer(client: &mut TcpStream) -> (u16, serde_json::Value) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = within("the answer", client.read(&mut buf)).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if body.len() >= len || n == 0 {
                let status = head[9..12].parse().unwrap();
                let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
                return (status, json);
            }
        }
        assert!(n > 0, "the connection closed before an answer: {text:?}");
    }
}

/// Sends `head` and then `body` one byte every 100 ms, on a connection of its own.
async fn drip(addr: SocketAddr, head: String, body: Vec<u8>) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.set_nodelay(true).unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    for byte in body {
        // The pace is the scenario: a client sending slower than the instance works.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(&[byte]).await.unwrap();
    }
    client
}

/// A client dripping a small body holds no slot: others are served meanwhile (not
/// 429), and the dripping one is served once its body is complete, with its framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_a_small_body_holds_no_instance_slot() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&one_slot(instance.addr, "timeout = \"5s\"")).await;
    let addr = gw.listen_addr();
    let event = br#"{"key":"slow"}"#.to_vec();
    let by_length = tokio::spawn(drip(
        addr,
        format!("{HEAD}Content-Length: {}\r\n\r\n", event.len()),
        event.clone(),
    ));
    // Chunked: the framing drips too.
    let mut chunks = format!("{:x}\r\n", event.len()).into_bytes();
    chunks.extend_from_slice(&event);
    chunks.extend_from_slice(b"\r\n0\r\n\r\n");
    let chunked = tokio::spawn(drip(
        addr,
        format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n"),
        chunks,
    ));

    // While both drip (1.4 s and 2.4 s), the one slot serves everyone else.
    for _ in 0..5 {
        let answer = invoke(addr, "hello", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    assert!(
        !by_length.is_finished() && !chunked.is_finished(),
        "the others were served while the bodies were still coming"
    );

    for client in [by_length, chunked] {
        let mut client = client.await.unwrap();
        let (status, json) = answer(&mut client).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["body_len"], event.len(), "{json}");
    }
    let seen = instance.record.seen();
    let dripped: Vec<_> = seen.iter().filter(|s| s.body_len == event.len()).collect();
    assert_eq!(dripped.len(), 2, "{seen:?}");
    // Framing kept: a length as given; chunked stays chunked.
    assert!(
        dripped
            .iter()
            .any(|s| s.headers.get("content-length").is_some_and(|v| v == "14")),
        "{dripped:?}"
    );
    assert!(
        dripped.iter().any(|s| s
            .headers
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked")),
        "{dripped:?}"
    );
    assert_eq!(
        instance.record.max_inflight.load(Ordering::SeqCst),
        1,
        "one slot"
    );
    gw.shutdown().await;
}

/// A body that does not arrive within the bound (the function's timeout here) is
/// answered 408 with the error body, and nothing of it reaches an instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_slow_is_408_and_reaches_no_instance() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&one_slot(instance.addr, "timeout = \"500ms\"")).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    client
        .write_all(format!("{HEAD}Content-Length: 100\r\n\r\n{{\"a\":").as_bytes())
        .await
        .unwrap();
    let (status, json) = answer(&mut client).await;
    assert_eq!(status, 408, "{json}");
    assert_eq!(json["errorCode"], 408, "{json}");
    assert_eq!(
        json["errorMessage"], "The request body did not arrive within 0.5 seconds",
        "{json}"
    );
    assert!(json["requestId"].as_str().is_some_and(|id| !id.is_empty()));
    // (The gateway may have opened a warm connection; no request went on it.)
    assert_eq!(instance.record.count(), 0);
    assert_eq!(instance.record.bytes_received.load(Ordering::SeqCst), 0);
    // The slot was never taken.
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

/// The client's own broken chunked framing, in a small body: 400/400, and since the
/// body is read before an instance is chosen, nothing reaches one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_with_broken_chunked_framing_is_400_and_reaches_no_instance() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&one_slot(instance.addr, "")).await;
    let cases: &[(&str, &[u8])] = &[
        ("a chunk size that is not hex", b"5\r\nhello\r\nzz\r\n"),
        (
            "a chunk size that overflows",
            b"ffffffffffffffffff\r\nhello\r\n",
        ),
        ("no CRLF after a chunk's data", b"5\r\nhelloXX0\r\n\r\n"),
    ];
    for (case, body) in cases {
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        let head = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(body).await.unwrap();
        let (status, json) = answer(&mut client).await;
        assert_eq!(status, 400, "{case}: {json}");
        assert_eq!(json["errorCode"], 400, "{case}: {json}");
        let message = json["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("The request body is malformed"),
            "{case}: {message}"
        );
    }
    // (The gateway may have opened a warm connection; no request went on it.)
    assert_eq!(instance.record.count(), 0);
    assert_eq!(instance.record.bytes_received.load(Ordering::SeqCst), 0);
    gw.shutdown().await;
}

/// A large body streams; when its chunked framing breaks midway the instance has part
/// of it, the attempt ends, and the client gets 400/400 (not 502 blaming the instance).
/// The slot is free again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_whose_framing_breaks_midway_is_400() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&one_slot(instance.addr, "")).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let head = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    // Past the buffering threshold: this streams to the instance.
    let big = 100 * 1024;
    client
        .write_all(format!("{big:x}\r\n").as_bytes())
        .await
        .unwrap();
    client.write_all(&vec![b'a'; big]).await.unwrap();
    client.write_all(b"\r\n").await.unwrap();
    wait_until("the instance gets part of the body", PATIENCE, async || {
        instance.record.bytes_received.load(Ordering::SeqCst) > 0
    })
    .await;
    client.write_all(b"zz\r\n").await.unwrap();
    let (status, json) = answer(&mut client).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["errorCode"], 400, "{json}");
    assert_eq!(instance.record.count(), 0, "no complete request reached it");
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

/// A chunked body that grows past the threshold while it is read streams on after what
/// was read, nothing lost; one announced past it streams from the start; one of exactly
/// the threshold is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_the_threshold_reach_the_instance_whole() {
    const THRESHOLD: usize = 64 * 1024;
    let instance = FakeInstance::start().await;
    let gw = gateway(&one_slot(instance.addr, "")).await;
    let addr = gw.listen_addr();
    for (len, chunked) in [
        (THRESHOLD, false),
        (THRESHOLD + 1, false),
        (THRESHOLD - 10, true),
        (3 * THRESHOLD + 7, true),
    ] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {len}")
        };
        client
            .write_all(format!("{HEAD}{framing}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // In pieces of 10,000 bytes, so a chunked body crosses the threshold mid-read.
        let mut left = len;
        while left > 0 {
            let n = left.min(10_000);
            if chunked {
                client
                    .write_all(format!("{n:x}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            client.write_all(&vec![b'a'; n]).await.unwrap();
            if chunked {
                client.write_all(b"\r\n").await.unwrap();
            }
            left -= n;
        }
        if chunked {
            client.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let (status, json) = answer(&mut client).await;
        assert_eq!(status, 200, "{len}: {json}");
        assert_eq!(json["body_len"], len, "{len}: {json}");
    }
    gw.shutdown().await;
}
