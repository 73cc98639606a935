//! Image functions end to end: the real gateway binary runs an OCI image (the example
//! function as a `FROM scratch` image) as runc containers, each in a network namespace
//! of its own and all on port 9000; process functions with `network = "isolated"` get
//! the same. Containers and namespaces need root and runc: without them each test says
//! why and returns.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::image::{function_image_layout, function_image_layout_with, FunctionImage};
use common::*;
use http::StatusCode;

/// Root and a runtime: what every test here needs.
fn can_run_containers() -> bool {
    if !is_root() {
        eprintln!("skipped: containers and network namespaces need root");
        return false;
    }
    let runc = std::process::Command::new("runc").arg("--version").output();
    if !matches!(runc, Ok(out) if out.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "runc is not installed (Debian: runc), and CI needs this test"
        );
        eprintln!("skipped: runc is not installed");
        return false;
    }
    true
}

/// A gateway whose directory holds the example function's image at `img` (tag `v1`);
/// `functions` may refer to it as `oci:img:v1`.
fn gateway_with_image(name: &str, server: &str, functions: &str) -> GatewayProcess {
    let dir = std::env::temp_dir().join(format!("scf-gw-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    function_image_layout(&dir.join("img"), "v1");
    let server = format!("{server}\n[images]\nstore = \"store\"\n");
    GatewayProcess::start(name, &server, functions)
}

fn image_function(name: &str, function_keys: &str, launch_keys: &str) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\n{function_keys}\n[functions.launch]\n\
         image = \"oci:img:v1\"\nenv = {{ GREETING = \"hi\" }}\n{launch_keys}\n"
    )
}

/// Container ids (`runc list`) of a function's instances: `scfgw-<slot>-<function>-<n>`.
fn containers_of(function: &str) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|id| id.starts_with("scfgw-") && id.contains(&format!("-{function}-")))
        .map(str::to_owned)
        .collect()
}

/// The namespace a container id names: `scfgw-<slot>`.
fn netns_of(container: &str) -> String {
    let slot = container.split('-').nth(1).unwrap();
    format!("scfgw-{slot}")
}

fn netns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn mounted(what: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(what))
}

/// Distinct instances named by the START lines of the answers' request ids.
fn instances_of(gw: &GatewayProcess, ids: &[String]) -> HashSet<String> {
    gw.records()
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("START "))
                && ids.iter().any(|id| r["request_id"] == id.as_str())
        })
        .filter_map(|r| r["instance"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts that every answer is 200 and waits until the START lines of their request
/// ids name three distinct instances; returns those.
async fn all_ok_on_three_instances(gw: &GatewayProcess, answers: &[Answer]) -> HashSet<String> {
    let ids: Vec<String> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            a.request_id().to_owned()
        })
        .collect();
    wait_for("three instances in the START lines", PATIENCE, async || {
        let seen = instances_of(gw, &ids);
        (seen.len() == 3).then_some(seen)
    })
    .await
}

