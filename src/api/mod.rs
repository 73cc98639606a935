//! The Tencent Cloud API 3.0 endpoint: `POST /` with `X-TC-Action`, as the official
//! Tencent Cloud SDKs call it, so that they work unchanged with their endpoint set to the
//! gateway.
//!
//! A call goes: read the body (bounded, in time) -> check the signature against
//! `[[api.keys]]` -> check the version -> run the action -> answer in the platform's
//! envelope (`envelope.rs`). Invocations go through the gateway's own invocation path,
//! so they live the life of `POST /v1/functions/{name}/invocations`; the asynchronous
//! actions ask the same store as the native query API.

pub mod signature;

mod envelope;
mod error;
mod events;
mod functions;
mod invoke;
mod params;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

pub use error::ApiError;

use crate::body::GatewayBody;
use crate::invoke::Gateway;
use signature::{Authorization, HeaderLookup, Lookup, Malformed, SignatureError, SignedRequest};

/// The action header: its presence makes `POST /` a call.
pub const ACTION: HeaderName = HeaderName::from_static("x-tc-action");
const VERSION: HeaderName = HeaderName::from_static("x-tc-version");
const TIMESTAMP: HeaderName = HeaderName::from_static("x-tc-timestamp");
/// SCF's API version: the only one whose actions and models are served.
pub const API_VERSION: &str = "2018-04-16";

/// A call's fields, as the action reads them.
type Fields = Map<String, Value>;

/// Answers one call. Never fails: errors are answers too.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<GatewayBody> {
    match call(gateway, req).await {
        Ok(fields) => envelope::ok(fields),
        Err(e) => envelope::error(&e),
    }
}

async fn call(gateway: &Gateway, req: Request<Incoming>) -> Result<Fields, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(gateway, body).await?;
    authenticate(gateway, &parts, &body)?;
    let version = parts.headers.get(VERSION).map(|v| v.as_bytes());
    if version != Some(API_VERSION.as_bytes()) {
        let shown = version.map(String::from_utf8_lossy).unwrap_or_default();
        return Err(ApiError::NoSuchVersion(crate::error::reflected(&shown)));
    }
    let action = parts
        .headers
        .get(ACTION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    match action.as_str() {
        "Invoke" => invoke::invoke(gateway, &body).await,
        "InvokeFunction" => invoke::invoke_function(gateway, &body).await,
        "GetAsyncEventStatus" => events::get_status(gateway, &body).await,
        "ListAsyncEvents" => events::list(gateway, &body).await,
        "TerminateAsyncEvent" => events::terminate(gateway, &body).await,
        "ListFunctions" => functions::list(gateway, &body),
        "GetFunction" => functions::get(gateway, &body),
        other => Err(ApiError::InvalidAction(crate::error::reflected(other))),
    }
}

/// The largest call body: a synchronous event may be `server.max_body_bytes`, and
/// travels as a JSON string inside the call, so escaping may grow it (the Python SDK
/// escapes every non-ASCII character).
fn body_limit(gateway: &Gateway) -> u64 {
    gateway.config().server.max_body_bytes.saturating_mul(2)
}

async fn read_body(gateway: &Gateway, body: Incoming) -> Result<Bytes, ApiError> {
    let limit = body_limit(gateway);
    let wait = gateway.config().server.header_read_timeout;
    let too_large = ApiError::RequestSizeLimitExceeded { limit };
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|len| len > limit)
    {
        return Err(too_large);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(wait, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Ok(Err(e)) => Err(ApiError::InvalidParameter(format!(
            "The request body could not be read: {e}"
        ))),
        Err(_) => Err(ApiError::RequestTimeout {
            seconds: wait.as_secs().max(1),
        }),
    }
}

/// The call's headers, with the host an HTTP/2 client sends as `:authority`.
struct CallHeaders<'a> {
    headers: &'a HeaderMap,
    authority: Option<&'a str>,
}

impl HeaderLookup for CallHeaders<'_> {
    fn lookup(&self, name: &str) -> Lookup<'_> {
        match self.headers.lookup(name) {
            Lookup::Absent if name == "host" => self
                .authority
                .map_or(Lookup::Absent, |a| Lookup::One(a.as_bytes())),
            found => found,
        }
    }
}

/// Checks the call's signature against the keys of the config it arrived under (a
/// reload's new keys apply to the next call).
fn authenticate(
    gateway: &Gateway,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<(), ApiError> {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(SignatureError::from(Malformed::Missing))?;
    let authorization = Authorization::parse(header.as_bytes()).map_err(SignatureError::from)?;
    let secret_id = authorization.secret_id();
    let Some(secret_key) = gateway.config().api.secret_key(secret_id) else {
        return Err(SignatureError::SecretIdNotFound {
            secret_id: crate::error::reflected(secret_id),
        }
        .into());
    };
    let timestamp = parts
        .headers
        .get(TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let headers = CallHeaders {
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
    };
    let request = SignedRequest {
        method: parts.method.as_str(),
        canonical_uri: parts.uri.path(),
        canonical_query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
        timestamp,
    };
    signature::verify(&authorization, &request, now(), secret_key.expose())?;
    Ok(())
}

/// Unix seconds. A clock before 1970 reads as 1970, and every timestamp is then
/// refused as expired, which is the safe way to fail.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
