//! The `scf-gateway` command: `run` the daemon or `check` a config file.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use scf_gateway::asynchronous::cron;
use scf_gateway::config::{AsyncStore, Config, FunctionKind, InstanceSource, Network};

/// jemalloc rather than glibc's malloc (docs/adr/0004-jemalloc.md): many idle keep-alive
/// connections leave glibc's heap fragmented, each parked connection's few long-lived
/// objects between the holes its request buffers left, holes whose first page
/// `malloc_trim` cannot give back (10,000 idle connections: +42 MB with glibc, +15 MB with
/// jemalloc, whose size classes keep buffers and long-lived objects on separate slabs).
/// On the request path, with the settings below, it runs fewer instructions than glibc
/// and the same CPU per request within the noise of A/B runs.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation; `_RJEM_MALLOC_CONF` in the
/// environment adds to them (docs/adr/0004-jemalloc.md):
/// - freed pages go back to the system after about a second, by jemalloc's own
///   background thread rather than on the request path (with no delay,
///   `dirty_decay_ms:0`, the purging cost 17 % more CPU per request under load);
/// - the thread cache keeps up to 128 objects of each size and sweeps itself every 4 MB
///   allocated instead of every 64 KB: with jemalloc's defaults, 64 requests in flight
///   overflowed it and its sweeps emptied it, 1,800 more instructions per request than
///   glibc (callgrind); with these, about 1,000 fewer.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
// SAFETY: jemalloc reads this symbol as a NUL-terminated C string, which the literal is,
// and nothing else in the program defines it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 141] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,\
tcache_nslots_small_min:128,tcache_nslots_large:128,tcache_gc_incr_bytes:4194304\0";

#[derive(Parser)]
#[command(
    name = "scf-gateway",
    version,
    about = "Invocation gateway for SCF image functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the daemon.
    Run {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// `json` (default) for machines, `text` for humans.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
    },
    /// Validate a config file and print a short summary.
    Check {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// The exit status of an invalid configuration, as the contract fixes it.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                print_summary(&config);
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Run { config, log_format } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            init_logging(log_format);
            match scf_gateway::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "scf-gateway failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// JSON lines on stdout by default; `RUST_LOG` refines the level (default `info`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn print_summary(config: &Config) {
    println!("config {} is valid", config.path.display());
    println!(
        "listeners: invocations on {}{}, admin on {}",
        config.server.listen,
        if config.server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        },
        config.server.admin_listen
    );
    println!("functions: {}", config.functions.len());
    for f in &config.functions {
        let kind = match f.kind {
            FunctionKind::Event => "event",
            FunctionKind::Http => "http",
        };
        let pool = match &f.source {
            InstanceSource::Static(instances) => format!(
                "{} static instance(s) x {} slot(s)",
                instances.len(),
                f.instance_concurrency
            ),
            // Only the names of `env`: its values may be secrets and are never printed.
            InstanceSource::Launch(l) => format!(
                "launched {}, {}..{} instance(s) x {} slot(s){}{}",
                match &l.image {
                    Some(image) => format!("image {}", image.reference),
                    None if l.network == Network::Isolated => format!("`{}` (isolated)", l.command),
                    None => format!("`{}`", l.command),
                },
                l.min_instances,
                l.max_instances,
                f.instance_concurrency,
                l.port.map(|p| format!(", port {p}")).unwrap_or_default(),
                if l.env.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = l.env.iter().map(|(name, _)| name.as_str()).collect();
                    format!(", env {}", names.join(" "))
                }
            ),
        };
        println!(
            "  {}/{} ({kind}, version {}, {} MB, timeout {:?}, {pool})",
            f.namespace, f.name, f.version, f.memory_mb, f.timeout
        );
        let now = std::time::SystemTime::now();
        for t in &f.timers {
            let next = match t.schedule.next_after(now) {
                _ if !t.enabled => "disabled".to_string(),
                Some(next) => format!("next {}", cron::rfc3339(next)),
                None => "no tick to come".to_string(),
            };
            println!("    timer {}: {} ({next})", t.name, t.cron);
        }
    }
    // The Redis URL may carry a password: only the store's kind is shown.
    match &config.asynchronous.store {
        AsyncStore::Embedded { path } => println!(
            "async: embedded store in {}, {} retries, retention {:?}",
            path.display(),
            config.asynchronous.retries,
            config.asynchronous.retention
        ),
        AsyncStore::Redis { .. } => println!(
            "async: redis store, {} retries, retention {:?}",
            config.asynchronous.retries, config.asynchronous.retention
        ),
    }
    // SecretIds may be shown; their keys never are.
    if config.api.enabled() {
        let ids: Vec<&str> = config
            .api
            .keys
            .iter()
            .map(|k| k.secret_id.as_str())
            .collect();
        println!(
            "api: Tencent Cloud API 3.0 on POST / with {} key(s): {}",
            ids.len(),
            ids.join(", ")
        );
    } else {
        println!("api: off (no [[api.keys]])");
    }
    println!("routes: {}", config.routes.len());
    for r in &config.routes {
        let f = &config.functions[r.function];
        println!(
            "  {}{} -> {}/{}{}",
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            f.namespace,
            f.name,
            if r.strip_prefix {
                " (strip prefix)"
            } else {
                ""
            }
        );
    }
}
