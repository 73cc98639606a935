//! The daemon's serving side: the listeners, the worker threads that serve them, and how
//! they stop. `server.listen` and the admin listener speak HTTP/1.1 and HTTP/2 (h2c with
//! prior knowledge), `server.listen` over TLS with `[server.tls]` (`tls`); at shutdown,
//! in-flight invocations get `shutdown_grace` to finish.
//!
//! A client connection passes through the submodules in this order: `accept` (a worker
//! takes it, within `max_connections` and unless it holds more than its share:
//! `balance`), `connection` (its task and timers, HTTP/2 or HTTP/1.1), `http2` (HTTP/2
//! with the client timers), `parking` (HTTP/1.1, idle connections parked, told from busy
//! ones by `activity`) and `drain` (counted until it closes, told to finish at
//! shutdown). `memory` gives what closed and parked connections release back to the
//! system.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin;
use crate::asynchronous;
use crate::config::{Config, ConfigErrors};
use crate::headers::Scheme;
use crate::invoke::Gateway;
use crate::reload::{Current, Reloaded, Reloader};
use crate::worker;

mod accept;
mod activity;
mod balance;
mod connection;
mod drain;
mod http2;
mod memory;
mod parking;
pub mod tls;

use accept::serve;
use balance::Balance;
use connection::ClientTimers;
use drain::Drain;
use memory::{memory_upkeep, TRIM_AFTER_RELEASED, TRIM_PERIOD};
pub use tls::{TlsError, TlsHandle};

/// Open connections on the admin listener, at most: its own bound, apart from
/// `server.max_connections`, so that clients filling the invocation listener never lock
/// the operator out, and the admin listener cannot hold many descriptors either.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Descriptors kept beyond two per client connection (a client's and, at most, one to an
/// instance) for instances, their pipes, listeners and files.
const SPARE_FILES: u64 = 1024;

/// `server.max_connections` as a semaphore's permits.
fn max_connections(configured: u64) -> usize {
    usize::try_from(configured)
        .unwrap_or(Semaphore::MAX_PERMITS)
        .min(Semaphore::MAX_PERMITS)
}

/// Raises the open-file limit to fit `max_connections` client connections, one
/// upstream connection each, and [`SPARE_FILES`]; warns if the hard limit is lower.
fn raise_open_files(max_connections: u64) {
    let wanted = max_connections
        .saturating_mul(2)
        .saturating_add(ADMIN_MAX_CONNECTIONS as u64)
        .saturating_add(SPARE_FILES);
    match crate::sys::raise_open_files(wanted) {
        Ok((Some(soft), hard)) if soft < wanted => tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            wanted,
            max_connections,
            "the open-file limit is below what server.max_connections needs; raise it (LimitNOFILE)"
        ),
        Ok((soft, _)) => tracing::debug!(open_files = ?soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, wanted, "cannot raise the open-file limit"),
    }
}

/// How long launched instances get to exit on SIGTERM before SIGKILL at shutdown.
const INSTANCE_STOP_GRACE: Duration = Duration::from_secs(3);

/// A started gateway: its listeners are bound and serving.
pub struct RunningGateway {
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    reloader: Arc<Reloader>,
    ready: Arc<AtomicBool>,
    grace: Duration,
    stop_invocations: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    invocations: JoinHandle<()>,
    /// Workers 1..N (thread-per-core), serving the same listening socket.
    workers: Vec<Worker>,
    admin: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    /// `[server.tls]`: the certificate every worker serves, swapped by a reload.
    tls: Option<TlsHandle>,
}

/// A worker thread beyond the first: its own `current_thread` runtime serving the
/// invocation listener.
struct Worker {
    thread: std::thread::JoinHandle<()>,
    /// Resolves (with an error: the sender is dropped) when the thread is done.
    done: oneshot::Receiver<()>,
}

impl RunningGateway {
    /// Binds the listeners, starts the pools and serves. Must run inside a Tokio runtime,
    /// which is the first worker: it also runs the admin listener, the pools' keepers
    /// and launched instances. With `server.workers = N > 1`, N - 1 more worker threads
    /// (`scf-worker-1`, ...), each with a `current_thread` runtime, accept invocations
    /// on the same listening socket.
    pub async fn start(config: &Config) -> io::Result<RunningGateway> {
        let listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let listen_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let tls = match &config.server.tls {
            Some(tls) => Some(TlsHandle::new(tls).map_err(io::Error::other)?),
            None => None,
        };
        let scheme = if tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };

