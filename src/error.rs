//! Typed errors, one enum per stage of the request path, and the one place where they
//! become the contract's error table (HTTP status, SCF error code, message, outcome).
//!
//! Stages raise their own error type; `invoke` converts them into [`GatewayError`] and
//! [`GatewayError::into_response`] renders the JSON body every client sees.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::headers::REQUEST_ID;
use crate::metrics::Outcome;

/// The most of a client's text (a host, a path, a name) an error message repeats.
pub const REFLECTED_MAX: usize = 256;

/// `text` as an error message repeats it: cut to [`REFLECTED_MAX`] bytes (on a character
/// boundary) and marked `...` when cut, so a client cannot have the gateway echo a
/// request head's worth of its own bytes back, nor make it copy them.
pub fn reflected(text: &str) -> String {
    if text.len() <= REFLECTED_MAX {
        return text.to_owned();
    }
    let mut end = REFLECTED_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = String::with_capacity(end + 3);
    cut.push_str(&text[..end]);
    cut.push_str("...");
    cut
}

/// The request could not be matched to a function. What it repeats of the request is
/// cut with [`reflected`].
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("Function [{name}] not found in namespace [{namespace}]")]
    FunctionNotFound { name: String, namespace: String },
    #[error(
        "Function [{name}] in namespace [{namespace}] is a web function (type \"http\"): \
         call it through its route"
    )]
    WebFunction { name: String, namespace: String },
    #[error("No route for host [{host}] and path [{path}]")]
    NoRoute { host: String, path: String },
}

/// The request is malformed in a way that leaves its target or its framing unclear; it
/// is refused before routing, so no function sees it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum BadRequest {
    #[error("The request has no Host header (required in HTTP/1.1)")]
    MissingHost,
    #[error("The request has more than one Host header")]
    DuplicateHost,
    #[error("The request target is longer than {MAX_TARGET} bytes")]
    TargetTooLong,
    #[error(
        "The request's framing is ambiguous: Transfer-Encoding must be one chunked coding, without Content-Length"
    )]
    AmbiguousFraming,
}

/// The longest request target (path and query) the gateway takes: 414 beyond it.
pub const MAX_TARGET: usize = 8 * 1024;

/// The client's own request body failed: answered as the client's fault (4xx), never
/// as the instance's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    /// The chunked framing is broken (a chunk size that is not hex or overflows, no CRLF
    /// after a chunk's data, ...). The reason is the parser's own fixed text.
    #[error("The request body is malformed: {0}")]
    Malformed(String),
    /// The body stopped before its end: the client closed the connection or reset the
    /// stream.
    #[error("The request body ended before it was complete")]
    Incomplete,
    /// A body read whole before an instance is chosen did not arrive in time.
    #[error("The request body did not arrive within {seconds} seconds")]
    TooSlow { seconds: String },
}

impl ClientBodyError {
    /// What a failed read of the client's body means: broken framing (the HTTP/1.1
    /// parser's `InvalidData`/`InvalidInput`) is malformed; anything else (an early end
    /// of stream, an HTTP/2 reset) is a body that never completed.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> ClientBodyError {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                        ClientBodyError::Malformed(io.to_string())
                    }
                    _ => ClientBodyError::Incomplete,
                };
            }
            cause = e.source();
        }
        ClientBodyError::Incomplete
    }
}

/// The request body broke `server.max_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("The request body exceeds the limit of {limit} bytes (server.max_body_bytes)")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// No slot could be had for the invocation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "Function [{function}] reached its concurrency limit ({slots} = {instances} instance(s) x \
         instance_concurrency {per_instance}) and its queue of {queue_depth} is full"
    )]
    QueueFull {
        function: String,
        slots: u64,
        instances: usize,
        per_instance: u32,
        queue_depth: usize,
        retry_after_secs: u64,
    },
    #[error(
        "Function [{function}] reached its concurrency limit ({slots} = {instances} instance(s) x \
         instance_concurrency {per_instance}) and no slot became free within {waited_ms}ms"
    )]
    QueueTimeout {
        function: String,
        slots: u64,
        instances: usize,
        per_instance: u32,
        waited_ms: u128,
        retry_after_secs: u64,
    },
    #[error("No instance of function [{function}] is reachable: {reason}")]
    NoInstance { function: String, reason: String },
    /// The instance started for this invocation did not come up. The message is the
    /// start error itself (for an instance that never listened, the platform's line).
    #[error("{message}")]
    StartFailed {
        function: String,
        message: String,
        never_listened: bool,
    },
}

/// The instance failed the invocation after it was handed over.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("Invoking task timed out after {seconds} seconds")]
    Timeout { seconds: String },
    #[error("The instance at {instance} {what}")]
    InstanceFailed { instance: String, what: String },
    #[error("The size of response exceeds the upper limit (6MB)")]
    ResponseTooLarge,
    #[error(
        "The instance at {instance} was killed for exceeding its memory limit of {memory_mb} MB"
    )]
    OutOfMemory { instance: String, memory_mb: u32 },
}

