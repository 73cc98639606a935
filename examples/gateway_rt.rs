//! `gateway_rt`: runs the gateway library (`RunningGateway`) on a runtime chosen on the
//! command line, to measure the runtime model without touching the daemon:
//!
//! ```text
//! cargo run --release --example gateway_rt -- --config gw.toml --runtime current
//! cargo run --release --example gateway_rt -- --config gw.toml --runtime multi --threads 1
//! ```
//!
//! `current`: one `current_thread` runtime (everything on the main thread, no work
//! stealing, no cross-thread wake-ups). `multi`: the work-stealing runtime with
//! `--threads` workers (for comparison: `scf-gateway run` runs `workers = N`
//! `current_thread` runtimes, one per thread; docs/adr/0002-thread-per-core.md).
//! Stops on SIGTERM or SIGINT. Logs nothing (benchmark use).

use std::path::PathBuf;

fn main() {
    let mut config = PathBuf::from("config/gateway.toml");
    let mut runtime = String::from("current");
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().expect("--config PATH").into(),
            "--runtime" => runtime = args.next().expect("--runtime current|multi"),
            "--threads" => threads = args.next().expect("--threads N").parse().expect("a number"),
            other => {
                eprintln!("usage: gateway_rt --config PATH [--runtime current|multi] [--threads N]; got {other:?}");
                std::process::exit(2);
            }
        }
    }
    let config = match scf_gateway::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = match runtime.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        other => {
            eprintln!("unknown runtime {other:?}");
            std::process::exit(2);
        }
    }
    .expect("runtime");
    rt.block_on(async {
        let running = scf_gateway::RunningGateway::start(&config)
            .await
            .expect("gateway starts");
        eprintln!(
            "gateway_rt: {runtime} runtime, listening on {}",
            running.listen_addr()
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("signal");
        let mut int = signal(SignalKind::interrupt()).expect("signal");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        running.shutdown().await;
    });
}
