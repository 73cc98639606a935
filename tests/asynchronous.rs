//! Asynchronous invocations with the embedded store, end to end: `Event` answered 202
//! once the event is kept, run on the function's instances with the usual stamping,
//! retried after failures, queryable, abortable, listed; timers; and no event lost when
//! the gateway is killed with SIGKILL and started again.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::events::{call, record, submit, wait_status, EventInstance};
use common::{invoke, wait_until, GatewayProcess};
use http::StatusCode;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

/// A store folder of its own for one test.
fn store_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scf-events-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `[async]` with a test's folder and quick retries.
fn async_section(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[async]\nstore = \"embedded\"\npath = \"{}\"\nretry_delays = [\"50ms\", \"100ms\"]\n{extra}\n",
        dir.display()
    )
}

fn function(name: &str, instance: SocketAddr, extra: &str) -> String {
    common::event_function(name, &[instance], extra)
}

async fn accepted(addr: SocketAddr, name: &str, event: &Value) -> String {
    let answer = submit(addr, name, event).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    let id = answer.json()["requestId"].as_str().unwrap().to_owned();
    assert_eq!(answer.request_id(), id);
    id
}

#[tokio::test]
async fn an_event_is_accepted_then_succeeds_with_the_functions_body() {
    let dir = store_dir("succeeds");
    let instance = EventInstance::start().await;
    let gw = common::gateway(&format!(
        "{}{}",
        async_section(&dir, ""),
        function("f", instance.addr, "memory_mb = 256\ntimeout = \"2s\"")
    ))
    .await;
    let addr = gw.listen_addr();

    let id = accepted(addr, "f", &json!({"hello": "world"})).await;
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    let done = wait_status(addr, &id, "succeeded", PATIENCE).await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["statusCode"], 200);
    assert_eq!(done["function"], "f");
    assert_eq!(done["namespace"], "default");
    assert_eq!(done["qualifier"], "$LATEST");
    assert_eq!(done["error"], Value::Null);
    let result: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["echo"], json!({"hello": "world"}));
    for time in ["enqueuedAt", "startedAt", "endedAt"] {
        let text = done[time].as_str().unwrap();
        assert!(text.ends_with('Z') && text.contains('T'), "{time}: {text}");
    }

    // The instance got it as any invocation: the event's id, the stamp, the body.
    let delivered = instance.deliveries.all.lock()[0].clone();
    assert_eq!(delivered.path, "/event-invoke");
    assert_eq!(delivered.request_id(), id);
    assert_eq!(delivered.header("x-scf-memory"), Some("256"));
    assert_eq!(delivered.header("x-scf-timeout"), Some("2000"));
    assert_eq!(delivered.header("x-scf-name"), Some("f"));
    assert_eq!(
        delivered.header("x-scf-secret-key"),
        Some("secret-key-value")
    );
    assert_eq!(delivered.header("x-scf-trigger-src"), None);
    assert_eq!(delivered.header("content-type"), Some("application/json"));
    assert_eq!(&delivered.body[..], br#"{"hello":"world"}"#);

    // Unknown ids, and events over the limit.
    let missing = scf_gateway::headers::new_uuid().to_string();
    let answer = call(addr, "GET", &format!("/v1/requests/{missing}")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 404);
    assert_eq!(
        answer.error_message(),
        format!("Request [{missing}] not found")
    );
    let big = json!({"pad": "x".repeat(128 * 1024)});
    let answer = submit(addr, "f", &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), 406);
    assert!(
        answer.error_message().contains("131072"),
        "{}",
        answer.error_message()
    );
    let answer = submit(addr, "nope", &json!({})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 435);

    // The metrics count it.
    let admin = gw.admin_addr();
    wait_until("the async metrics", PATIENCE, async || {
        let text = common::admin_get(admin, "/metrics").await;
        let text = String::from_utf8_lossy(&text.body).into_owned();
        common::metric(
            &text,
            "scf_gateway_async_events{function=\"f\",status=\"succeeded\"}",
        ) == Some(1.0)
            && common::metric(
                &text,
                "scf_gateway_async_attempts_total{function=\"f\",result=\"succeeded\"}",
            ) == Some(1.0)
            && text.contains("scf_gateway_async_oldest_queued_seconds{function=\"f\"}")
    })
    .await;
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn failed_attempts_are_retried_then_the_event_fails_with_the_last_error() {
    let dir = store_dir("retries");
    let instance = EventInstance::start().await;
    let gw = common::gateway(&format!(
        "{}{}",
        async_section(&dir, "retries = 2"),
        function("f", instance.addr, "timeout = \"300ms\"")
    ))
    .await;
    let addr = gw.listen_addr();

    // Fails twice, then succeeds: three attempts.
    let twice = accepted(addr, "f", &json!({"fail": 2})).await;
    // Always fails: three attempts, then failed, the function's last answer kept.
    let always = accepted(addr, "f", &json!({"fail": 99})).await;
    // Times out: the gateway's error is kept.
    let slow = accepted(addr, "f", &json!({"sleep_ms": 1000})).await;

    let done = wait_status(addr, &twice, "succeeded", PATIENCE).await;
    assert_eq!(done["attempts"], 3);
    assert_eq!(instance.deliveries.runs_of(&twice), 3);

    let failed = wait_status(addr, &always, "failed", PATIENCE).await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["statusCode"], 500);
    let last: Value = serde_json::from_str(failed["result"].as_str().unwrap()).unwrap();
    assert_eq!(last["run"], 3);
    assert_eq!(instance.deliveries.runs_of(&always), 3);

    let timed_out = wait_status(addr, &slow, "failed", PATIENCE).await;
    assert_eq!(timed_out["attempts"], 3);
    assert_eq!(timed_out["statusCode"], 504);
    let error: Value = serde_json::from_str(timed_out["error"].as_str().unwrap()).unwrap();
    assert_eq!(error["errorCode"], 433);
    assert_eq!(error["requestId"], slow);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_queued_event_can_be_aborted_and_events_are_listed_with_filters() {
    let dir = store_dir("abort");
    let instance = EventInstance::start().await;
    let gw = common::gateway(&format!(
        "{}{}",
        async_section(&dir, "retries = 0"),
        function("f", instance.addr, "timeout = \"5s\"")
    ))
    .await;
    let addr = gw.listen_addr();

    // One instance slot: the first event runs (slowly), the second is taken for the
    // next free slot, the rest wait in the store.
    let first = accepted(addr, "f", &json!({"sleep_ms": 1500})).await;
    wait_until("the first event to run", PATIENCE, async || {
        instance.deliveries.count() == 1
    })
    .await;
    let mut queued = Vec::new();
    for i in 0..4 {
        queued.push(accepted(addr, "f", &json!({"n": i})).await);
    }
    let last = queued.pop().unwrap();
    let answer = call(addr, "DELETE", &format!("/v1/requests/{last}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json()["status"], "aborted");
    assert_eq!(record(addr, &last).await["status"], "aborted");
    // A running event is not aborted.
    let answer = call(addr, "DELETE", &format!("/v1/requests/{first}")).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.error_code(), 409);

    for id in &queued {
        wait_status(addr, id, "succeeded", PATIENCE).await;
    }
    wait_status(addr, &first, "succeeded", PATIENCE).await;
    assert_eq!(
        instance.deliveries.runs_of(&last),
        0,
        "the aborted event ran"
    );
    // A finished one is not aborted either.
    let answer = call(addr, "DELETE", &format!("/v1/requests/{first}")).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);

    // A failed one, for the filter.
    let failing = accepted(addr, "f", &json!({"fail": 1})).await;
    wait_status(addr, &failing, "failed", PATIENCE).await;

    let list = call(addr, "GET", "/v1/functions/f/requests").await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<String> = list.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requestId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids[0], failing, "newest first by default");
    assert_eq!(ids[5], first);

    let list = call(
        addr,
        "GET",
        "/v1/functions/f/requests?order=asc&limit=2&offset=1",
    )
    .await;
    let page: Vec<&str> = list.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requestId"].as_str().unwrap())
        .map(|s| {
            if s == queued[0] {
                "q0"
            } else if s == queued[1] {
                "q1"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(page, ["q0", "q1"]);

    let failed = call(addr, "GET", "/v1/functions/f/requests?status=failed").await;
    let failed = failed.json();
    let failed = failed["requests"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["requestId"], failing);
    let aborted = call(addr, "GET", "/v1/functions/f/requests?status=aborted").await;
    assert_eq!(aborted.json()["requests"][0]["requestId"], last);

    let bad = call(addr, "GET", "/v1/functions/f/requests?limit=500").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = call(addr, "GET", "/v1/functions/nope/requests").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), 435);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn synchronous_callers_are_served_while_events_keep_the_instance_busy() {
    let dir = store_dir("priority");
    let instance = EventInstance::start().await;
    let gw = common::gateway(&format!(
        "{}{}",
        async_section(&dir, ""),
        function(
            "f",
            instance.addr,
            "instance_concurrency = 2\nqueue_timeout = \"500ms\"\ntimeout = \"5s\""
        )
    ))
    .await;
    let addr = gw.listen_addr();
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(accepted(addr, "f", &json!({"sleep_ms": 50})).await);
    }
    wait_until("events to run", PATIENCE, async || {
        instance.deliveries.count() >= 2
    })
    .await;
    // The events hold both slots in turn; each synchronous call waits for one
    // release at most, never behind the events still in the store (which would take
    // longer than its `queue_timeout`: 432).
    for _ in 0..10 {
        let answer = invoke(addr, "f", &[], r#"{"sync": true}"#).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    for id in &ids {
        wait_status(addr, id, "succeeded", PATIENCE).await;
    }
    assert_eq!(instance.deliveries.count(), 50);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_timer_fires_every_second_with_the_contracts_event() {
    let dir = store_dir("timer");
    let instance = EventInstance::start().await;
    let gw = common::gateway(&format!(
        "{}{}[[functions.timers]]\nname = \"tick\"\ncron = \"*/1 * * * * * *\"\nmessage = \"hello\"\n\
         [[functions.timers]]\nname = \"hourly\"\ncron = \"0 * * * *\"\n\
         [[functions.timers]]\nname = \"off\"\ncron = \"* * * * * * *\"\nenabled = false\n",
        async_section(&dir, ""),
        function("f", instance.addr, "")
    ))
    .await;
    wait_until("three ticks", PATIENCE, async || {
        instance.deliveries.count() >= 3
    })
    .await;
    gw.shutdown().await;
    let delivered = instance.deliveries.all.lock().clone();
    let mut times = Vec::new();
    for d in &delivered {
        assert_eq!(d.header("x-scf-trigger-src"), Some("timer"));
        let event: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(event["Type"], "Timer");
        assert_eq!(
            event["TriggerName"], "tick",
            "only the enabled every-second timer"
        );
        assert_eq!(event["Message"], "hello");
        let time = event["Time"].as_str().unwrap().to_owned();
        let at = humantime::parse_rfc3339(&time).unwrap();
        times.push(at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
        assert!(time.ends_with('Z'), "{time}");
    }
    times.sort_unstable();
    let distinct: HashSet<u64> = times.iter().copied().collect();
    assert_eq!(distinct.len(), times.len(), "one event per tick: {times:?}");
    // Ticks are whole seconds, one second apart (a slow machine may fire late, never
    // twice or out of step).
    for pair in times.windows(2) {
        assert!(pair[1] > pair[0], "{times:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// 200 events accepted, the gateway killed with SIGKILL while they run, started again:
/// every event ends `succeeded`; only those in flight at the kill may have run twice.
#[tokio::test]
async fn no_accepted_event_is_lost_when_the_gateway_is_killed() {
    let instance = EventInstance::start().await;
    let functions = function(
        "f",
        instance.addr,
        "instance_concurrency = 4\ntimeout = \"5s\"",
    );
    // Outside the gateway's own folder, which goes with its process.
    let dir = store_dir("kill");
    let server = async_section(&dir, "");
    let server = server.as_str();
    let gw = GatewayProcess::start("async-kill", server, &functions);
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(accepted(gw.listen, "f", &json!({"n": i, "sleep_ms": 20})).await);
    }
    wait_until("some events to run", PATIENCE, async || {
        instance.deliveries.count() >= 40
    })
    .await;
    gw.signal("KILL");
    let in_flight_at_kill = instance
        .deliveries
        .inflight
        .load(std::sync::atomic::Ordering::SeqCst);
    let ran_before = instance.deliveries.count();
    let _ = gw.exited().await;
    assert!(ran_before < 200, "the kill came too late to test anything");

    let gw = GatewayProcess::start("async-kill", server, &functions);
    for id in &ids {
        wait_status(gw.listen, id, "succeeded", Duration::from_secs(60)).await;
    }
    let twice: Vec<u32> = ids
        .iter()
        .map(|id| instance.deliveries.runs_of(id))
        .filter(|&runs| runs != 1)
        .collect();
    assert!(ids.iter().all(|id| instance.deliveries.runs_of(id) >= 1));
    eprintln!(
        "durability: 200 accepted, {ran_before} delivered before SIGKILL, \
         {in_flight_at_kill} in flight at the kill, {} ran twice",
        twice.len()
    );
    // Only the attempts under way (at most the 4 slots and the one claimed for the
    // next slot) may run again.
    assert!(twice.len() <= 5, "ran more than once: {twice:?}");
    assert!(twice.iter().all(|&runs| runs == 2));
    gw.signal("TERM");
    let _ = gw.exited().await;
    let _ = std::fs::remove_dir_all(&dir);
}
