//! The Tencent Cloud API 3.0 endpoint against the gateway binary: calls signed as the
//! official SDKs sign them (`api::signature::sign`), each action's answer in the
//! platform's envelope, and the platform's error codes.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::events::EventInstance;
use common::{wait_for, GatewayProcess};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use scf_gateway::api::signature::{sign, SignedRequest};
use serde_json::{json, Value};

const ID: &str = "AKIDapitest";
const KEY: &str = "api-secret-key-value";
const PATIENCE: Duration = Duration::from_secs(20);

fn store_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scf-api-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The gateway binary with an API key, an embedded store and `functions`.
fn start(test: &str, functions: &str) -> GatewayProcess {
    start_with(test, "", functions)
}

/// [`start`], with extra `[server]` keys.
fn start_with(test: &str, server: &str, functions: &str) -> GatewayProcess {
    let dir = store_dir(test);
    GatewayProcess::start(
        &format!("api-{test}"),
        server,
        &format!(
            "[async]\nstore = \"embedded\"\npath = \"{}\"\nretry_delays = [\"50ms\"]\n\
             [[api.keys]]\nsecret_id = \"{ID}\"\nsecret_key = \"{KEY}\"\n{functions}",
            dir.display()
        ),
    )
}

fn event_function(name: &str, instance: SocketAddr, extra: &str) -> String {
    common::event_function(name, &[instance], extra)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How a test call departs from what an SDK sends.
#[derive(Clone, Copy)]
struct Signing<'a> {
    id: &'a str,
    key: &'a str,
    timestamp: u64,
    version: &'a str,
}

impl Default for Signing<'_> {
    fn default() -> Self {
        Signing {
            id: ID,
            key: KEY,
            timestamp: now(),
            version: "2018-04-16",
        }
    }
}

/// One call, signed as the Python SDK signs it; the answer's `Response` object.
async fn call_as(addr: SocketAddr, action: &str, params: &Value, signing: Signing<'_>) -> Value {
    let body = params.to_string();
    let host = addr.to_string();
    let timestamp = signing.timestamp.to_string();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("host", HeaderValue::from_str(&host).unwrap());
    let authorization = sign(
        &SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers: &headers,
            body: body.as_bytes(),
            timestamp: &timestamp,
        },
        signing.id,
        signing.key,
    )
    .unwrap();
    let req = Request::post("/")
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-tc-action", action)
        .header("x-tc-version", signing.version)
        .header("x-tc-timestamp", timestamp)
        .header("x-tc-region", "ap-guangzhou")
        .header("authorization", authorization)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let answer = common::send(addr, req).await.unwrap();
    // As the SDKs need them: HTTP 200 and exactly `application/json`, errors included.
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    let response = answer.json()["Response"].clone();
    let request_id = response["RequestId"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{response}");
    response
}

async fn call(addr: SocketAddr, action: &str, params: &Value) -> Value {
    call_as(addr, action, params, Signing::default()).await
}

