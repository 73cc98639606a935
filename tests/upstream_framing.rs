//! The HTTP/1.1 client for instances on its own and behind the gateway: responses
//! framed two ways or in a coding the gateway cannot pass on, an instance built on
//! Python's `http.server`, which writes a response's head and body separately, and
//! instances out of step with their requests (a second answer nobody asked for, an
//! answer before the request was read, a broken chunked body, a `101`, a tunnel),
//! whose connections must never carry another request.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use scf_gateway::upstream::h1::{self, Connection, SendError, UpstreamError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An instance that answers every request with the same bytes, counting connections.
struct Canned {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Canned {
    async fn start(response: &'static [u8]) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer_each(stream, response));
            }
        });
        Canned { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads each request (head, and a body by its `Content-Length`) and answers it.
async fn answer_each(stream: TcpStream, response: &'static [u8]) {
    let mut io = BufReader::new(stream);
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            match io.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            let line = line.to_ascii_lowercase();
            if let Some(n) = line.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if io.read_exact(&mut body).await.is_err()
            || io.get_mut().write_all(response).await.is_err()
        {
            return;
        }
    }
}

const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
const GZIP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                      3\r\n\x1f\x8b\x08\r\n0\r\n\r\n";

async fn connection(addr: SocketAddr) -> Box<Connection> {
    Box::new(Connection::new(TcpStream::connect(addr).await.unwrap()))
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/").body(Empty::new()).unwrap()
}

