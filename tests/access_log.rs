//! `access_log = true`: one record per invocation with what was asked (method, path),
//! what was answered (status, outcome) and how long it took, in milliseconds with at
//! most 3 decimals.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

/// The access record of the invocation with this request id.
async fn access_record(gw: &GatewayProcess, id: &str) -> serde_json::Value {
    wait_for(
        &format!("the access record of {id}"),
        PATIENCE,
        async || {
            gw.records()
                .into_iter()
                .find(|r| r["target"] == "access" && r["request_id"] == id)
        },
    )
    .await
}

fn decimals(record: &serde_json::Value) -> usize {
    let ms = &record["duration_ms"];
    assert!(ms.is_number(), "{record}");
    ms.to_string()
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invocation_is_logged_with_method_path_status_and_a_rounded_duration() {
    let instance = FakeInstance::start().await;
    let down = refusing_addr().await;
    let functions = format!(
        "{}{}[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n",
        event_function("hello", &[instance.addr], ""),
        event_function("down", &[down], ""),
        instance.addr
    );
    let gw = GatewayProcess::start("access-log", "access_log = true", &functions);

    let ok = invoke(gw.listen, "hello", &[("x-test-sleep-ms", "3")], "{}").await;
    assert_eq!(ok.status, StatusCode::OK);
    let record = access_record(&gw, ok.request_id()).await;
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["function"], "hello");
    assert_eq!(record["namespace"], "default");
    assert_eq!(record["method"], "POST");
    assert_eq!(record["path"], "/v1/functions/hello/invocations");
    assert_eq!(record["status"], 200);
    assert_eq!(record["outcome"], "success");
    assert!(record["duration_ms"].as_f64().unwrap() >= 3.0, "{record}");
    assert!(decimals(&record) <= 3, "{record}");

    // The instance's own status is the client's.
    let teapot = invoke(gw.listen, "hello", &[("x-test-status", "418")], "{}").await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
    let record = access_record(&gw, teapot.request_id()).await;
    assert_eq!(record["status"], 418);

    // An error made by the gateway: its status.
    let failed = invoke(gw.listen, "down", &[], "{}").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let record = access_record(&gw, failed.request_id()).await;
    assert_eq!(record["status"], 502);
    assert_eq!(record["outcome"], "instance_error");
    assert!(decimals(&record) <= 3, "{record}");

    // A web request: its own method and path, without the query.
    let req = Request::get("/web/a/b?token=s3cret")
        .header("host", "gateway.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let web = send(gw.listen, req).await.unwrap();
    assert_eq!(web.status, StatusCode::OK);
    let record = access_record(&gw, web.request_id()).await;
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/web/a/b");
    assert!(!record.to_string().contains("s3cret"), "{record}");
}
