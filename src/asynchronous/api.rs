//! The query API of asynchronous invocations, on `server.listen` beside the invocation
//! API: `GET /v1/requests/{id}`, `DELETE /v1/requests/{id}` and
//! `GET /v1/functions/{name}/requests`. Request ids are random UUIDs (see
//! [`crate::headers::new_uuid`]): knowing one is what lets a client ask about it.

use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::store::{Aborted, EventRecord, FunctionKey, ListQuery, Order, Status};
use crate::error::{AsyncError, GatewayError, RouteError};
use crate::headers::REQUEST_ID;
use crate::invoke::Gateway;

const REQUESTS_PREFIX: &str = "/v1/requests/";
const FUNCTIONS_PREFIX: &str = "/v1/functions/";
const REQUESTS_SUFFIX: &str = "/requests";
/// `limit` at most, and by default.
const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 20;

/// What a query path asks about.
#[derive(Debug, PartialEq, Eq)]
enum Query<'a> {
    /// `/v1/requests/{id}`.
    Request(&'a str),
    /// `/v1/functions/{name}/requests`.
    Function(&'a str),
}

/// Whether `path` is one of the query API's (whatever the method).
pub fn is_query_path(path: &str) -> bool {
    query_of(path).is_some()
}

fn query_of(path: &str) -> Option<Query<'_>> {
    if let Some(id) = path.strip_prefix(REQUESTS_PREFIX) {
        return (!id.is_empty() && !id.contains('/')).then_some(Query::Request(id));
    }
    let name = path
        .strip_prefix(FUNCTIONS_PREFIX)?
        .strip_suffix(REQUESTS_SUFFIX)?;
    (!name.is_empty() && !name.contains('/')).then_some(Query::Function(name))
}

/// Answers one query. Errors are the contract's error bodies, with `request_id`.
pub async fn handle<B>(
    gateway: &Gateway,
    req: &Request<B>,
    request_id: &HeaderValue,
) -> Result<Response<Bytes>, GatewayError> {
    let Some(query) = query_of(req.uri().path()) else {
        return Err(AsyncError::BadQuery("Unknown query path".into()).into());
    };
    let Some(service) = gateway.events() else {
        return Err(AsyncError::Store(super::StoreError::Unavailable(
            "this gateway has no asynchronous event store".into(),
        ))
        .into());
    };
    let store = service.store().await.map_err(AsyncError::from)?;
    let method = req.method();
    let (status, body) = match query {
        Query::Request(id) if method == Method::GET => {
            let record = match parse_id(id) {
                Some(uuid) => store.get(uuid).await.map_err(AsyncError::from)?,
                None => None,
            };
            let record = record.ok_or_else(|| not_found(id))?;
            (StatusCode::OK, record_json(&record))
        }
        Query::Request(id) if method == Method::DELETE => {
            let Some(uuid) = parse_id(id) else {
                return Err(not_found(id));
            };
            match store.abort(uuid).await.map_err(AsyncError::from)? {
                Aborted::Aborted(record) => (StatusCode::OK, record_json(&record)),
                Aborted::NotQueued(record) => {
                    return Err(AsyncError::NotQueued {
                        id: id.to_owned(),
                        status: record.status.as_str(),
                    }
                    .into())
                }
                Aborted::NotFound => return Err(not_found(id)),
            }
        }
        Query::Function(name) if method == Method::GET => {
            let (namespace, list) = list_query(req.uri().query())?;
            let name = percent_decode(name);
            let known = gateway
                .functions()
                .iter()
                .any(|f| f.name == name && f.namespace == namespace);
            if !known {
                return Err(RouteError::FunctionNotFound {
                    name: crate::error::reflected(&name),
                    namespace: crate::error::reflected(&namespace),
                }
                .into());
            }
            let key = FunctionKey::new(namespace, name);
            let records = store.list(&key, &list).await.map_err(AsyncError::from)?;
            let requests: Vec<Value> = records.iter().map(record_json).collect();
            (
                StatusCode::OK,
                json!({
                    "function": key.name,
                    "namespace": key.namespace,
                    "limit": list.limit,
                    "offset": list.offset,
                    "order": match list.order { Order::Asc => "asc", Order::Desc => "desc" },
                    "requests": requests,
                }),
            )
        }
        _ => {
            return Err(AsyncError::BadQuery(format!(
                "Method {} is not allowed here",
                crate::error::reflected(method.as_str())
            ))
            .into())
        }
    };
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REQUEST_ID, request_id.clone());
    Ok(response)
}

fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::try_parse(id).ok()
}

