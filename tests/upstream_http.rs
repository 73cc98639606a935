//! The gateway's HTTP/1.1 client against an instance written at the byte level, so that
//! each response framing a real server may use is on the wire exactly: chunked with
//! extensions and trailers, close-delimited HTTP/1.0, interim 100 responses, 204, a
//! malformed head, and a full-duplex echo that answers while the request still streams.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use scf_gateway::RunningGateway;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the raw instance received: the request head (lower-cased) and the body bytes.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// An instance that answers according to the request's `x-raw` header with bytes
/// written by hand, counting the connections it accepted.
struct RawInstance {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawInstance {
    async fn start() -> RawInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, r.clone()));
            }
        });
        RawInstance {
            addr,
            accepted,
            received,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn last(&self) -> Received {
        self.received.lock().last().cloned().unwrap()
    }
}

async fn serve(stream: TcpStream, received: Arc<Mutex<Vec<Received>>>) {
    let mut io = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match io.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push_str(&line.to_ascii_lowercase());
            if end {
                break;
            }
        }
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
        };
        let scenario = header("x-raw").unwrap_or_default();
        if scenario == "stall" {
            // A head and a first chunk, then silence with the connection open for longer
            // than any test waits, then the end of the body as if nothing had happened.
            let _ = io
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await;
            tokio::time::sleep(2 * PATIENCE).await;
            let _ = io.get_mut().write_all(b"0\r\n\r\n").await;
            return;
        }
        if scenario == "echo" {
            // Answer at once, then echo each request chunk as it arrives.
            io.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            while let Some(chunk) = read_chunk(&mut io).await {
                let framed = format!("{:x}\r\n", chunk.len());
                io.get_mut().write_all(framed.as_bytes()).await.unwrap();
                io.get_mut().write_all(&chunk).await.unwrap();
                io.get_mut().write_all(b"\r\n").await.unwrap();
            }
            io.get_mut().write_all(b"0\r\n\r\n").await.unwrap();
            continue;
        }
        let mut body = Vec::new();
        if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            io.read_exact(&mut body).await.unwrap();
        } else if header("transfer-encoding").as_deref() == Some("chunked") {
            while let Some(chunk) = read_chunk(&mut io).await {
                body.extend_from_slice(&chunk);
            }
        }
        received.lock().push(Received {
            head: head.clone(),
            body,
        });
        let response: &[u8] = match scenario.as_str() {
            "chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Extra: 1\r\n\r\n\
                  5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
            }
            "http10" => b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the connection closes",
            "continue" => {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter"
            }
            "no-content" => b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n",
            "connection-named" => {
                b"HTTP/1.1 200 OK\r\nConnection: x-bar\r\nx_bar: 1\r\nx-bar: 2\r\n\
                  X-Kept: 1\r\ncontent-length: 2\r\n\r\nok"
            }
            "garbage" => b"HTTP/1.1 two hundred\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if io.get_mut().write_all(response).await.is_err() {
            return;
        }
        if matches!(scenario.as_str(), "http10" | "garbage") {
            return;
        }
    }
}

/// One chunk of a chunked request body; `None` after the last one (and its trailers).
async fn read_chunk(io: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    io.read_line(&mut line).await.ok()?;
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        loop {
            line.clear();
            io.read_line(&mut line).await.ok()?;
            if line == "\r\n" || line.is_empty() {
                return None;
            }
        }
    }
    let mut data = vec![0; size + 2];
    io.read_exact(&mut data).await.ok()?;
    data.truncate(size);
    Some(data)
}

/// The next non-empty data frame of a response body; `None` at its end.
async fn next_data(body: &mut hyper::body::Incoming) -> Option<Bytes> {
    loop {
        match within("the next frame", body.frame()).await? {
            Ok(f) => match f.into_data() {
                Ok(d) if !d.is_empty() => return Some(d),
                _ => continue,
            },
            Err(_) => return None,
        }
    }
}