fn error_code(response: &Value) -> &str {
    response["Error"]["Code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_and_invoke_function_return_the_functions_output() {
    let instance = EventInstance::start().await;
    let gw = start(
        "sync",
        &event_function("f", instance.addr, "memory_mb = 256"),
    );

    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "ClientContext": "{\"a\":1}"}),
    )
    .await;
    let result = &r["Result"];
    assert_eq!(result["InvokeResult"], 0, "{r}");
    assert_eq!(result["ErrMsg"], "");
    let ret: Value = serde_json::from_str(result["RetMsg"].as_str().unwrap()).unwrap();
    assert_eq!(ret["echo"], json!({"a": 1}));
    let id = result["FunctionRequestId"].as_str().unwrap();
    // The instance got the invocation under the id the API reported.
    assert_eq!(instance.deliveries.all.lock()[0].request_id(), id);
    assert!(result["Duration"].as_f64().unwrap() >= 0.0);
    assert!(result["BillDuration"].as_u64().is_some());
    assert!(result["MemUsage"].as_u64().is_some());

    let r = call(
        gw.listen,
        "InvokeFunction",
        &json!({"FunctionName": "f", "Event": "{\"b\":2}", "Namespace": "default"}),
    )
    .await;
    assert_eq!(r["Result"]["InvokeResult"], 0, "{r}");
    let ret: Value = serde_json::from_str(r["Result"]["RetMsg"].as_str().unwrap()).unwrap();
    assert_eq!(ret["echo"], json!({"b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_type_tail_returns_the_invocations_log_and_its_measures() {
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions/hello");
    let functions = format!(
        "[[functions]]\nname = \"hello\"\n[functions.launch]\ncommand = \"python3\"\n\
         args = [\"app.py\"]\nworkdir = \"{}\"\n",
        app.display()
    );
    let gw = start("tail", &functions);
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "hello", "ClientContext": "{\"name\":\"api\"}", "LogType": "Tail"}),
    )
    .await;
    let result = &r["Result"];
    assert_eq!(result["InvokeResult"], 0, "{r}");
    let ret: Value = serde_json::from_str(result["RetMsg"].as_str().unwrap()).unwrap();
    assert_eq!(ret["message"], "Hello, api!");
    let id = result["FunctionRequestId"].as_str().unwrap();
    let log = result["Log"].as_str().unwrap();
    assert!(log.contains(&format!("START RequestId: {id}")), "{log}");
    assert!(log.contains(&format!("Report RequestId: {id}")), "{log}");
    assert!(result["Duration"].as_f64().unwrap() > 0.0, "{r}");
    assert!(result["BillDuration"].as_u64().unwrap() >= 1, "{r}");

    // Without Tail, no log.
    let r = call(gw.listen, "Invoke", &json!({"FunctionName": "hello"})).await;
    assert_eq!(r["Result"]["Log"], "", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_kept_then_finished_listed_and_its_status_read() {
    let instance = EventInstance::start().await;
    let gw = start("event", &event_function("f", instance.addr, ""));
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "InvocationType": "Event", "ClientContext": "{\"e\":1}"}),
    )
    .await;
    assert_eq!(r["Result"]["InvokeResult"], 0, "{r}");
    assert_eq!(r["Result"]["RetMsg"], "");
    let id = r["Result"]["FunctionRequestId"]
        .as_str()
        .unwrap()
        .to_owned();

    let status = wait_for("the event to finish", PATIENCE, async || {
        let r = call(
            gw.listen,
            "GetAsyncEventStatus",
            &json!({"InvokeRequestId": id}),
        )
        .await;
        (r["Result"]["Status"] == "FINISHED").then_some(r)
    })
    .await;
    assert_eq!(status["Result"]["InvokeRequestId"], id.as_str());
    assert_eq!(status["Result"]["StatusCode"], 200);
    assert_eq!(instance.deliveries.all.lock()[0].request_id(), id);

    let r = call(
        gw.listen,
        "ListAsyncEvents",
        &json!({"FunctionName": "f", "Status": ["FINISHED"], "Limit": 10}),
    )
    .await;
    assert_eq!(r["TotalCount"], 1, "{r}");
    let event = &r["EventList"][0];
    assert_eq!(event["InvokeRequestId"], id.as_str());
    assert_eq!(event["Status"], "FINISHED");
    assert_eq!(event["Qualifier"], "$LATEST");
    for field in ["StartTime", "EndTime"] {
        let text = event[field].as_str().unwrap();
        assert_eq!(text.len(), 19, "{field}: {text}");
        assert_eq!(&text[10..11], " ", "{field}: {text}");
    }
    let r = call(
        gw.listen,
        "ListAsyncEvents",
        &json!({"FunctionName": "f", "Status": ["RUNNING"]}),
    )
    .await;
    assert_eq!(r["TotalCount"], 0, "{r}");
    let r = call(
        gw.listen,
        "ListAsyncEvents",
        &json!({"FunctionName": "f", "Limit": 101}),
    )
    .await;
    assert_eq!(error_code(&r), "InvalidParameterValue", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_event_is_terminated() {
    let instance = EventInstance::start().await;
    let gw = start(
        "terminate",
        &event_function(
            "f",
            instance.addr,
            "timeout = \"20s\"\ninstance_concurrency = 1",
        ),
    );
    let submit = async |event: &str| {
        let r = call(
            gw.listen,
            "Invoke",
            &json!({"FunctionName": "f", "InvocationType": "Event", "ClientContext": event}),
        )
        .await;
        r["Result"]["FunctionRequestId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The first holds the only slot, the second is taken for the next free slot, the
    // third can only wait in the store.
    let running = submit("{\"sleep_ms\": 3000}").await;
    wait_for("the first event to run", PATIENCE, async || {
        (instance.deliveries.count() == 1).then_some(())
    })
    .await;
    let _next = submit("{}").await;
    let queued = submit("{}").await;
    let r = call(
        gw.listen,
        "TerminateAsyncEvent",
        &json!({"FunctionName": "f", "InvokeRequestId": queued}),
    )
    .await;
    assert!(r["Error"].is_null(), "{r}");
    let r = call(
        gw.listen,
        "GetAsyncEventStatus",
        &json!({"InvokeRequestId": queued}),
    )
    .await;
    assert_eq!(r["Result"]["Status"], "ABORTED", "{r}");

    // A running event is not terminated.
    let r = call(
        gw.listen,
        "TerminateAsyncEvent",
        &json!({"FunctionName": "f", "InvokeRequestId": running}),
    )
    .await;
    assert_eq!(error_code(&r), "FailedOperation.AsyncEventStatus", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_listed_and_described() {
    let instance = EventInstance::start().await;
    let functions =
        format!(
        "{}{}{}",
        event_function("alpha", instance.addr, "memory_mb = 256\ntimeout = \"2500ms\""),
        event_function("beta", instance.addr, "instance_concurrency = 4"),
        "[[functions]]\nname = \"other\"\nnamespace = \"prod\"\ninstances = [\"127.0.0.1:9\"]\n",
    );
    let gw = start("functions", &functions);

    let r = call(gw.listen, "ListFunctions", &json!({})).await;
    assert_eq!(r["TotalCount"], 2, "{r}");
    let names: Vec<&str> = r["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(r["Functions"][0]["Status"], "Active");
    assert_eq!(r["Functions"][0]["Type"], "Event");

    let r = call(
        gw.listen,
        "ListFunctions",
        &json!({"SearchKey": "et", "Orderby": "FunctionName", "Order": "DESC"}),
    )
    .await;
    assert_eq!(r["TotalCount"], 1, "{r}");
    assert_eq!(r["Functions"][0]["FunctionName"], "beta");
    let r = call(gw.listen, "ListFunctions", &json!({"Namespace": "prod"})).await;
    assert_eq!(r["Functions"][0]["FunctionName"], "other", "{r}");

    let r = call(gw.listen, "GetFunction", &json!({"FunctionName": "alpha"})).await;
    assert_eq!(r["FunctionName"], "alpha", "{r}");
    assert_eq!(r["Namespace"], "default");
    assert_eq!(r["Timeout"], 3);
    assert_eq!(r["MemorySize"], 256);
    assert_eq!(r["Type"], "Event");
    assert_eq!(r["Status"], "Active");
    assert_eq!(r["Qualifier"], "$LATEST");
    assert!(r.get("Environment").is_none(), "{r}");
    let r = call(gw.listen, "GetFunction", &json!({"FunctionName": "beta"})).await;
    assert_eq!(r["InstanceConcurrencyConfig"]["MaxConcurrency"], 4, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_with_the_platforms_codes() {
    let instance = EventInstance::start().await;
    let gw = start("auth", &event_function("f", instance.addr, ""));
    let params = json!({"FunctionName": "f"});
    let wrong_key = Signing {
        key: "not-the-key",
        ..Signing::default()
    };
    let r = call_as(gw.listen, "Invoke", &params, wrong_key).await;
    assert_eq!(error_code(&r), "AuthFailure.SignatureFailure", "{r}");
    let unknown = Signing {
        id: "AKIDnobody",
        ..Signing::default()
    };
    let r = call_as(gw.listen, "Invoke", &params, unknown).await;
    assert_eq!(error_code(&r), "AuthFailure.SecretIdNotFound", "{r}");
    let expired = Signing {
        timestamp: now() - 1000,
        ..Signing::default()
    };
    let r = call_as(gw.listen, "Invoke", &params, expired).await;
    assert_eq!(error_code(&r), "AuthFailure.SignatureExpire", "{r}");
    // None of these reached the function.
    assert_eq!(instance.deliveries.count(), 0);

    // No Authorization at all.
    let req = Request::post("/")
        .header("host", gw.listen.to_string())
        .header("content-type", "application/json")
        .header("x-tc-action", "ListFunctions")
        .header("x-tc-version", "2018-04-16")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let answer = common::send(gw.listen, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["Response"]["Error"]["Code"],
        "AuthFailure.InvalidAuthorization"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_functions_actions_and_bad_parameters_are_errors() {
    let instance = EventInstance::start().await;
    let gw = start("errors", &event_function("f", instance.addr, ""));
    let r = call(gw.listen, "Invoke", &json!({"FunctionName": "nope"})).await;
    assert_eq!(error_code(&r), "ResourceNotFound.Function", "{r}");
    let r = call(gw.listen, "GetFunction", &json!({"FunctionName": "nope"})).await;
    assert_eq!(error_code(&r), "ResourceNotFound.Function", "{r}");
    let r = call(gw.listen, "CreateFunction", &json!({})).await;
    assert_eq!(error_code(&r), "InvalidAction", "{r}");
    let old = Signing {
        version: "2017-01-01",
        ..Signing::default()
    };
    let r = call_as(gw.listen, "ListFunctions", &json!({}), old).await;
    assert_eq!(error_code(&r), "NoSuchVersion", "{r}");
    let r = call(gw.listen, "Invoke", &json!({})).await;
    assert_eq!(error_code(&r), "MissingParameter", "{r}");
    let r = call(gw.listen, "Invoke", &json!({"FunctionName": 5})).await;
    assert_eq!(error_code(&r), "InvalidParameter", "{r}");
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "InvocationType": "Later"}),
    )
    .await;
    assert_eq!(error_code(&r), "InvalidParameterValue", "{r}");
    assert_eq!(instance.deliveries.count(), 0);

    // Without X-TC-Action, POST / is an ordinary request: no route here.
    let req = Request::post("/")
        .header("host", gw.listen.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let answer = common::send(gw.listen, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 435);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_post_root_is_not_the_api() {
    let instance = EventInstance::start().await;
    let gw = GatewayProcess::start("api-off", "", &event_function("f", instance.addr, ""));
    let req = Request::post("/")
        .header("host", gw.listen.to_string())
        .header("content-type", "application/json")
        .header("x-tc-action", "ListFunctions")
        .header("x-tc-version", "2018-04-16")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let answer = common::send(gw.listen, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 435);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_invocation_is_a_result_with_its_error() {
    let instance = EventInstance::start().await;
    let gw = start(
        "timeout",
        &event_function("f", instance.addr, "timeout = \"300ms\""),
    );
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "ClientContext": "{\"sleep_ms\": 3000}"}),
    )
    .await;
    assert!(r["Error"].is_null(), "{r}");
    let result = &r["Result"];
    assert_eq!(result["InvokeResult"], 433, "{r}");
    assert_eq!(result["RetMsg"], "");
    // Its time on the instance is measured and billed like any invocation's.
    assert!(result["Duration"].as_f64().unwrap() >= 300.0, "{r}");
    assert!(result["BillDuration"].as_u64().unwrap() >= 300, "{r}");
    let err: Value = serde_json::from_str(result["ErrMsg"].as_str().unwrap()).unwrap();
    assert_eq!(err["errorCode"], 433);
    assert!(
        err["errorMessage"]
            .as_str()
            .unwrap()
            .contains("timed out after 0.3 seconds"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_events_over_their_limits_are_refused() {
    let instance = EventInstance::start().await;
    let gw = start_with(
        "limits",
        "max_body_bytes = 1024",
        &event_function("f", instance.addr, ""),
    );
    // The event fits the call (twice max_body_bytes), not a synchronous invocation.
    let event = json!({"pad": "x".repeat(1500)}).to_string();
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "ClientContext": event}),
    )
    .await;
    assert_eq!(error_code(&r), "InvalidParameterValue", "{r}");
    let event = json!({"pad": "x".repeat(3000)}).to_string();
    let r = call(
        gw.listen,
        "Invoke",
        &json!({"FunctionName": "f", "ClientContext": event}),
    )
    .await;
    assert_eq!(error_code(&r), "RequestSizeLimitExceeded", "{r}");
    assert_eq!(instance.deliveries.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_events_are_listed_in_order_and_by_time() {
    let instance = EventInstance::start().await;
    let gw = start("order", &event_function("f", instance.addr, ""));
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = call(
            gw.listen,
            "Invoke",
            &json!({"FunctionName": "f", "InvocationType": "Event", "ClientContext": format!("{{\"n\":{i}}}")}),
        )
        .await;
        ids.push(
            r["Result"]["FunctionRequestId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let listed = async |params: Value| -> Vec<String> {
        let r = call(gw.listen, "ListAsyncEvents", &params).await;
        r["EventList"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|e| e["InvokeRequestId"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // Accepted one after the other: by acceptance time, oldest first with ASC.
    let all = listed(json!({"FunctionName": "f", "Order": "ASC"})).await;
    assert_eq!(all, ids);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed(json!({"FunctionName": "f"})).await, newest_first);
    let page = listed(json!({"FunctionName": "f", "Offset": 1, "Limit": 1, "Order": "ASC"})).await;
    assert_eq!(page, [ids[1].clone()]);
    let one = listed(json!({"FunctionName": "f", "InvokeRequestId": ids[1]})).await;
    assert_eq!(one, [ids[1].clone()]);
    let future = listed(json!({
        "FunctionName": "f",
        "StartTimeInterval": {"Start": "2999-01-01 00:00:00"}
    }))
    .await;
    assert!(future.is_empty(), "{future:?}");
    let past = listed(json!({
        "FunctionName": "f",
        "StartTimeInterval": {"Start": "2000-01-01 00:00:00", "End": "2999-01-01 00:00:00"}
    }))
    .await;
    assert_eq!(past.len(), 3);
    let r = call(
        gw.listen,
        "ListAsyncEvents",
        &json!({"FunctionName": "f", "StartTimeInterval": {"Start": "yesterday"}}),
    )
    .await;
    assert_eq!(error_code(&r), "InvalidParameterValue", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_keys_for_the_next_call() {
    let instance = EventInstance::start().await;
    let functions = event_function("f", instance.addr, "");
    let gw = start("reload", &functions);
    let r = call(gw.listen, "ListFunctions", &json!({})).await;
    assert_eq!(r["TotalCount"], 1, "{r}");

    // The store it was started with (not emptied: the gateway has it open).
    let dir = std::env::temp_dir().join(format!("scf-api-reload-{}", std::process::id()));
    std::fs::write(
        gw.dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             shutdown_grace = \"10s\"\n\n[async]\nstore = \"embedded\"\npath = \"{}\"\n\
             retry_delays = [\"50ms\"]\n[[api.keys]]\nsecret_id = \"AKIDnext\"\n\
             secret_key = \"next-key\"\n{functions}",
            dir.display()
        ),
    )
    .unwrap();
    let req = Request::post("/admin/reload")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = common::send(gw.admin, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    let r = call(gw.listen, "ListFunctions", &json!({})).await;
    assert_eq!(error_code(&r), "AuthFailure.SecretIdNotFound", "{r}");
    let next = Signing {
        id: "AKIDnext",
        key: "next-key",
        ..Signing::default()
    };
    let r = call_as(gw.listen, "ListFunctions", &json!({}), next).await;
    assert_eq!(r["TotalCount"], 1, "{r}");
}
