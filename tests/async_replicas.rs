//! Replicas sharing asynchronous invocations through a real `redis-server`: two gateway
//! processes with the same config run each event exactly once, finish the attempts of
//! a replica killed mid-run, fire each timer tick once between them, and answer 503
//! to `Event` while Redis is down (synchronous invocations unaffected), recovering by
//! themselves when it is back.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::events::{record, submit, wait_status, EventInstance};
use common::redis::{available, RedisServer};
use common::{invoke, metric, wait_until, GatewayProcess};
use http::StatusCode;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

fn redis_store(url: &str) -> String {
    format!("[async]\nstore = \"redis\"\nurl = \"{url}\"\nretry_delays = [\"100ms\"]\n")
}

async fn accepted(addr: SocketAddr, event: &Value) -> String {
    let answer = submit(addr, "f", event).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    answer.json()["requestId"].as_str().unwrap().to_owned()
}

async fn attempts_on(gw: &GatewayProcess) -> f64 {
    let text = gw.metrics().await;
    metric(
        &text,
        "scf_gateway_async_attempts_total{function=\"f\",result=\"succeeded\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn two_replicas_run_each_event_exactly_once() {
    if !available() {
        return;
    }
    let redis = RedisServer::start().await;
    let instance = EventInstance::start().await;
    let server = redis_store(&redis.url());
    let functions = common::event_function(
        "f",
        &[instance.addr],
        "instance_concurrency = 8\ntimeout = \"5s\"",
    );
    let a = GatewayProcess::start("replicas-once-a", &server, &functions);
    let b = GatewayProcess::start("replicas-once-b", &server, &functions);

    // 500 events, half through each replica, several clients at once.
    let mut submitting = Vec::new();
    for client in 0..10 {
        let addr = if client % 2 == 0 { a.listen } else { b.listen };
        submitting.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                ids.push(accepted(addr, &json!({"client": client, "n": n, "sleep_ms": 2})).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in submitting {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);

    wait_until(
        "all 500 events to run",
        Duration::from_secs(60),
        async || instance.deliveries.count() >= 500,
    )
    .await;
    for (i, id) in ids.iter().enumerate() {
        // Either replica answers for every event.
        let addr = if i % 2 == 0 { b.listen } else { a.listen };
        wait_status(addr, id, "succeeded", PATIENCE).await;
        assert_eq!(
            instance.deliveries.runs_of(id),
            1,
            "event {id} ran more than once"
        );
    }
    assert_eq!(instance.deliveries.count(), 500);
    let (on_a, on_b) = (attempts_on(&a).await, attempts_on(&b).await);
    eprintln!("replicas: {on_a} attempts on one, {on_b} on the other");
    assert_eq!(on_a + on_b, 500.0);
    assert!(on_a > 0.0 && on_b > 0.0, "both replicas take events");
    for gw in [a, b] {
        gw.signal("TERM");
        assert!(gw.exited().await.success());
    }
}

#[tokio::test]
async fn the_attempts_of_a_killed_replica_finish_on_the_other() {
    if !available() {
        return;
    }
    let redis = RedisServer::start().await;
    let instance = EventInstance::start().await;
    let server = redis_store(&redis.url());
    // A short timeout: a silent attempt is taken over after it plus 30 s.
    let functions = common::event_function(
        "f",
        &[instance.addr],
        "instance_concurrency = 4\ntimeout = \"2s\"",
    );
    let a = GatewayProcess::start("replicas-kill-a", &server, &functions);
    let b = GatewayProcess::start("replicas-kill-b", &server, &functions);
    let mut ids = Vec::new();
    for n in 0..24 {
        let addr = if n % 2 == 0 { a.listen } else { b.listen };
        ids.push(accepted(addr, &json!({"n": n, "sleep_ms": 1500})).await);
    }
    // Both replicas are running attempts (4 slots: each replica has events in flight).
    wait_until("attempts on both replicas", PATIENCE, async || {
        instance.deliveries.count() >= 6
    })
    .await;
    a.signal("KILL");
    let _ = a.exited().await;

    for id in &ids {
        wait_status(b.listen, id, "succeeded", Duration::from_secs(90)).await;
    }
    let again: Vec<&String> = ids
        .iter()
        .filter(|id| instance.deliveries.runs_of(id) > 1)
        .collect();
    assert!(ids.iter().all(|id| instance.deliveries.runs_of(id) >= 1));
    // The killed replica's attempts were run again by the survivor: at most its four
    // slots and the one event it held for the next slot.
    eprintln!("takeover: {} of 24 events ran twice", again.len());
    assert!(again.len() <= 5, "{again:?}");
    for id in &again {
        let taken_over = record(b.listen, id).await;
        assert!(
            taken_over["attempts"].as_u64().unwrap() >= 2,
            "{taken_over}"
        );
    }
    b.signal("TERM");
    assert!(b.exited().await.success());
}

#[tokio::test]
async fn a_timer_tick_fires_once_across_replicas() {
    if !available() {
        return;
    }
    let redis = RedisServer::start().await;
    let instance = EventInstance::start().await;
    let server = redis_store(&redis.url());
    let functions = format!(
        "{}[[functions.timers]]\nname = \"tick\"\ncron = \"* * * * * * *\"\n",
        common::event_function("f", &[instance.addr], "")
    );
    let a = GatewayProcess::start("replicas-timer-a", &server, &functions);
    let b = GatewayProcess::start("replicas-timer-b", &server, &functions);
    wait_until("five ticks", PATIENCE, async || {
        instance.deliveries.count() >= 5
    })
    .await;
    for gw in [a, b] {
        gw.signal("TERM");
        assert!(gw.exited().await.success());
    }
    let times: Vec<String> = instance
        .deliveries
        .all
        .lock()
        .iter()
        .map(|d| {
            let event: Value = serde_json::from_slice(&d.body).unwrap();
            event["Time"].as_str().unwrap().to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "a tick fired twice: {times:?}");
}

#[tokio::test]
async fn event_invocations_wait_for_redis_and_synchronous_ones_do_not() {
    if !available() {
        return;
    }
    let mut redis = RedisServer::start().await;
    let instance = EventInstance::start().await;
    let server = redis_store(&redis.url());
    let functions = common::event_function("f", &[instance.addr], "");
    let gw = GatewayProcess::start("replicas-outage", &server, &functions);
    let before = accepted(gw.listen, &json!({"before": true})).await;
    wait_status(gw.listen, &before, "succeeded", PATIENCE).await;

    redis.stop();
    let answer = submit(gw.listen, "f", &json!({"during": true})).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.error_code(), 503);
    assert!(
        answer.error_message().contains("unavailable"),
        "{}",
        answer.error_message()
    );
    assert!(!answer.error_message().contains("redis://"));
    let sync = invoke(gw.listen, "f", &[], r#"{"sync": true}"#).await;
    assert_eq!(sync.status, StatusCode::OK);

    redis.start_again().await;
    let mut after = None;
    wait_until("Event to be accepted again", PATIENCE, async || {
        let answer = submit(gw.listen, "f", &json!({"after": true})).await;
        if answer.status == StatusCode::ACCEPTED {
            after = answer.json()["requestId"].as_str().map(str::to_owned);
        }
        after.is_some()
    })
    .await;
    wait_status(gw.listen, &after.unwrap(), "succeeded", PATIENCE).await;
    gw.signal("TERM");
    assert!(gw.exited().await.success());
}
