//! The HTTP/1.1 client for instances on its own and behind the gateway: responses
//! framed two ways or in a coding the gateway cannot pass on, and an instance built on
//! Python's `http.server`, which writes a response's head and body separately.

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
