//! Thousands of slow, partial and idle client connections held against the gateway
//! process (loopback, bounded) while normal clients are served: their p99 latency and
//! the gateway's RSS stay within the figures of docs/behaviour.md ("Client
//! connections"). Also measures what one connection costs the gateway in each state.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connections held in each hostile state.
const PER_STATE: usize = 600;
/// Connections holding a 60 KB partial head.
const LARGE_PARTIAL: usize = 100;
/// HTTP/2 connections with request bodies waiting in the gateway.
const H2_BUFFERING: usize = 50;
/// Requests held in flight at the instance (each with its own upstream connection).
const IN_FLIGHT: usize = 200;
/// Normal clients, each making this many invocations on its keep-alive connection
/// while the others are held.
const CLIENTS: usize = 4;
const REQUESTS: usize = 250;
/// The bounds the test holds the gateway to (a debug build on a shared machine; a
/// release build is far below both).
const P99_BOUND: Duration = Duration::from_millis(100);
const RSS_BUDGET_KB: u64 = 96 * 1024;

/// The gateway's resident memory once it has stopped moving (sampled until two
/// readings 200 ms apart are within 1%, or 5 s).
async fn settled_rss(gw: &GatewayProcess) -> u64 {
    let mut last = gw.status_kb("VmRSS");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = gw.status_kb("VmRSS");
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Client connections the gateway has accepted so far.
async fn accepted(gw: &GatewayProcess) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("scf_gateway_worker_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Opens `n` connections, each sending `first` (possibly nothing); waits until the
/// gateway has accepted them.
async fn open_many(gw: &GatewayProcess, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let before = accepted(gw).await;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(gw.listen).await.unwrap();
        if !first.is_empty() {
            s.write_all(first).await.unwrap();
        }
        streams.push(s);
    }
    // The metrics request is a connection too.
    wait_until("the gateway to accept them", PATIENCE, async || {
        accepted(gw).await >= before + n as u64
    })
    .await;
    streams
}

/// A small invocation on `stream`; its latency.
async fn timed_exchange(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Duration {
    const REQUEST: &[u8] = b"POST /v1/functions/hello/invocations HTTP/1.1\r\nhost: gw\r\n\
                             content-length: 2\r\n\r\n{}";
    let start = Instant::now();
    stream.write_all(REQUEST).await.unwrap();
    buf.clear();
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "a normal client's connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return start.elapsed();
            }
        }
    }
}