        let launches = config
            .functions
            .iter()
            .any(|f| matches!(f.source, crate::config::InstanceSource::Launch(_)));
        if launches {
            // Decide on memory cgroups now, so a warning that they are off comes at start.
            let _ = crate::instance::cgroup::layout();
        }
        let isolates = config.functions.iter().any(|f| {
            matches!(&f.source, crate::config::InstanceSource::Launch(l)
                if l.network == crate::config::Network::Isolated)
        });
        if isolates {
            // Namespaces and containers left by a gateway that was killed, on slots
            // nobody holds any more: removed before new ones take their place.
            let swept = crate::instance::netns::sweep_stale(&config.images.runtime).await;
            if swept > 0 {
                tracing::info!(
                    "removed {swept} namespaces and containers left by a stopped gateway"
                );
            }
            crate::instance::container::sweep_bundles().await;
            // The first cold start then finds its namespace built.
            crate::instance::netns::keep_spare();
        }
        let events = Arc::new(asynchronous::Service::new(&config.asynchronous));
        let mut built = Gateway::build(Arc::new(config.clone()), None);
        built.gateway.set_events(events.clone());
        for pool in &built.new_pools {
            pool.start();
        }
        let reloader = Arc::new(Reloader::new(config, built, tls.clone()));
        let current = reloader.current().clone();
        events.start(&current).await;
        let gateway = current.load_full();
        let ready = Arc::new(AtomicBool::new(false));
        let grace = config.server.shutdown_grace;

        let timers = ClientTimers::new(
            config.server.header_read_timeout,
            config.server.client_idle_timeout,
        );
        let (stop_invocations, stop) = watch::channel(false);
        let n = config.server.workers.max(1);
        let balance = (n > 1).then(|| Arc::new(Balance::new(n)));
        let limit = Arc::new(Semaphore::new(max_connections(
            config.server.max_connections,
        )));
        let drain = |index| Arc::new(Drain::sharing(balance.clone(), index, limit.clone()));
        let mut workers = Vec::new();
        for index in 1..n {
            // A second descriptor of the same socket, not a second socket: a second
            // gateway on the port still fails to bind.
            let shared = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
            let (stop, current) = (stop.clone(), current.clone());
            let on = Listening {
                tls: tls.clone(),
                scheme,
            };
            match Worker::spawn(
                index,
                shared,
                stop,
                grace,
                timers,
                drain(index),
                current,
                on,
            )
            .await
            {
                Ok(w) => workers.push(w),
                Err(e) => {
                    let _ = stop_invocations.send(true);
                    return Err(e);
                }
            }
        }
        let served = current.clone();
        let invocations = tokio::spawn(serve(
            listener,
            stop,
            grace,
            timers,
            drain(0),
            gateway.registry().worker_connections(0),
            tls.clone(),
            // The handler's own future, not one wrapping it: hyper keeps and moves it.
            move |req, peer| served.load_full().handle(req, peer, scheme),
        ));

        let (stop_admin, stop) = watch::channel(false);
        let state = admin::AdminState::new(
            reloader.clone(),
            ready.clone(),
            config.server.admin_token.as_ref(),
        );
        let admin = tokio::spawn(serve(
            admin_listener,
            stop,
            grace,
            timers,
            Arc::new(Drain::limited(ADMIN_MAX_CONNECTIONS)),
            crate::metrics::Counter::noop(),
            None,
            move |req, _| {
                let state = state.clone();
                async move { admin::handle(&state, req).await }
            },
        ));

        let upkeep = tokio::spawn(memory_upkeep(TRIM_PERIOD, TRIM_AFTER_RELEASED));

        ready.store(true, Ordering::Release);
        tracing::info!(%listen_addr, %admin_addr, functions = config.functions.len(), "scf-gateway ready");
        drop(gateway);
        Ok(RunningGateway {
            listen_addr,
            admin_addr,
            reloader,
            ready,
            grace,
            stop_invocations,
            stop_admin,
            invocations,
            workers,
            admin,
            upkeep,
            tls,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The gateway serving new invocations now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.reloader.current().load_full()
    }

    /// Reads the config file again and applies it (what `SIGHUP` does).
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        self.reloader.reload().await
    }

