//! How an invocation's end shows in the gateway's own log: the WARN line of a timeout
//! that stops an instance, and the access log's fields.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn function(name: &str, function_keys: &str) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\n{function_keys}\n\
         [functions.launch]\ncommand = \"{}\"\n",
        example_function().display()
    )
}

/// Polls the gateway's log records until one matches (bounded).
async fn record(
    gw: &GatewayProcess,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = gw.records().into_iter().find(|r| want(r)) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such log record in {:?}",
            gw.records()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_stops_an_instance_is_a_warning_with_the_request_id() {
    let gw = GatewayProcess::start("end-timeout", "", &function("slow", "timeout = \"300ms\""));
    let answer = invoke(gw.listen, "slow", &[("x-test-sleep-ms", "5000")], "{}").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    let id = answer.request_id().to_owned();
    let warning = record(&gw, |r| {
        r["request_id"] == id.as_str() && r["level"] == "WARN"
    })
    .await;
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(message.contains("timed out after 300ms"), "{warning}");
    assert_eq!(warning["function"], "slow");
    assert!(warning["instance"].as_str().is_some(), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_method_path_status_and_a_rounded_duration() {
    let gw = GatewayProcess::start("end-access", "access_log = true", &function("hello", ""));
    let ok = invoke(gw.listen, "hello", &[], "{}").await;
    assert_eq!(ok.status, StatusCode::OK);
    let missing = invoke(gw.listen, "nobody", &[], "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let id = ok.request_id().to_owned();
    let line = record(&gw, |r| {
        r["request_id"] == id.as_str() && r["target"] == "access"
    })
    .await;
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/v1/functions/hello/invocations", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["outcome"], "success", "{line}");
    let ms = line["duration_ms"].as_f64().expect("a number");
    let text = line["duration_ms"].to_string();
    assert!(ms > 0.0, "{line}");
    assert!(
        text.split('.')
            .nth(1)
            .is_none_or(|decimals| decimals.len() <= 3),
        "at most three decimals: {text}"
    );
}
