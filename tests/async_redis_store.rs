//! The Redis store of asynchronous invocations against a real `redis-server` started
//! by each test on a free loopback port: round trip, retries, failure, abort, lists,
//! two replicas sharing one stream, the takeover of an attempt whose replica died,
//! timer ticks once across replicas, and an outage of Redis.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use scf_gateway::asynchronous::redis_streams::{RedisStore, COMMAND_BOUND};
use scf_gateway::asynchronous::store::{
    Aborted, Attempt, Claimed, FunctionKey, ListQuery, NewEvent, Order, Policy, Status, StoreError,
    Trigger,
};
use scf_gateway::config::Secret;
use tokio::time::Instant;
use uuid::Uuid;

use common::redis::{available, RedisServer};
use common::{wait_for, wait_until, PATIENCE};

fn policy(retries: u32, delay_ms: u64, retention: Duration) -> Policy {
    Policy {
        retries,
        retry_delays: vec![Duration::from_millis(delay_ms)],
        retention,
    }
}

async fn open(server: &RedisServer, replica: &str, policy: Policy) -> RedisStore {
    match RedisStore::open(&Secret::new(server.url()), replica, policy).await {
        Ok(store) => store,
        Err(e) => panic!("the store opens: {e}"),
    }
}

fn function(name: &str) -> FunctionKey {
    FunctionKey::new("default", name)
}

fn event(function: &FunctionKey, body: &str) -> NewEvent {
    NewEvent {
        id: new_id(),
        function: function.clone(),
        qualifier: "$LATEST".into(),
        body: Bytes::from(body.to_owned()),
        content_type: Some("application/json".into()),
        trigger: Trigger::Invoke,
        enqueued_at: SystemTime::now(),
    }
}

/// Unique enough for tests (the gateway draws its ids from the OS's random source).
fn new_id() -> Uuid {
    Uuid::from_u128(fastrand::u128(..))
}

const LEASE: Duration = Duration::from_secs(60);

/// The next claim of `function`, waiting for one (retries wait for their delay).
async fn next_claim(store: &RedisStore, function: &FunctionKey) -> Claimed {
    wait_for("a claim", PATIENCE, async || {
        store.claim(function, LEASE).await.unwrap()
    })
    .await
}

fn failed(code: u16) -> Attempt {
    Attempt::Failed {
        status_code: code,
        result: Some(Bytes::from_static(b"boom")),
        error: None,
    }
}

fn succeeded(body: &str) -> Attempt {
    Attempt::Succeeded {
        status_code: 200,
        result: Bytes::from(body.to_owned()),
    }
}

#[tokio::test]
async fn an_event_round_trips_and_its_record_expires_after_the_retention() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(2, 10, Duration::from_secs(600))).await;
    let f = function("round");
    let mut e = event(&f, r#"{"hello":1}"#);
    e.trigger = Trigger::Timer;
    let id = e.id;
    store.enqueue(e.clone()).await.unwrap();

    let queued = store.get(id).await.unwrap().expect("the event is kept");
    assert_eq!(queued.status, Status::Queued);
    assert_eq!(queued.attempts, 0);
    assert_eq!(queued.function, f);
    assert_eq!(queued.qualifier, "$LATEST");
    assert_eq!(queued.started_at, None);
    assert_eq!(queued.result, None);

    let claimed = next_claim(&store, &f).await;
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.body, e.body);
    assert_eq!(claimed.content_type.as_deref(), Some("application/json"));
    assert_eq!(claimed.trigger, Trigger::Timer);
    assert_eq!(claimed.qualifier, "$LATEST");
    let enqueued_ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(enqueued_ms(claimed.enqueued_at), enqueued_ms(e.enqueued_at));
    assert_eq!(
        store.get(id).await.unwrap().unwrap().status,
        Status::Running
    );
    assert!(
        store.claim(&f, LEASE).await.unwrap().is_none(),
        "claimed once"
    );

    store.started(&claimed, LEASE).await.unwrap();
    assert!(store.get(id).await.unwrap().unwrap().started_at.is_some());
    let status = store.finish(&claimed, succeeded("done")).await.unwrap();
    assert_eq!(status, Status::Succeeded);
    let done = store.get(id).await.unwrap().unwrap();
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.status_code, Some(200));
    assert_eq!(done.result.as_deref(), Some(&b"done"[..]));
    assert_eq!(done.error, None);
    assert!(done.ended_at.is_some());

    // The retention is the hash's time to live.
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("scfgw:event:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 500_000 && ttl <= 600_000, "ttl {ttl} ms");
    assert_eq!(store.get(new_id()).await.unwrap(), None);
}

