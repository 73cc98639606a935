//! `ListFunctions` and `GetFunction`: what the gateway knows of its functions, in the
//! platform's models. Fields the gateway has no value for are left out (the SDKs read
//! them as `None`); `Environment` is left out too, as its values may be secrets.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::params::{self, kind_name, required, whole_seconds, DEFAULT_NAMESPACE};
use super::Fields;
use crate::config::{FunctionConfig, FunctionKind};
use crate::error::reflected;
use crate::invoke::Gateway;

const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Filter {
    name: Option<String>,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListParams {
    order: Option<String>,
    orderby: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
    search_key: Option<String>,
    namespace: Option<String>,
    description: Option<String>,
    filters: Option<Vec<Filter>>,
}

/// `TRUE` for event functions: their `Event` invocations are kept and can be queried.
fn async_run(f: &FunctionConfig) -> &'static str {
    match f.kind {
        FunctionKind::Event => "TRUE",
        FunctionKind::Http => "FALSE",
    }
}

pub fn list(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: ListParams = params::parse(body)?;
    let namespace = p
        .namespace
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidParameterValue(format!(
            "Limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let descending = match p.order.as_deref() {
        None | Some("" | "ASC") => false,
        Some("DESC") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameterValue(format!(
                "Order must be ASC or DESC, not [{}]",
                reflected(other)
            )))
        }
    };
    // The gateway keeps no creation or change times: those orders keep the config's.
    let by_name = match p.orderby.as_deref() {
        None | Some("" | "AddTime" | "ModTime") => false,
        Some("FunctionName") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameterValue(format!(
                "Orderby must be AddTime, ModTime or FunctionName, not [{}]",
                reflected(other)
            )))
        }
    };
    let mut filters = Vec::new();
    for filter in p.filters.unwrap_or_default() {
        let values = filter.values.unwrap_or_default();
        match filter.name.as_deref() {
            Some("Status") => filters.push((false, values)),
            Some("Type") => filters.push((true, values)),
            other => {
                return Err(ApiError::InvalidParameterValue(format!(
                    "Filters: only Status and Type are supported, not [{}]",
                    reflected(other.unwrap_or(""))
                )))
            }
        }
    }
    let search = p.search_key.unwrap_or_default();
    // No function has a description: any description searched for matches none.
    let described = p.description.as_deref().is_none_or(str::is_empty);
    let mut functions: Vec<&FunctionConfig> = gateway
        .config()
        .functions
        .iter()
        .filter(|f| {
            f.namespace == namespace
                && f.name.contains(search.as_str())
                && described
                && filters.iter().all(|(is_type, values)| {
                    let have = if *is_type {
                        kind_name(f.kind)
                    } else {
                        "Active"
                    };
                    values.iter().any(|v| v == have)
                })
        })
        .collect();
    if by_name {
        functions.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if descending {
        functions.reverse();
    }
    let total = functions.len();
    let offset = usize::try_from(p.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let page: Vec<Value> = functions
        .iter()
        .skip(offset)
        .take(limit as usize)
        .map(|f| {
            json!({
                "FunctionName": f.name,
                "Namespace": f.namespace,
                "Status": "Active",
                "Type": kind_name(f.kind),
                "AsyncRunEnable": async_run(f),
                "TraceEnable": "FALSE",
            })
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("Functions".to_owned(), Value::Array(page));
    fields.insert("TotalCount".to_owned(), json!(total));
    Ok(fields)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetParams {
    function_name: Option<String>,
    qualifier: Option<String>,
    namespace: Option<String>,
}

pub fn get(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: GetParams = params::parse(body)?;
    let name = required(p.function_name, "FunctionName")?;
    let (_, f) = params::function(
        gateway,
        &name,
        p.namespace.as_deref(),
        p.qualifier.as_deref(),
    )?;
    let qualifier = p
        .qualifier
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| "$LATEST".to_owned());
    let fields = json!({
        "FunctionName": f.name,
        "Namespace": f.namespace,
        "Qualifier": qualifier,
        "FunctionVersion": f.version,
        "Timeout": whole_seconds(f.timeout),
        "MemorySize": f.memory_mb,
        "Type": kind_name(f.kind),
        "Status": "Active",
        "AvailableStatus": "Available",
        "AsyncRunEnable": async_run(f),
        "TraceEnable": "FALSE",
        "InstanceConcurrencyConfig": {
            "DynamicEnabled": "FALSE",
            "MaxConcurrency": f.instance_concurrency,
        },
    });
    match fields {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}
