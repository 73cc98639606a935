//! Listeners and lifecycle: HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on
//! `server.listen`, the admin listener, and the graceful shutdown that lets in-flight
//! invocations finish within `shutdown_grace`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin;
use crate::body::GatewayBody;
use crate::config::Config;
use crate::invoke::Gateway;

/// How long launched instances get to exit on SIGTERM before SIGKILL at shutdown.
const INSTANCE_STOP_GRACE: Duration = Duration::from_secs(3);
/// How often histogram samples are folded into buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A started gateway: its listeners are bound and serving.
pub struct RunningGateway {
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    ready: Arc<AtomicBool>,
    grace: Duration,
    stop_invocations: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    invocations: JoinHandle<()>,
    admin: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl RunningGateway {
    /// Binds the listeners, starts the pools and serves. Must run inside a Tokio runtime.
    pub async fn start(config: &Config) -> io::Result<RunningGateway> {
        let listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let listen_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let launches = config
            .functions
            .iter()
            .any(|f| matches!(f.source, crate::config::InstanceSource::Launch(_)));
        if launches {
            // Decide on memory cgroups now, so a warning that they are off comes at start.
            let _ = crate::instance::cgroup::layout();
        }
        let gateway = Arc::new(Gateway::new(config));
        for function in gateway.functions() {
            function.pool().start();
        }
        let ready = Arc::new(AtomicBool::new(false));
        let grace = config.server.shutdown_grace;

        let (stop_invocations, stop) = watch::channel(false);
        let gw = gateway.clone();
        let invocations = tokio::spawn(serve(listener, stop, grace, move |req, peer| {
            let gw = gw.clone();
            async move { gw.handle(req, peer).await }
        }));

        let (stop_admin, stop) = watch::channel(false);
        let state = admin::AdminState {
            registry: gateway.registry().clone(),
            ready: ready.clone(),
            pools: gateway
                .functions()
                .iter()
                .map(|f| f.pool().clone())
                .collect(),
        };
        let admin = tokio::spawn(serve(admin_listener, stop, grace, move |req, _| {
            let state = state.clone();
            async move { admin::handle(&state, req) }
        }));

        let registry = gateway.registry().clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                registry.run_upkeep();
            }
        });

        ready.store(true, Ordering::Release);
        tracing::info!(%listen_addr, %admin_addr, functions = config.functions.len(), "scf-gateway ready");
        Ok(RunningGateway {
            listen_addr,
            admin_addr,
            gateway,
            ready,
            grace,
            stop_invocations,
            stop_admin,
            invocations,
            admin,
            upkeep,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, lets in-flight invocations finish within `shutdown_grace`
    /// (`/readyz` answers 503 meanwhile), then stops the admin listener and the pools.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop_invocations.send(true);
        let _ = self.invocations.await;
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
        self.upkeep.abort();
        let stops: Vec<_> = self
            .gateway
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
        tracing::info!(grace = ?self.grace, "scf-gateway stopped");
    }
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Accepts connections until told to stop, then drains them for at most `grace`.
async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let builders = Arc::new((http1, http2));
    let drain = Arc::new(Drain::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let service = service_fn(move |req| {
                        let response = handler(req, peer);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let drain = drain.clone();
                    let builders = builders.clone();
                    tokio::spawn(async move {
                        // HTTP/2 with prior knowledge, told apart from HTTP/1.1 by one
                        // peek per connection rather than a rewinding reader per read.
                        // A client that goes away mid-request is not the gateway's error.
                        if is_h2_preface(&stream).await {
                            let conn = builders.1.serve_connection(TokioIo::new(stream), service);
                            let _ = drain.watch(conn).await;
                        } else {
                            let conn = builders.0.serve_connection(TokioIo::new(stream), service);
                            let _ = drain.watch(conn).await;
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let open = drain.open();
    drain.start();
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!(
            connections = open,
            ?grace,
            "shutdown grace expired with invocations still in flight"
        );
    }
}

/// Tells every open connection to finish what is in flight and close, at no cost per
/// request: a connection registers its task's waker once, then checks one flag when
/// polled (hyper-util's watcher re-registers on a watch channel at every poll).
#[derive(Default)]
struct Drain {
    closing: AtomicBool,
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    all_closed: Notify,
}

impl Drain {
    fn watch<C: GracefulConnection>(self: &Arc<Self>, conn: C) -> Draining<C> {
        self.open.fetch_add(1, Ordering::AcqRel);
        Draining {
            conn: Box::pin(conn),
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            registered: false,
            told: false,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn start(&self) {
        self.closing.store(true, Ordering::Release);
        let wakers: Vec<Waker> = lock(&self.wakers).drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection under a [`Drain`].
struct Draining<C> {
    conn: Pin<Box<C>>,
    drain: Arc<Drain>,
    id: u64,
    registered: bool,
    told: bool,
}

impl<C: GracefulConnection> Future for Draining<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if !this.told {
            if !this.registered {
                lock(&this.drain.wakers).insert(this.id, cx.waker().clone());
                this.registered = true;
            }
            if this.drain.closing.load(Ordering::Acquire) {
                this.conn.as_mut().graceful_shutdown();
                this.told = true;
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Draining<C> {
    fn drop(&mut self) {
        if self.registered {
            lock(&self.drain.wakers).remove(&self.id);
        }
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.all_closed.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a new connection starts with the HTTP/2 connection preface. Peeks without
/// consuming; waits (bounded) while the bytes so far are a prefix of the preface.
async fn is_h2_preface(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A prefix of the preface so far: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Runs the daemon until SIGTERM or SIGINT, then shuts down gracefully.
///
/// One worker runs on a `current_thread` runtime: no work stealing and no cross-thread
/// wake-ups (measured: 0.12 against 0.31-0.55 context switches per request for the
/// work-stealing runtime with one worker). More workers use the work-stealing runtime.
pub fn run(config: Config) -> io::Result<()> {
    let runtime = match config.server.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let running = RunningGateway::start(&config).await?;
        wait_for_signal().await?;
        tracing::info!("signal received; draining in-flight invocations");
        running.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Until reload exists, SIGHUP must not kill the daemon (its default action).
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => tracing::warn!("SIGHUP received: reloading the config is not supported yet; ignored"),
        }
    }
}
