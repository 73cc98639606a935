//! The core invocation path against real in-process instances on loopback.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_headers_are_stamped_and_no_forgery_reaches_the_instance() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "memory_mb = 256\ntimeout = \"2500ms\"\nversion = \"7\"\nnamespace = \"prod\"",
    ))
    .await;
    let answer = invoke(
        gw.listen_addr(),
        "hello",
        &[
            ("X-Scf-Request-Id", "forged-id"),
            ("x-scf-secret-key", "stolen"),
            ("X_Scf_Uin", "666"),
            ("Connection", "X-Scf-Name"),
            ("X-Scf-Name", "evil"),
            ("X-Custom", "kept"),
        ],
        "{\"a\":1}",
    )
    .await;
    // Namespace is not default: this must be 404 without the query.
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 435);
    assert_eq!(instance.record.count(), 0);

    let req = Request::post("/v1/functions/hello/invocations?namespace=prod&qualifier=7")
        .header("host", "gateway.test")
        .header("X-Scf-Request-Id", "forged-id")
        .header("x-scf-secret-key", "stolen")
        .header("X_Scf_Uin", "666")
        .header("Connection", "X-Scf-Name")
        .header("X-Scf-Name", "evil")
        .header("Transfer_Encoding", "chunked")
        .header("Content_Length", "99")
        .header("Keep_Alive", "1")
        .header("X-Custom", "kept")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let answer = send(gw.listen_addr(), req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let seen = instance.record.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, "/event-invoke");
    assert_eq!(s.body_len, 7);
    let h = header_map(s);
    let id = answer.request_id().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("request id is a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    let expected = [
        ("x-scf-request-id", id.as_str()),
        ("x-scf-memory", "256"),
        ("x-scf-timeout", "2500"),
        ("x-scf-version", "7"),
        ("x-scf-name", "hello"),
        ("x-scf-namespace", "prod"),
        ("x-scf-region", "ap-guangzhou"),
        ("x-scf-appid", "1250000000"),
        ("x-scf-uin", "100000000001"),
        ("x-scf-secret-id", "AKIDtest"),
        ("x-scf-secret-key", "secret-key-value"),
        ("x-scf-session-token", "session-token-value"),
    ];
    for (name, value) in expected {
        assert_eq!(h.get(name).map(String::as_str), Some(value), "{name}");
    }
    let scf: Vec<&String> = h
        .keys()
        .filter(|k| k.starts_with("x-scf") || k.starts_with("x_scf"))
        .collect();
    assert_eq!(scf.len(), 12, "exactly the twelve stamped headers: {scf:?}");
    assert!(!h.contains_key("x-scf-trigger-src"));
    assert_eq!(h.get("x-custom").map(String::as_str), Some("kept"));
    assert!(!h.contains_key("connection"));
    for alias in ["transfer_encoding", "content_length", "keep_alive"] {
        assert!(!h.contains_key(alias), "{alias} reached the instance");
    }
    assert_eq!(h.get("content-length").map(String::as_str), Some("7"));
    assert_eq!(
        h.get("host").map(String::as_str),
        Some(instance.addr.to_string().as_str())
    );
    // The function's own id and echoed credentials never reach the client.
    assert_eq!(answer.headers.get_all("x-scf-request-id").iter().count(), 1);
    assert!(answer.headers.get("x-scf-secret-key").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_invocations_get_a_thousand_distinct_uuids() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 16",
    ))
    .await;
    let addr = gw.listen_addr();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                ids.push(
                    invoke(addr, "hello", &[], "{}")
                        .await
                        .request_id()
                        .to_owned(),
                );
            }
            ids
        }));
    }
    let mut returned = HashSet::new();
    for t in tasks {
        returned.extend(t.await.unwrap());
    }
    let seen: HashSet<String> = instance
        .record
        .seen()
        .iter()
        .map(|s| header_map(s)["x-scf-request-id"].clone())
        .collect();
    assert_eq!(returned.len(), 1000);
    assert_eq!(seen, returned);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_equal_instances_share_two_thousand_invocations_evenly() {
    let a = FakeInstance::start().await;
    let b = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[a.addr, b.addr],
        "instance_concurrency = 4",
    ))
    .await;
    let addr = gw.listen_addr();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                assert_eq!(
                    invoke(addr, "hello", &[], "{}").await.status,
                    StatusCode::OK
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = by_instance(&[&a.record, &b.record]);
    assert_eq!(counts.iter().sum::<usize>(), 2000);
    for c in &counts {
        assert!((800..=1200).contains(c), "50% ± 10% each: {counts:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_one_slot_never_sees_two_invocations_at_once() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 1\nqueue_timeout = \"20s\"",
    ))
    .await;
    let addr = gw.listen_addr();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(
                async move { invoke(addr, "hello", &[("x-test-sleep-ms", "5")], "{}").await },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(instance.record.count(), 40);
    assert_eq!(
        instance
            .record
            .max_inflight
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_instances_refusing_connections_costs_no_invocation() {
    let a = FakeInstance::start().await;
    let b = FakeInstance::start().await;
    let dead = refusing_addr().await;
    let gw = gateway(&event_function(
        "hello",
        &[a.addr, dead, b.addr],
        "instance_concurrency = 2",
    ))
    .await;
    let addr = gw.listen_addr();
    for _ in 0..300 {
        let answer = invoke(addr, "hello", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let counts = by_instance(&[&a.record, &b.record]);
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(
        counts.iter().all(|c| *c > 50),
        "both live instances serve: {counts:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_instance_refuses_the_answer_is_502_405() {
    let dead = refusing_addr().await;
    let gw = gateway(&event_function("hello", &[dead], "")).await;
    for _ in 0..3 {
        let answer = invoke(gw.listen_addr(), "hello", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(answer.error_code(), 405);
        assert!(!answer.request_id().is_empty());
    }
    gw.shutdown().await;
}

/// Starts an invocation of `hello` that `instance` holds (until released) and returns
/// once it is there, taking the function's only slot.
async fn hold_the_slot(
    addr: std::net::SocketAddr,
    instance: &FakeInstance,
) -> tokio::task::JoinHandle<Answer> {
    let held =
        tokio::spawn(async move { invoke(addr, "hello", &[("x-test-hold", "1")], "{}").await });
    wait_until(
        "the first invocation to hold the slot",
        PATIENCE,
        async || instance.record.inflight() == 1,
    )
    .await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_432_with_retry_after() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 1\nqueue_depth = 1\nqueue_timeout = \"5s\"",
    ))
    .await;
    let addr = gw.listen_addr();
    let busy = hold_the_slot(addr, &instance).await;
    let queued = tokio::spawn(async move { invoke(addr, "hello", &[], "{}").await });
    let depth = "scf_gateway_queue_depth{function=\"hello\"}";
    wait_until("the second invocation to queue", PATIENCE, async || {
        let text = admin_get(gw.admin_addr(), "/metrics").await.body;
        metric(&String::from_utf8_lossy(&text), depth) == Some(1.0)
    })
    .await;
    let refused = invoke(addr, "hello", &[], "{}").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), 432);
    assert_eq!(refused.headers.get("retry-after").unwrap(), "5");
    let message = refused.error_message();
    assert!(
        message.contains("hello") && message.contains("instance_concurrency 1"),
        "{message}"
    );
    instance.record.release(1);
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_wait_past_queue_timeout_answers_429_432() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 1\nqueue_timeout = \"200ms\"",
    ))
    .await;
    let addr = gw.listen_addr();
    // Held until the waiter has expired: it can only be answered by its own timeout.
    let busy = hold_the_slot(addr, &instance).await;
    let started = Instant::now();
    let expired = within("the queue timeout", invoke(addr, "hello", &[], "{}")).await;
    let waited = started.elapsed();
    assert_eq!(expired.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(expired.error_code(), 432);
    assert_eq!(expired.headers.get("retry-after").unwrap(), "1");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    instance.record.release(1);
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    // The expired waiter left no trace: the slot serves the next invocation at once.
    assert_eq!(
        invoke(addr, "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_hanging_past_its_timeout_gets_504_433_and_the_instance_serves_again() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "timeout = \"500ms\"\ninstance_concurrency = 1",
    ))
    .await;
    let addr = gw.listen_addr();
    // The instance never answers: only the timeout can end the invocation.
    let started = Instant::now();
    let answer = within(
        "the invocation's timeout",
        invoke(addr, "hello", &[("x-test-hold", "1")], "{}"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.error_code(), 433);
    assert_eq!(
        answer.json()["errorMessage"],
        "Invoking task timed out after 0.5 seconds"
    );
    assert_eq!(answer.json()["requestId"], answer.request_id());
    assert!(
        took >= Duration::from_millis(500),
        "not before the limit: {took:?}"
    );
    // The slot was freed: with the timed-out request still held by the instance, the
    // next invocation on the same single slot succeeds (a slot still taken would queue
    // it until the hold ends, which it never does).
    let next = within("the next invocation", invoke(addr, "hello", &[], "{}")).await;
    assert_eq!(next.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_crashing_mid_request_gives_502_405() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let answer = invoke(
        gw.listen_addr(),
        "hello",
        &[("x-test-crash", "before-headers")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    assert!(message.contains(&instance.addr.to_string()), "{message}");

    // Once the response has started, a crash can only cut the stream.
    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .header("x-test-crash", "after-headers")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut sender = connect(gw.listen_addr()).await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.into_body().collect().await.is_err(),
        "the stream is cut"
    );

    // And the function keeps serving.
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_responses_over_6mb_are_refused_or_cut() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let addr = gw.listen_addr();
    let seven_mb = (7 * 1024 * 1024).to_string();
    let answer = invoke(addr, "hello", &[("x-test-response-bytes", &seven_mb)], "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 407);
    assert_eq!(
        answer.json()["errorMessage"],
        "The size of response exceeds the upper limit (6MB)"
    );

    let req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gw")
        .header("x-test-response-bytes", &seven_mb)
        .header("x-test-chunked", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut sender = connect(addr).await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = 0usize;
    let mut cut = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => got += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a chunked response past 6 MB is cut");
    assert!(got <= 6 * 1024 * 1024, "{got}");
    // Just under the limit passes whole.
    let six_mb = (6 * 1024 * 1024).to_string();
    let answer = invoke(addr, "hello", &[("x-test-response-bytes", &six_mb)], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), 6 * 1024 * 1024);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_functions_get_the_original_request_with_forwarding_headers() {
    let instance = FakeInstance::start().await;
    let functions = format!(
        "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[functions]]\nname = \"api\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\nstrip_prefix = true\n\
         [[routes]]\nhost = \"api.example.com\"\npath_prefix = \"/\"\nfunction = \"default/api\"\n",
        instance.addr, instance.addr
    );
    let gw = gateway(&functions).await;
    let addr = gw.listen_addr();
    let req = Request::put("/web/items/1?x=1&y=2")
        .header("host", "shop.example.com:8080")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-scf-name", "forged")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let answer = send(addr, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let seen = instance.record.seen();
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.path, "/items/1?x=1&y=2");
    assert_eq!(s.body_len, 7);
    let h = header_map(s);
    assert_eq!(h["host"], "shop.example.com:8080");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
    assert_eq!(h["x-scf-name"], "web");
    assert_eq!(h["x-scf-request-id"], answer.request_id());

    let req = Request::get("/anything")
        .header("host", "API.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(addr, req).await.unwrap().status, StatusCode::OK);
    assert_eq!(header_map(&instance.record.seen()[1])["x-scf-name"], "api");

    for path in ["/website", "/nothing"] {
        let req = Request::get(path)
            .header("host", "shop.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(addr, req).await.unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.error_code(), 435);
        let message = answer.error_message();
        assert!(
            message.contains("shop.example.com") && message.contains(path),
            "{message}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_served() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function(
        "hello",
        &[instance.addr],
        "instance_concurrency = 4",
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::post(format!(
            "http://{}/v1/functions/hello/invocations",
            gw.listen_addr()
        ))
        .body(Full::new(Bytes::from_static(b"{\"h2\":true}")))
        .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-scf-request-id"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{\"ok\":true"));
    }
    assert_eq!(instance.record.seen()[0].body_len, 11);
    gw.shutdown().await;
}

/// An HTTP/2 client may open at most 100 concurrent streams per connection, as the
/// gateway announces in its SETTINGS; its cookie fields are joined for the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_100_streams_and_their_cookies_joined() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let stream = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::post(format!(
        "http://{}/v1/functions/hello/invocations",
        gw.listen_addr()
    ))
    .header("cookie", "a=1")
    .header("cookie", "b=2")
    .body(())
    .unwrap();
    // One exchange: by its answer the server's SETTINGS have been read.
    let (response, mut body) = client.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
    let response = within("the answer", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 100);
    // HTTP/2's split cookie fields reach the instance as one `Cookie` line.
    let seen = instance.record.seen();
    let cookies: Vec<_> = seen[0].headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served_on_the_admin_listener() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    assert_eq!(
        admin_get(gw.admin_addr(), "/healthz").await.status,
        StatusCode::OK
    );
    assert_eq!(
        admin_get(gw.admin_addr(), "/readyz").await.status,
        StatusCode::OK
    );
    for _ in 0..3 {
        invoke(gw.listen_addr(), "hello", &[], "{}").await;
    }
    invoke(gw.listen_addr(), "nope", &[], "{}").await;
    let text =
        String::from_utf8(admin_get(gw.admin_addr(), "/metrics").await.body.to_vec()).unwrap();
    let ok = "scf_gateway_invocations_total{function=\"hello\",namespace=\"default\",outcome=\"success\"}";
    assert_eq!(metric(&text, ok), Some(3.0), "{text}");
    let missing =
        "scf_gateway_invocations_total{function=\"-\",namespace=\"-\",outcome=\"not_found\"}";
    assert_eq!(metric(&text, missing), Some(1.0));
    assert_eq!(
        metric(&text, "scf_gateway_inflight{function=\"hello\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "scf_gateway_queue_depth{function=\"hello\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "scf_gateway_invocation_duration_seconds_count{function=\"hello\"}"
        ),
        Some(3.0)
    );
    let reused = metric(
        &text,
        "scf_gateway_upstream_connections_total{function=\"hello\",reused=\"true\"}",
    );
    let new = metric(
        &text,
        "scf_gateway_upstream_connections_total{function=\"hello\",reused=\"false\"}",
    );
    assert!(
        new.unwrap_or(0.0) >= 1.0,
        "connections opened are counted: {text}"
    );
    assert!(
        reused.unwrap_or(0.0) >= 2.0,
        "warm connections are reused: {text}"
    );
    gw.shutdown().await;
}

/// A quiet instance lets its warm connections go and is not reconnected over and over:
/// warmth follows demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_instances_are_not_kept_connected() {
    let instance = FakeInstance::start().await;
    // Long enough for the last wait to see the warm connection before it goes.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream_idle_timeout = \"300ms\"\n{}",
        event_function("hello", &[instance.addr], "instance_concurrency = 4")
    );
    let gw = scf_gateway::RunningGateway::start(&config(&text))
        .await
        .unwrap();
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    let instances = gw.gateway().functions()[0].pool().instances();
    wait_until("the idle connections to be closed", PATIENCE, async || {
        instances[0].live_connections() == 0
    })
    .await;
    let settled = instance.record.connections.load(SeqCst);
    // Quiet on purpose: idle timeouts and keeper ticks in which a keeper that
    // reconnected idle instances would have done so.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        instance.record.connections.load(SeqCst),
        settled,
        "no reconnect storm while idle"
    );
    assert_eq!(instances[0].live_connections(), 0, "nothing reconnected");
    // The next invocation still works, and the pool warms up again.
    assert_eq!(
        invoke(gw.listen_addr(), "hello", &[], "{}").await.status,
        StatusCode::OK
    );
    wait_until("the pool to warm up again", PATIENCE, async || {
        instances[0].live_connections() >= 1
    })
    .await;
    gw.shutdown().await;
}

/// Functions whose static pools list the same address share its keep-alive
/// connections: five functions on one instance do not cost five connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_on_the_same_instance_share_its_connections() {
    let instance = FakeInstance::start().await;
    let functions: String = (0..5)
        .map(|i| event_function(&format!("f{i}"), &[instance.addr], ""))
        .collect();
    let gw = gateway(&functions).await;
    for round in 0..4 {
        for i in 0..5 {
            let answer = invoke(gw.listen_addr(), &format!("f{i}"), &[], "{}").await;
            assert_eq!(answer.status, StatusCode::OK, "round {round}");
        }
    }
    let opened = instance.record.connections.load(SeqCst);
    assert!(
        opened < 5,
        "{opened} connections for 5 functions on one instance"
    );
    gw.shutdown().await;
}

/// Two hundred functions on one instance address: the address keeps as many warm
/// connections as the largest function needs (not one set per function), reuses them
/// while invocations come, and lets them go without reconnecting once it is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_functions_on_one_address_keep_one_set_of_warm_connections() {
    let instance = FakeInstance::start().await;
    // The function wanting the most warm connections is the last one, not the one whose
    // pool starts the address's keeper.
    let mut functions = String::new();
    for i in 0..199 {
        functions += &event_function(&format!("f{i}"), &[instance.addr], "");
    }
    functions += &event_function("f199", &[instance.addr], "instance_concurrency = 8");
    // Long enough for the waits below to see the warm connections before they go.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream_idle_timeout = \"1s\"\n{functions}"
    );
    let gw = scf_gateway::RunningGateway::start(&config(&text))
        .await
        .unwrap();
    let upstream = gw.gateway().functions()[1].pool().instances()[0].clone();
    for i in 1..40 {
        let answer = invoke(gw.listen_addr(), &format!("f{i}"), &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "f{i}");
    }
    wait_until(
        "warm connections: the largest target of the functions sharing the address (8)",
        PATIENCE,
        async || upstream.live_connections() == 8,
    )
    .await;
    let opened = instance.record.connections.load(SeqCst);
    assert!(opened <= 9, "{opened} connections opened for 200 functions");
    // Quiet: the connections go, and nothing reconnects.
    wait_until("the idle connections to be closed", PATIENCE, async || {
        upstream.live_connections() == 0
    })
    .await;
    let settled = instance.record.connections.load(SeqCst);
    // Quiet on purpose: idle timeouts and keeper ticks in which a reconnect would show.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        instance.record.connections.load(SeqCst),
        settled,
        "no reconnects while idle"
    );
    assert_eq!(upstream.live_connections(), 0, "nothing reconnected");
    // Demand wakes the tending keeper again.
    let answer = invoke(gw.listen_addr(), "f150", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    wait_until(
        "the address to be warm again after use (8)",
        PATIENCE,
        async || upstream.live_connections() == 8,
    )
    .await;
    gw.shutdown().await;
}

