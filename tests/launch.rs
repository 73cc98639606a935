//! Launched instances, end to end: the real gateway binary starts real function
//! processes (the Rust example function and the Python hello function).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use http::StatusCode;

/// A `[[functions]]` entry launching the Rust example function. `function_keys` go
/// before the launch table, `launch_keys` into it.
fn rust_function(name: &str, marker: &str, function_keys: &str, launch_keys: &str) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\n{function_keys}\n\
         [functions.launch]\ncommand = \"{}\"\n\
         env = {{ TEST_MARKER = \"{marker}\", GREETING = \"hi\" }}\n{launch_keys}\n",
        example_function().display()
    )
}

fn marker(test: &str) -> String {
    format!("scf-test-{test}-{}", std::process::id())
}

/// Processes of a test: found by the marker in their environment.
fn running(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if String::from_utf8_lossy(&environ).contains(marker) {
            found.push(pid);
        }
    }
    found
}

fn env_of(answer: &Answer) -> serde_json::Value {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_the_scf_environment_and_their_own_ports() {
    let m = marker("env");
    let pinned = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let functions = rust_function("envfn", &m, "memory_mb = 256", "max_instances = 2")
        + &rust_function("pinned", &m, "", &format!("port = {pinned}"));
    let gw = GatewayProcess::start("env", "", &functions);
    let listen = gw.listen;
    // Two overlapping invocations start a second instance; which instance answers each
    // is up to how fast each starts, so overlap pairs until both have answered.
    let (a, b) = wait_for("two instances to answer", PATIENCE, async || {
        let slow = [("x-test-echo-env", "1"), ("x-test-sleep-ms", "300")];
        let a = tokio::spawn(async move { invoke(listen, "envfn", &slow, "{}").await });
        let b = tokio::spawn(async move { invoke(listen, "envfn", &slow, "{}").await });
        let (a, b) = (env_of(&a.await.unwrap()), env_of(&b.await.unwrap()));
        (a["pid"] != b["pid"]).then_some((a, b))
    })
    .await;
    let workdir = gw.dir.canonicalize().unwrap();
    for env in [&a, &b] {
        assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
        assert_eq!(env["USER"], "qcloud");
        assert_eq!(env["SCF_FUNCTIONNAME"], "envfn");
        assert_eq!(env["SCF_FUNCTIONVERSION"], "$LATEST");
        assert_eq!(env["TENCENTCLOUD_REGION"], "ap-guangzhou");
        assert_eq!(env["TENCENTCLOUD_APPID"], "1250000000");
        assert_eq!(env["TENCENTCLOUD_UIN"], "100000000001");
        assert_eq!(env["GREETING"], "hi");
        assert!(
            env.get("SCF_TEST_GATEWAY_ONLY").is_none(),
            "the gateway's environment leaked"
        );
        let root = std::path::PathBuf::from(env["USER_CODE_ROOT"].as_str().unwrap());
        assert_eq!(root.canonicalize().unwrap(), workdir);
        let tmp = env["TMPDIR"].as_str().unwrap();
        assert!(
            std::path::Path::new(tmp).is_dir(),
            "TMPDIR {tmp} exists while running"
        );
        assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());
    }
    assert_ne!(a["PORT"], b["PORT"], "two instances, two ports");
    assert_ne!(a["TMPDIR"], b["TMPDIR"], "each instance has its own TMPDIR");

    let p = env_of(&invoke(listen, "pinned", &[("x-test-echo-env", "1")], "{}").await);
    assert_eq!(p["PORT"], pinned.to_string());

    let tmp = a["TMPDIR"].as_str().unwrap().to_owned();
    gw.signal("TERM");
    let status = gw.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(running(&m).is_empty(), "SIGTERM leaves no instance behind");
    assert!(
        !std::path::Path::new(&tmp).exists(),
        "TMPDIR is removed with its instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_listens_gives_503_405_and_is_killed() {
    let m = marker("never");
    let gw = GatewayProcess::start(
        "never",
        "",
        &rust_function(
            "never",
            &m,
            "",
            "args = [\"--never-listen\"]\nready_timeout = \"1s\"",
        ),
    );
    let started = Instant::now();
    let answer = within("the ready timeout", invoke(gw.listen, "never", &[], "{}")).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    let port = message
        .strip_prefix("The request timed out in 1000ms.Please confirm your http server have enabled listening on port ")
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or_else(|| panic!("exact message expected, got {message}"));
    assert!(port.parse::<u16>().is_ok(), "{message}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    wait_until("the process to be gone", PATIENCE, async || {
        running(&m).is_empty()
    })
    .await;
    // The gateway logged the same line (the answer may overtake the log write).
    wait_until(&format!("the log line: {message}"), PATIENCE, async || {
        gw.records()
            .iter()
            .any(|r| r["message"] == message.as_str())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_zero_up_to_max_instances_and_back_down_when_idle() {
    let m = marker("scale");
    let gw = GatewayProcess::start(
        "scale",
        "",
        &rust_function(
            "scale",
            &m,
            "queue_timeout = \"10s\"",
            "max_instances = 4\nidle_timeout = \"2s\"",
        ),
    );
    // Nothing runs before demand.
    assert!(running(&m).is_empty());
    let first = invoke(gw.listen, "scale", &[("x-test-echo-env", "1")], "{}").await;
    let first_pid = env_of(&first)["pid"].as_u64().unwrap();

    let listen = gw.listen;
    // Each invocation keeps its instance long beside a cold start, so the four are all
    // started and used before the first frees up for the waiters; the instances then
    // stay, idle for less than idle_timeout, while they are counted.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let h = [("x-test-echo-env", "1"), ("x-test-sleep-ms", "700")];
                invoke(listen, "scale", &h, "{}").await
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for t in tasks {
        pids.insert(env_of(&t.await.unwrap())["pid"].as_u64().unwrap());
    }
    assert!(pids.contains(&first_pid) || pids.len() == 4);
    assert_eq!(pids.len(), 4, "8 slow invocations on 4 instances: {pids:?}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scf_gateway_cold_starts_total{function=\"scale\"}"
        ),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(running(&m).len(), 4);

    // Idle for longer than idle_timeout: back to min_instances (0).
    wait_until("the idle instances to stop", PATIENCE, async || {
        running(&m).is_empty()
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scf_gateway_instances{function=\"scale\",state=\"ready\"}"
        ),
        Some(0.0)
    );
    // And scale from zero again.
    assert_eq!(
        invoke(gw.listen, "scale", &[], "{}").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_started_at_boot_and_readyz_waits_for_them() {
    let m = marker("min");
    let gw = GatewayProcess::start(
        "min",
        "",
        &rust_function(
            "warm",
            &m,
            "",
            "min_instances = 2\nidle_timeout = \"200ms\"",
        ),
    );
    wait_until("two provisioned instances", PATIENCE, async || {
        running(&m).len() == 2
    })
    .await;
    wait_until("/readyz to answer 200", PATIENCE, async || {
        admin_get(gw.admin, "/readyz").await.status == StatusCode::OK
    })
    .await;
    // Idle on purpose, four times idle_timeout: min_instances are kept even so.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(running(&m).len(), 2);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scf_gateway_instances{function=\"warm\",state=\"ready\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_invocation_gives_502_405_and_a_new_instance_serves_next() {
    let m = marker("crash");
    let gw = GatewayProcess::start("crash", "workers = 1", &rust_function("crash", &m, "", ""));
    let before = env_of(&invoke(gw.listen, "crash", &[("x-test-echo-env", "1")], "{}").await);
    let answer = invoke(
        gw.listen,
        "crash",
        &[("x-test-crash", "before-headers")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), 405);
    let message = answer.error_message();
    assert!(message.contains("exited with status 1"), "{message}");
    let after = env_of(&invoke(gw.listen, "crash", &[("x-test-echo-env", "1")], "{}").await);
    assert_ne!(before["pid"], after["pid"], "a new instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_crashing_at_start_fails_fast_and_does_not_spin() {
    let m = marker("crashloop");
    let starts = std::env::temp_dir().join(format!("{m}.starts"));
    let _ = std::fs::remove_file(&starts);
    let functions = format!(
        "[[functions]]\nname = \"broken\"\n[functions.launch]\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"echo start >> {}; exec {} --crash-at-start\"]\n\
         env = {{ TEST_MARKER = \"{m}\" }}\n",
        starts.display(),
        example_function().display()
    );
    let gw = GatewayProcess::start("crashloop", "", &functions);
    // Fail fast: every answer names the start-up error. One that waited for the instance
    // to listen (ready_timeout) would name the timeout instead.
    let started = Instant::now();
    let fails_fast = |answer: &Answer| {
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
        assert_eq!(answer.error_code(), 405);
        let message = answer.error_message();
        assert!(message.contains("exited with status 3"), "{message}");
    };
    fails_fast(&invoke(gw.listen, "broken", &[], "{}").await);
    // Hammer it: the starts back off (100 ms, doubling after each failed start) however
    // long the hammering takes, instead of one start per invocation.
    const ANSWERS: usize = 40;
    for _ in 0..ANSWERS {
        fails_fast(&invoke(gw.listen, "broken", &[], "{}").await);
        // The pace of a client retrying at once, part of the scenario.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hammered = started.elapsed();
    let count = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    // With backoff, n starts take at least 100 ms * (2^(n-1) - 1): at most
    // log2(t / 100 ms + 1) + 1 of them fit in t. One more for the start under way.
    let fit = (hammered.as_secs_f64() / 0.1 + 1.0).log2().floor() as usize + 2;
    assert!(
        count <= fit && count < ANSWERS / 2,
        "restarts back off: {count} starts for {} invocations in {hammered:?}",
        ANSWERS + 1
    );
    let _ = std::fs::remove_file(&starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_invocation_recycles_its_instance() {
    let m = marker("recycle");
    let gw = GatewayProcess::start(
        "recycle",
        "",
        &rust_function("slow", &m, "timeout = \"500ms\"", ""),
    );
    let before = env_of(&invoke(gw.listen, "slow", &[("x-test-echo-env", "1")], "{}").await);
    let answer = invoke(gw.listen, "slow", &[("x-test-sleep-ms", "5000")], "{}").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.error_code(), 433);
    let old = before["pid"].as_u64().unwrap() as u32;
    wait_until("the hung instance to be killed", PATIENCE, async || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    })
    .await;
    let after = env_of(&invoke(gw.listen, "slow", &[("x-test-echo-env", "1")], "{}").await);
    assert_ne!(before["pid"], after["pid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_with_502_434_and_reports_plausible_usage() {
    if !is_root() {
        eprintln!("skipped: memory cgroups need root");
        return;
    }
    let m = marker("oom");
    let gw = GatewayProcess::start("oom", "", &rust_function("oom", &m, "memory_mb = 64", ""));
    let ok = invoke(gw.listen, "oom", &[("x-test-alloc-mb", "16")], "{}").await;
    assert_eq!(ok.status, StatusCode::OK);
    let id = ok.request_id().to_owned();
    let answer = invoke(gw.listen, "oom", &[("x-test-alloc-mb", "200")], "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
    assert_eq!(answer.error_code(), 434);
    let message = answer.error_message();
    assert!(message.contains("64 MB"), "{message}");

    let (line, usage) = mem_usage(&gw, &id).await;
    assert!(usage > 0.0 && usage < 64.0, "{line}");
    assert!(line.contains("Memory:64MB"), "{line}");
}

/// The Report line of an invocation and its MemUsage in MB.
async fn mem_usage(gw: &GatewayProcess, id: &str) -> (String, f64) {
    let report = wait_for_record(gw, |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("Report RequestId: {id}")))
    })
    .await;
    let line = report["message"].as_str().unwrap().to_owned();
    let usage = line
        .split("MemUsage:")
        .nth(1)
        .and_then(|s| s.split("MB").next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    (line, usage)
}

async fn wait_for_record(
    gw: &GatewayProcess,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for("the log record", PATIENCE, async || {
        gw.records().into_iter().find(|r| want(r))
    })
    .await
}

/// A timeout that stops a launched instance is a WARN line with the request id, naming
/// the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_stops_an_instance_is_a_warning_with_the_request_id() {
    let m = marker("timeout-warn");
    let gw = GatewayProcess::start(
        "timeout-warn",
        "",
        &rust_function("slow", &m, "timeout = \"300ms\"", ""),
    );
    let answer = invoke(gw.listen, "slow", &[("x-test-sleep-ms", "5000")], "{}").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    let id = answer.request_id().to_owned();
    let warning = wait_for_record(&gw, |r| {
        r["request_id"] == id.as_str() && r["level"] == "WARN"
    })
    .await;
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(message.contains("timed out after 300ms"), "{warning}");
    assert_eq!(warning["function"], "slow");
    assert!(warning["instance"].as_str().is_some(), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_end_report_surround_each_invocation_and_tail_returns_its_lines() {
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions/hello");
    let functions = format!(
        "[[functions]]\nname = \"hello\"\n[functions.launch]\ncommand = \"python3\"\n\
         args = [\"app.py\"]\nworkdir = \"{}\"\n",
        app.display()
    );
    // One worker: the daemon then runs on a current_thread runtime.
    let gw = GatewayProcess::start("logs", "workers = 1", &functions);
    let mut ids = Vec::new();
    for i in 0..3 {
        let answer = invoke(gw.listen, "hello", &[], &format!("{{\"name\":\"n{i}\"}}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["message"], format!("Hello, n{i}!"));
        ids.push(answer.request_id().to_owned());
    }
    let tail = invoke(gw.listen, "hello", &[("X-Scf-Log-Type", "Tail")], "{}").await;
    assert_eq!(tail.status, StatusCode::OK);
    ids.push(tail.request_id().to_owned());
    wait_for_record(&gw, |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("Report RequestId: {}", ids[3])))
    })
    .await;
    let records = gw.records();
    for id in &ids {
        let of_id: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        let messages: Vec<&str> = of_id.iter().filter_map(|r| r["message"].as_str()).collect();
        let start = messages
            .iter()
            .position(|m| *m == format!("START RequestId: {id}"));
        let printed = messages
            .iter()
            .position(|m| m.starts_with("hello: POST /event-invoke"));
        let end = messages
            .iter()
            .position(|m| *m == format!("END RequestId: {id}"));
        let report = messages
            .iter()
            .position(|m| m.starts_with(&format!("Report RequestId: {id} Duration:")));
        assert!(
            matches!((start, printed, end, report), (Some(s), Some(p), Some(e), Some(r)) if s < p && p < e && e < r),
            "START, the function's line, END, Report in order for {id}: {messages:?}"
        );
        let line = of_id
            .iter()
            .find(|r| {
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("hello:"))
            })
            .unwrap();
        assert_eq!(line["function"], "hello");
        assert_eq!(line["namespace"], "default");
        assert_eq!(line["stream"], "stdout");
        assert!(line["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("hello-")));
    }
    let encoded = tail
        .headers
        .get("x-scf-log-result")
        .expect("X-Scf-Log-Result")
        .to_str()
        .unwrap();
    let decoded = decode_base64(encoded);
    assert!(
        decoded.contains(&format!("START RequestId: {}", ids[3])),
        "{decoded}"
    );
    assert!(
        decoded.contains(&format!("request_id={}", ids[3])),
        "the function's own line: {decoded}"
    );
    assert!(decoded.len() <= 4096);
    // The cold start was counted and logged with its duration.
    assert!(records
        .iter()
        .any(|r| r["message"] == "cold start" && r["duration_ms"].as_f64().is_some()));
}

fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_queued_behind_a_recycled_instance_gets_a_fresh_one() {
    let m = marker("requeue");
    let gw = GatewayProcess::start(
        "requeue",
        "",
        &rust_function(
            "one",
            &m,
            "timeout = \"2s\"\nqueue_timeout = \"20s\"",
            "max_instances = 1",
        ),
    );
    let first = env_of(&invoke(gw.listen, "one", &[("x-test-echo-env", "1")], "{}").await);
    let listen = gw.listen;
    // Hung far past the queue timeout: the waiter behind it is served only if the
    // timed-out instance is replaced.
    let hung =
        tokio::spawn(
            async move { invoke(listen, "one", &[("x-test-sleep-ms", "60000")], "{}").await },
        );
    // Its START line says it holds the instance (and stays, unlike a gauge), for the
    // whole timeout: the next invocation queues behind it.
    wait_until("the hung invocation to start", PATIENCE, async || {
        let records = gw.records();
        let starts = records.iter().filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("START RequestId:"))
        });
        starts.count() == 2
    })
    .await;
    let queued = invoke(gw.listen, "one", &[("x-test-echo-env", "1")], "{}").await;
    let queued = env_of(&queued);
    assert_ne!(queued["pid"], first["pid"], "served by a replacement");
    assert_eq!(hung.await.unwrap().error_code(), 433);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_a_queue_still_scales_from_zero() {
    let m = marker("noqueue");
    let gw = GatewayProcess::start(
        "noqueue",
        "",
        &rust_function("nq", &m, "queue_depth = 0", ""),
    );
    assert_eq!(
        invoke(gw.listen, "nq", &[], "{}").await.status,
        StatusCode::OK
    );
}

/// With overlapping invocations the cgroup's peak cannot be reset per invocation: the
/// usage is sampled while each one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_sampled_when_invocations_overlap() {
    if !is_root() {
        eprintln!("skipped: memory cgroups need root");
        return;
    }
    let m = marker("sampled");
    let gw = GatewayProcess::start(
        "sampled",
        "",
        &rust_function(
            "shared",
            &m,
            "memory_mb = 256\ninstance_concurrency = 2",
            "",
        ),
    );
    let h = [("x-test-alloc-mb", "48"), ("x-test-sleep-ms", "150")];
    let answer = invoke(gw.listen, "shared", &h, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    let id = answer.request_id().to_owned();
    let (line, usage) = mem_usage(&gw, &id).await;
    assert!((40.0..256.0).contains(&usage), "{line}");
}
