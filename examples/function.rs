//! `function`: a fast, scriptable SCF-style function instance for tests and benchmarks.
//!
//! ```text
//! cargo run --release --example function -- [--port N] [--threads N]
//!                                            [--crash-at-start] [--never-listen]
//! ```
//!
//! A hyper 1 HTTP/1.1 server listening on `0.0.0.0:<port>` (`--port`, else `$PORT`, else
//! 9000), with keep-alive and `TCP_NODELAY` on every accepted socket. It runs on a
//! `current_thread` tokio runtime unless `--threads N` asks for a multi-thread runtime with
//! N workers. It answers `POST /event-invoke` and every other method and path the same way:
//! by default `200` with `content-type: application/json` and the fixed body `{"ok":true}`
//! (a static buffer: the plain path allocates nothing beyond what hyper itself needs).
//!
//! The request body is always read to the end, streamed and only counted (never collected),
//! and its length is reported in the response header `x-request-body-bytes`.
//!
//! # Behaviour switches (request headers)
//!
//! One process serves every behaviour; a request picks its own with these headers. A value
//! that does not parse is ignored (as if the header were absent).
//!
//! | header | effect |
//! |---|---|
//! | `x-test-sleep-ms: N` | wait N milliseconds (after reading the body) before answering |
//! | `x-test-crash: before-headers` | exit the process (status 1) after reading the request, before answering |
//! | `x-test-crash: after-headers` | send status, headers and a first chunk of a chunked body, then exit the process (status 1) 50 ms later |
//! | `x-test-status: N` | answer with status N (200..=999; other values are ignored); 204 and 304 have no body |
//! | `x-test-echo-headers: 1` | body is a JSON object of all request headers, name -> value (repeated names joined with `", "`) |
//! | `x-test-response-bytes: N` | body is N bytes of `x`, generated and streamed in 64 KiB chunks |
//! | `x-test-chunked: 1` | send the body (whichever it is) with `transfer-encoding: chunked` instead of `content-length` |
//! | `x-test-echo-env: 1` | body is a JSON object of the process's environment plus `"pid"` |
//! | `x-test-write-probe: 1` | body is `{"tmp": R, "root": R}`: whether a file can be created in `/tmp` and in `/` (R is `"ok"` or the error), removed again (for containers with a read-only root) |
//! | `x-test-alloc-mb: N` | allocate and touch N MiB (kept until the answer is sent) |
//! | `x-test-print: TEXT` | print TEXT as one line to stdout (and `TEXT (stderr)` to stderr) |
//! | `x-test-since-listen: 1` | answer header `x-since-listen-us`: microseconds from `listen` to this request's arrival (the cold-start benchmark) |
//!
//! Precedence: `x-test-crash` > `x-test-echo-headers` > `x-test-response-bytes` > the plain
//! answer; `x-test-sleep-ms` and `x-test-status` combine with any of them.
//!
//! # Start-up switches
//!
//! * `--crash-at-start` or the environment `EXIT_AFTER_START=1`: exit with status 3
//!   immediately.
//! * `--never-listen`: never open the port; wait (until SIGTERM/SIGINT) without listening.
//!
//! SIGTERM and SIGINT stop it cleanly: it stops accepting, closes idle connections, lets
//! requests in progress finish (for at most 5 seconds) and exits with status 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// The plain answer.
static OK_BODY: &[u8] = br#"{"ok":true}"#;
/// Streamed responses are cut from this buffer, so generating them allocates nothing.
const CHUNK_SIZE: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];
/// What `x-test-crash: after-headers` sends before the process dies.
static PARTIAL_BODY: &[u8] = br#"{"partial":"#;
/// How long after the first chunk `x-test-crash: after-headers` exits.
const CRASH_AFTER_HEADERS_DELAY: Duration = Duration::from_millis(50);
/// How long a shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const X_REQUEST_BODY_BYTES: HeaderName = HeaderName::from_static("x-request-body-bytes");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const ZERO: HeaderValue = HeaderValue::from_static("0");

const USAGE: &str = "usage: function [--port N] [--threads N] [--crash-at-start] [--never-listen]";

