//! Test support for asynchronous invocations: an instance whose behaviour each event
//! chooses in its own body (an asynchronous event carries no test headers to the
//! instance), counting the runs of each request id, and small clients of the query API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

use super::{send, Answer};

/// One request as the event instance saw it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Delivered {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn request_id(&self) -> String {
        self.header("x-scf-request-id").unwrap_or("").to_owned()
    }
}

#[derive(Default)]
pub struct Deliveries {
    pub all: Mutex<Vec<Delivered>>,
    /// Runs per request id.
    pub runs: Mutex<HashMap<String, u32>>,
    pub inflight: std::sync::atomic::AtomicUsize,
}

impl Deliveries {
    pub fn count(&self) -> usize {
        self.all.lock().len()
    }

    pub fn runs_of(&self, id: &str) -> u32 {
        self.runs.lock().get(id).copied().unwrap_or(0)
    }
}

/// An instance for events. The event's JSON body says what to do:
/// `{"fail": N}` answers 500 to the first N runs of its request id, `{"sleep_ms": M}`
/// answers after M ms. The answer is `{"echo": <event>, "run": K}`.
pub struct EventInstance {
    pub addr: SocketAddr,
    pub deliveries: Arc<Deliveries>,
}

impl EventInstance {
    pub async fn start() -> EventInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deliveries = Arc::new(Deliveries::default());
        let shared = deliveries.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EventInstance { addr, deliveries }
    }
}

async fn answer(
    req: Request<Incoming>,
    deliveries: Arc<Deliveries>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    use std::sync::atomic::Ordering;
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let delivered = Delivered {
        path: parts.uri.to_string(),
        headers: parts.headers,
        body: body.clone(),
    };
    let id = delivered.request_id();
    let run = {
        let mut runs = deliveries.runs.lock();
        let run = runs.entry(id).or_default();
        *run += 1;
        *run
    };
    deliveries.all.lock().push(delivered);
    deliveries.inflight.fetch_add(1, Ordering::SeqCst);
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(ms) = event["sleep_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    deliveries.inflight.fetch_sub(1, Ordering::SeqCst);
    let fails = event["fail"].as_u64().unwrap_or(0);
    let status = if u64::from(run) <= fails {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let text = serde_json::json!({ "echo": event, "run": run }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// Submits `event` as an asynchronous invocation of `name`.
pub async fn submit(addr: SocketAddr, name: &str, event: &Value) -> Answer {
    let req = Request::post(format!("/v1/functions/{name}/invocations"))
        .header("host", "gateway.test")
        .header("content-type", "application/json")
        .header("x-scf-invocation-type", "Event")
        .body(Full::new(Bytes::from(event.to_string())))
        .unwrap();
    send(addr, req).await.unwrap()
}

/// `GET` (or another method) of a path on the invocation listener.
pub async fn call(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await.unwrap()
}

/// `GET /v1/requests/{id}`'s record.
pub async fn record(addr: SocketAddr, id: &str) -> Value {
    let answer = call(addr, "GET", &format!("/v1/requests/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()
}

/// Waits until the event's status is `status`, and returns its record.
pub async fn wait_status(addr: SocketAddr, id: &str, status: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let record = record(addr, id).await;
        if record["status"] == status {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {id} is not {status} after {timeout:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
