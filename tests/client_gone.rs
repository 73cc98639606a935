//! A client that goes away does not end its invocation early: the instance keeps its
//! slot until its response has ended, so `instance_concurrency` holds whatever clients
//! do, and the invocation is billed and counted.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the instance works on each invocation, whether or not anyone still waits.
const WORK: Duration = Duration::from_millis(200);

/// An instance like most real servers (Python's, Node's): once it has a request it
/// runs the handler to its end even if the peer has gone, then answers.
struct StubbornInstance {
    addr: SocketAddr,
    inflight: Arc<AtomicUsize>,
    max_inflight: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
}

impl StubbornInstance {
    async fn start() -> StubbornInstance {
        Self::start_with(false).await
    }

    /// `streaming`: the head and a first chunk at once, the rest after the work.
    async fn start_with(streaming: bool) -> StubbornInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let instance = StubbornInstance {
            addr: listener.local_addr().unwrap(),
            inflight: Arc::default(),
            max_inflight: Arc::default(),
            completed: Arc::default(),
        };
        let counters = (
            instance.inflight.clone(),
            instance.max_inflight.clone(),
            instance.completed.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, streaming, counters.clone()));
            }
        });
        instance
    }
}

async fn serve(
    mut stream: TcpStream,
    streaming: bool,
    (inflight, max_inflight, completed): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);

        let now = inflight.fetch_add(1, SeqCst) + 1;
        max_inflight.fetch_max(now, SeqCst);
        let first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n";
        let sent_first = !streaming || stream.write_all(first).await.is_ok();
        tokio::time::sleep(WORK).await; // the handler's work (the scenario)
        inflight.fetch_sub(1, SeqCst);
        completed.fetch_add(1, SeqCst);
        let rest: &[u8] = if streaming {
            b"1\r\nb\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        if !sent_first || stream.write_all(rest).await.is_err() {
            return;
        }
    }
}

/// Sends one invocation on a fresh connection and hangs up without reading the answer.
async fn invoke_and_hang_up(gateway: SocketAddr) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let request = b"POST /v1/functions/slow/invocations HTTP/1.1\r\nhost: gw\r\n\
                    content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    stream.write_all(request).await.unwrap();
    // Long enough for the gateway to read the request, far shorter than the work.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_do_not_free_the_slot_of_a_running_invocation() {
    let instance = StubbornInstance::start().await;
    let gw = gateway(&event_function(
        "slow",
        &[instance.addr],
        "instance_concurrency = 1\nqueue_depth = 10\nqueue_timeout = \"20s\"\ntimeout = \"10s\"",
    ))
    .await;
    // Each client leaves 20 ms after sending, long before the instance answers. The
    // first invocation runs; the others wait in the queue behind it and, their clients
    // gone, end there without reaching the instance.
    const CLIENTS: usize = 5;
    for _ in 0..CLIENTS {
        invoke_and_hang_up(gw.listen_addr()).await;
    }
    // Every invocation ends, as client_closed; the one on the instance only once its
    // response has been read away.
    wait_until("every invocation counted", PATIENCE, async || {
        let metrics = admin_get(gw.admin_addr(), "/metrics").await;
        String::from_utf8_lossy(&metrics.body).lines().any(|l| {
            l.starts_with("scf_gateway_invocations_total{function=\"slow\"")
                && l.contains("outcome=\"client_closed\"")
                && l.ends_with(&format!(" {CLIENTS}"))
        })
    })
    .await;
    assert!(
        instance.completed.load(SeqCst) >= 1,
        "the invocation on the instance ran to its end"
    );
    assert_eq!(
        instance.max_inflight.load(SeqCst),
        1,
        "instance_concurrency = 1 held although every client left"
    );
    // The instance's time was billed although nobody read the answer.
    let metrics = admin_get(gw.admin_addr(), "/metrics").await;
    let billed = String::from_utf8_lossy(&metrics.body)
        .lines()
        .find(|l| l.starts_with("scf_gateway_billed_gb_seconds_total{function=\"slow\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(billed > 0.0, "billed: {billed}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_response_leaves_the_slot_held_until_the_response_ends() {
    let instance = StubbornInstance::start_with(true).await;
    let gw = gateway(&event_function(
        "slow",
        &[instance.addr],
        "instance_concurrency = 1\nqueue_timeout = \"20s\"\ntimeout = \"10s\"",
    ))
    .await;
    // The first client reads the response head, then leaves with the body under way.
    let mut first = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let request = b"POST /v1/functions/slow/invocations HTTP/1.1\r\nhost: gw\r\n\
                    content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    first.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = within("the response head", first.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "the gateway answered");
        head.extend_from_slice(&chunk[..n]);
    }
    drop(first);
    // The next invocation waits for the slot: the instance never runs two at once.
    let answer = invoke(gw.listen_addr(), "slow", &[], "{}").await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(&answer.body[..], b"ab");
    assert_eq!(
        instance.max_inflight.load(SeqCst),
        1,
        "the first response was read to its end before the slot was lent again"
    );
    assert_eq!(instance.completed.load(SeqCst), 2);
    gw.shutdown().await;
}
