//! A loopback server for the tests of the modules beside this one: the accept loop with
//! short timers, and a client that speaks just enough HTTP/1.1 to watch a connection
//! being parked, timed out and drained.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::accept::serve;
use super::connection::ClientTimers;
use super::drain::Drain;
use crate::body::GatewayBody;

/// Short timers so the tests run in well under a second each.
pub(super) const TIMERS: ClientTimers = ClientTimers {
    header: Duration::from_millis(400),
    idle: Duration::from_millis(400),
    tick: Duration::from_millis(50),
};
/// Generous bounds: other builds share the machine.
pub(super) const SOON: Duration = Duration::from_secs(3);

pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) drain: Arc<Drain>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

/// A server whose handler answers `ok`, after sleeping `?sleep=MS` if asked.
pub(super) async fn start(timers: ClientTimers) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drain = Arc::new(Drain::default());
    let (stop, stopped) = watch::channel(false);
    let handler = |req: Request<Incoming>, _| async move {
        if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("sleep=")) {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Response::new(GatewayBody::full(Bytes::from_static(b"ok")))
    };
    let task = tokio::spawn(serve(
        listener,
        stopped,
        Duration::from_secs(5),
        timers,
        drain.clone(),
        crate::metrics::Counter::noop(),
        None,
        handler,
    ));
    Server {
        addr,
        drain,
        stop,
        task,
    }
}

pub(super) fn parked(server: &Server) -> usize {
    server.drain.parked.load(Ordering::Relaxed)
}

/// Waits (bounded) until `n` connections were parked.
pub(super) async fn wait_parked(server: &Server, n: usize) {
    let start = Instant::now();
    while parked(server) < n {
        assert!(start.elapsed() < SOON, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `GET path` and reads the whole response; returns its head.
pub(super) async fn exchange(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    read_response(stream).await
}

pub(super) async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(SOON, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8(buf).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    head
}

/// Waits for the server to close the connection; returns how long that took.
pub(super) async fn closed_after(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 64];
    match tokio::time::timeout(SOON, stream.read(&mut chunk)).await {
        Err(_) => panic!("still open after {SOON:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &chunk[..n]),
    }
}

pub(super) async fn still_open(stream: &mut TcpStream, for_: Duration) -> bool {
    let mut chunk = [0u8; 64];
    tokio::time::timeout(for_, stream.read(&mut chunk))
        .await
        .is_err()
}

/// Everything the server sends until it closes the connection.
pub(super) async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(SOON, stream.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}
