//! Test support: fake function instances on `127.0.0.1:0`, a gateway started in
//! process from TOML text, and a small HTTP client.
//!
//! A fake instance's behaviour is chosen per request by headers, so one instance can
//! serve a whole test: `x-test-sleep-ms`, `x-test-hold`, `x-test-crash:
//! before-headers|after-headers`, `x-test-status`. It records what it received so tests
//! can assert on it.
//!
//! Tests never sleep to let something happen: they wait for it with [`wait_until`] (or
//! hold an instance's answer with `x-test-hold` until they release it), so a loaded
//! machine makes them slower, never wrong.

#![allow(dead_code)]

pub mod events;
pub mod image;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scf_gateway::config::{parse, Config};
use scf_gateway::RunningGateway;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request as the instance saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

#[derive(Default)]
pub struct Record {
    pub seen: Mutex<Vec<Seen>>,
    /// Requests being handled now: counted from arrival until the answer is handed to
    /// the server (or the request is dropped).
    pub inflight: AtomicUsize,
    pub max_inflight: AtomicUsize,
    pub connections: AtomicUsize,
    /// Request body bytes received so far, across requests.
    pub bytes_received: AtomicUsize,
    /// Notified when request body bytes arrive.
    pub got_bytes: tokio::sync::Notify,
    /// Requests with `x-test-hold` wait here for a permit before they are answered.
    hold: Gate,
}

/// Permits for held requests: none until the test releases some.
struct Gate(tokio::sync::Semaphore);

impl Default for Gate {
    fn default() -> Gate {
        Gate(tokio::sync::Semaphore::new(0))
    }
}

impl Record {
    /// Lets `n` held requests (`x-test-hold`) be answered, the earliest waiting first.
    pub fn release(&self, n: usize) {
        self.hold.0.add_permits(n);
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// A fake function instance serving until the test ends.
pub struct FakeInstance {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
}

impl FakeInstance {
    pub async fn start() -> FakeInstance {
        FakeInstance::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// An instance on a given address (one that refused connections until now, say).
    pub async fn start_on(addr: SocketAddr) -> FakeInstance {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let rec = record.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                rec.connections.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(rec.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeInstance { addr, record }
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(data: impl Into<Bytes>) -> FakeBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

async fn handle(
    record: Arc<Record>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, BoxError> {
    let now = record.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    record.max_inflight.fetch_max(now, Ordering::SeqCst);
    // Also when the server drops the request (its connection closed while held).
    let _inflight = Inflight(&record.inflight);
    respond(&record, req).await
}

struct Inflight<'a>(&'a AtomicUsize);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn respond(record: &Record, req: Request<Incoming>) -> Result<Response<FakeBody>, BoxError> {
    let (parts, mut body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut body_len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            body_len += data.len();
            record
                .bytes_received
                .fetch_add(data.len(), Ordering::SeqCst);
            record.got_bytes.notify_waiters();
        }
    }
    record.seen.lock().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len,
    });
    if header("x-test-hold").is_some() {
        if let Ok(permit) = record.hold.0.acquire().await {
            permit.forget();
        }
    }
    if let Some(ms) = header("x-test-sleep-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match header("x-test-crash").as_deref() {
        Some("before-headers") => return Err("crash before headers".into()),
        Some("after-headers") => {
            let body = CrashBody {
                sent: false,
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(30))),
            };
            return Ok(Response::new(body.boxed()));
        }
        _ => {}
    }
    let status = header("x-test-status")
        .and_then(|v| v.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let chunked = header("x-test-chunked").is_some();
    let body = match header("x-test-response-bytes").and_then(|v| v.parse().ok()) {
        Some(len) => SizedBody::new(len, chunked).boxed(),
        None => full(format!("{{\"ok\":true,\"body_len\":{body_len}}}")),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-scf-secret-key", "leaked-by-function".parse().unwrap());
    h.insert("x-scf-request-id", "the-functions-own-id".parse().unwrap());
    Ok(response)
}

/// `len` bytes in 64 KiB frames, with an exact size (so `Content-Length`) unless chunked.
pub struct SizedBody {
    left: u64,
    exact: bool,
}

static CHUNK: [u8; 65536] = [b'x'; 65536];

impl SizedBody {
    pub fn new(len: u64, chunked: bool) -> Self {
        SizedBody {
            left: len,
            exact: !chunked,
        }
    }
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.exact {
            http_body::SizeHint::with_exact(self.left)
        } else {
            http_body::SizeHint::default()
        }
    }
}

/// A response body that sends one chunk, then fails: the instance dies mid-response.
struct CrashBody {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for CrashBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"partial\":")))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err("crash after headers".into()))),
        }
    }
}

/// How long a test waits for something that must happen: far beyond what any condition
/// here needs on a loaded machine, so reaching it means the condition will never hold.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a waited-for condition is checked.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` returns a value, checking it every few milliseconds; panics
/// naming `what` if it has not after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("waited {timeout:?} for {what}, in vain");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `condition` holds, checking it every few milliseconds; panics naming
/// `what` if it does not within `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    wait_for(what, timeout, async || condition().await.then_some(())).await
}

/// `future`'s output, or a panic naming `what` if it takes longer than [`PATIENCE`]: for
/// steps that a broken gateway would leave hanging (an instance held forever, say).
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("waited {PATIENCE:?} for {what}, in vain"),
    }
}

/// Parses a config from TOML text, `${VAR}` resolved from the given pairs.
pub fn config(text: &str) -> Config {
    match parse(text, Path::new("test.toml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid:\n{e}"),
    }
}