/// `n` concurrent invocations that each hold their instance for `hold_ms`.
async fn burst(gw: &GatewayProcess, function: &str, n: usize, hold_ms: u64) -> Vec<Answer> {
    let listen = gw.listen;
    let hold = hold_ms.to_string();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let function = function.to_owned();
            let hold = hold.clone();
            tokio::spawn(async move {
                invoke(
                    listen,
                    &function,
                    &[("x-test-sleep-ms", hold.as_str())],
                    "{}",
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_containers_of_an_image_that_binds_9000_serve_a_burst_then_sigterm_leaves_nothing() {
    if !can_run_containers() {
        return;
    }
    let functions = image_function("burst", "", "max_instances = 3");
    let gw = gateway_with_image("img-burst", "", &functions);
    // Start all three first, so that the burst measures serving, not starting.
    let warm = burst(&gw, "burst", 3, 1500).await;
    for answer in &warm {
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let answers = burst(&gw, "burst", 30, 100).await;
    let instances = all_ok_on_three_instances(&gw, &answers).await;
    assert!(
        instances.iter().all(|i| i.starts_with("burst-")),
        "{instances:?}"
    );

    let containers = containers_of("burst");
    assert_eq!(containers.len(), 3, "{containers:?}");
    let namespaces: Vec<String> = containers.iter().map(|c| netns_of(c)).collect();
    for ns in &namespaces {
        assert!(netns_exists(ns), "namespace {ns} while running");
    }

    gw.signal("TERM");
    let status = gw.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(
        containers_of("burst").is_empty(),
        "SIGTERM leaves no container"
    );
    for ns in &namespaces {
        assert!(!netns_exists(ns), "SIGTERM leaves no namespace {ns}");
        assert!(!mounted(&format!("/run/netns/{ns}")), "nor its mount");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_sees_the_scf_environment_a_writable_tmp_and_a_read_only_root() {
    if !can_run_containers() {
        return;
    }
    let functions = image_function("envimg", "memory_mb = 256", "tmp_mb = 16");
    let gw = gateway_with_image("img-env", "", &functions);
    let answer = invoke(gw.listen, "envimg", &[("x-test-echo-env", "1")], "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let env = answer.json();
    assert_eq!(env["PORT"], "9000");
    assert_eq!(env["USER_CODE_ROOT"], "/var/user/");
    assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
    assert_eq!(env["SCF_FUNCTIONNAME"], "envimg");
    assert_eq!(env["USER"], "qcloud");
    assert_eq!(env["TMPDIR"], "/tmp");
    // The image's Env under the platform's, the function's env on top.
    assert_eq!(env["IMAGE_VAR"], "from-image");
    assert_eq!(env["GREETING"], "hi");
    assert!(env["PATH"].as_str().unwrap().contains("/usr/bin"));
    assert!(
        env.get("SCF_TEST_GATEWAY_ONLY").is_none(),
        "the gateway's environment leaked"
    );
    // Its own pid namespace: the function is its container's first process.
    assert_eq!(env["pid"], 1);

    let probe = invoke(gw.listen, "envimg", &[("x-test-write-probe", "1")], "{}").await;
    assert_eq!(probe.status, StatusCode::OK);
    let probe = probe.json();
    assert_eq!(probe["tmp"], "ok", "/tmp is writable");
    let root = probe["root"].as_str().unwrap();
    assert!(
        root.contains("Read-only file system"),
        "/ is read-only: {root}"
    );

    // The container's stdout and stderr become the invocation's log records.
    let printed = invoke(
        gw.listen,
        "envimg",
        &[("x-test-print", "from-the-container")],
        "{}",
    )
    .await;
    assert_eq!(printed.status, StatusCode::OK);
    let id = printed.request_id().to_owned();
    for (text, stream) in [
        ("from-the-container", "stdout"),
        ("from-the-container (stderr)", "stderr"),
    ] {
        let line = wait_for("the container's line", PATIENCE, async || {
            gw.records()
                .into_iter()
                .find(|r| r["message"] == text && r["request_id"] == id.as_str())
        })
        .await;
        assert_eq!(line["stream"], stream);
        assert_eq!(line["function"], "envimg");
        assert!(line["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("envimg-")));
    }

    let headers = invoke(gw.listen, "envimg", &[("x-test-echo-headers", "1")], "{}").await;
    assert_eq!(headers.status, StatusCode::OK);
    let headers = headers.json();
    assert_eq!(headers["x-scf-memory"], "256");
    assert_eq!(headers["x-scf-name"], "envimg");
    assert!(headers["x-scf-request-id"]
        .as_str()
        .is_some_and(|id| id.len() == 36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_past_its_memory_limit_gives_502_434() {
    if !can_run_containers() {
        return;
    }
    let functions = image_function("oomimg", "memory_mb = 64", "");
    let gw = gateway_with_image("img-oom", "", &functions);
    let ok = invoke(gw.listen, "oomimg", &[("x-test-alloc-mb", "16")], "{}").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let id = ok.request_id().to_owned();
    let answer = invoke(gw.listen, "oomimg", &[("x-test-alloc-mb", "200")], "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
    assert_eq!(answer.error_code(), 434, "{}", answer.error_message());
    assert!(
        answer.error_message().contains("64 MB"),
        "{}",
        answer.error_message()
    );
    // The earlier invocation's peak memory was measured in the container's cgroup.
    let report = wait_for("the Report line", PATIENCE, async || {
        gw.records().into_iter().find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("Report RequestId: {id}")))
        })
    })
    .await;
    let line = report["message"].as_str().unwrap();
    let usage: f64 = line
        .split("MemUsage:")
        .nth(1)
        .and_then(|s| s.split("MB").next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((16.0..64.0).contains(&usage), "{line}");
    // It waited for the container's cold start, which the line and the metrics report.
    let init: f64 = line
        .split(" InitDuration:")
        .nth(1)
        .and_then(|s| s.strip_suffix("ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("InitDuration at the end: {line}"));
    assert!(init > 0.0 && init < 30_000.0, "{line}");
    let metrics = gw.metrics().await;
    let starts = metric(
        &metrics,
        "scf_gateway_cold_start_seconds_count{function=\"oomimg\"}",
    );
    assert!(starts >= Some(1.0), "{metrics}");
    // A new container serves the next invocation.
    let next = invoke(gw.listen, "oomimg", &[], "{}").await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_never_listens_gets_the_platforms_503_405_and_is_removed() {
    if !can_run_containers() {
        return;
    }
    // `args` replace the image's Cmd: the function is told never to listen.
    let functions = image_function(
        "deafimg",
        "",
        "args = [\"--never-listen\"]\nready_timeout = \"1s\"\nmax_instances = 1",
    );
    let gw = gateway_with_image("img-deaf", "", &functions);
    let answer = invoke(gw.listen, "deafimg", &[], "{}").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.error_code(), 405);
    assert_eq!(
        answer.error_message(),
        "The request timed out in 1000ms.Please confirm your http server have enabled \
         listening on port 9000."
    );
    wait_for("the container to be removed", PATIENCE, async || {
        containers_of("deafimg").is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_a_hard_coded_port_9000_scales_to_three_when_isolated() {
    if !can_run_containers() {
        return;
    }
    // The shape of `app.run(host="0.0.0.0", port=9000)`: the port is not read from PORT.
    let app = r#"
import http.server, time

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        time.sleep(0.2)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 9000), H).serve_forever()
"#;
    let dir = std::env::temp_dir().join(format!("scf-flask-shaped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), app).unwrap();
    let functions = format!(
        "[[functions]]\nname = \"flaskish\"\nqueue_timeout = \"20s\"\n[functions.launch]\ncommand = \"python3\"\n\
         args = [\"app.py\"]\nworkdir = \"{}\"\nnetwork = \"isolated\"\nmax_instances = 3\n",
        dir.display()
    );
    let gw = GatewayProcess::start("isolated", "", &functions);
    let answers = burst(&gw, "flaskish", 50, 0).await;
    let instances = all_ok_on_three_instances(&gw, &answers).await;
    assert!(
        instances.iter().all(|i| i.starts_with("flaskish-")),
        "{instances:?}"
    );
    gw.signal("TERM");
    assert_eq!(gw.exited().await.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_images_are_config_errors_at_check_time() {
    if !is_root() {
        eprintln!("skipped: image functions need root");
        return;
    }
    let dir = common::image::TempDir::new("check-images");
    let arm = FunctionImage {
        arch: "arm64".into(),
        ..FunctionImage::default()
    };
    function_image_layout_with(&dir.path().join("arm"), "v1", &arm);
    function_image_layout(&dir.path().join("ok"), "v1");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[images]\nmax_image_bytes = 1000\n\
         [[functions]]\nname = \"arm\"\n[functions.launch]\nimage = \"oci:arm:v1\"\n\
         [[functions]]\nname = \"big\"\n[functions.launch]\nimage = \"oci:ok:v1\"\n\
         [[functions]]\nname = \"gone\"\n[functions.launch]\nimage = \"oci:missing:v1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(
        errors[0].contains("oci:") && errors[0].contains("linux/arm64"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("more than the limit of 1000 bytes"),
        "{}",
        errors[1]
    );
    assert!(errors[2].contains("missing"), "{}", errors[2]);
    for (error, line) in errors.iter().zip([6, 10, 14]) {
        assert!(error.contains(&format!("gateway.toml:{line}:")), "{error}");
    }
    let _ = Path::new(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_container_is_replaced_and_an_idle_one_removed() {
    if !can_run_containers() {
        return;
    }
    let functions = image_function(
        "slowimg",
        "timeout = \"500ms\"",
        "max_instances = 1\nidle_timeout = \"1s\"",
    );
    let gw = gateway_with_image("img-slow", "", &functions);
    let first = invoke(gw.listen, "slowimg", &[], "{}").await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let before = containers_of("slowimg");
    assert_eq!(before.len(), 1, "{before:?}");

    // A timeout recycles the container: the next invocation runs in a new one.
    let answer = invoke(gw.listen, "slowimg", &[("x-test-sleep-ms", "5000")], "{}").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.error_code(), 433);
    wait_for(
        "the timed-out container to be deleted",
        PATIENCE,
        async || (!containers_of("slowimg").contains(&before[0])).then_some(()),
    )
    .await;
    let next = invoke(gw.listen, "slowimg", &[], "{}").await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    let after = containers_of("slowimg");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);

    // Idle past `idle_timeout`: stopped, and its container and namespace go with it.
    let namespace = netns_of(&after[0]);
    wait_for("the idle container to be removed", PATIENCE, async || {
        containers_of("slowimg").is_empty().then_some(())
    })
    .await;
    wait_until("its namespace to be removed", PATIENCE, async || {
        !netns_exists(&namespace)
    })
    .await;
}
