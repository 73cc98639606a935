//! Cold starts side by side: a container of a cached image started by the gateway, the
//! same bundle started by hand with `runc run`, and a process function.
//!
//! `cargo bench --bench cold_start_image` (root and runc needed; builds the release
//! example function). Rounds are interleaved so that the three share the machine's
//! state; 20 by default (`COLD_STARTS=n`). Each row is the time until the function
//! listens on port 9000:
//!
//! - **gateway, image**: a cold invocation as the client sees it (the start decision,
//!   namespace and link, cgroup, bundle, `runc run --detach`, readiness, forwarding);
//! - **bare runc**: `runc run --detach` of the bundle the gateway wrote (its network
//!   namespace made by runc itself, its cgroup runc's default), until the function's
//!   socket is listening (read from `/proc/<pid>/net/tcp`), then `runc delete`;
//! - **gateway, process**: a cold invocation of the same binary as a host process.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use scf_gateway::config::parse;
use scf_gateway::RunningGateway;
use tokio::time::Instant;

/// The test suite's image fixture: the example function as an OCI image layout.
#[allow(dead_code)]
#[path = "../tests/common/image.rs"]
mod image;

mod common;
/// The binary the image fixture packs (the fixture calls it at the crate root).
use common::example_function;

async fn invoke(addr: std::net::SocketAddr, function: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("/v1/functions/{function}/invocations"))
        .header("host", "bench")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Whether the network namespace of `pid` has a socket listening on port 9000.
fn listening_on_9000(pid: u32) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or("");
        let state = fields.nth(1).unwrap_or("");
        local.ends_with(":2328") && state == "0A"
    })
}

fn runc(args: &[&str]) -> std::process::Output {
    std::process::Command::new("runc")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc runs")
}

/// One start of the bundle by hand, until it listens; then removed.
async fn bare_runc(bundle: &Path, round: usize) -> Duration {
    let id = format!("scf-bench-bare-{}-{round}", std::process::id());
    let pid_file = bundle.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    let started = Instant::now();
    let out = std::process::Command::new("runc")
        .args(["run", "--detach", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runc runs");
    assert!(out.success(), "runc run of the bundle failed");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut pause = Duration::from_micros(500);
    while !listening_on_9000(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never listened"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(2));
    }
    let took = started.elapsed();
    runc(&["delete", "--force", &id]);
    took
}

/// Waits until the pool of `function` has no instance (stopped as idle) and what a
/// stopped container leaves to remove (its bundle, its namespace but the one spare) is
/// gone, so that no teardown overlaps the next start.
async fn wait_idle(gw: &RunningGateway, function: usize) {
    let pool = gw.gateway().functions()[function].pool().clone();
    let count = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
    };
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(10)
        && (!pool.instances().is_empty()
            || count("/run/scf-gateway/bundles", "scfgw-") > 0
            || count("/run/netns", "scfgw-") > 1)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn summary(name: &str, samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<18} median {:>7.2} ms   p90 {:>7.2} ms   min {:>7.2} ms",
        at(0.5),
        at(0.9),
        samples[0]
    );
    at(0.5)
}

fn main() {
    if !rustix::process::geteuid().is_root() || runc(&["--version"]).status.code() != Some(0) {
        println!("cold_start_image: skipped (needs root and runc)");
        return;
    }
    let runs: usize = std::env::var("COLD_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let function = example_function();
    let dir = std::env::temp_dir().join(format!("scf-bench-cold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    image::function_image_layout(&dir.join("img"), "v1");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [images]\nstore = \"store\"\n\
         [[functions]]\nname = \"img\"\n[functions.launch]\nimage = \"oci:img:v1\"\n\
         max_instances = 1\nidle_timeout = \"50ms\"\n\
         [[functions]]\nname = \"proc\"\n[functions.launch]\ncommand = \"{}\"\n\
         max_instances = 1\nidle_timeout = \"50ms\"\n",
        function.display()
    );
    let config = match parse(&text, &dir.join("bench.toml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let gw = RunningGateway::start(&config).await.unwrap();
        let listen = gw.listen_addr();
        // The first start unpacks the image; every later one uses the store.
        assert_eq!(invoke(listen, "img").await, 200);
        let bundle = dir.join("bare");
        let mut spec: serde_json::Value = {
            let bundles = std::fs::read_dir("/run/scf-gateway/bundles").unwrap();
            let ours = bundles
                .flatten()
                .find(|e| e.file_name().to_string_lossy().contains("-img-"))
                .expect("the gateway's bundle");
            serde_json::from_slice(&std::fs::read(ours.path().join("config.json")).unwrap())
                .unwrap()
        };
        // By hand: runc makes the network namespace and its own cgroup.
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            ns.as_object_mut().unwrap().remove("path");
        }
        spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        wait_idle(&gw, 0).await;

        let (mut image, mut bare, mut process) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..runs {
            let started = Instant::now();
            assert_eq!(invoke(listen, "img").await, 200);
            image.push(started.elapsed().as_secs_f64() * 1000.0);

            bare.push(bare_runc(&bundle, round).await.as_secs_f64() * 1000.0);

            let started = Instant::now();
            assert_eq!(invoke(listen, "proc").await, 200);
            process.push(started.elapsed().as_secs_f64() * 1000.0);
            wait_idle(&gw, 0).await;
            wait_idle(&gw, 1).await;
        }
        println!("cold starts: {runs} rounds, interleaved");
        let image = summary("gateway, image", &mut image);
        let bare = summary("bare runc", &mut bare);
        summary("gateway, process", &mut process);
        println!(
            "gateway image / bare runc (medians): {:.2} ({:+.1} %)",
            image / bare,
            (image / bare - 1.0) * 100.0
        );
        gw.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