/// A gateway listening on ephemeral ports with the given functions and routes (TOML).
pub async fn gateway(functions: &str) -> RunningGateway {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream_idle_timeout = \"5s\"\n\
         [credentials]\nsecret_id = \"AKIDtest\"\nsecret_key = \"secret-key-value\"\n\
         session_token = \"session-token-value\"\n{functions}"
    );
    RunningGateway::start(&config(&text)).await.unwrap()
}

/// A `[[functions]]` entry for an event function over the given instances.
pub fn event_function(name: &str, instances: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[functions]]\nname = \"{name}\"\ninstances = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// A response, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn error_code(&self) -> i64 {
        self.json()["errorCode"].as_i64().unwrap_or(-1)
    }

    /// The error body's `errorMessage` (empty when there is none).
    pub fn error_message(&self) -> String {
        self.json()["errorMessage"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn request_id(&self) -> &str {
        self.headers
            .get("x-scf-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A new HTTP/1.1 client connection to `addr`, driven in the background: for tests that
/// read a response as it streams.
pub async fn connect<B>(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<B>, BoxError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request on a new connection and reads the whole answer.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Answer, BoxError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut sender = connect(addr).await?;
    let response = sender.send_request(req).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `POST /v1/functions/{name}/invocations` with extra headers.
pub async fn invoke(addr: SocketAddr, name: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::post(format!("/v1/functions/{name}/invocations"))
        .header("host", "gateway.test")
        .header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    send(addr, req).await.unwrap()
}

/// Fetches a path from the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await.unwrap()
}

/// The value of one Prometheus series in a `/metrics` text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// An address on which nothing listens (connections are refused).
pub async fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Counts requests by path, for balance tests.
pub fn by_instance(records: &[&Record]) -> Vec<usize> {
    records.iter().map(|r| r.count()).collect()
}

pub fn header_map(seen: &Seen) -> HashMap<String, String> {
    seen.headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

/// A request body fed from a channel: chunked unless a length is given, and sent as
/// the test decides, so a test can tell streaming from buffering.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    exact: Option<u64>,
}

impl ChannelBody {
    pub fn new(exact: Option<u64>) -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, ChannelBody { rx, exact })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.exact {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

/// An HTTP/1.1 instance written by hand so it can do what real servers do to idle
/// keep-alive connections: close them after `idle` without a word. It records the
/// body of every request it answered, and counts the connections it closed for idling.
pub struct IdleClosingInstance {
    pub addr: SocketAddr,
    pub answered: Arc<Mutex<Vec<String>>>,
    /// Connections closed for being idle.
    pub idle_closed: Arc<AtomicUsize>,
}

impl IdleClosingInstance {
    pub async fn start(idle: Duration) -> IdleClosingInstance {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(Mutex::new(Vec::new()));
        let idle_closed = Arc::new(AtomicUsize::new(0));
        let (record, closed) = (answered.clone(), idle_closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (record, closed) = (record.clone(), closed.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        // Idle: nothing arrives within the keep-alive timeout -> close.
                        match tokio::time::timeout(idle, reader.fill_buf()).await {
                            Ok(Ok(buf)) if !buf.is_empty() => {}
                            Ok(_) => return,
                            Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        record
                            .lock()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if reader.get_mut().write_all(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        IdleClosingInstance {
            addr,
            answered,
            idle_closed,
        }
    }
}

/// The gateway binary, started on a config file, its ports read from its ready line.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: std::path::PathBuf,
    /// Every line the gateway wrote to stdout (JSON log records).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    pub fn start(name: &str, server: &str, functions: &str) -> GatewayProcess {
        use std::io::{BufRead, BufReader};
        let dir = std::env::temp_dir().join(format!("scf-gw-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 shutdown_grace = \"10s\"\n{server}\n{functions}"
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
            .args(["run", "--config"])
            .arg(&path)
            // Set only in the gateway's environment: instances must not inherit it.
            .env("SCF_TEST_GATEWAY_ONLY", "must-not-leak")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let ready = loop {
            let line = lines
                .next()
                .expect("gateway exited before it was ready")
                .unwrap();
            logs.lock().push(line.clone());
            if line.contains("scf-gateway ready") {
                break serde_json::from_str::<serde_json::Value>(&line).unwrap();
            }
        };
        // Keep draining stdout so the gateway never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        let addr = |k: &str| ready[k].as_str().unwrap().parse().unwrap();
        GatewayProcess {
            listen: addr("listen_addr"),
            admin: addr("admin_addr"),
            child,
            dir,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log records so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        String::from_utf8_lossy(&admin_get(self.admin, "/metrics").await.body).into_owned()
    }

    /// A field of /proc/<pid>/status in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(field).and_then(|r| {
                    r.trim_start_matches(':')
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(0)
    }

    /// Resets the peak RSS counter so VmHWM measures from now on.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Waits (bounded) for the gateway to exit on its own, and its status.
    pub async fn exited(mut self) -> std::process::ExitStatus {
        let exit = tokio::task::spawn_blocking(move || self.child.wait());
        match within("the gateway to exit", exit).await {
            Ok(Ok(status)) => status,
            other => panic!("waiting for the gateway failed: {other:?}"),
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for GatewayProcess {
    /// Stops the gateway as an operator would (SIGTERM), so it stops the instances it
    /// launched; SIGKILL only if it does not exit in time (instances would outlive it).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Rust example function (`examples/function.rs`), built by `cargo test` beside
/// the test binaries.
pub fn example_function() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join("function");
    assert!(
        path.exists(),
        "build the example first: cargo build --example function"
    );
    path
}

/// PIDs of processes whose command line contains `marker`.
#[allow(dead_code)]
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Zombies count: they mean nobody reaped the process.
        if String::from_utf8_lossy(&cmdline).contains(marker)
            || (stat.contains(marker) && stat.contains(") Z "))
        {
            found.push(pid);
        }
    }
    found
}

/// Whether this process runs as root (cgroups are usable).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
