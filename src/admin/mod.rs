//! The admin listener (`server.admin_listen`): liveness, readiness, Prometheus metrics,
//! the admin API and the status page, kept off the invocation listener so that probes,
//! scrapes and operators never compete with traffic.
//!
//! | path | method | answer |
//! |---|---|---|
//! | `/healthz` | GET | 200 while the process runs |
//! | `/readyz` | GET | 200 once listening and every `min_instances` function has an instance up |
//! | `/metrics` | GET | Prometheus text |
//! | `/` | GET | the status page, HTML for people (`status`) |
//! | `/admin/functions` | GET | every function as JSON (`functions`) |
//! | `/admin/reload` | POST | re-reads the config |
//!
//! Reads are open; anything else under `/admin/` needs the admin token when one is set
//! (`auth`). Every handler reads the gateway through [`AdminState::gateway`], never a
//! copy of its parts, so what it shows is the gateway that serves the next invocation.

mod auth;
mod functions;
mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};

use crate::body::GatewayBody;
use crate::config::Secret;
use crate::invoke::Gateway;
use crate::reload::Reloader;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The current gateway, and reloads.
    reloader: Arc<Reloader>,
    /// True once the listeners are up, false again while shutting down.
    ready: Arc<AtomicBool>,
    /// `server.admin_token`, when set.
    token: Option<Arc<auth::Token>>,
}

impl AdminState {
    pub fn new(reloader: Arc<Reloader>, ready: Arc<AtomicBool>, token: Option<&Secret>) -> Self {
        AdminState {
            reloader,
            ready,
            token: token.map(|t| Arc::new(auth::Token::new(t))),
        }
    }

    /// The gateway serving invocations now: the one thing every handler reads.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.reloader.current().load_full()
    }

    /// Listening, and every launched function with `min_instances > 0` has an instance up.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .gateway()
                .functions()
                .iter()
                .all(|f| f.pool().is_ready())
    }
}

/// What the admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    Status,
    Functions,
    Reload,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            "/healthz" => Route::Health,
            "/readyz" => Route::Ready,
            "/metrics" => Route::Metrics,
            "/" => Route::Status,
            "/admin/functions" => Route::Functions,
            "/admin/reload" => Route::Reload,
            _ => return None,
        })
    }

    /// The method the route answers (GET routes answer HEAD too).
    fn method(self) -> Method {
        match self {
            Route::Reload => Method::POST,
            _ => Method::GET,
        }
    }

    fn allows(self, method: &Method) -> bool {
        let wanted = self.method();
        *method == wanted || (wanted == Method::GET && *method == Method::HEAD)
    }
}

/// Answers one admin request.
pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<GatewayBody> {
    let path = req.uri().path();
    let method = req.method();
    // Whatever is not a read, under `/admin/`, proves the token first: before the path
    // is looked at, so that without it nothing is learnt of what exists.
    let reads = *method == Method::GET || *method == Method::HEAD;
    if !reads && path.starts_with("/admin/") {
        if let Some(token) = &state.token {
            if let Err(refusal) = token.check(req.headers()) {
                return auth::unauthorized(refusal);
            }
        }
    }
    let Some(route) = Route::of(path) else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    if !route.allows(method) {
        let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = match route.method() {
            Method::POST => "POST",
            _ => "GET, HEAD",
        };
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match route {
        Route::Health => text(StatusCode::OK, "ok\n"),
        Route::Ready if state.is_ready() => text(StatusCode::OK, "ready\n"),
        Route::Ready => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        Route::Metrics => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.gateway().registry().render().into(),
        ),
        Route::Functions => {
            let listing = functions::Listing::of(&state.gateway()).await;
            // A struct of strings and integers always serializes.
            let json = serde_json::to_vec(&listing).unwrap_or_default();
            respond(StatusCode::OK, "application/json", json.into())
        }
        Route::Status => {
            let gateway = state.gateway();
            let listing = functions::Listing::of(&gateway).await;
            let page = status::render(&gateway, &listing, state.is_ready());
            let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", page.into());
            status::harden(response.headers_mut());
            response
        }
        // The token was checked above.
        Route::Reload => reload(&state.reloader).await,
    }
}

/// `POST /admin/reload`: 200 `{"reloaded": true, "restart_required": [...]}`, or 400
/// `{"errors": [...]}` with the contract's error lines when the file is invalid (then
/// nothing changed).
async fn reload(reloader: &Reloader) -> Response<GatewayBody> {
    let (status, body) = match reloader.reload().await {
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
    respond(status, "application/json", body.to_string().into())
}

/// An answer that is never cached: everything here describes the gateway right now.
fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

/// `{"error": "..."}`.
fn json_error(status: StatusCode, message: &str) -> Response<GatewayBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, "application/json", body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_methods() {
        assert_eq!(Route::of("/"), Some(Route::Status));
        assert_eq!(Route::of("/admin/functions"), Some(Route::Functions));
        assert_eq!(Route::of("/admin/functions/"), None);
        assert_eq!(Route::of("/admin/reload"), Some(Route::Reload));
        assert_eq!(Route::of("/index.html"), None);
        assert!(Route::Status.allows(&Method::GET));
        assert!(Route::Metrics.allows(&Method::HEAD));
        assert!(!Route::Functions.allows(&Method::POST));
        assert!(Route::Reload.allows(&Method::POST));
        assert!(!Route::Reload.allows(&Method::GET));
    }
}