async fn gateway_for(instance: &RawInstance) -> RunningGateway {
    gateway(&event_function(
        "raw",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_decoded_and_the_connection_is_kept() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    for _ in 0..3 {
        let answer = invoke(gw.listen_addr(), "raw", &[("x-raw", "chunked")], "{}").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "hello, world");
        assert_eq!(answer.headers["x-extra"], "1");
    }
    // Three exchanges, all on the connection the first one opened (warm-ups aside, a
    // kept connection means no new accept per invocation).
    let before = instance.accepted();
    invoke(gw.listen_addr(), "raw", &[("x-raw", "chunked")], "{}").await;
    assert_eq!(instance.accepted(), before, "the connection was reused");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_http10_bodies_arrive_whole_and_the_connection_is_not_reused() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    let answer = invoke(gw.listen_addr(), "raw", &[("x-raw", "http10")], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "until the connection closes");
    assert_eq!(answer.headers["x-old"], "yes");
    // The next invocation works on another connection.
    let answer = invoke(gw.listen_addr(), "raw", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "ok");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_and_204_has_no_body() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    let answer = invoke(gw.listen_addr(), "raw", &[("x-raw", "continue")], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "after");
    let answer = invoke(gw.listen_addr(), "raw", &[("x-raw", "no-content")], "{}").await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.body.is_empty());
    assert_eq!(answer.headers["x-empty"], "1");
    // Both left the connection usable.
    let answer = invoke(gw.listen_addr(), "raw", &[], "{}").await;
    assert_eq!(answer.body, "ok");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_response_is_a_502_405_that_says_so() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    let answer = invoke(gw.listen_addr(), "raw", &[("x-raw", "garbage")], "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    assert!(message.contains("invalid HTTP response"), "{message}");
    let answer = invoke(gw.listen_addr(), "raw", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_keep_their_framing_on_the_way_to_the_instance() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    // Unknown length: chunked on both legs.
    let (tx, body) = ChannelBody::new(None);
    let req = Request::post("/v1/functions/raw/invocations")
        .header("host", "gw")
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        for part in ["{\"a\":", "1", "}"] {
            tx.send(Bytes::from(part)).await.unwrap();
            // Part of the scenario: the parts leave as separate chunks, not one write.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let answer = send(gw.listen_addr(), req).await.unwrap();
    sending.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let seen = instance.last();
    assert!(
        seen.head.contains("transfer-encoding: chunked\r\n"),
        "{}",
        seen.head
    );
    assert!(!seen.head.contains("content-length"), "{}", seen.head);
    assert_eq!(seen.body, b"{\"a\":1}");

    // Known length: passed as it came; an empty POST says so.
    invoke(gw.listen_addr(), "raw", &[], "{\"b\":2}").await;
    let seen = instance.last();
    assert!(
        seen.head.starts_with("post /event-invoke http/1.1\r\n"),
        "{}",
        seen.head
    );
    assert!(seen.head.contains("content-length: 7\r\n"), "{}", seen.head);
    assert_eq!(seen.body, b"{\"b\":2}");
    let req = Request::post("/v1/functions/raw/invocations")
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(gw.listen_addr(), req).await.unwrap().status,
        StatusCode::OK
    );
    assert!(instance.last().head.contains("content-length: 0\r\n"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_can_stream_while_the_request_body_still_flows() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    let (tx, body) = ChannelBody::new(None);
    let req = Request::post("/v1/functions/raw/invocations")
        .header("host", "gw")
        .header("x-raw", "echo")
        .body(body)
        .unwrap();
    let mut sender = connect(gw.listen_addr()).await.unwrap();
    // Past the size up to which a body is read whole before it is sent: from here on
    // the body streams.
    let filler = Bytes::from(vec![b'.'; 64 * 1024 + 1]);
    tx.send(filler.clone()).await.unwrap();
    tx.send(Bytes::from_static(b"ping-1")).await.unwrap();
    let response = within(
        "the head to come before the request body ended",
        sender.send_request(req),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut echoed = Vec::new();
    while echoed.len() < filler.len() + 6 {
        echoed.extend_from_slice(&next_data(&mut body).await.unwrap());
    }
    assert!(echoed.ends_with(b"ping-1"));
    tx.send(Bytes::from_static(b"ping-2")).await.unwrap();
    assert_eq!(next_data(&mut body).await.unwrap(), "ping-2");
    drop(tx);
    assert!(
        next_data(&mut body).await.is_none(),
        "the echo ends with the request"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_stalls_after_its_head_is_cut_at_the_timeout() {
    let instance = RawInstance::start().await;
    let gw = gateway(&event_function(
        "raw",
        &[instance.addr],
        "timeout = \"700ms\"\ninstance_concurrency = 1",
    ))
    .await;
    // The instance says nothing more, yet the stream is cut at the deadline (700 ms):
    // not ended as if whole when the instance would end it, nor cut at the connection's
    // next 500 ms tick (1 s). A loaded machine can delay any one cut past 900 ms, never
    // bring one forward: the quickest of three attempts is held to that bound.
    let mut took = Vec::new();
    for _ in 0..3 {
        let req = Request::post("/v1/functions/raw/invocations")
            .header("host", "gw")
            .header("x-raw", "stall")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let mut sender = connect(gw.listen_addr()).await.unwrap();
        let started = Instant::now();
        let response = within("the head", sender.send_request(req)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        assert_eq!(next_data(&mut body).await.unwrap(), "first");
        let cut = loop {
            match within("the end of the stream", body.frame()).await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert!(cut, "the stream is cut, not ended as if whole");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(650), "{elapsed:?}");
        took.push(elapsed);
        if elapsed < Duration::from_millis(900) {
            break;
        }
    }
    assert!(
        took.iter().any(|t| *t < Duration::from_millis(900)),
        "cut at the deadline, not at a later tick: {took:?}"
    );
    // And the slot was freed: the next invocation is answered.
    let answer = invoke(gw.listen_addr(), "raw", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    gw.shutdown().await;
}

/// An instance that takes one chunked request, gives its raw bytes to the receiver and
/// answers 200.
async fn one_chunked_request() -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The head, then a chunked body up to its terminating empty line.
        loop {
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|end| &got[end + 4..]);
            if body.is_some_and(|b| b.ends_with(b"\r\n\r\n") && b.starts_with(b"5\r\nhello\r\n")) {
                break;
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let _ = got_tx.send(got);
    });
    (addr, got_rx)
}

/// The request an instance got: a chunked `hello` and none of the client's trailers.
fn assert_no_trailers(got: &[u8]) {
    let got = String::from_utf8_lossy(got).to_ascii_lowercase();
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n", "{got}");
    for forged in ["forged", "evil", "x_scf_name", "content-length: 99"] {
        assert!(
            !got.contains(forged),
            "{forged} reached the instance: {got}"
        );
    }
}

/// Trailers a client sends with a chunked request never reach the instance: a forged
/// `X-Scf-*`, `Host` or underscore-spelled name in them would otherwise be merged into
/// the request's headers by many frameworks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_never_reach_the_instance() {
    let (addr, got) = one_chunked_request().await;
    let gw = gateway(&event_function("raw", &[addr], "")).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    client
        .write_all(
            b"POST /v1/functions/raw/invocations HTTP/1.1\r\nHost: gateway.test\r\n\
              Transfer-Encoding: chunked\r\nTrailer: X-Scf-Secret-Key\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\nX-Scf-Secret-Key: forged\r\nHost: evil\r\nx_scf_name: x\r\n\
              Content-Length: 99\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer", client.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_no_trailers(&within("the instance's request", got).await.unwrap());
}

/// HTTP/2 trailers are dropped the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_trailers_never_reach_the_instance() {
    let (addr, got) = one_chunked_request().await;
    let gw = gateway(&event_function("raw", &[addr], "")).await;
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    for (name, value) in [
        ("x-scf-secret-key", "forged"),
        ("host", "evil"),
        ("x_scf_name", "x"),
    ] {
        trailers.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    // No length: the body reaches the instance chunked, where trailers could go.
    let body = Frames(
        vec![
            http_body::Frame::data(Bytes::from_static(b"hello")),
            http_body::Frame::trailers(trailers),
        ]
        .into(),
    );
    let req = Request::post(format!(
        "http://{}/v1/functions/raw/invocations",
        gw.listen_addr()
    ))
    .body(body)
    .unwrap();
    let response = within("the answer", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_trailers(&within("the instance's request", got).await.unwrap());
}

/// A body of the given frames, with no size known in advance.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Headers named in `Connection` go in both spellings, on the way in and on the way out:
/// an instance (or a client) that folds `_` into `-` never gets `x_foo` for a header
/// the other side declared hop-by-hop as `x-foo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_go_in_either_spelling() {
    let instance = RawInstance::start().await;
    let gw = gateway_for(&instance).await;
    let answer = invoke(
        gw.listen_addr(),
        "raw",
        &[
            ("connection", "x-foo"),
            ("x_foo", "1"),
            ("x-foo", "2"),
            ("x-raw", "connection-named"),
            ("x-other", "kept"),
        ],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let head = instance.last().head;
    assert!(!head.contains("x_foo") && !head.contains("x-foo"), "{head}");
    assert!(head.contains("x-other: kept\r\n"), "{head}");
    for gone in ["x_bar", "x-bar"] {
        assert!(!answer.headers.contains_key(gone), "{:?}", answer.headers);
    }
    assert_eq!(answer.headers["x-kept"], "1");
    assert_eq!(answer.body, "ok");
    gw.shutdown().await;
}