/// An asynchronous invocation could not be accepted, or a question about one answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AsyncError {
    #[error(
        "The event exceeds the limit of {limit} bytes for asynchronous invocations \
         (async.max_event_bytes)"
    )]
    EventTooLarge { limit: u64 },
    /// The store could not keep or read the event (Redis down, a disk error): nothing
    /// was accepted.
    #[error(transparent)]
    Store(#[from] crate::asynchronous::StoreError),
    #[error("Request [{id}] not found")]
    RequestNotFound { id: String },
    #[error("Request [{id}] is {status}: only a queued event can be aborted")]
    NotQueued { id: String, status: &'static str },
    #[error("{0}")]
    BadQuery(String),
}

/// Everything the gateway itself answers with an error body.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    BodyTooLarge(#[from] BodyTooLarge),
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Async(#[from] AsyncError),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error_code: u16,
    error_message: &'a str,
    request_id: &'a str,
    status_code: u16,
}

impl GatewayError {
    /// The contract's error table: HTTP status and SCF error code.
    pub fn status_and_code(&self) -> (StatusCode, u16) {
        match self {
            GatewayError::BadRequest(BadRequest::TargetTooLong) => (StatusCode::URI_TOO_LONG, 414),
            GatewayError::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            GatewayError::Route(_) => (StatusCode::NOT_FOUND, 435),
            GatewayError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 406),
            GatewayError::ClientBody(ClientBodyError::TooSlow { .. }) => {
                (StatusCode::REQUEST_TIMEOUT, 408)
            }
            GatewayError::ClientBody(_) => (StatusCode::BAD_REQUEST, 400),
            GatewayError::Admit(AdmitError::QueueFull { .. })
            | GatewayError::Admit(AdmitError::QueueTimeout { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, 432)
            }
            GatewayError::Admit(AdmitError::NoInstance { .. }) => (StatusCode::BAD_GATEWAY, 405),
            GatewayError::Admit(AdmitError::StartFailed { never_listened, .. }) => {
                if *never_listened {
                    (StatusCode::SERVICE_UNAVAILABLE, 405)
                } else {
                    (StatusCode::BAD_GATEWAY, 405)
                }
            }
            GatewayError::Forward(ForwardError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, 433)
            }
            GatewayError::Forward(ForwardError::InstanceFailed { .. }) => {
                (StatusCode::BAD_GATEWAY, 405)
            }
            GatewayError::Forward(ForwardError::ResponseTooLarge) => (StatusCode::BAD_GATEWAY, 407),
            GatewayError::Forward(ForwardError::OutOfMemory { .. }) => {
                (StatusCode::BAD_GATEWAY, 434)
            }
            GatewayError::Async(AsyncError::EventTooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, 406)
            }
            GatewayError::Async(AsyncError::Store(_)) => (StatusCode::SERVICE_UNAVAILABLE, 503),
            GatewayError::Async(AsyncError::RequestNotFound { .. }) => (StatusCode::NOT_FOUND, 404),
            GatewayError::Async(AsyncError::NotQueued { .. }) => (StatusCode::CONFLICT, 409),
            GatewayError::Async(AsyncError::BadQuery(_)) => (StatusCode::BAD_REQUEST, 400),
        }
    }

    /// How the invocation ended, for `scf_gateway_invocations_total{outcome}`.
    pub fn outcome(&self) -> Outcome {
        match self {
            // Refused before routing, so never an invocation's outcome; the nearest one.
            GatewayError::BadRequest(_) | GatewayError::Route(_) => Outcome::NotFound,
            GatewayError::BodyTooLarge(_) => Outcome::BodyTooLarge,
            // Only a body that was streaming to an instance is an invocation's outcome:
            // the client ended the exchange.
            GatewayError::ClientBody(_) => Outcome::ClientClosed,
            GatewayError::Admit(AdmitError::NoInstance { .. })
            | GatewayError::Admit(AdmitError::StartFailed { .. }) => Outcome::InstanceError,
            GatewayError::Admit(_) => Outcome::Throttled,
            GatewayError::Forward(ForwardError::Timeout { .. }) => Outcome::Timeout,
            GatewayError::Forward(ForwardError::InstanceFailed { .. }) => Outcome::InstanceError,
            GatewayError::Forward(ForwardError::ResponseTooLarge) => Outcome::ResponseTooLarge,
            GatewayError::Forward(ForwardError::OutOfMemory { .. }) => Outcome::OutOfMemory,
            GatewayError::Async(AsyncError::EventTooLarge { .. }) => Outcome::BodyTooLarge,
            GatewayError::Async(AsyncError::Store(_)) => Outcome::Throttled,
            GatewayError::Async(_) => Outcome::NotFound,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::Admit(AdmitError::QueueFull {
                retry_after_secs, ..
            })
            | GatewayError::Admit(AdmitError::QueueTimeout {
                retry_after_secs, ..
            }) => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The error as the status page lists it (see [`crate::metrics::recent`]): only
    /// called when an error is answered, never on the success path.
    pub fn recent(&self, request_id: &HeaderValue) -> crate::metrics::recent::RecentError {
        let (status, code) = self.status_and_code();
        crate::metrics::recent::RecentError {
            at: std::time::SystemTime::now(),
            status: status.as_u16(),
            code,
            message: self.to_string(),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
        }
    }

    /// The JSON error response, with `X-Scf-Request-Id` (and `Retry-After` for 432).
    pub fn into_response(self, request_id: &HeaderValue) -> Response<Bytes> {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let body = ErrorBody {
            error_code: code,
            error_message: &message,
            request_id: request_id.to_str().unwrap_or_default(),
            status_code: code,
        };
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Bytes::from(json));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(REQUEST_ID, request_id.clone());
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `3s` -> `3`, `500ms` -> `0.5`, `1250ms` -> `1.25`: the N of the timeout message.
pub fn seconds_text(timeout: std::time::Duration) -> String {
    let millis = timeout.as_millis();
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeout_seconds_are_written_as_configured() {
        assert_eq!(seconds_text(Duration::from_secs(3)), "3");
        assert_eq!(seconds_text(Duration::from_millis(500)), "0.5");
        assert_eq!(seconds_text(Duration::from_millis(1250)), "1.25");
        assert_eq!(seconds_text(Duration::from_millis(20)), "0.02");
    }

    #[test]
    fn a_broken_chunked_framing_is_malformed_and_an_early_end_incomplete() {
        use std::io;
        let framing = io::Error::new(io::ErrorKind::InvalidInput, "Invalid chunk size line");
        let wrapped: Box<dyn std::error::Error + Send + Sync> = Box::new(Wrapper(framing));
        assert!(matches!(
            ClientBodyError::of(&*wrapped),
            ClientBodyError::Malformed(m) if m == "Invalid chunk size line"
        ));
        let overflow = io::Error::new(io::ErrorKind::InvalidData, "invalid chunk size: overflow");
        assert!(matches!(
            ClientBodyError::of(&overflow),
            ClientBodyError::Malformed(_)
        ));
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "early eof");
        assert!(matches!(
            ClientBodyError::of(&Wrapper(eof)),
            ClientBodyError::Incomplete
        ));
        assert!(matches!(
            ClientBodyError::of(&BodyTooLarge { limit: 1 }),
            ClientBodyError::Incomplete
        ));
    }

    /// An error with a cause, as hyper wraps the parser's.
    #[derive(Debug, thiserror::Error)]
    #[error("error reading a body from connection")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn reflected_text_is_cut_on_a_character_boundary() {
        assert_eq!(reflected("web.test"), "web.test");
        let exact = "a".repeat(REFLECTED_MAX);
        assert_eq!(reflected(&exact), exact);
        let long = "a".repeat(120 * 1024);
        assert_eq!(reflected(&long), format!("{}...", &long[..REFLECTED_MAX]));
        // A two-byte character straddling the limit is left out whole.
        let text = format!("{}é{}", "a".repeat(REFLECTED_MAX - 1), "b".repeat(10));
        assert_eq!(
            reflected(&text),
            format!("{}...", "a".repeat(REFLECTED_MAX - 1))
        );
        let error = GatewayError::from(RouteError::NoRoute {
            host: reflected(&long),
            path: reflected(&format!("/{long}")),
        });
        let message = error.to_string();
        assert!(message.len() < 2 * REFLECTED_MAX + 64, "{}", message.len());
        assert!(message.ends_with("...]"), "{message}");
    }

    #[test]
    fn error_table_matches_the_contract() {
        let timeout = GatewayError::from(ForwardError::Timeout {
            seconds: "0.5".into(),
        });
        assert_eq!(
            timeout.status_and_code(),
            (StatusCode::GATEWAY_TIMEOUT, 433)
        );
        assert_eq!(
            timeout.to_string(),
            "Invoking task timed out after 0.5 seconds"
        );
        let no_host = GatewayError::from(BadRequest::MissingHost);
        assert_eq!(no_host.status_and_code(), (StatusCode::BAD_REQUEST, 400));
        let long = GatewayError::from(BadRequest::TargetTooLong);
        assert_eq!(long.status_and_code(), (StatusCode::URI_TOO_LONG, 414));
        assert_eq!(
            long.to_string(),
            "The request target is longer than 8192 bytes"
        );
        let slow = GatewayError::from(ClientBodyError::TooSlow {
            seconds: "0.5".into(),
        });
        assert_eq!(slow.status_and_code(), (StatusCode::REQUEST_TIMEOUT, 408));
        let broken = GatewayError::from(ClientBodyError::Malformed("x".into()));
        assert_eq!(broken.status_and_code(), (StatusCode::BAD_REQUEST, 400));
        let too_big = GatewayError::from(ForwardError::ResponseTooLarge);
        assert_eq!(too_big.status_and_code(), (StatusCode::BAD_GATEWAY, 407));
        let missing = GatewayError::from(RouteError::FunctionNotFound {
            name: "hello".into(),
            namespace: "default".into(),
        });
        assert_eq!(
            missing.to_string(),
            "Function [hello] not found in namespace [default]"
        );
    }
}
