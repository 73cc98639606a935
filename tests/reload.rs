//! Config reload on the real binary: `POST /admin/reload` and `SIGHUP` while a load loop
//! runs, with valid changes (a function added, a timeout changed, a route moved) and
//! invalid files in turn. Nothing fails, each change is visible right after its reload,
//! unchanged functions keep their instances, and removed ones drain, then stop.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{FakeInstance, GatewayProcess};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

const PATIENCE: Duration = Duration::from_secs(20);

/// The `[server]` extras every config of these tests has.
const SERVER: &str = "upstream_idle_timeout = \"5s\"";

/// Writes the config the gateway was started with, with other functions and routes.
fn write_config(gw: &GatewayProcess, functions: &str) {
    std::fs::write(
        gw.dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             shutdown_grace = \"10s\"\n{SERVER}\n{functions}"
        ),
    )
    .unwrap();
}

async fn post_reload(admin: SocketAddr) -> common::Answer {
    let req = Request::post("/admin/reload")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    common::send(admin, req).await.unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> common::Answer {
    let req = Request::get(path)
        .header("host", "site.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    common::send(addr, req).await.unwrap()
}

/// How many log records have `message` as their message.
fn count_logs(gw: &GatewayProcess, message: &str) -> usize {
    gw.records()
        .iter()
        .filter(|r| r["message"].as_str().is_some_and(|m| m.contains(message)))
        .count()
}

/// Sends `SIGHUP` and waits until the gateway logged one more reload outcome.
async fn sighup(gw: &GatewayProcess) {
    let outcomes = |gw: &GatewayProcess| {
        count_logs(gw, "config reloaded") + count_logs(gw, "config reload refused")
    };
    let before = outcomes(gw);
    gw.signal("HUP");
    common::wait_until("the SIGHUP reload to finish", PATIENCE, async || {
        outcomes(gw) > before
    })
    .await;
}

/// Invocations of `steady` and requests to the web function at `/stable`, over kept
/// connections, until `stop`; every answer that is not a 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failed: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut sender = common::connect::<Full<Bytes>>(addr).await.unwrap();
                    // Bounded: the test stops the loop long before this.
                    for i in 0..50_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let req = if (client + i) % 2 == 0 {
                            Request::post("/v1/functions/steady/invocations")
                                .header("host", "gateway.test")
                                .body(Full::new(Bytes::from_static(b"{}")))
                        } else {
                            Request::get("/stable/page")
                                .header("host", "site.test")
                                .body(Full::new(Bytes::new()))
                        }
                        .unwrap();
                        let answer = match sender.send_request(req).await {
                            Ok(response) => {
                                let status = response.status();
                                match response.into_body().collect().await {
                                    Ok(_) => status,
                                    Err(e) => {
                                        failed.lock().push(format!("body: {e}"));
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                failed.lock().push(format!("request: {e}"));
                                return;
                            }
                        };
                        if answer != StatusCode::OK {
                            failed.lock().push(format!("status {answer}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failed,
            tasks,
        }
    }

    /// Stops the loop; returns how many requests were answered and what failed.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            common::within("a load client to stop", task).await.unwrap();
        }
        let failed = self.failed.lock().clone();
        (self.done.load(Ordering::Relaxed), failed)
    }
}

/// The functions of one step: the fixed ones, plus what the step changes.
fn functions(
    backend: SocketAddr,
    launched: &str,
    slow_timeout: &str,
    extra: &[String],
    route: &str,
) -> String {
    let mut text = format!(
        "[[functions]]\nname = \"steady\"\ninstances = [\"{backend}\"]\n\
         [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{backend}\"]\n\
         [[functions]]\nname = \"slow\"\ntimeout = \"{slow_timeout}\"\ninstances = [\"{backend}\"]\n\
         {launched}"
    );
    for name in extra {
        text.push_str(&format!(
            "[[functions]]\nname = \"{name}\"\ninstances = [\"{backend}\"]\n"
        ));
    }
    text.push_str(&format!(
        "[[routes]]\npath_prefix = \"/stable\"\nfunction = \"web\"\n\
         [[routes]]\npath_prefix = \"{route}\"\nfunction = \"web\"\n"
    ));
    text
}

/// A launched function kept warm, whose timeout each reload changes (which keeps its
/// instance).
fn launched(timeout: &str) -> String {
    format!(
        "[[functions]]\nname = \"kept\"\ntimeout = \"{timeout}\"\n[functions.launch]\n\
         command = \"{}\"\nmin_instances = 1\nmax_instances = 1\n",
        common::example_function().display()
    )
}

/// The pid of the instance serving `kept` now.
async fn kept_pid(addr: SocketAddr) -> u64 {
    let answer = common::invoke(addr, "kept", &[("x-test-echo-env", "1")], "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.json()["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_apply_at_once() {
    let backend = FakeInstance::start().await;
    let addr = backend.addr;
    let gw = GatewayProcess::start(
        "reload-load",
        SERVER,
        &functions(addr, &launched("3s"), "5s", &[], "/move-0"),
    );
    let pid = kept_pid(gw.listen).await;
    let load = Load::start(gw.listen, 6);
    common::wait_until("the load to run", PATIENCE, async || {
        load.done.load(Ordering::Relaxed) > 50
    })
    .await;

    let mut extra = Vec::new();
    let mut route = "/move-0".to_owned();
    let mut refused = 0;
    for step in 1..=12 {
        let (slow_timeout, kept_timeout) = if step % 2 == 0 {
            ("100ms", "4s")
        } else {
            ("5s", "3s")
        };
        match step % 4 {
            // A function added.
            1 => extra.push(format!("added-{step}")),
            // A route moved.
            2 => route = format!("/move-{step}"),
            _ => {}
        }
        write_config(
            &gw,
            &functions(addr, &launched(kept_timeout), slow_timeout, &extra, &route),
        );
        if step % 3 == 0 {
            sighup(&gw).await;
        } else {
            let answer = post_reload(gw.admin).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            assert_eq!(answer.json()["reloaded"], true);
        }

        // Every change is there for the next request.
        if let Some(name) = extra.last() {
            let answer = common::invoke(gw.listen, name, &[], "{}").await;
            assert_eq!(answer.status, StatusCode::OK, "step {step}: {answer:?}");
        }
        let moved = get(gw.listen, &format!("{route}/x")).await;
        assert_eq!(moved.status, StatusCode::OK, "step {step}: {moved:?}");
        let slow = common::invoke(gw.listen, "slow", &[("x-test-sleep-ms", "400")], "{}").await;
        if slow_timeout == "100ms" {
            assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "step {step}");
            assert_eq!(
                slow.error_message(),
                "Invoking task timed out after 0.1 seconds"
            );
        } else {
            assert_eq!(slow.status, StatusCode::OK, "step {step}: {slow:?}");
        }

        // Then an invalid file, which changes nothing.
        write_config(
            &gw,
            &format!(
                "{}[[functions]]\nname = \"broken\"\ntimeout = \"soon\"\ninstances = [\"{addr}\"]\n",
                functions(addr, &launched(kept_timeout), slow_timeout, &extra, &route)
            ),
        );
        if step % 2 == 0 {
            let answer = post_reload(gw.admin).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
            let errors = answer.json()["errors"].as_array().cloned().unwrap();
            assert_eq!(errors.len(), 1, "{errors:?}");
            let line = errors[0].as_str().unwrap();
            assert!(
                line.starts_with("error: ")
                    && line.contains("gateway.toml:")
                    && line.contains("soon"),
                "{line}"
            );
        } else {
            sighup(&gw).await;
        }
        refused += 1;
        let unchanged = get(gw.listen, &format!("{route}/x")).await;
        assert_eq!(unchanged.status, StatusCode::OK, "step {step}");
    }

    let (done, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} of {done} failed: {failed:?}",
        failed.len()
    );
    assert!(done > 100, "the load loop barely ran: {done}");
    eprintln!("{done} requests under 24 reloads, none failed");

    // The route that moved away is gone, the launched instance is the same one.
    let old_route = get(gw.listen, "/move-0/x").await;
    assert_eq!(old_route.status, StatusCode::NOT_FOUND);
    assert_eq!(
        kept_pid(gw.listen).await,
        pid,
        "the kept instance was replaced"
    );
    assert_eq!(count_logs(&gw, "config reload refused"), refused);
    assert!(count_logs(&gw, "config reloaded") >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_function_finishes_its_invocations_then_stops_its_instances() {
    let backend = FakeInstance::start().await;
    let marker = &format!("scf-test-reload-removed-{}", std::process::id());
    let launched = format!(
        "[[functions]]\nname = \"going\"\n[functions.launch]\ncommand = \"{}\"\n\
         env = {{ TEST_MARKER = \"{marker}\" }}\nmin_instances = 1\n",
        common::example_function().display()
    );
    let static_fn = common::event_function("leaving", &[backend.addr], "timeout = \"20s\"");
    let gw = GatewayProcess::start("reload-removed", SERVER, &format!("{static_fn}{launched}"));
    let answer = common::invoke(gw.listen, "going", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    // An invocation of `leaving` is held by its instance while the function is removed.
    let listen = gw.listen;
    let held = tokio::spawn(async move {
        common::invoke(listen, "leaving", &[("x-test-hold", "1")], "{}").await
    });
    common::wait_until("the held invocation to arrive", PATIENCE, async || {
        backend.record.inflight() == 1
    })
    .await;
    write_config(&gw, &common::event_function("other", &[backend.addr], ""));
    let answer = post_reload(gw.admin).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    // New invocations no longer find it; the held one still completes.
    let gone = common::invoke(gw.listen, "leaving", &[], "{}").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.error_code(), 435);
    backend.record.release(1);
    let held = common::within("the held invocation", held).await.unwrap();
    assert_eq!(held.status, StatusCode::OK, "{held:?}");

    // The launched function's instance is stopped once it has nothing in flight.
    common::wait_until(
        "the removed function's instance to stop",
        PATIENCE,
        async || running(marker).is_empty(),
    )
    .await;
    let answer = common::invoke(gw.listen, "other", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_are_reported_as_needing_a_restart() {
    let backend = FakeInstance::start().await;
    let f = common::event_function("f", &[backend.addr], "");
    let gw = GatewayProcess::start("reload-restart", SERVER, &f);
    std::fs::write(
        gw.dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"\n\
             shutdown_grace = \"10s\"\nworkers = 7\n{SERVER}\n{f}"
        ),
    )
    .unwrap();
    let answer = post_reload(gw.admin).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let keys = answer.json()["restart_required"].clone();
    assert_eq!(keys, serde_json::json!(["server.listen", "server.workers"]));
    // The listener it runs on is the one it started with.
    let answer = common::invoke(gw.listen, "f", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(gw
        .records()
        .iter()
        .any(|r| r["key"] == "server.listen" && r["level"] == "WARN"));
}

/// Processes found by the marker in their environment.
fn running(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if String::from_utf8_lossy(&environ).contains(marker) {
            found.push(pid);
        }
    }
    found
}
