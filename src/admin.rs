//! The admin listener: liveness, readiness and Prometheus metrics, kept off the
//! invocation listener so scrapes and probes never compete with traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use crate::body::GatewayBody;
use crate::metrics::Registry;
use crate::reload::Reloader;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Registry,
    /// True once the listeners are up, false again while shutting down.
    pub ready: Arc<AtomicBool>,
    /// The current gateway, and reloads. Ready also needs every launched function with
    /// `min_instances > 0` to have an instance up.
    pub reloader: Arc<Reloader>,
}

impl AdminState {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .reloader
                .current()
                .load()
                .functions()
                .iter()
                .all(|f| f.pool().is_ready())
    }
}

pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<GatewayBody> {
    if req.method() == http::Method::POST && req.uri().path() == "/admin/reload" {
        return reload(state).await;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut response =
                Response::new(GatewayBody::full(Bytes::from(state.registry.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `POST /admin/reload`: 200 `{"reloaded": true, ...}`, or 400 `{"errors": [...]}` with
/// the contract's error lines when the file is invalid (then nothing changed).
async fn reload(state: &AdminState) -> Response<GatewayBody> {
    let (status, body) = match state.reloader.reload().await {
        Ok(done) => (
            StatusCode::OK,
            serde_json::json!({
                "reloaded": true,
                "restart_required": done.restart_needed,
            }),
        ),
        Err(errors) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "errors": errors.to_string().lines().collect::<Vec<_>>(),
            }),
        ),
    };
    let mut response = Response::new(GatewayBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
