//! The limits on client connections (contract section 7): the request head's size and
//! time, idle connections over HTTP/1.1 and HTTP/2, and `server.max_connections`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use scf_gateway::RunningGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A gateway on ephemeral ports with extra `[server]` keys and one event function,
/// `hello`, on `instance`.
async fn gateway_with(server: &str, instance: SocketAddr, extra: &str) -> RunningGateway {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n{}",
        event_function("hello", &[instance], extra)
    );
    RunningGateway::start(&config(&text)).await.unwrap()
}

/// An invocation's head, `pad` bytes long in all, padded with one `x-pad` field.
fn head_of(len: usize) -> Vec<u8> {
    let start = "POST /v1/functions/hello/invocations HTTP/1.1\r\nhost: gw\r\n\
                 content-length: 2\r\nx-pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    let mut head = Vec::with_capacity(len);
    head.extend_from_slice(start.as_bytes());
    head.extend(std::iter::repeat_n(b'a', pad));
    head.extend_from_slice(end.as_bytes());
    assert_eq!(head.len(), len);
    head
}

/// Reads until the server closes, or `PATIENCE`; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = within("the gateway to close", stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads one response head (and whatever came with it).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within("a response", stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends a small invocation on `stream` and reads its whole answer: its status line.
async fn exchange(stream: &mut TcpStream) -> String {
    stream
        .write_all(
            b"POST /v1/functions/hello/invocations HTTP/1.1\r\nhost: gw\r\n\
              content-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = within("a response", stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text.lines().next().unwrap_or("").to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kb_is_431_and_never_reaches_the_instance() {
    let instance = FakeInstance::start().await;
    let gw = gateway_with("", instance.addr, "").await;
    // 65 KB, and ~100 KB (which fits in one of hyper's reads): refused.
    for len in [65 * 1024, 64 * 1024 + 1, 100 * 1024] {
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        // The gateway may close before it has read it all.
        let _ = client.write_all(&head_of(len)).await;
        let _ = client.write_all(b"{}").await;
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{len}: {answer:?}");
    }
    assert_eq!(instance.record.count(), 0);
    // 63 KB and exactly 64 KB pass, whole, on a connection that stays usable.
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    for len in [63 * 1024, 64 * 1024] {
        client.write_all(&head_of(len)).await.unwrap();
        client.write_all(b"{}").await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{len}: {head:?}");
    }
    let seen = instance.record.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.headers["x-pad"].len() > 60 * 1024));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_list_over_64_kb_is_refused_and_under_it_passes() {
    let instance = FakeInstance::start().await;
    let gw = gateway_with("", instance.addr, "instance_concurrency = 4").await;
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .max_header_list_size(1 << 20)
        .handshake::<_, Bytes>(stream)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut statuses = Vec::new();
    for pad in [63 * 1024, 65 * 1024] {
        let req = http::Request::post("http://gw/v1/functions/hello/invocations")
            .header("x-pad", "a".repeat(pad))
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"{}"), true).unwrap();
        statuses.push(match response.await {
            Ok(response) => response.status().as_u16(),
            // A reset instead of a 431 is a refusal too.
            Err(_) => 431,
        });
        client = client.ready().await.unwrap();
    }
    assert_eq!(statuses, [200, 431]);
    assert_eq!(instance.record.count(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_complete_within_header_read_timeout_is_answered_408() {
    let instance = FakeInstance::start().await;
    let timeout = Duration::from_millis(600);
    let gw = gateway_with("header_read_timeout = \"600ms\"", instance.addr, "").await;
    // Part of a head, then nothing; and a head dribbled a byte at a time.
    let mut stalled = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let start = Instant::now();
    stalled
        .write_all(b"POST /v1/functions/hello/invocations HTTP/1.1\r\nhost: g")
        .await
        .unwrap();
    let mut dribbling = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let dribbler = tokio::spawn(async move {
        let head = b"GET /v1/functions/hello/invocations HTTP/1.1\r\nx-slow: ";
        dribbling.write_all(head).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            if dribbling.write_all(b"a").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), dribbling.read(&mut chunk)).await
            {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let answer = read_to_close(&mut stalled).await;
    let waited = start.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert!(waited >= timeout - timeout / 4, "after {waited:?}");
    let answer = within("the dribbler to be cut", dribbler).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(start.elapsed() < timeout * 4);
    // A silent connection is closed without a word.
    let mut silent = TcpStream::connect(gw.listen_addr()).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert_eq!(instance.record.count(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_client_idle_timeout_http2_with_goaway() {
    let instance = FakeInstance::start().await;
    let idle = Duration::from_millis(800);
    let gw = gateway_with("client_idle_timeout = \"800ms\"", instance.addr, "").await;
    // HTTP/1.1: served, then closed once idle.
    let mut h1 = TcpStream::connect(gw.listen_addr()).await.unwrap();
    assert!(exchange(&mut h1).await.starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    assert_eq!(read_to_close(&mut h1).await, "");
    assert!(start.elapsed() >= idle - idle / 4, "{:?}", start.elapsed());
    // HTTP/2: served, then GOAWAY (the connection ends without error).
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://gw/v1/functions/hello/invocations")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let start = Instant::now();
    within("GOAWAY", conn).await.unwrap().unwrap();
    assert!(start.elapsed() >= idle - idle / 4, "{:?}", start.elapsed());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    let instance = FakeInstance::start().await;
    let gw = gateway_with(
        "max_connections = 5\nworkers = 2",
        instance.addr,
        "instance_concurrency = 8",
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        assert!(exchange(&mut client).await.starts_with("HTTP/1.1 200"));
        open.push(client);
    }
    // The sixth is connected (the listen backlog) but not served...
    let mut sixth = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let waiting = tokio::spawn(async move {
        let status = exchange(&mut sixth).await;
        (status, Instant::now())
    });
    // ... while the five are (a refused request would have shown by now).
    for client in &mut open {
        assert!(exchange(client).await.starts_with("HTTP/1.1 200"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the sixth was served past the cap");
    let closed_at = Instant::now();
    drop(open.pop());
    let (status, served_at) = within("the sixth to be served", waiting).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(served_at >= closed_at);
    gw.shutdown().await;
}

/// A 64 MB upload over HTTP/2 on loopback: how the flow-control windows the gateway
/// announces pace one stream. A measurement, not a check (`--ignored`, release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn http2_upload_of_64_mb() {
    const MB: usize = 1024 * 1024;
    let instance = FakeInstance::start().await;
    let gw = gateway_with(
        "max_body_bytes = 100000000",
        instance.addr,
        "timeout = \"60s\"",
    )
    .await;
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://gw/v1/functions/hello/invocations")
        .header("content-length", (64 * MB).to_string())
        .body(())
        .unwrap();
    let start = Instant::now();
    let (response, mut body) = client.send_request(req, false).unwrap();
    let chunk = Bytes::from(vec![b'a'; 256 * 1024]);
    for i in 0..64 * MB / chunk.len() {
        body.reserve_capacity(chunk.len());
        let mut sent = 0;
        while sent < chunk.len() {
            let granted = std::future::poll_fn(|cx| body.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let n = granted.min(chunk.len() - sent);
            let last = i == 64 * MB / chunk.len() - 1 && sent + n == chunk.len();
            body.send_data(chunk.slice(sent..sent + n), last).unwrap();
            sent += n;
        }
    }
    let response = response.await.unwrap();
    let took = start.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(instance.record.seen()[0].body_len, 64 * MB);
    eprintln!(
        "64 MB over HTTP/2 in {took:?}: {:.0} MB/s",
        64.0 / took.as_secs_f64()
    );
    gw.shutdown().await;
}