#[tokio::test]
async fn a_function_failing_twice_then_succeeding_shows_three_attempts() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(3, 50, Duration::from_secs(600))).await;
    let f = function("flaky");
    let e = event(&f, "{}");
    store.enqueue(e.clone()).await.unwrap();
    for attempt in 1..=2 {
        let claimed = next_claim(&store, &f).await;
        assert_eq!(claimed.attempt, attempt);
        let status = store.finish(&claimed, failed(502)).await.unwrap();
        assert_eq!(status, Status::Queued, "retried after attempt {attempt}");
        let record = store.get(e.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Queued);
        assert_eq!(record.status_code, Some(502));
    }
    let claimed = next_claim(&store, &f).await;
    assert_eq!(claimed.attempt, 3);
    assert_eq!(claimed.body, e.body);
    store.finish(&claimed, succeeded("ok")).await.unwrap();
    let record = store.get(e.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Succeeded);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.result.as_deref(), Some(&b"ok"[..]));
}

#[tokio::test]
async fn an_event_failing_every_attempt_ends_failed_with_the_last_error() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(1, 10, Duration::from_secs(600))).await;
    let f = function("broken");
    let e = event(&f, "{}");
    store.enqueue(e.clone()).await.unwrap();
    let first = next_claim(&store, &f).await;
    assert_eq!(
        store.finish(&first, failed(500)).await.unwrap(),
        Status::Queued
    );
    let second = next_claim(&store, &f).await;
    assert_eq!(second.attempt, 2);
    let error = r#"{"errorCode":433,"errorMessage":"timed out","statusCode":433}"#;
    let last = Attempt::Failed {
        status_code: 433,
        result: None,
        error: Some(error.into()),
    };
    assert_eq!(store.finish(&second, last).await.unwrap(), Status::Failed);
    let record = store.get(e.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.status_code, Some(433));
    assert_eq!(record.error.as_deref(), Some(error));
    assert_eq!(record.result, None);
    assert!(record.ended_at.is_some());
    // Nothing more to run.
    assert!(store.claim(&f, LEASE).await.unwrap().is_none());
    // A second finish of the same attempt changes nothing.
    assert_eq!(
        store.finish(&second, succeeded("late")).await.unwrap(),
        Status::Failed
    );
}

#[tokio::test]
async fn only_a_queued_event_is_aborted_and_an_aborted_one_never_runs() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(1, 10, Duration::from_secs(600))).await;
    let f = function("abortable");
    let waiting = event(&f, "1");
    store.enqueue(waiting.clone()).await.unwrap();
    match store.abort(waiting.id).await.unwrap() {
        Aborted::Aborted(record) => {
            assert_eq!(record.status, Status::Aborted);
            assert!(record.ended_at.is_some());
        }
        other => panic!("aborted, not {other:?}"),
    }
    assert!(
        store.claim(&f, LEASE).await.unwrap().is_none(),
        "an aborted event is skipped"
    );

    let running = event(&f, "2");
    store.enqueue(running.clone()).await.unwrap();
    let claimed = next_claim(&store, &f).await;
    assert_eq!(claimed.id, running.id);
    match store.abort(running.id).await.unwrap() {
        Aborted::NotQueued(record) => assert_eq!(record.status, Status::Running),
        other => panic!("not queued, not {other:?}"),
    }
    // A retry waiting for its delay is queued, so it can be aborted too.
    store.finish(&claimed, failed(500)).await.unwrap();
    assert!(matches!(
        store.abort(running.id).await.unwrap(),
        Aborted::Aborted(_)
    ));
    assert!(matches!(
        store.abort(new_id()).await.unwrap(),
        Aborted::NotFound
    ));
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].by_status[Status::Aborted.index()], 2);
    assert_eq!(counts[0].by_status[Status::Queued.index()], 0);
}