struct Args {
    port: u16,
    threads: Option<usize>,
    crash_at_start: bool,
    never_listen: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: match std::env::var("PORT") {
            Ok(p) if !p.is_empty() => p.parse().map_err(|_| format!("bad $PORT: {p:?}"))?,
            _ => 9000,
        },
        threads: None,
        crash_at_start: std::env::var("EXIT_AFTER_START").is_ok_and(|v| v == "1"),
        never_listen: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|_| format!("bad --port: {v:?}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => args.threads = Some(n),
                    _ => return Err(format!("bad --threads: {v:?}")),
                }
            }
            "--crash-at-start" => args.crash_at_start = true,
            "--never-listen" => args.never_listen = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("function: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if args.crash_at_start {
        eprintln!("function: crashing at start as asked");
        std::process::exit(3);
    }
    let runtime = match args.threads {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("function: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("function: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    if args.never_listen {
        eprintln!("function: not listening, as asked");
        shutdown_signal().await;
        return Ok(());
    }
    let addr = SocketAddr::from(([0, 0, 0, 0], args.port));
    let listener = TcpListener::bind(addr).await?;
    let _ = LISTENING_SINCE.set(tokio::time::Instant::now());
    let runtime = match args.threads {
        None => "current_thread".to_owned(),
        Some(n) => format!("multi_thread x{n}"),
    };
    eprintln!("function: listening on {addr} ({runtime} runtime)");

    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    let graceful = GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    eprintln!("function: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Ignoring the error: a socket that cannot take the option still works.
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are the client's doing (reset, malformed request): nothing to do.
            let _ = conn.await;
        });
    }

    drop(listener);
    eprintln!("function: shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("function: requests still in progress after {SHUTDOWN_GRACE:?}; exiting");
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                eprintln!("function: cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The switches one request asked for.
#[derive(Default)]
struct Switches {
    sleep_ms: Option<u64>,
    crash: Option<Crash>,
    response_bytes: Option<u64>,
    chunked: bool,
    echo_headers: bool,
    echo_env: bool,
    write_probe: bool,
    alloc_mb: Option<usize>,
    print: Option<String>,
    since_listen: bool,
    status: Option<StatusCode>,
}

/// When the listening socket was bound.
static LISTENING_SINCE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

#[derive(Clone, Copy)]
enum Crash {
    BeforeHeaders,
    AfterHeaders,
}

impl Switches {
    /// One pass over the headers; only names starting with `x-test-` are looked at.
    fn from_headers(headers: &hyper::HeaderMap) -> Self {
        let mut s = Switches::default();
        for (name, value) in headers {
            let Some(switch) = name.as_str().strip_prefix("x-test-") else {
                continue;
            };
            let Ok(value) = value.to_str() else {
                continue;
            };
            let value = value.trim();
            match switch {
                "sleep-ms" => s.sleep_ms = value.parse().ok(),
                "crash" => {
                    s.crash = match value {
                        "before-headers" => Some(Crash::BeforeHeaders),
                        "after-headers" => Some(Crash::AfterHeaders),
                        _ => None,
                    }
                }
                "response-bytes" => s.response_bytes = value.parse().ok(),
                "chunked" => s.chunked = value == "1",
                "echo-headers" => s.echo_headers = value == "1",
                "echo-env" => s.echo_env = value == "1",
                "write-probe" => s.write_probe = value == "1",
                "alloc-mb" => s.alloc_mb = value.parse().ok(),
                "print" => s.print = Some(value.to_owned()),
                "since-listen" => s.since_listen = value == "1",
                "status" => {
                    s.status = value
                        .parse::<u16>()
                        .ok()
                        .and_then(|n| StatusCode::from_u16(n).ok())
                        .filter(|st| st.as_u16() >= 200);
                }
                _ => {}
            }
        }
        s
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let arrived = tokio::time::Instant::now();
    let (parts, mut body) = req.into_parts();
    let switches = Switches::from_headers(&parts.headers);

    // Read the whole body, counting bytes; nothing is kept.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => {
                // The client went away or sent a malformed body; the answer is moot.
                return Ok(simple(StatusCode::BAD_REQUEST, body_bytes));
            }
        }
    }

    if let Some(Crash::BeforeHeaders) = switches.crash {
        eprintln!("function: crashing before headers, as asked");
        std::process::exit(1);
    }
    if let Some(text) = &switches.print {
        println!("{text}");
        eprintln!("{text} (stderr)");
    }
    // Touch every page so the memory is really used (and counted by a cgroup).
    let ballast: Vec<u8> = match switches.alloc_mb {
        Some(mb) => vec![1u8; mb.saturating_mul(1024 * 1024)],
        None => Vec::new(),
    };
    if let Some(ms) = switches.sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    drop(std::hint::black_box(ballast));

    let mut status = switches.status.unwrap_or(StatusCode::OK);
    let bodyless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let (kind, content_type) = if let Some(Crash::AfterHeaders) = switches.crash {
        if bodyless {
            // The crash needs a body to be cut short.
            status = StatusCode::OK;
        }
        let kind = Kind::CrashAfterFirstChunk {
            first: Some(Bytes::from_static(PARTIAL_BODY)),
            sleep: None,
        };
        (kind, Some(APPLICATION_JSON))
    } else if bodyless {
        // 204 and 304 carry neither a body nor a content-length.
        return Ok(simple(status, body_bytes));
    } else if switches.echo_env {
        (Kind::Once(Some(echo_env())), Some(APPLICATION_JSON))
    } else if switches.write_probe {
        (Kind::Once(Some(write_probe())), Some(APPLICATION_JSON))
    } else if switches.echo_headers {
        let json = echo_headers(&parts.headers);
        (Kind::Once(Some(json)), Some(APPLICATION_JSON))
    } else if let Some(n) = switches.response_bytes {
        let ct = HeaderValue::from_static("application/octet-stream");
        (Kind::Generated { remaining: n }, Some(ct))
    } else {
        (
            Kind::Once(Some(Bytes::from_static(OK_BODY))),
            Some(APPLICATION_JSON),
        )
    };
    // Crashing mid-body only makes sense without a content-length.
    let chunked = switches.chunked || matches!(kind, Kind::CrashAfterFirstChunk { .. });
    let body = ResponseBody::new(kind, chunked);
    let exact_len = body.exact_len;

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, ct);
    }
    if let Some(len) = exact_len {
        headers.insert(CONTENT_LENGTH, count_header(len));
    }
    headers.insert(X_REQUEST_BODY_BYTES, count_header(body_bytes));
    if switches.since_listen {
        if let Some(since) = LISTENING_SINCE.get() {
            let us = arrived.saturating_duration_since(*since).as_micros() as u64;
            headers.insert("x-since-listen-us", HeaderValue::from(us));
        }
    }
    Ok(resp)
}

