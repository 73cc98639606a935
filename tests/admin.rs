//! The admin API and the status page against the real gateway binary: `GET
//! /admin/functions` in the contract's shape with counts after real invocations (a
//! static pool and a launched process function), the status page's content and
//! escaping, no credential, `env` value or token anywhere, and the admin token guarding
//! `POST /admin/*` only.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

/// Distinctive values that must never be shown by the admin listener.
const ENV_VALUE: &str = "env-value-q7Zk2";
const SECRET_ID: &str = "AKIDsecret-id-Vw3p";
const SECRET_KEY: &str = "secret-key-Hn4x9";
const SESSION_TOKEN: &str = "session-token-Rt6b1";
const ADMIN_TOKEN: &str = "admin-token-Mz8c5";
const SECRETS: [&str; 5] = [ENV_VALUE, SECRET_ID, SECRET_KEY, SESSION_TOKEN, ADMIN_TOKEN];

fn credentials() -> String {
    format!(
        "[credentials]\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n\
         session_token = \"{SESSION_TOKEN}\"\n"
    )
}

/// A static function over `instance` and a launched one (the example function), with a
/// distinctive `env` value.
fn functions(instance: SocketAddr) -> String {
    format!(
        "{}\n[[functions]]\nname = \"hello\"\ninstances = [\"{instance}\"]\ntimeout = \"300ms\"\n\
         memory_mb = 256\ninstance_concurrency = 2\nqueue_depth = 7\n\
         [[functions]]\nname = \"proc\"\nnamespace = \"team\"\n\
         [functions.launch]\ncommand = \"{}\"\nenv = {{ API_SECRET = \"{ENV_VALUE}\" }}\n",
        credentials(),
        example_function().display()
    )
}