    /// Applies an already validated config, as a reload would.
    pub async fn apply(&self, config: Config) -> Result<Reloaded, ConfigErrors> {
        self.reloader.apply(config).await
    }

    pub(crate) fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// TLS on `server.listen`, when `[server.tls]` is set: [`TlsHandle::reload`] swaps
    /// the certificate for every worker's next handshake.
    pub fn tls(&self) -> Option<&TlsHandle> {
        self.tls.as_ref()
    }

    /// Stops accepting, lets in-flight invocations finish within `shutdown_grace` on
    /// every worker (`/readyz` answers 503 meanwhile), joins the worker threads, then
    /// stops the admin listener and the pools.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop_invocations.send(true);
        let _ = self.invocations.await;
        for worker in self.workers {
            let _ = worker.done.await;
            let _ = worker.thread.join();
        }
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
        self.upkeep.abort();
        // Asynchronous attempts under way finish within the same grace; the events
        // not begun wait in the store for the next start.
        if let Some(events) = self.reloader.current().load().events() {
            events.stop(self.grace).await;
        }
        self.reloader.close_retiring().await;
        let stops: Vec<_> = self
            .reloader
            .current()
            .load()
            .functions()
            .iter()
            .map(|f| {
                let pool = f.pool().clone();
                tokio::spawn(async move { pool.close(INSTANCE_STOP_GRACE).await })
            })
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        crate::instance::netns::close_spares().await;
        tracing::info!(grace = ?self.grace, "scf-gateway stopped");
    }
}

/// How the invocation listener is spoken to: in TLS or not, and the scheme web functions
/// are told (`X-Forwarded-Proto`).
struct Listening {
    tls: Option<TlsHandle>,
    scheme: Scheme,
}

// === impl Worker ===

impl Worker {
    /// Starts worker `index` on its own thread and runtime, serving `listener` until
    /// `stop`, then draining for at most `grace`. Returns once it accepts.
    #[allow(clippy::too_many_arguments)] // what worker 0 gets, on another thread
    async fn spawn(
        index: usize,
        listener: std::net::TcpListener,
        stop: watch::Receiver<bool>,
        grace: Duration,
        timers: ClientTimers,
        drain: Arc<Drain>,
        current: Current,
        on: Listening,
    ) -> io::Result<Worker> {
        let (started, accepting) = oneshot::channel::<io::Result<()>>();
        let (finished, done) = oneshot::channel::<()>();
        let accepted = current.load().registry().worker_connections(index);
        let thread = std::thread::Builder::new()
            .name(format!("scf-worker-{index}"))
            .spawn(move || {
                // Dropped last, after the runtime and its connections: "done".
                let _finished = finished;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                worker::set(index);
                runtime.block_on(async move {
                    let listener = match listener
                        .set_nonblocking(true)
                        .and_then(|()| TcpListener::from_std(listener))
                    {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let _ = started.send(Ok(()));
                    serve(
                        listener,
                        stop,
                        grace,
                        timers,
                        drain,
                        accepted,
                        on.tls,
                        move |req, peer| current.load_full().handle(req, peer, on.scheme),
                    )
                    .await;
                });
            })?;
        match accepting.await {
            Ok(Ok(())) => Ok(Worker { thread, done }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other(format!("worker {index} failed to start"))),
        }
    }
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Runs the daemon until SIGTERM or SIGINT, then shuts down gracefully.
///
/// Thread-per-core: every worker is a `current_thread` runtime, no work stealing and no
/// cross-thread wake-ups (docs/adr/0002-thread-per-core.md gives the measurement). This
/// thread is the first worker; [`RunningGateway::start`] starts the others.
pub fn run(config: Config) -> io::Result<()> {
    raise_open_files(config.server.max_connections);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    worker::set(0);
    runtime.block_on(async {
        let running = RunningGateway::start(&config).await?;
        wait_for_signal(running.reloader()).await?;
        tracing::info!("signal received; draining in-flight invocations");
        running.shutdown().await;
        Ok(())
    })
}

/// Waits for SIGTERM or SIGINT; reloads the config on each SIGHUP meanwhile (an
/// invalid file is logged and changes nothing).
async fn wait_for_signal(reloader: &Reloader) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                let _ = reloader.reload().await;
            }
        }
    }
}

#[cfg(test)]
mod testing;