fn count_header(n: u64) -> HeaderValue {
    if n == 0 {
        ZERO
    } else {
        HeaderValue::from(n)
    }
}

fn simple(status: StatusCode, body_bytes: u64) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::new(Kind::Once(None), false));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(X_REQUEST_BODY_BYTES, count_header(body_bytes));
    resp
}

/// Whether a file can be made in `/tmp` and in `/`; each probe file is removed again.
fn write_probe() -> Bytes {
    let probe = |dir: &str| {
        let path = std::path::Path::new(dir).join(format!(".write-probe-{}", std::process::id()));
        match std::fs::write(&path, b"probe") {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                "ok".to_string()
            }
            Err(e) => e.to_string(),
        }
    };
    Bytes::from(serde_json::json!({"tmp": probe("/tmp"), "root": probe("/")}).to_string())
}

/// The process environment as a JSON object, plus `"pid"`.
fn echo_env() -> Bytes {
    let mut map: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                serde_json::Value::String(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    map.insert(
        "pid".to_owned(),
        serde_json::Value::from(std::process::id()),
    );
    Bytes::from(serde_json::Value::Object(map).to_string())
}

/// All request headers as a JSON object; repeated names are joined with `", "`.
fn echo_headers(headers: &hyper::HeaderMap) -> Bytes {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    // Serialising a map of strings cannot fail; fall back to `{}` rather than unwrap.
    Bytes::from(serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The response body: one buffer, generated bytes, or a first chunk and then a crash.
struct ResponseBody {
    kind: Kind,
    /// `Some(n)`: sent with `content-length: n`; `None`: sent chunked.
    exact_len: Option<u64>,
}

enum Kind {
    Once(Option<Bytes>),
    Generated {
        remaining: u64,
    },
    CrashAfterFirstChunk {
        first: Option<Bytes>,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl ResponseBody {
    fn new(kind: Kind, chunked: bool) -> Self {
        let len = match &kind {
            Kind::Once(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Kind::Generated { remaining } => *remaining,
            Kind::CrashAfterFirstChunk { .. } => 0,
        };
        ResponseBody {
            kind,
            exact_len: (!chunked).then_some(len),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Once(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Generated { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = usize::try_from(*remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            Kind::CrashAfterFirstChunk { first, sleep } => {
                if let Some(first) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                let sleep = sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CRASH_AFTER_HEADERS_DELAY)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        eprintln!("function: crashing after headers, as asked");
                        std::process::exit(1);
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.exact_len.is_none() {
            // Chunked: let hyper find the end by polling, so even an empty body is sent
            // as chunked rather than turned into `content-length: 0`.
            return false;
        }
        match &self.kind {
            Kind::Once(b) => b.is_none(),
            Kind::Generated { remaining } => *remaining == 0,
            Kind::CrashAfterFirstChunk { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