async fn post(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Answer {
    let mut req = Request::post(path).header("host", "admin");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    send(addr, req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_listed_with_instances_and_counts_and_nothing_secret() {
    let instance = FakeInstance::start().await;
    let server = format!("admin_token = \"{ADMIN_TOKEN}\"\n");
    let gw = GatewayProcess::start("admin-listing", &server, &functions(instance.addr));
    for _ in 0..3 {
        assert_eq!(
            invoke(gw.listen, "hello", &[], "{}").await.status,
            StatusCode::OK
        );
    }
    let timed_out = invoke(gw.listen, "hello", &[("x-test-sleep-ms", "2000")], "{}").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    for _ in 0..2 {
        let req = Request::post("/v1/functions/proc/invocations?namespace=team")
            .header("host", "gateway.test")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let answer = send(gw.listen, req).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let missing = invoke(gw.listen, "nosuch", &[], "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let answer = admin_get(gw.admin, "/admin/functions").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_no_secret("/admin/functions", &text(&answer));
    let json = answer.json();
    let list = json["functions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut expected = [
        "name",
        "namespace",
        "type",
        "memory_mb",
        "timeout_ms",
        "instance_concurrency",
        "queue_depth",
        "queued",
        "inflight",
        "source",
        "image",
        "instances",
        "invocations",
    ];
    expected.sort();
    let outcomes = [
        "success",
        "not_found",
        "body_too_large",
        "response_too_large",
        "timeout",
        "instance_error",
        "throttled",
        "out_of_memory",
        "client_closed",
    ];

    let hello = &list[0];
    assert_eq!(keys(hello), expected);
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["namespace"], "default");
    assert_eq!(hello["type"], "event");
    assert_eq!(hello["memory_mb"], 256);
    assert_eq!(hello["timeout_ms"], 300);
    assert_eq!(hello["instance_concurrency"], 2);
    assert_eq!(hello["queue_depth"], 7);
    assert_eq!(hello["queued"], 0);
    assert_eq!(hello["source"], "static");
    assert!(hello["image"].is_null());
    let instances = hello["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        keys(&instances[0]),
        ["address", "inflight", "name", "state"]
    );
    assert_eq!(instances[0]["name"], instance.addr.to_string());
    assert_eq!(instances[0]["address"], instance.addr.to_string());
    assert_eq!(instances[0]["state"], "ready");
    let invocations = hello["invocations"].as_object().unwrap();
    let mut sorted = outcomes;
    sorted.sort();
    assert_eq!(
        invocations.keys().collect::<Vec<_>>(),
        sorted,
        "every outcome"
    );
    // In the metrics' order as sent (the parsed map sorts its keys).
    let order = format!(
        "\"invocations\":{{\"{}\":3,\"{}\":0,",
        outcomes[0], outcomes[1]
    );
    assert!(text(&answer).contains(&order), "{}", text(&answer));
    assert_eq!(invocations["success"], 3);
    assert_eq!(invocations["timeout"], 1);
    assert_eq!(invocations["not_found"], 0);

    let proc = &list[1];
    assert_eq!(keys(proc), expected);
    assert_eq!(proc["name"], "proc");
    assert_eq!(proc["namespace"], "team");
    assert_eq!(proc["source"], "process");
    assert_eq!(proc["memory_mb"], 128);
    assert_eq!(proc["timeout_ms"], 3000);
    assert_eq!(proc["instance_concurrency"], 1);
    assert_eq!(proc["queue_depth"], 100);
    assert_eq!(proc["invocations"]["success"], 2);
    let instances = proc["instances"].as_array().unwrap();
    assert!(!instances.is_empty());
    assert_eq!(instances[0]["name"], "proc-1");
    assert_eq!(instances[0]["state"], "ready");
    assert!(instances[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // The timed-out invocation may still be counted in flight for a moment: the slot is
    // freed when its exchange is abandoned, so wait for the figures to settle.
    wait_until("nothing in flight", PATIENCE, async || {
        let json = admin_get(gw.admin, "/admin/functions").await.json();
        json["functions"][0]["inflight"] == 0 && json["functions"][1]["inflight"] == 0
    })
    .await;

    // The status page: what the listing says, plus the recent cold start and errors.
    let page = admin_get(gw.admin, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = text(&page);
    assert_no_secret("the status page", &html);
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(html.contains("proc-1"));
    assert!(html.contains(&instance.addr.to_string()));
    assert!(html.contains("Recent cold starts"));
    assert!(html.contains("Invoking task timed out after 0.3 seconds"));
    assert!(html.contains(timed_out.request_id()));
    assert!(html.contains("Function [nosuch] not found in namespace [default]"));
    assert!(html.contains(missing.request_id()));

    let metrics = gw.metrics().await;
    assert_no_secret("/metrics", &metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_in_errors_is_escaped_on_the_page() {
    let instance = FakeInstance::start().await;
    let route = format!(
        "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\nhost = \"app.test\"\npath_prefix = \"/\"\nfunction = \"web\"\n",
        instance.addr
    );
    let gw = GatewayProcess::start("admin-escape", "", &route);
    let req = Request::get("/x")
        .header("host", "<script>alert(1)</script>")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(gw.listen, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{:?}", answer.body);
    let html = text(&admin_get(gw.admin, "/").await);
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("No route for host [&lt;script&gt;alert(1)&lt;/script&gt;]"),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_posts_and_only_posts() {
    let instance = FakeInstance::start().await;
    let server = format!("admin_token = \"{ADMIN_TOKEN}\"\n");
    let function = event_function("hello", &[instance.addr], "");
    let gw = GatewayProcess::start("admin-token", &server, &function);
    let admin = gw.admin;

    for (authorization, error) in [
        (None, None),
        (Some("Bearer wrong-token"), Some("invalid_token")),
        (
            Some(&format!("Bearer {ADMIN_TOKEN}x") as &str),
            Some("invalid_token"),
        ),
        (
            Some(&format!("Basic {ADMIN_TOKEN}") as &str),
            Some("invalid_request"),
        ),
    ] {
        for path in ["/admin/reload", "/admin/nosuch", "/admin/functions"] {
            let answer = post(admin, path, authorization).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{path} {authorization:?}"
            );
            let challenge = answer.headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            if let Some(error) = error {
                assert!(challenge.contains(error), "{challenge}");
            }
            assert!(answer.json()["error"].is_string(), "{:?}", answer.body);
            assert_no_secret("a 401", &format!("{:?} {}", answer.headers, text(&answer)));
        }
    }

    let bearer = format!("Bearer {ADMIN_TOKEN}");
    // The right token gets past the guard: to the reload hook, or to what the path is.
    let reload = post(admin, "/admin/reload", Some(&bearer)).await;
    assert_ne!(reload.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(admin, "/admin/nosuch", Some(&bearer)).await.status,
        StatusCode::NOT_FOUND
    );
    let wrong_method = post(admin, "/admin/functions", Some(&bearer)).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "GET, HEAD");

    // Reads need no token.
    for path in ["/", "/admin/functions", "/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            admin_get(admin, path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let get_reload = admin_get(admin, "/admin/reload").await;
    assert_eq!(get_reload.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_reload.headers["allow"], "POST");
    assert_eq!(
        admin_get(admin, "/nosuch").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin_get(admin, "/admin/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_posts_are_open() {
    let instance = FakeInstance::start().await;
    let function = event_function("hello", &[instance.addr], "");
    let gw = GatewayProcess::start("admin-open", "", &function);
    let reload = post(gw.admin, "/admin/reload", None).await;
    assert_ne!(reload.status, StatusCode::UNAUTHORIZED);
    assert!(!reload.headers.contains_key("www-authenticate"));
}