/// An address shared by several functions that refused connections is probed back into
/// rotation for each of them once it listens again (the pools that did not start the
/// address's keeper get a probing keeper of their own while it is out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_instance_comes_back_for_every_function_listing_it() {
    let live = FakeInstance::start().await;
    let dead = refusing_addr().await;
    let functions: String = (0..3)
        .map(|i| event_function(&format!("f{i}"), &[live.addr, dead], ""))
        .collect();
    let gw = gateway(&functions).await;
    for round in 0..10 {
        for i in 0..3 {
            let answer = invoke(gw.listen_addr(), &format!("f{i}"), &[], "{}").await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "round {round}: {:?}",
                answer.body
            );
        }
    }
    let back = FakeInstance::start_on(dead).await;
    let served = |name: &str| {
        back.record
            .seen()
            .iter()
            .any(|s| header_map(s).get("x-scf-name").map(String::as_str) == Some(name))
    };
    wait_until(
        "every function to send to the instance again",
        PATIENCE,
        async || {
            for i in 0..3 {
                let answer = invoke(gw.listen_addr(), &format!("f{i}"), &[], "{}").await;
                assert_eq!(answer.status, StatusCode::OK);
            }
            (0..3).all(|i| served(&format!("f{i}")))
        },
    )
    .await;
    gw.shutdown().await;
}

