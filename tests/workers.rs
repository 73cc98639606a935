//! `workers = 2`: thread-per-core. Two `current_thread` runtimes accept on one
//! listening socket, each with its own upstream connections; a graceful shutdown
//! drains both; the port is still bound once.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use scf_gateway::RunningGateway;

type Client = SendRequest<Full<Bytes>>;

/// A gateway with `workers = 2` listening on `listen`, one function over `instance`.
async fn two_workers(
    listen: &str,
    instance: SocketAddr,
    extra: &str,
) -> std::io::Result<RunningGateway> {
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n\
         shutdown_grace = \"10s\"\n{}",
        event_function("hello", &[instance], extra)
    );
    RunningGateway::start(&config(&text)).await
}

async fn metrics(gw: &RunningGateway) -> String {
    String::from_utf8_lossy(&admin_get(gw.admin_addr(), "/metrics").await.body).into_owned()
}

/// Client connections each worker accepted so far.
async fn accepted(gw: &RunningGateway) -> [f64; 2] {
    let text = metrics(gw).await;
    [0, 1].map(|w| {
        metric(
            &text,
            &format!("scf_gateway_worker_connections_total{{worker=\"{w}\"}}"),
        )
        .unwrap_or(0.0)
    })
}

/// Opens keep-alive client connections, at least `min` and more until both workers
/// accepted some (which one wins an accept is up to the kernel and the scheduler).
async fn clients_on_both_workers(gw: &RunningGateway, min: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..50 {
        for _ in 0..8 {
            clients.push(connect(gw.listen_addr()).await.unwrap());
        }
        // The kernel completes a connection before a worker accepts and counts it.
        let opened = clients.len() as f64;
        let [w0, w1] = wait_for(
            "the workers to count every connection",
            PATIENCE,
            async || {
                let [w0, w1] = accepted(gw).await;
                (w0 + w1 == opened).then_some([w0, w1])
            },
        )
        .await;
        if clients.len() >= min && w0 > 0.0 && w1 > 0.0 {
            return clients;
        }
    }
    panic!(
        "one worker accepted every connection: {:?}",
        accepted(gw).await
    );
}

async fn post(client: &mut Client, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::post("/v1/functions/hello/invocations")
        .header("host", "gateway.test")
        .header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    client.ready().await.unwrap();
    let response = client.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn both_workers_serve_keep_alive_clients_and_share_upstream_connections() {
    let instance = FakeInstance::start().await;
    let gw = two_workers("127.0.0.1:0", instance.addr, "instance_concurrency = 64")
        .await
        .unwrap();
    let threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "scf-worker-1")
        .count();
    assert!(threads >= 1, "no scf-worker-1 thread");

    let clients = clients_on_both_workers(&gw, 32).await;
    let n = clients.len();
    // A worker with more than its share leaves new connections to the other.
    let [w0, w1] = accepted(&gw).await;
    assert!((w0 - w1).abs() <= 8.0, "accepted {w0} / {w1}");
    const ROUNDS: usize = 20;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let body = format!(
                        "{{\"client\":{c},\"round\":{r},\"pad\":\"{}\"}}",
                        "x".repeat(c)
                    );
                    let answer = post(&mut client, &[], &body).await;
                    assert_eq!(answer.status, 200, "{answer:?}");
                    assert_eq!(
                        answer.json()["body_len"].as_u64(),
                        Some(body.len() as u64),
                        "{answer:?}"
                    );
                    assert!(!answer.request_id().is_empty());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(instance.record.count(), n * ROUNDS);

    let text = metrics(&gw).await;
    let series = |reused: &str| {
        metric(
            &text,
            &format!(
                "scf_gateway_upstream_connections_total{{function=\"hello\",reused=\"{reused}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    // Never more connections than could be busy at once (one per client connection)
    // plus the keeper's warm ones (16): no reconnect per request or per worker switch.
    let new = series("false");
    assert!(
        new <= (n + 16) as f64,
        "{new} new upstream connections for {n} clients"
    );
    assert!(
        instance
            .record
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            <= n + 16
    );
    assert!(series("true") >= (n * ROUNDS) as f64 - new);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_finishes_in_flight_invocations_on_both_workers() {
    let instance = FakeInstance::start().await;
    let gw = two_workers("127.0.0.1:0", instance.addr, "instance_concurrency = 64")
        .await
        .unwrap();
    let clients = clients_on_both_workers(&gw, 2).await;
    let n = clients.len();
    // Held by the instance until the shutdown is under way.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move { post(&mut client, &[("x-test-hold", "1")], "{}").await })
        })
        .collect();
    wait_until(
        "every invocation to reach the instance",
        PATIENCE,
        async || instance.record.inflight() == n,
    )
    .await;
    let (listen, admin) = (gw.listen_addr(), gw.admin_addr());
    let shutdown = tokio::spawn(gw.shutdown());
    wait_until("/readyz to answer 503", PATIENCE, async || {
        admin_get(admin, "/readyz").await.status == 503
    })
    .await;
    assert_eq!(instance.record.inflight(), n, "nothing in flight was cut");
    instance.record.release(n);
    // Within the shutdown grace (10 s): after it the workers would stop waiting.
    within("the shutdown", shutdown).await.unwrap();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // Both workers stopped accepting: the port is closed.
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
}

#[tokio::test]
async fn a_second_gateway_on_the_same_port_fails_to_bind() {
    let instance = FakeInstance::start().await;
    let first = two_workers("127.0.0.1:0", instance.addr, "").await.unwrap();
    let taken = first.listen_addr().to_string();
    let second = two_workers(&taken, instance.addr, "").await;
    let e = second.err().expect("a second gateway bound the same port");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");

    // The daemon: exit status 1 and the bind error on stderr.
    let dir = std::env::temp_dir().join(format!("scf-gw-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{taken}\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n{}",
            event_function("hello", &[instance.addr], "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    first.shutdown().await;
}
