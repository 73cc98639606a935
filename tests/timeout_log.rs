//! How an invocation that timed out on a launched instance ends: a WARN line with its
//! request id, naming the instance stopped for it.

mod common;

use common::*;
use http::StatusCode;

fn function(name: &str, function_keys: &str) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\n{function_keys}\n\
         [functions.launch]\ncommand = \"{}\"\n",
        example_function().display()
    )
}

/// The first of the gateway's log records that matches, once there is one.
async fn record(
    gw: &GatewayProcess,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for("the log record", PATIENCE, async || {
        gw.records().into_iter().find(|r| want(r))
    })
    .await
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