/// Functions whose pools list the same instances spread their invocations over those
/// addresses by the load of every function on them, not each by its own (which, with
/// many functions each seeing idle instances, is a coin toss per invocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_sharing_instances_balance_by_address_load() {
    let a = FakeInstance::start().await;
    let b = FakeInstance::start().await;
    let functions: String = (0..40)
        .map(|i| event_function(&format!("f{i}"), &[a.addr, b.addr], ""))
        .collect();
    let gw = gateway(&functions).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let addr = gw.listen_addr();
        calls.push(tokio::spawn(async move {
            invoke(addr, &format!("f{i}"), &[("x-test-hold", "1")], "{}").await
        }));
        // Each invocation is at its instance, and stays there, before the next one is
        // picked: every pick sees the load of all the earlier ones.
        wait_until(
            &format!("invocation {i} to reach an instance"),
            PATIENCE,
            async || a.record.inflight() + b.record.inflight() == i + 1,
        )
        .await;
    }
    a.record.release(40);
    b.record.release(40);
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    let counts = by_instance(&[&a.record, &b.record]);
    assert_eq!(counts.iter().sum::<usize>(), 40);
    assert!(
        counts[0].abs_diff(counts[1]) <= 2,
        "per-address balance: {counts:?}"
    );
    gw.shutdown().await;
}

