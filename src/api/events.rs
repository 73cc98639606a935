//! `GetAsyncEventStatus`, `ListAsyncEvents` and `TerminateAsyncEvent`: the native query
//! API of asynchronous invocations (`/v1/requests/{id}`, `/v1/functions/{name}/requests`)
//! in the platform's words. Statuses map queued and running to `RUNNING`, succeeded to
//! `FINISHED`, failed to `FAILED`, aborted to `ABORTED`.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::params::{self, format_time, parse_time, required};
use super::Fields;
use crate::asynchronous::store::{Aborted, EventRecord, ListQuery, Order, Status};
use crate::asynchronous::{FunctionKey, Store};
use crate::error::reflected;
use crate::invoke::Gateway;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// The store's page size.
const PAGE: u32 = 100;
/// `ListAsyncEvents` filters and sorts in memory, over at most this many of the
/// function's most recent events (the store lists by acceptance time only).
const SCAN_LIMIT: usize = 10_000;

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Queued | Status::Running => "RUNNING",
        Status::Succeeded => "FINISHED",
        Status::Failed => "FAILED",
        Status::Aborted => "ABORTED",
    }
}

async fn store(gateway: &Gateway) -> Result<&Store, ApiError> {
    let Some(service) = gateway.events() else {
        return Err(crate::asynchronous::StoreError::Unavailable(
            "this gateway has no asynchronous event store".into(),
        )
        .into());
    };
    Ok(service.store().await?)
}

fn event_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text).map_err(|_| ApiError::AsyncEventNotFound(reflected(text)))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatusParams {
    invoke_request_id: Option<String>,
}