#[tokio::test]
async fn lists_filter_by_status_sort_and_page() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(0, 10, Duration::from_secs(600))).await;
    let f = function("listed");
    let base = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let mut e = event(&f, &i.to_string());
        e.enqueued_at = base + Duration::from_secs(i);
        ids.push(e.id);
        store.enqueue(e).await.unwrap();
    }
    // The two oldest succeed, the third fails.
    for (i, id) in ids.iter().take(3).enumerate() {
        let claimed = next_claim(&store, &f).await;
        assert_eq!(claimed.id, *id, "claimed in order");
        let outcome = if i < 2 { succeeded("ok") } else { failed(500) };
        store.finish(&claimed, outcome).await.unwrap();
    }
    let query = |status, order, limit, offset| ListQuery {
        status,
        limit,
        offset,
        order,
    };
    let listed = |records: Vec<scf_gateway::asynchronous::store::EventRecord>| {
        records.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let all = store
        .list(&f, &query(None, Order::Desc, 20, 0))
        .await
        .unwrap();
    assert_eq!(listed(all), ids.iter().rev().copied().collect::<Vec<_>>());
    let page = store
        .list(&f, &query(None, Order::Asc, 2, 1))
        .await
        .unwrap();
    assert_eq!(listed(page), ids[1..3].to_vec());
    let ok = store
        .list(&f, &query(Some(Status::Succeeded), Order::Asc, 20, 0))
        .await
        .unwrap();
    assert!(ok.iter().all(|r| r.status == Status::Succeeded));
    assert_eq!(listed(ok), ids[0..2].to_vec());
    let queued = store
        .list(&f, &query(Some(Status::Queued), Order::Desc, 20, 0))
        .await
        .unwrap();
    assert_eq!(listed(queued), vec![ids[4], ids[3]]);
    let failed = store
        .list(&f, &query(Some(Status::Failed), Order::Desc, 20, 0))
        .await
        .unwrap();
    assert_eq!(listed(failed), vec![ids[2]]);
    assert!(store
        .list(&function("other"), &query(None, Order::Desc, 20, 0))
        .await
        .unwrap()
        .is_empty());

    let counts = store.counts().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].function, f);
    assert_eq!(counts[0].by_status, [2, 0, 2, 1, 0]);
    let oldest = counts[0].oldest_queued.expect("queued events are counted");
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(ms(oldest), ms(base + Duration::from_secs(3)));
}

#[tokio::test]
async fn two_replicas_claim_each_of_500_events_exactly_once() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let f = function("shared");
    let a = Arc::new(
        open(
            &server,
            "replica-a",
            policy(0, 10, Duration::from_secs(600)),
        )
        .await,
    );
    let b = Arc::new(
        open(
            &server,
            "replica-b",
            policy(0, 10, Duration::from_secs(600)),
        )
        .await,
    );
    let mut ids = HashSet::new();
    for i in 0..500 {
        let e = event(&f, &i.to_string());
        ids.insert(e.id);
        // Submitted to both, as a balancer would.
        let store = if i % 2 == 0 { &a } else { &b };
        store.enqueue(e).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (store, name) in [(a.clone(), "a"), (b.clone(), "b")] {
        let seen = seen.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            let mut mine = 0usize;
            // Until the stream has been empty for a while (bounded by the wait below).
            while idle < 50 {
                match store.claim(&f, LEASE).await.unwrap() {
                    Some(claimed) => {
                        idle = 0;
                        mine += 1;
                        seen.lock().push((claimed.id, claimed.attempt, name));
                        store.started(&claimed, LEASE).await.unwrap();
                        store.finish(&claimed, succeeded("ok")).await.unwrap();
                    }
                    None => {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            mine
        }));
    }
    let mut per_replica = Vec::new();
    for task in tasks {
        per_replica.push(
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the replicas drain the stream")
                .unwrap(),
        );
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 500, "each event claimed once");
    let claimed: HashSet<Uuid> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(claimed, ids);
    assert!(seen.iter().all(|(_, attempt, _)| *attempt == 1));
    eprintln!("claims per replica: {per_replica:?}");
    let counts = a.counts().await.unwrap();
    assert_eq!(counts[0].by_status[Status::Succeeded.index()], 500);
    assert_eq!(counts[0].oldest_queued, None);
}

#[tokio::test]
async fn an_attempt_whose_replica_died_is_taken_over_after_the_lease() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let lease = Duration::from_millis(300);
    let f = function("orphan");
    let dying = open(
        &server,
        "replica-a",
        policy(1, 10, Duration::from_secs(600)),
    )
    .await;
    let survivor = open(
        &server,
        "replica-b",
        policy(1, 10, Duration::from_secs(600)),
    )
    .await;
    let e = event(&f, "payload");
    dying.enqueue(e.clone()).await.unwrap();
    let lost = dying.claim(&f, lease).await.unwrap().expect("a claim");
    dying.started(&lost, lease).await.unwrap();
    drop(dying);

    let started = Instant::now();
    let taken = wait_for("the takeover", PATIENCE, async || {
        survivor.claim(&f, lease).await.unwrap()
    })
    .await;
    assert!(started.elapsed() >= lease - Duration::from_millis(50));
    assert_eq!(taken.id, e.id);
    assert_eq!(taken.attempt, 2, "the lost attempt counts");
    assert_eq!(taken.body, e.body);
    // The replica that "died" comes back late: its finish changes nothing.
    assert_eq!(
        survivor.finish(&lost, succeeded("late")).await.unwrap(),
        Status::Running
    );
    survivor.finish(&taken, succeeded("ok")).await.unwrap();
    let record = survivor.get(e.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Succeeded);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.result.as_deref(), Some(&b"ok"[..]));

    // Without a retry left, the takeover ends the event failed.
    let strict = open(
        &server,
        "replica-c",
        policy(0, 10, Duration::from_secs(600)),
    )
    .await;
    let other = open(
        &server,
        "replica-d",
        policy(0, 10, Duration::from_secs(600)),
    )
    .await;
    let e = event(&f, "once");
    strict.enqueue(e.clone()).await.unwrap();
    let _lost = strict.claim(&f, lease).await.unwrap().expect("a claim");
    wait_until("the lost attempt ends the event", PATIENCE, async || {
        assert!(other.claim(&f, lease).await.unwrap().is_none());
        other.get(e.id).await.unwrap().unwrap().status == Status::Failed
    })
    .await;
    let record = other.get(e.id).await.unwrap().unwrap();
    assert_eq!(record.attempts, 1);
    assert_eq!(record.status_code, Some(405));
    assert!(record.error.unwrap().contains("stopped"));
}