/// Sends raw request bytes on a new connection and reads the answer to its end (the
/// request asks for `Connection: close`).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_needs_one_host_and_an_absolute_uri_names_the_host() {
    let instance = FakeInstance::start().await;
    let functions = format!(
        "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\nhost = \"web.test\"\npath_prefix = \"/web\"\nfunction = \"web\"\n",
        instance.addr
    );
    let gw = gateway(&functions).await;
    let addr = gw.listen_addr();
    for (request, what) in [
        (
            &b"GET /web/x HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            "no Host",
        ),
        (
            b"GET /web/x HTTP/1.1\r\nHost: web.test\r\nHost: web.test\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            b"GET http://web.test/web/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            "no Host",
        ),
    ] {
        let answer = raw_exchange(addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("\"errorCode\":400"), "{answer}");
        assert!(answer.contains(what), "{what}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("x-scf-request-id: "));
    }
    assert_eq!(instance.record.count(), 0);

    // An absolute-form target's host wins over `Host`, for routing and for the instance.
    let answer = raw_exchange(
        addr,
        b"POST http://web.test/web/x HTTP/1.1\r\nHost: other\r\nContent-Length: 2\r\n\
          Connection: close\r\n\r\nhi",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let seen = instance.record.seen();
    assert_eq!(seen.len(), 1);
    let h = header_map(&seen[0]);
    assert_eq!(h["host"], "web.test");
    assert_eq!(h["x-forwarded-host"], "web.test");
    assert_eq!(seen[0].path, "/web/x");
    // Without a route for `other`, a request routed by `Host` alone would be 404.
    let answer = raw_exchange(
        addr,
        b"GET /web/x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    gw.shutdown().await;
}

/// A request target over 8 KB is 414, and nothing of it reaches an instance; a target
/// just under the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_8_kb_gets_414() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&event_function("hello", &[instance.addr], "")).await;
    let addr = gw.listen_addr();
    let request = |target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\n{{}}"
        )
        .into_bytes()
    };
    let invoke = "/v1/functions/hello/invocations";
    let long = format!("{invoke}?pad={}", "p".repeat(9 * 1024));
    let answer = raw_exchange(addr, &request(&long)).await;
    assert!(
        answer.starts_with("HTTP/1.1 414 "),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("\"errorCode\":414"), "{answer}");
    assert_eq!(instance.record.count(), 0);

    let fits = format!("{invoke}?pad={}", "p".repeat(7 * 1024));
    let answer = raw_exchange(addr, &request(&fits)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_eq!(instance.record.count(), 1);
    gw.shutdown().await;
}