pub async fn get_status(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: StatusParams = params::parse(body)?;
    let id_text = required(p.invoke_request_id, "InvokeRequestId")?;
    let id = event_id(&id_text)?;
    let record = store(gateway)
        .await?
        .get(id)
        .await?
        .ok_or_else(|| ApiError::AsyncEventNotFound(reflected(&id_text)))?;
    let mut fields = Map::new();
    fields.insert(
        "Result".to_owned(),
        json!({
            "Status": status_name(record.status),
            "StatusCode": record.status_code.unwrap_or(0),
            "InvokeRequestId": record.id.hyphenated().to_string(),
        }),
    );
    Ok(fields)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TimeInterval {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListParams {
    function_name: Option<String>,
    namespace: Option<String>,
    qualifier: Option<String>,
    invoke_type: Option<Vec<String>>,
    status: Option<Vec<String>>,
    start_time_interval: Option<TimeInterval>,
    end_time_interval: Option<TimeInterval>,
    order: Option<String>,
    orderby: Option<String>,
    offset: Option<u64>,
    limit: Option<u32>,
    invoke_request_id: Option<String>,
}

/// `[start, end)`; either side open.
struct Window {
    start: Option<SystemTime>,
    end: Option<SystemTime>,
}

impl Window {
    fn read(interval: Option<TimeInterval>, field: &str) -> Result<Option<Window>, ApiError> {
        let Some(interval) = interval else {
            return Ok(None);
        };
        let side = |text: Option<String>, name: &str| {
            text.filter(|t| !t.is_empty())
                .map(|t| parse_time(&t, &format!("{field}.{name}")))
                .transpose()
        };
        Ok(Some(Window {
            start: side(interval.start, "Start")?,
            end: side(interval.end, "End")?,
        }))
    }

    fn contains(&self, t: Option<SystemTime>) -> bool {
        let Some(t) = t else {
            return false;
        };
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t < e)
    }
}

pub async fn list(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: ListParams = params::parse(body)?;
    let name = required(p.function_name, "FunctionName")?;
    let (_, config) = params::function(gateway, &name, p.namespace.as_deref(), None)?;
    let key = FunctionKey::new(config.namespace.clone(), config.name.clone());
    if p.invoke_type
        .as_ref()
        .is_some_and(|types| !types.is_empty())
    {
        return Err(ApiError::InvalidParameterValue(
            "InvokeType filters are not supported by the gateway".into(),
        ));
    }
    let statuses = match p.status {
        Some(list) if !list.is_empty() => {
            let mut wanted = Vec::new();
            for s in &list {
                match s.as_str() {
                    "RUNNING" | "FINISHED" | "FAILED" | "ABORTED" => wanted.push(s.clone()),
                    other => {
                        return Err(ApiError::InvalidParameterValue(format!(
                            "Status must be RUNNING, FINISHED, FAILED or ABORTED, not [{}]",
                            reflected(other)
                        )))
                    }
                }
            }
            Some(wanted)
        }
        _ => None,
    };
    let ascending = match p.order.as_deref() {
        None | Some("" | "DESC") => false,
        Some("ASC") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameterValue(format!(
                "Order must be ASC or DESC, not [{}]",
                reflected(other)
            )))
        }
    };
    let by_end = match p.orderby.as_deref() {
        None | Some("" | "StartTime") => false,
        Some("EndTime") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameterValue(format!(
                "Orderby must be StartTime or EndTime, not [{}]",
                reflected(other)
            )))
        }
    };
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidParameterValue(format!(
            "Limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let offset = usize::try_from(p.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let started = Window::read(p.start_time_interval, "StartTimeInterval")?;
    let ended = Window::read(p.end_time_interval, "EndTimeInterval")?;

    let store = store(gateway).await?;
    let mut records = match p.invoke_request_id.filter(|id| !id.is_empty()) {
        // One event: no listing, and an id of another function is simply not listed.
        Some(id) => match Uuid::try_parse(&id) {
            Ok(id) => store.get(id).await?.into_iter().collect(),
            Err(_) => Vec::new(),
        },
        None => scan(store, &key).await?,
    };
    records.retain(|r| {
        r.function == key
            && p.qualifier
                .as_deref()
                .is_none_or(|q| q.is_empty() || q == r.qualifier)
            && statuses
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == status_name(r.status)))
            && started
                .as_ref()
                .is_none_or(|w| w.contains(Some(r.enqueued_at)))
            && ended.as_ref().is_none_or(|w| w.contains(r.ended_at))
    });
    let time = |r: &EventRecord| {
        if by_end {
            r.ended_at
        } else {
            Some(r.enqueued_at)
        }
    };
    records.sort_by(|a, b| {
        let order = time(a).cmp(&time(b));
        if ascending {
            order
        } else {
            order.reverse()
        }
    });
    let total = records.len();
    let events: Vec<Value> = records
        .iter()
        .skip(offset)
        .take(limit as usize)
        .map(|r| {
            json!({
                "InvokeRequestId": r.id.hyphenated().to_string(),
                "Qualifier": r.qualifier,
                "Status": status_name(r.status),
                "StartTime": format_time(r.enqueued_at),
                "EndTime": r.ended_at.map(format_time).unwrap_or_default(),
            })
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("TotalCount".to_owned(), json!(total));
    fields.insert("EventList".to_owned(), Value::Array(events));
    Ok(fields)
}

/// The function's most recent events, newest first, at most [`SCAN_LIMIT`].
async fn scan(store: &Store, key: &FunctionKey) -> Result<Vec<EventRecord>, ApiError> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let query = ListQuery {
            status: None,
            limit: PAGE,
            offset,
            order: Order::Desc,
        };
        let page = store.list(key, &query).await?;
        let last = page.len() < PAGE as usize;
        records.extend(page);
        if last || records.len() >= SCAN_LIMIT {
            records.truncate(SCAN_LIMIT);
            return Ok(records);
        }
        offset += PAGE;
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminateParams {
    function_name: Option<String>,
    invoke_request_id: Option<String>,
    namespace: Option<String>,
    #[allow(dead_code)]
    grace_shutdown: Option<bool>,
}

/// Only a queued event can be terminated: a running one is on an instance the gateway
/// does not interrupt (`GraceShutdown` is read and has no effect).
pub async fn terminate(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: TerminateParams = params::parse(body)?;
    let name = required(p.function_name, "FunctionName")?;
    let id_text = required(p.invoke_request_id, "InvokeRequestId")?;
    let (_, config) = params::function(gateway, &name, p.namespace.as_deref(), None)?;
    let key = FunctionKey::new(config.namespace.clone(), config.name.clone());
    let id = event_id(&id_text)?;
    let store = store(gateway).await?;
    let not_found = || ApiError::AsyncEventNotFound(reflected(&id_text));
    // An event of another function is not this function's to terminate.
    let record = store.get(id).await?.ok_or_else(not_found)?;
    if record.function != key {
        return Err(not_found());
    }
    match store.abort(id).await? {
        Aborted::Aborted(_) => Ok(Map::new()),
        Aborted::NotQueued(record) => Err(ApiError::AsyncEventStatus {
            id: reflected(&id_text),
            status: status_name(record.status),
        }),
        Aborted::NotFound => Err(not_found()),
    }
}