fn not_found(id: &str) -> GatewayError {
    AsyncError::RequestNotFound {
        id: crate::error::reflected(id),
    }
    .into()
}

/// `namespace`, `status`, `limit`, `offset` and `order` of a list query.
fn list_query(query: Option<&str>) -> Result<(String, ListQuery), GatewayError> {
    let mut namespace = "default".to_owned();
    let mut list = ListQuery {
        status: None,
        limit: DEFAULT_LIMIT,
        offset: 0,
        order: Order::Desc,
    };
    let bad = |what: String| GatewayError::from(AsyncError::BadQuery(what));
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "namespace" => namespace = value,
            "status" => {
                list.status = Some(Status::parse(&value).ok_or_else(|| {
                    bad(format!(
                        "status must be queued, running, succeeded, failed or aborted, not [{}]",
                        crate::error::reflected(&value)
                    ))
                })?)
            }
            "limit" => {
                list.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit must be 1 to {MAX_LIMIT}")))?
            }
            "offset" => {
                list.offset = value
                    .parse()
                    .map_err(|_| bad("offset must be a whole number".into()))?
            }
            "order" => {
                list.order = match value.as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => return Err(bad("order must be asc or desc".into())),
                }
            }
            _ => {}
        }
    }
    Ok((namespace, list))
}

/// An event as the contract shows it.
pub fn record_json(record: &EventRecord) -> Value {
    let (result, encoding) = match &record.result {
        None => (Value::Null, None),
        Some(body) => match std::str::from_utf8(body) {
            Ok(text) => (Value::String(text.to_owned()), None),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                Some("base64"),
            ),
        },
    };
    let mut value = json!({
        "requestId": record.id.hyphenated().to_string(),
        "function": record.function.name,
        "namespace": record.function.namespace,
        "qualifier": record.qualifier,
        "status": record.status.as_str(),
        "attempts": record.attempts,
        "enqueuedAt": rfc3339(record.enqueued_at),
        "startedAt": record.started_at.map(rfc3339),
        "endedAt": record.ended_at.map(rfc3339),
        "statusCode": record.status_code,
        "result": result,
        "error": record.error,
    });
    if let (Some(encoding), Some(object)) = (encoding, value.as_object_mut()) {
        object.insert("resultEncoding".into(), Value::String(encoding.into()));
    }
    value
}

/// RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn percent_decode(text: &str) -> String {
    crate::routing::percent_decode(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_paths_are_told_from_others() {
        assert_eq!(query_of("/v1/requests/abc"), Some(Query::Request("abc")));
        assert_eq!(
            query_of("/v1/functions/f/requests"),
            Some(Query::Function("f"))
        );
        assert_eq!(query_of("/v1/requests/"), None);
        assert_eq!(query_of("/v1/requests/a/b"), None);
        assert_eq!(query_of("/v1/functions/f/invocations"), None);
        assert_eq!(query_of("/v1/functions//requests"), None);
        assert_eq!(query_of("/web"), None);
    }

    #[test]
    fn list_queries_are_checked() {
        let (ns, q) = list_query(Some(
            "namespace=prod&status=failed&limit=5&offset=10&order=asc",
        ))
        .unwrap();
        assert_eq!(ns, "prod");
        assert_eq!(
            q,
            ListQuery {
                status: Some(Status::Failed),
                limit: 5,
                offset: 10,
                order: Order::Asc
            }
        );
        let (ns, q) = list_query(None).unwrap();
        assert_eq!(
            (ns.as_str(), q.limit, q.order),
            ("default", 20, Order::Desc)
        );
        for bad in [
            "limit=0",
            "limit=101",
            "status=done",
            "order=up",
            "offset=-1",
        ] {
            assert!(list_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_binary_result_is_base64_and_times_are_rfc3339() {
        let record = EventRecord {
            id: Uuid::nil(),
            function: FunctionKey::new("default", "f"),
            qualifier: "$LATEST".into(),
            status: Status::Succeeded,
            attempts: 1,
            enqueued_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500),
            started_at: None,
            ended_at: None,
            status_code: Some(200),
            result: Some(Bytes::from_static(&[0xff, 0x00])),
            error: None,
        };
        let json = record_json(&record);
        assert_eq!(json["result"], "/wA=");
        assert_eq!(json["resultEncoding"], "base64");
        assert_eq!(json["enqueuedAt"], "1970-01-01T00:00:01.500Z");
        assert_eq!(json["startedAt"], Value::Null);
        assert_eq!(json["status"], "succeeded");
    }
}