/// Chunked framing wins over a `Content-Length`, which is not passed on; the connection
/// is not kept after a response framed two ways.
#[tokio::test]
async fn the_client_frames_by_chunked_and_drops_the_length() {
    let instance = Canned::start(BOTH).await;
    let conn = connection(instance.addr).await;
    let response = h1::send(conn, get(), &[]).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("content-length"));
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        data.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(data, b"hello world");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn the_client_refuses_a_coding_it_cannot_pass_on() {
    let instance = Canned::start(GZIP).await;
    let conn = connection(instance.addr).await;
    match h1::send(conn, get(), &[]).await {
        Err(SendError::Failed(UpstreamError::UnsupportedTransferCoding)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a gzip transfer coding was accepted"),
    }
}

/// The client drives any connection holder: here a `&mut Connection`, kept by the
/// caller, carrying a body it can give back.
#[tokio::test]
async fn the_client_keeps_a_borrowed_connection_for_the_next_exchange() {
    let instance = Canned::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let mut conn = Connection::new(TcpStream::connect(instance.addr).await.unwrap());
    for _ in 0..3 {
        let req = Request::post("/")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = h1::send(&mut conn, req, &[b"x-a: b\r\n"]).await.unwrap();
        let mut body = response.into_body();
        let data = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(&data[..], b"ok");
        assert!(body.take_reusable().is_some());
    }
    assert_eq!(instance.accepted(), 1);
}

async fn gateway_for(instance: &Canned) -> scf_gateway::RunningGateway {
    gateway(&event_function("f", &[instance.addr], "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_two_ways_reaches_the_client_whole() {
    let instance = Canned::start(BOTH).await;
    let gw = gateway_for(&instance).await;
    for _ in 0..2 {
        let answer = invoke(gw.listen_addr(), "f", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"hello world");
        assert_ne!(
            answer.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_an_unsupported_transfer_coding_is_a_502_405() {
    let instance = Canned::start(GZIP).await;
    let gw = gateway_for(&instance).await;
    let answer = invoke(gw.listen_addr(), "f", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    assert!(message.contains("transfer coding"), "{message}");
    gw.shutdown().await;
}

/// A function on Python's `http.server`, as a function author writes one: the head
/// and the body leave in two writes.
const HTTP_SERVER: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Warm invocations of an `http.server` function take about a millisecond, not the
/// delayed-ACK timer's 40 ms: the gateway acknowledges the head at once, so Nagle's
/// algorithm on the instance lets the body go.
///
/// The bound is on the median of 20, at 20 ms: half the 40 ms the stall costs, and
/// twenty times what an invocation takes. A loaded machine delays some invocations,
/// which the median ignores; it would have to delay most of them by 20 ms each to fail
/// the test, while a stall makes every one of them take 40 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_function_answers_a_warm_invocation_without_the_delayed_ack() {
    let child = tokio::process::Command::new("python3")
        .args(["-c", HTTP_SERVER])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: python3 is not available");
        return;
    };
    let stdout = child.stdout.take().unwrap();
    let mut port = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut port),
    )
    .await
    .expect("http.server listening within 30 s")
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    let gw = gateway(&event_function("py", &[addr], "instance_concurrency = 1")).await;

    let mut client = connect::<Full<Bytes>>(gw.listen_addr()).await.unwrap();
    let invoke = || {
        Request::post("/v1/functions/py/invocations")
            .header("host", "gateway.test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let mut took = Vec::new();
    // The first few warm the connections up (a new connection acknowledges at once).
    for i in 0..25 {
        client.ready().await.unwrap();
        let started = Instant::now();
        let response = client.send_request(invoke()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"ok": true}"#);
        if i >= 5 {
            took.push(started.elapsed());
        }
    }
    took.sort();
    let median = took[took.len() / 2];
    eprintln!(
        "warm invocations: median {median:?}, slowest {:?}",
        took[took.len() - 1]
    );
    assert!(
        median < Duration::from_millis(20),
        "median {median:?} of {took:?}"
    );
    gw.shutdown().await;
}

/// An instance that answers each request as its `x-mode` header asks, naming in each
/// answer the connection it came on (`c1r2`: the first connection's second request),
/// so a test sees which connection, and which request, an answer belongs to.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(act(stream, id));
            }
        });
        Scripted { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A second, complete response nobody asked for.
const UNSOLICITED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nunsolicited";

fn answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads a request head; `None` once the connection ends.
async fn request_head(io: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            return Some(head);
        }
    }
}

/// Reads (and throws away) a request body framed as `head` says.
async fn request_body(io: &mut BufReader<TcpStream>, head: &str) -> Option<()> {
    if let Some(n) = header(head, "content-length") {
        let mut body = vec![0; n.parse().ok()?];
        io.read_exact(&mut body).await.ok()?;
        return Some(());
    }
    if header(head, "transfer-encoding").is_none() {
        return Some(());
    }
    loop {
        let mut line = String::new();
        io.read_line(&mut line).await.ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            loop {
                line.clear();
                if io.read_line(&mut line).await.ok()? <= 2 {
                    return Some(());
                }
            }
        }
        let mut data = vec![0; size + 2];
        io.read_exact(&mut data).await.ok()?;
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

async fn act(stream: TcpStream, id: usize) {
    let mut io = BufReader::new(stream);
    for n in 1.. {
        let Some(head) = request_head(&mut io).await else {
            return;
        };
        let ours = answer(&format!("c{id}r{n}"));
        let written = match header(&head, "x-mode").as_deref().unwrap_or("") {
            // The answer and a second response in one write: both arrive together.
            "twice-together" => {
                request_body(&mut io, &head).await;
                io.get_mut()
                    .write_all(&[&ours[..], UNSOLICITED].concat())
                    .await
            }
            // The answer, then a second response a moment later, while the connection
            // is back in the gateway's pool.
            "twice-later" => {
                request_body(&mut io, &head).await;
                let _ = io.get_mut().write_all(&ours).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                io.get_mut().write_all(UNSOLICITED).await
            }
            // The head and half the body before the request body was read, the rest
            // of the body once it was.
            "early" => {
                let (first, rest) = ours.split_at(ours.len() - 2);
                let _ = io.get_mut().write_all(first).await;
                request_body(&mut io, &head).await;
                io.get_mut().write_all(rest).await
            }
            // A tunnel accepted, as a forward proxy answers `CONNECT`.
            "tunnel" => {
                request_body(&mut io, &head).await;
                io.get_mut()
                    .write_all(b"HTTP/1.1 200 Connection Established\r\ncontent-length: 0\r\n\r\n")
                    .await
            }
            // A protocol switch nobody asked for (the gateway never forwards `Upgrade`),
            // then on as if the connection still spoke HTTP/1.1.
            "switch" => {
                request_body(&mut io, &head).await;
                if ["upgrade", "expect", "connection"]
                    .iter()
                    .any(|h| header(&head, h).is_some())
                {
                    let _ = io.get_mut().write_all(&answer("leaked")).await;
                    continue;
                }
                io.get_mut()
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    .await
            }
            // A chunked body that breaks after its first chunk went out.
            "broken-later" => {
                request_body(&mut io, &head).await;
                let _ = io
                    .get_mut()
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                io.get_mut().write_all(b"zz\r\n").await
            }
            _ => {
                request_body(&mut io, &head).await;
                io.get_mut().write_all(&ours).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// The connection an answer from [`Scripted`] came on, and which request on that
/// connection it answered (1 for the first).
fn place_of(answer: &Answer) -> (String, usize) {
    let body = std::str::from_utf8(&answer.body).unwrap();
    let (conn, n) = body.split_once('r').unwrap_or_else(|| panic!("{body}"));
    (
        conn.to_owned(),
        n.parse().unwrap_or_else(|_| panic!("{body}")),
    )
}

/// Whether some of a few plain invocations went on a connection used before: an
/// instance answering in step has its connections reused.
async fn connections_are_reused(gw: &scf_gateway::RunningGateway) -> bool {
    let mut reused = false;
    for _ in 0..6 {
        let answer = invoke(gw.listen_addr(), "f", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK);
        reused |= place_of(&answer).1 > 1;
    }
    reused
}

/// An instance that sends a second, unsolicited response after each answer: the
/// gateway never hands it to the next request, whose answer is its own, on a
/// connection opened anew. Whether the extra bytes come with the answer or arrive
/// later while the connection is idle in the pool, that connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_answers_twice_loses_the_connection_and_no_client_gets_the_extra_answer() {
    for mode in ["twice-together", "twice-later"] {
        let instance = Scripted::start().await;
        let gw = gateway(&event_function(
            "f",
            &[instance.addr],
            "instance_concurrency = 1",
        ))
        .await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let answer = invoke(gw.listen_addr(), "f", &[("x-mode", mode)], "{}").await;
            assert_eq!(answer.status, StatusCode::OK, "{mode}");
            assert_ne!(&answer.body[..], b"unsolicited", "{mode}");
            seen.push(place_of(&answer));
            // Time for the late response to arrive while the connection is idle.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Each answer is the first on its connection.
        for (i, (conn, n)) in seen.iter().enumerate() {
            assert_eq!(*n, 1, "{mode}: {seen:?}");
            assert!(
                !seen[..i].iter().any(|(c, _)| c == conn),
                "{mode}: {seen:?}"
            );
        }
        assert!(instance.accepted() >= 4, "{mode}: {}", instance.accepted());
        assert!(connections_are_reused(&gw).await, "{mode}");
        gw.shutdown().await;
    }
}

/// A response whose head came before the request body was fully written is forwarded,
/// but its connection carries nothing more, even though the exchange ended cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_answers_before_reading_the_request_body_loses_the_connection() {
    let instance = Scripted::start().await;
    let gw = gateway(&event_function(
        "f",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await;
    // A body large enough to stream to the instance, with a pause in the middle: the
    // instance answers in the pause.
    let (tx, body) = ChannelBody::new(None);
    let req = Request::post("/v1/functions/f/invocations")
        .header("host", "gw")
        .header("x-mode", "early")
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        tx.send(Bytes::from(vec![b' '; 1 << 20])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(Bytes::from_static(b"{}")).await.unwrap();
    });
    let early = send(gw.listen_addr(), req).await.unwrap();
    sending.await.unwrap();
    assert_eq!(early.status, StatusCode::OK);
    let (early_conn, _) = place_of(&early);
    // No later request goes on that connection; answered in step, connections stay.
    for _ in 0..4 {
        let next = invoke(gw.listen_addr(), "f", &[], "{}").await;
        assert_eq!(next.status, StatusCode::OK);
        assert_ne!(place_of(&next).0, early_conn);
    }
    assert!(connections_are_reused(&gw).await);
    gw.shutdown().await;
}

/// A chunked body broken in the bytes that came with the head (a bad size, one that
/// overflows, data not followed by CRLF) is a 502/405 that says so, not an empty reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_broken_before_anything_was_sent_is_a_502_405() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    ] {
        let instance = Canned::start(wire).await;
        let gw = gateway_for(&instance).await;
        let answer = invoke(gw.listen_addr(), "f", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{wire:?}");
        assert_eq!(answer.error_code(), 405);
        let message = answer.error_message();
        assert!(message.contains("invalid HTTP response"), "{message}");
        gw.shutdown().await;
    }
}

/// A chunked body that breaks after its head and first chunk went out to the client
/// cuts the client's stream (it cannot be told apart from a whole body otherwise); the
/// next invocation is served on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_broken_after_the_head_went_out_cuts_the_stream() {
    let instance = Scripted::start().await;
    let gw = gateway(&event_function(
        "f",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await;
    let req = Request::post("/v1/functions/f/invocations")
        .header("host", "gw")
        .header("x-mode", "broken-later")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut sender = connect(gw.listen_addr()).await.unwrap();
    let response = within("the head", sender.send_request(req)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut data = Vec::new();
    let cut = loop {
        match within("the end of the stream", body.frame()).await {
            Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(cut, "the stream is cut, not ended as if whole");
    assert_eq!(data, b"hello");
    let next = invoke(gw.listen_addr(), "f", &[], "{}").await;
    assert_eq!(next.status, StatusCode::OK);
    gw.shutdown().await;
}

/// A web function whose instance accepts a client's `CONNECT` as a tunnel: a 2xx to
/// `CONNECT` turns the connection into a tunnel whatever its framing says (RFC 9112
/// §6.3), so it is refused (502/405) and that connection never carries another
/// request, where reused it would pipe the next invocation, stamped with the platform's
/// credentials, to wherever the tunnel leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_accepted_by_an_instance_is_a_502_and_its_connection_is_not_reused() {
    let instance = Scripted::start().await;
    let gw = gateway(&format!(
        "[[functions]]\nname = \"f\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         instance_concurrency = 1\n\
         [[routes]]\npath_prefix = \"/\"\nfunction = \"f\"\n",
        instance.addr
    ))
    .await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    client
        .write_all(b"CONNECT /x HTTP/1.1\r\nhost: gw\r\nx-mode: tunnel\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0; 4096];
    let n = within("the answer to CONNECT", client.read(&mut got))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&got[..n]).to_string();
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(got.contains("unexpected tunnel"), "{got}");
    // None of the next requests goes on the connection that carried the CONNECT.
    assert_fresh_connections(&gw, || {
        Request::get("/x")
            .header("host", "gw")
            .body(Empty::<Bytes>::new())
            .unwrap()
    })
    .await;
    gw.shutdown().await;
}

/// Sends a few requests made by `req`: every connection they go on starts with them,
/// so none is one that an earlier, broken exchange left out of step.
async fn assert_fresh_connections(
    gw: &scf_gateway::RunningGateway,
    req: impl Fn() -> Request<Empty<Bytes>>,
) {
    let mut first_on = std::collections::HashMap::new();
    for _ in 0..4 {
        let answer = send(gw.listen_addr(), req()).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let (conn, n) = place_of(&answer);
        first_on.entry(conn).or_insert(n);
    }
    assert!(first_on.values().all(|&n| n == 1), "{first_on:?}");
}

/// A client asking for an upgrade, with `Expect: 100-continue`, cannot put an
/// instance's connection out of step: neither header reaches the instance, and an
/// instance that switches protocols anyway (`101`) is a 502/405 whose connection is
/// closed, though it goes on answering on it as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_switches_protocols_is_a_502_and_its_connection_is_not_reused() {
    let instance = Scripted::start().await;
    let gw = gateway(&event_function(
        "f",
        &[instance.addr],
        "instance_concurrency = 1",
    ))
    .await;
    let answer = invoke(
        gw.listen_addr(),
        "f",
        &[
            ("x-mode", "switch"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
        ],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    assert!(message.contains("unexpected protocol switch"), "{message}");
    assert_fresh_connections(&gw, || {
        Request::post("/v1/functions/f/invocations")
            .header("host", "gw")
            .body(Empty::<Bytes>::new())
            .unwrap()
    })
    .await;
    gw.shutdown().await;
}