/// `CLIENTS` clients making `REQUESTS` invocations each; every latency, sorted.
async fn normal_traffic(addr: SocketAddr) -> Vec<Duration> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut buf = Vec::new();
                let mut times = Vec::with_capacity(REQUESTS);
                for _ in 0..REQUESTS {
                    times.push(timed_exchange(&mut stream, &mut buf).await);
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(within("normal clients", t).await.unwrap());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// This process needs a descriptor per connection: raise its soft limit to the hard one.
fn raise_open_files() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_connections_leave_normal_clients_served_within_budget() {
    // Every held connection, the instance's side of each upstream one, and spare.
    let needed =
        (5 * PER_STATE + LARGE_PARTIAL + 2 * IN_FLIGHT + H2_BUFFERING + CLIENTS + 256) as u64;
    let files = raise_open_files();
    assert!(
        files >= needed,
        "this test needs {needed} open files, the hard limit is {files}"
    );
    let instance = FakeInstance::start().await;
    let gw = GatewayProcess::start(
        "resource",
        // Long enough that nothing held is closed while the test measures.
        "workers = 2\nheader_read_timeout = \"60s\"\nclient_idle_timeout = \"120s\"\n\
         max_connections = 5000",
        &format!(
            "{}{}",
            event_function(
                "hello",
                &[instance.addr],
                "instance_concurrency = 1000\nqueue_depth = 1000\ntimeout = \"120s\"",
            ),
            event_function(
                "queued",
                &[instance.addr],
                "queue_depth = 1000\nqueue_timeout = \"120s\"\ntimeout = \"120s\"",
            )
        ),
    );
    let baseline = normal_traffic(gw.listen).await;
    let rss_start = settled_rss(&gw).await;
    eprintln!(
        "normal clients alone: p99 {:?}; gateway RSS {rss_start} kB",
        p99(&baseline)
    );

    // Each state in turn, its cost per connection from the RSS it adds.
    let mut held = Vec::new();
    let mut rss = rss_start;
    let mut per_state = Vec::new();
    let mut measure = async |what: &str, rss: &mut u64, n: usize| {
        let now = settled_rss(&gw).await;
        let per = (now.saturating_sub(*rss) * 1024) / n as u64;
        eprintln!("{what}: {per} bytes of RSS per connection ({n})");
        per_state.push((what.to_owned(), per));
        *rss = now;
    };
    held.extend(open_many(&gw, PER_STATE, b"").await);
    measure("silent new connection", &mut rss, PER_STATE).await;
    // "G" starts an HTTP/1.1 head; "P" might still be HTTP/2's preface.
    let half = PER_STATE / 2;
    held.extend(open_many(&gw, half, b"G").await);
    measure("1 byte of HTTP/1.1 head", &mut rss, half).await;
    held.extend(open_many(&gw, PER_STATE - half, b"P").await);
    measure("1 byte, HTTP/1.1 or HTTP/2", &mut rss, PER_STATE - half).await;
    let mut dribbling = open_many(
        &gw,
        PER_STATE,
        b"POST /v1/functions/hello/invocations HTTP/1.1\r\n",
    )
    .await;
    measure("partial head", &mut rss, PER_STATE).await;
    // The largest head that is still partial: the most a connection's head can pin.
    let large = format!("GET / HTTP/1.1\r\nx-pad: {}", "a".repeat(60 * 1024));
    held.extend(open_many(&gw, LARGE_PARTIAL, large.as_bytes()).await);
    measure("60 KB partial head", &mut rss, LARGE_PARTIAL).await;
    let mut parked = open_many(&gw, PER_STATE, b"").await;
    let mut buf = Vec::new();
    for s in &mut parked {
        timed_exchange(s, &mut buf).await;
    }
    measure("idle keep-alive (parked)", &mut rss, PER_STATE).await;
    let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    held.extend(open_many(&gw, PER_STATE, h2_preface).await);
    measure("idle HTTP/2 connection", &mut rss, PER_STATE).await;
    let mut in_flight = open_many(&gw, IN_FLIGHT, b"").await;
    for s in &mut in_flight {
        s.write_all(
            b"POST /v1/functions/hello/invocations HTTP/1.1\r\nhost: gw\r\n\
              x-test-hold: 1\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    }
    wait_until("requests held at the instance", PATIENCE, async || {
        instance.record.inflight() >= IN_FLIGHT
    })
    .await;
    measure(
        "request in flight (with its upstream connection)",
        &mut rss,
        IN_FLIGHT,
    )
    .await;

    // HTTP/2 connections whose request bodies wait in the gateway: two streams each,
    // queued for a function whose one slot is taken, sending what flow control lets
    // them.
    let mut taker = open_many(&gw, 1, b"").await;
    taker[0]
        .write_all(
            b"POST /v1/functions/queued/invocations HTTP/1.1\r\nhost: gw\r\n\
              x-test-hold: 1\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    wait_until(
        "the queued function's slot to be taken",
        PATIENCE,
        async || instance.record.inflight() > IN_FLIGHT,
    )
    .await;
    let mut buffering = Vec::new();
    for _ in 0..H2_BUFFERING {
        let stream = TcpStream::connect(gw.listen).await.unwrap();
        let (client, conn) = h2::client::handshake(stream).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut streams = Vec::new();
        let mut client = client.ready().await.unwrap();
        for _ in 0..2 {
            let req = http::Request::post("http://gw/v1/functions/queued/invocations")
                .body(())
                .unwrap();
            let (response, mut body) = client.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from(vec![b'a'; 300 * 1024]), false)
                .unwrap();
            streams.push((response, body));
            client = client.ready().await.unwrap();
        }
        buffering.push((client, conn, streams));
    }
    measure(
        "HTTP/2, two request bodies buffered",
        &mut rss,
        H2_BUFFERING,
    )
    .await;

    // The partial heads keep dribbling while normal clients are served.
    let dribble = tokio::spawn(async move {
        loop {
            for s in &mut dribbling {
                let _ = s.write_all(b"x-a: b\r\n").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let loaded = normal_traffic(gw.listen).await;
    let rss_loaded = gw.status_kb("VmRSS");
    dribble.abort();
    let held_count = 5 * PER_STATE + LARGE_PARTIAL + IN_FLIGHT + 1 + H2_BUFFERING;
    eprintln!(
        "with {held_count} held connections: p99 {:?}; gateway RSS {rss_loaded} kB (+{} kB)",
        p99(&loaded),
        rss_loaded.saturating_sub(rss_start)
    );
    assert!(
        p99(&loaded) <= P99_BOUND,
        "normal clients' p99 {:?} over {P99_BOUND:?}",
        p99(&loaded)
    );
    assert!(
        rss_loaded <= RSS_BUDGET_KB,
        "the gateway's RSS {rss_loaded} kB is over {RSS_BUDGET_KB} kB"
    );
    instance.record.release(IN_FLIGHT + 1);
    drop((held, parked, in_flight, taker, buffering));
}