#[tokio::test]
async fn a_tick_fires_once_across_replicas() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let a = Arc::new(open(&server, "a", policy(0, 10, Duration::from_secs(60))).await);
    let b = Arc::new(open(&server, "b", policy(0, 10, Duration::from_secs(60))).await);
    for tick in 0..20 {
        let key = format!("default/fn/timer/{tick}");
        let (x, y) = tokio::join!(
            a.once(&key, Duration::from_secs(60)),
            b.once(&key, Duration::from_secs(60))
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x ^ y, "tick {tick}: exactly one fires ({x}, {y})");
        assert!(!a.once(&key, Duration::from_secs(60)).await.unwrap());
    }
}

#[tokio::test]
async fn redis_down_is_unavailable_within_the_bound_and_the_store_reconnects() {
    if !available() {
        return;
    }
    let mut server = RedisServer::start().await;
    let store = open(&server, "r1", policy(0, 10, Duration::from_secs(600))).await;
    let f = function("outage");
    store.enqueue(event(&f, "before")).await.unwrap();

    server.stop();
    let started = Instant::now();
    match store.enqueue(event(&f, "during")).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains(&format!("127.0.0.1:{}", server.port())),
                "{message}"
            );
        }
        other => panic!("unavailable, not {other:?}"),
    }
    assert!(
        started.elapsed() <= COMMAND_BOUND + Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(matches!(
        store.claim(&f, LEASE).await,
        Err(StoreError::Unavailable(_))
    ));
    // Opening fails fast too, naming host and port only.
    let url = format!("redis://:hunter2@127.0.0.1:{}/", server.port());
    match RedisStore::open(&Secret::new(url), "r2", policy(0, 10, LEASE)).await {
        Err(StoreError::Unavailable(message)) => assert!(!message.contains("hunter2")),
        Err(e) => panic!("unavailable, not {e}"),
        Ok(_) => panic!("opened a store on a stopped redis"),
    }

    // Back (empty: no persistence in tests), on the same port: the same store works.
    server.start_again().await;
    let e = event(&f, "after");
    wait_until("the store reconnects", PATIENCE, async || {
        store.enqueue(e.clone()).await.is_ok()
    })
    .await;
    let claimed = next_claim(&store, &f).await;
    assert_eq!(claimed.id, e.id);
    store.finish(&claimed, succeeded("ok")).await.unwrap();
    assert_eq!(
        store.get(e.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
}

#[tokio::test]
async fn purge_forgets_events_whose_retention_ran_out() {
    if !available() {
        return;
    }
    let server = RedisServer::start().await;
    let store = open(&server, "r1", policy(0, 10, Duration::from_millis(200))).await;
    let f = function("brief");
    let e = event(&f, "x");
    store.enqueue(e.clone()).await.unwrap();
    let claimed = next_claim(&store, &f).await;
    store.finish(&claimed, succeeded("ok")).await.unwrap();
    let kept = event(&f, "y");
    store.enqueue(kept.clone()).await.unwrap();
    wait_until("the record expires", PATIENCE, async || {
        store.get(e.id).await.unwrap().is_none()
    })
    .await;
    let mut purged = 0;
    wait_until("purge removes it", PATIENCE, async || {
        purged += store.purge().await.unwrap();
        purged == 1
    })
    .await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts[0].by_status, [1, 0, 0, 0, 0]);
    let all = store
        .list(
            &f,
            &ListQuery {
                status: None,
                limit: 20,
                offset: 0,
                order: Order::Desc,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, kept.id);
}
