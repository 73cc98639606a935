//! Cold-start overhead added by the gateway: from the moment a launched instance's
//! process starts listening to the moment the first invocation reaches it. That is the
//! readiness poll's delay plus connecting and forwarding; the process's own start-up
//! time is not the gateway's and is not counted.
//!
//! `cargo bench --bench cold_start` (builds the release example function if needed).
//! 20 cold starts by default (`COLD_STARTS=n` to change); prints median, p90, max.

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use scf_gateway::config::parse;
use scf_gateway::RunningGateway;

mod common;
use common::example_function;

async fn invoke(addr: std::net::SocketAddr) -> (u16, Option<u64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/functions/cold/invocations")
        .header("host", "bench")
        .header("x-test-since-listen", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let since = response
        .headers()
        .get("x-since-listen-us")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let _ = response.into_body().collect().await;
    (status, since)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let runs: usize = std::env::var("COLD_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let function = example_function();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[functions]]\nname = \"cold\"\n[functions.launch]\ncommand = \"{}\"\n\
         max_instances = 1\nidle_timeout = \"50ms\"\n",
        function.display()
    );
    let config = match parse(&text, std::path::Path::new("bench.toml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let gw = RunningGateway::start(&config).await.unwrap();
        let pool = gw.gateway().functions()[0].pool().clone();
        let mut overheads = Vec::new();
        let mut totals = Vec::new();
        for _ in 0..runs {
            // Wait for the previous instance to be stopped as idle: the next is cold.
            let idle_since = Instant::now();
            while !pool.instances().is_empty() && idle_since.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let started = Instant::now();
            let (status, since) = invoke(gw.listen_addr()).await;
            assert_eq!(status, 200);
            totals.push(started.elapsed().as_secs_f64() * 1000.0);
            overheads.push(since.expect("the function reports its listen time") as f64 / 1000.0);
        }
        overheads.sort_by(f64::total_cmp);
        totals.sort_by(f64::total_cmp);
        println!("cold starts: {runs}");
        println!(
            "gateway overhead (listen -> first invocation arrives): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            percentile(&overheads, 0.5),
            percentile(&overheads, 0.9),
            overheads[overheads.len() - 1]
        );
        println!(
            "whole cold invocation as the client sees it: median {:.2} ms, p90 {:.2} ms",
            percentile(&totals, 0.5),
            percentile(&totals, 0.9)
        );
        gw.shutdown().await;
    });
}
