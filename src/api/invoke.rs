//! `Invoke` and `InvokeFunction`: an invocation through the gateway's own path, its
//! answer translated into the platform's `Result`. A failed invocation (timeout, crash,
//! throttling) is a `Result` with a non-zero `InvokeResult`, as on the platform; only an
//! unknown function is an error.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::params::{self, required};
use super::Fields;
use crate::config::FunctionKind;
use crate::function::Function;
use crate::invocation::Measured;
use crate::invoke::{Gateway, Invoked};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InvokeParams {
    function_name: Option<String>,
    invocation_type: Option<String>,
    qualifier: Option<String>,
    client_context: Option<String>,
    log_type: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InvokeFunctionParams {
    function_name: Option<String>,
    qualifier: Option<String>,
    event: Option<String>,
    log_type: Option<String>,
    namespace: Option<String>,
}

pub async fn invoke(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: InvokeParams = params::parse(body)?;
    let event = match p.invocation_type.as_deref() {
        None | Some("" | "RequestResponse") => false,
        Some("Event") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameterValue(format!(
                "InvocationType must be RequestResponse or Event, not [{}]",
                crate::error::reflected(other)
            )))
        }
    };
    let call = Call {
        name: required(p.function_name, "FunctionName")?,
        namespace: p.namespace,
        qualifier: p.qualifier,
        event: p.client_context,
        event_field: "ClientContext",
        tail: log_tail(p.log_type.as_deref())?,
    };
    if event {
        accept(gateway, call).await
    } else {
        run(gateway, call).await
    }
}

pub async fn invoke_function(gateway: &Gateway, body: &[u8]) -> Result<Fields, ApiError> {
    let p: InvokeFunctionParams = params::parse(body)?;
    let call = Call {
        name: required(p.function_name, "FunctionName")?,
        namespace: p.namespace,
        qualifier: p.qualifier,
        event: p.event,
        event_field: "Event",
        tail: log_tail(p.log_type.as_deref())?,
    };
    run(gateway, call).await
}

struct Call {
    name: String,
    namespace: Option<String>,
    qualifier: Option<String>,
    /// The event as JSON text; absent is `{}`.
    event: Option<String>,
    event_field: &'static str,
    tail: bool,
}

impl Call {
    fn event(&self) -> Result<Bytes, ApiError> {
        let text = match self.event.as_deref() {
            None | Some("") => "{}",
            Some(text) => text,
        };
        // The platform hands the function a JSON event; one that is not JSON is the
        // caller's mistake, told now rather than by the function.
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            return Err(ApiError::InvalidParameterValue(format!(
                "{} must be JSON text",
                self.event_field
            )));
        }
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }
}

fn log_tail(log_type: Option<&str>) -> Result<bool, ApiError> {
    match log_type {
        None | Some("" | "None") => Ok(false),
        Some("Tail") => Ok(true),
        Some(other) => Err(ApiError::InvalidParameterValue(format!(
            "LogType must be None or Tail, not [{}]",
            crate::error::reflected(other)
        ))),
    }
}

fn json_type() -> Option<HeaderValue> {
    Some(HeaderValue::from_static("application/json"))
}

/// A synchronous invocation.
async fn run(gateway: &Gateway, call: Call) -> Result<Fields, ApiError> {
    let function = event_function(gateway, &call)?;
    let event = call.event()?;
    let limit = gateway.config().server.max_body_bytes;
    if event.len() as u64 > limit {
        return Err(ApiError::InvalidParameterValue(format!(
            "{} exceeds the limit of {limit} bytes for synchronous invocations",
            call.event_field
        )));
    }
    let result = match gateway.invoke_event(function, event, json_type()).await {
        Invoked::Answered {
            status,
            body,
            request_id,
            measured,
        } => {
            let text = String::from_utf8_lossy(&body).into_owned();
            if status.is_success() {
                result(text, String::new(), 0, &request_id, measured, call.tail)
            } else {
                // The function's own error answer: its status is the result code.
                let code = i64::from(status.as_u16());
                result(String::new(), text, code, &request_id, measured, call.tail)
            }
        }
        Invoked::Failed {
            error,
            request_id,
            measured,
        } => {
            if matches!(error, crate::error::GatewayError::Route(_)) {
                return Err(error.into());
            }
            let code = i64::from(error.status_and_code().1);
            let response = error.into_response(&request_id);
            let text = String::from_utf8_lossy(response.body()).into_owned();
            result(String::new(), text, code, &request_id, measured, call.tail)
        }
    };
    Ok(with_result(result))
}

/// The platform's `Result` of a synchronous invocation.
fn result(
    ret: String,
    err: String,
    code: i64,
    request_id: &HeaderValue,
    measured: Measured,
    tail: bool,
) -> Value {
    let log = if tail {
        measured.log.unwrap_or_default()
    } else {
        String::new()
    };
    // Milliseconds with two decimals, as the Report line has them.
    let duration = (measured.duration.as_secs_f64() * 100_000.0).round() / 100.0;
    json!({
        "Log": log,
        "RetMsg": ret,
        "ErrMsg": err,
        "MemUsage": measured.mem_usage_bytes.unwrap_or(0),
        "Duration": duration,
        "BillDuration": measured.billed_millis,
        "FunctionRequestId": request_id.to_str().unwrap_or_default(),
        "InvokeResult": code,
    })
}

/// An asynchronous invocation: kept durably before the answer.
async fn accept(gateway: &Gateway, call: Call) -> Result<Fields, ApiError> {
    let function = event_function(gateway, &call)?;
    let event = call.event()?;
    let request_id = gateway
        .accept_event_body(function, event, json_type())
        .await?;
    Ok(with_result(json!({
        "Log": "",
        "RetMsg": "",
        "ErrMsg": "",
        "MemUsage": 0,
        "Duration": 0.0,
        "BillDuration": 0,
        "FunctionRequestId": request_id.to_str().unwrap_or_default(),
        "InvokeResult": 0,
    })))
}

/// The event function the call names: a web function is reached through its routes.
fn event_function<'g>(gateway: &'g Gateway, call: &Call) -> Result<&'g Arc<Function>, ApiError> {
    let (function, _) = params::function(
        gateway,
        &call.name,
        call.namespace.as_deref(),
        call.qualifier.as_deref(),
    )?;
    if function.kind == FunctionKind::Http {
        return Err(ApiError::InvalidParameterValue(format!(
            "Function [{}] is a web function (type \"http\"): call it through its route",
            crate::error::reflected(&call.name)
        )));
    }
    Ok(function)
}

fn with_result(result: Value) -> Fields {
    let mut fields = Map::new();
    fields.insert("Result".to_owned(), result);
    fields
}
