//! Listeners and lifecycle: HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on
//! `server.listen`, the admin listener, and the graceful shutdown that lets in-flight
//! invocations finish within `shutdown_grace`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::admin;
use crate::body::GatewayBody;
use crate::config::Config;
use crate::invoke::Gateway;
use crate::worker;

/// How long launched instances get to exit on SIGTERM before SIGKILL at shutdown.
const INSTANCE_STOP_GRACE: Duration = Duration::from_secs(3);
/// How often released connection memory may be given back to the system, and after how
/// many released connections (see `memory_upkeep`).
const TRIM_PERIOD: Duration = Duration::from_secs(1);
const TRIM_AFTER_RELEASED: usize = 256;

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
    /// Workers 1..N (thread-per-core), serving the same listening socket.
    workers: Vec<Worker>,
    admin: JoinHandle<()>,
    upkeep: JoinHandle<()>,
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
        let n = config.server.workers.max(1);
        let balance = (n > 1).then(|| Arc::new(Balance::new(n)));
        let drain = |index| Arc::new(Drain::sharing(balance.clone(), index));
        let mut workers = Vec::new();
        for index in 1..n {
            // A second descriptor of the same socket, not a second socket: a second
            // gateway on the port still fails to bind.
            let shared = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
            let (stop, gateway) = (stop.clone(), gateway.clone());
            match Worker::spawn(index, shared, stop, grace, drain(index), gateway).await {
                Ok(w) => workers.push(w),
                Err(e) => {
                    let _ = stop_invocations.send(true);
                    return Err(e);
                }
            }
        }
        let gw = gateway.clone();
        let invocations = tokio::spawn(serve(
            listener,
            stop,
            grace,
            CLIENT_TIMERS,
            drain(0),
            gateway.registry().worker_connections(0),
            // The handler's own future, not one wrapping it: hyper keeps and moves it.
            move |req, peer| gw.clone().handle(req, peer),
        ));

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
        let admin = tokio::spawn(serve(
            admin_listener,
            stop,
            grace,
            CLIENT_TIMERS,
            Arc::default(),
            crate::metrics::Counter::noop(),
            move |req, _| {
                let state = state.clone();
                async move { admin::handle(&state, req) }
            },
        ));

        let upkeep = tokio::spawn(memory_upkeep(TRIM_PERIOD, TRIM_AFTER_RELEASED));

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
            workers,
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

// === impl Worker ===

impl Worker {
    /// Starts worker `index` on its own thread and runtime, serving `listener` until
    /// `stop`, then draining for at most `grace`. Returns once it accepts.
    async fn spawn(
        index: usize,
        listener: std::net::TcpListener,
        stop: watch::Receiver<bool>,
        grace: Duration,
        drain: Arc<Drain>,
        gateway: Arc<Gateway>,
    ) -> io::Result<Worker> {
        let (started, accepting) = oneshot::channel::<io::Result<()>>();
        let (finished, done) = oneshot::channel::<()>();
        let accepted = gateway.registry().worker_connections(index);
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
                        CLIENT_TIMERS,
                        drain,
                        accepted,
                        move |req, peer| gateway.clone().handle(req, peer),
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

/// How client connections are timed. The contract is silent; the values follow what an
/// nginx operator expects (README, "Client connections").
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientTimers {
    /// A new connection must send its first byte within this, and a request head must
    /// be complete this long after its first byte (slow clients, slowloris).
    pub header: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle: Duration,
    /// Granularity of both checks, and how long an HTTP/1 connection must be quiet
    /// before it is parked (its HTTP state and buffers released).
    pub tick: Duration,
}

/// The daemon's client timers: `header` is hyper's former default (what clients got
/// before), `idle` is nginx's `keepalive_timeout`.
pub(crate) const CLIENT_TIMERS: ClientTimers = ClientTimers {
    header: Duration::from_secs(30),
    idle: Duration::from_secs(75),
    tick: Duration::from_millis(500),
};

/// Accepts connections until told to stop, then drains them for at most `grace`.
/// Several workers may serve one listening socket: each is woken by a new connection
/// and one wins the accept (the others' `EAGAIN` stays inside tokio). The first to run
/// would take a whole burst (measured: 56 of 64 wrk connections on one of two workers),
/// so a worker with more than its share of open connections (see [`Balance`]) leaves
/// new ones to the others until that changes.
async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    timers: ClientTimers,
    drain: Arc<Drain>,
    connections: crate::metrics::Counter,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    // No hyper timer for HTTP/1: its header-read timeout allocates and arms a timer per
    // request. The connection task keeps one coarse timer instead (see `serve_http1`).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.keep_alive(true).header_read_timeout(None);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let builders = Arc::new((http1, http2));
    'accepting: loop {
        if let Some((balance, index)) = &drain.share {
            loop {
                // Created before the check: a change in between is not missed.
                let changed = balance.changed.notified();
                if !balance.over_share(*index) {
                    break;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = stop.changed() => break 'accepting,
                }
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.increment(1);
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    // The connection's long-lived allocations (task, registration,
                    // activity) are made here, side by side, not between the short-lived
                    // buffers of requests: that keeps the heap of many idle
                    // connections dense (see `memory_upkeep`).
                    tokio::spawn(client_connection(
                        stream,
                        peer,
                        handler.clone(),
                        builders.clone(),
                        drain.enter(),
                        Arc::new(Activity::default()),
                        timers,
                    ));
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

/// One client connection, from accept to close. A client that goes away mid-request is
/// not the gateway's error, so connection errors end the task silently.
///
/// An `async` block, not an `async fn`: an `async fn`'s future keeps its arguments twice
/// (as captured and as moved into its body, 152 bytes here), and this future is all a
/// parked connection's task holds.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see above
fn client_connection<F, Fut>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: F,
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
    open: Open,
    activity: Arc<Activity>,
    timers: ClientTimers,
) -> impl Future<Output = ()>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    async move {
        open.register().await;
        let drain = &*open.drain;
        // One timer for the connection's whole life, reset (never reallocated) per phase.
        let mut timer = pin!(tokio::time::sleep(timers.header));
        // No HTTP state (hyper's buffers) until the client sends something, and a client
        // that sends nothing is closed after `timers.header`.
        if wait_readable(
            &stream,
            timer.as_mut(),
            Instant::now() + timers.header,
            drain,
        )
        .await
            != Wake::Readable
        {
            return;
        }
        // HTTP/2 with prior knowledge, told apart from HTTP/1.1 by one peek per connection
        // rather than a rewinding reader per read.
        if is_h2_preface(&stream, timer.as_mut()).await {
            let service = service_fn(move |req| Infallibly {
                inner: handler(req, peer),
            });
            let mut conn = Box::pin(builders.1.serve_connection(TokioIo::new(stream), service));
            let mut told = false;
            let _ = poll_fn(|cx| {
                if !told && drain.is_closing() {
                    conn.as_mut().graceful_shutdown();
                    told = true;
                }
                conn.as_mut().poll(cx)
            })
            .await;
            return;
        }
        let handler = move |req| handler(req, peer);
        serve_http1(
            &mut stream,
            handler,
            &builders.0,
            drain,
            activity,
            timers,
            timer,
        )
        .await;
    }
}

/// Serves HTTP/1.1 on a connection, parking it whenever it is quiet.
///
/// hyper keeps an 8 KB read buffer, an 8 KB header write buffer, the last header map and
/// the in-flight handler's slot for as long as a connection lives: about 22 KB per idle
/// keep-alive connection, measured. So a connection with nothing in flight and no byte
/// moved for a whole `tick` is parked: hyper is shut down without closing the socket
/// (any bytes of a next request head it had read are kept), and the task waits for the
/// socket to become readable with nothing but the socket, this state and one timer; a
/// new hyper connection takes over when bytes arrive. A busy connection pays nothing per
/// request for this (a few counters) and one timer fire per `tick`.
///
/// The same tick enforces `timers.header` (no request started for that long while bytes
/// trickle in or an exchange is stuck: closed) and, while parked, `timers.idle`.
async fn serve_http1<F, Fut>(
    stream: &mut TcpStream,
    handler: F,
    http1: &http1::Builder,
    drain: &Drain,
    activity: Arc<Activity>,
    timers: ClientTimers,
    mut timer: Pin<&mut Sleep>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    // Bytes of a request head hyper had read when the connection was parked.
    let mut leftover = Bytes::new();
    // Ticks in a row without a request in flight or started.
    let mut quiet: u32 = 0;
    loop {
        activity.parking.store(false, Ordering::Relaxed);
        let service = {
            let handler = handler.clone();
            let activity = activity.clone();
            service_fn(move |req| {
                activity.requests.fetch_add(1, Ordering::Relaxed);
                Tracking {
                    inner: handler(req),
                    in_flight: Some(InFlight::new(activity.clone())),
                }
            })
        };
        let leftover_was_empty = leftover.is_empty();
        let io = ClientIo {
            stream: &mut *stream,
            prefix: std::mem::take(&mut leftover),
            activity: &activity,
        };
        // Boxed so that a parked connection's task stays small.
        let mut conn = Box::new(http1.serve_connection(TokioIo::new(io), service));
        let mut told = false;
        let mut seen = (activity.requests(), activity.moved());
        // A new hyper connection closes on a graceful shutdown only before it reads
        // anything or after an exchange; with half a head read it would instead answer
        // that request with `Connection: close`. So it is not parked in between.
        let resumed = seen;
        let replaying = !leftover_was_empty;
        timer.as_mut().reset(Instant::now() + timers.tick);
        // The waker the tick is registered with, once it is.
        let mut ticking: Option<Waker> = None;
        let ended = poll_fn(|cx| loop {
            if !told && drain.is_closing() {
                activity.parking.store(false, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
                told = true;
            }
            if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Some(result));
            }
            // A registered tick wakes this task by itself: polling it again on every
            // wake-up (several per request) would only re-register the same waker.
            if ticking.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !timer.is_elapsed() {
                return Poll::Pending;
            }
            if timer.as_mut().poll(cx).is_pending() {
                ticking = Some(cx.waker().clone());
                return Poll::Pending;
            }
            ticking = None;
            let now = (activity.requests(), activity.moved());
            let busy = activity.in_flight.load(Ordering::Relaxed) > 0 || now.0 != seen.0;
            quiet = if busy { 0 } else { quiet.saturating_add(1) };
            let parking = activity.parking.load(Ordering::Relaxed);
            let parkable = now.0 != resumed.0 || (now.1 == resumed.1 && !replaying);
            if !busy
                && now.1 == seen.1
                && parkable
                && !told
                && !parking
                && !activity.write_blocked.load(Ordering::Relaxed)
            {
                // Idle: hyper finishes at once (it closes an idle connection on a
                // graceful shutdown); the socket stays open, see `ClientIo`.
                activity.parking.store(true, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            } else if !busy && timers.tick * quiet >= timers.header {
                return Poll::Ready(None);
            }
            seen = now;
            timer.as_mut().reset(Instant::now() + timers.tick);
        })
        .await;
        // Closed by the client, not keep-alive, an error, drained or too slow: done.
        if !matches!(ended, Some(Ok(()))) || told || !activity.parking.load(Ordering::Relaxed) {
            return;
        }
        // The bytes only: hyper's read buffer (8 KB) is what parking is meant to free. The
        // box that held hyper's state (700 B) is freed here too, not when the loop turns:
        // moved into this block, it ends with it.
        leftover = {
            let conn = conn;
            Bytes::copy_from_slice(&(*conn).into_parts().read_buf)
        };
        drain.parked.fetch_add(1, Ordering::Relaxed);
        RELEASED.fetch_add(1, Ordering::Relaxed);
        // Parked. A partial head keeps its header deadline; otherwise the connection is
        // idle (for `quiet` ticks so far) and the next head's deadline starts afresh.
        let limit = if leftover.is_empty() {
            timers.idle
        } else {
            timers.header
        };
        let deadline = Instant::now() + limit.saturating_sub(timers.tick * quiet);
        if wait_readable(stream, timer.as_mut(), deadline, drain).await != Wake::Readable {
            return;
        }
        if leftover.is_empty() {
            quiet = 0;
        }
    }
}

#[derive(PartialEq, Eq)]
enum Wake {
    Readable,
    Expired,
    /// Shutting down, or the socket failed.
    Gone,
}

/// Waits until the socket has bytes to read, the client closes, the deadline passes or
/// the gateway drains.
async fn wait_readable(
    stream: &TcpStream,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    drain: &Drain,
) -> Wake {
    timer.as_mut().reset(deadline);
    poll_fn(|cx| {
        if drain.is_closing() {
            return Poll::Ready(Wake::Gone);
        }
        // A peek, not `poll_read_ready`: readiness may be reported spuriously (it is
        // for a new connection), and a client that only closed is gone.
        let mut byte = [0u8; 1];
        match stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Wake::Readable),
            Poll::Ready(_) => return Poll::Ready(Wake::Gone),
            Poll::Pending => {}
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Wake::Expired),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Connections parked or closed since the last `malloc_trim` (see `memory_upkeep`).
static RELEASED: AtomicUsize = AtomicUsize::new(0);

/// What a client connection's task and its requests share: counters read once per tick.
/// Everything runs on the connection's task (relaxed atomics only for `Send`).
#[derive(Default)]
struct Activity {
    /// Socket reads and writes that moved bytes.
    moved: AtomicU64,
    /// Request heads handed to the handler.
    requests: AtomicU64,
    /// Requests whose response body hyper has not dropped yet.
    in_flight: AtomicUsize,
    /// The last socket write would have blocked: hyper holds unsent response bytes.
    write_blocked: AtomicBool,
    /// hyper is being shut down only to park the connection: keep the socket open.
    parking: AtomicBool,
}

impl Activity {
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn bump_moved(&self) {
        // One writer (the connection's task): no read-modify-write needed.
        self.moved.store(self.moved() + 1, Ordering::Relaxed);
    }

    fn wrote(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.bump_moved();
                self.write_blocked.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.write_blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

/// Counts a request as in flight from its head to the drop of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The handler's future as hyper's service future, polled in place. An `async`
    /// block awaiting the handler's future would hold it twice (the captured future
    /// and the awaited copy side by side), doubling the per-request state hyper keeps
    /// and copying it once more on the first poll.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Infallibly<F> {
    type Output = Result<F::Output, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

pin_project! {
    /// [`Infallibly`] for HTTP/1, marking the request in flight until its response
    /// body is dropped.
    struct Tracking<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B> Future for Tracking<F>
where
    F: Future<Output = Response<B>>,
{
    type Output = Result<Response<Tracked<B>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        // An `Option` only so that the mark can move out of the pinned future.
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that keeps its request counted in flight until hyper drops it.
struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: borrowed (so hyper can be dropped without closing it),
/// first replaying the bytes kept from a parked connection, counting what moves.
struct ClientIo<'a> {
    stream: &'a mut TcpStream,
    prefix: Bytes,
    activity: &'a Activity,
}

impl AsyncRead for ClientIo<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bump_moved();
        }
        poll
    }
}

impl AsyncWrite for ClientIo<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.stream).poll_write(cx, buf);
        this.activity.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs);
        this.activity.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.stream).poll_shutdown(cx)
    }
}

/// The open client connections of each worker sharing a listening socket.
struct Balance {
    open: Box<[AtomicUsize]>,
    /// Notified whenever a worker opens or closes a connection.
    changed: Notify,
}

/// Connections a worker may have above the least-loaded one and still accept.
const ACCEPT_SLACK: usize = 1;

impl Balance {
    fn new(workers: usize) -> Balance {
        Balance {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        }
    }

    fn over_share(&self, index: usize) -> bool {
        let mine = self.open[index].load(Ordering::Relaxed);
        self.open
            .iter()
            .any(|o| mine > o.load(Ordering::Relaxed) + ACCEPT_SLACK)
    }

    fn add(&self, index: usize, opened: bool) {
        if opened {
            self.open[index].fetch_add(1, Ordering::Relaxed);
        } else {
            self.open[index].fetch_sub(1, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
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
    /// HTTP/1 connections parked so far (a figure for tests).
    parked: AtomicUsize,
    /// The worker's place among those sharing its listening socket, if any.
    share: Option<(Arc<Balance>, usize)>,
}

impl Drain {
    /// The drain of worker `index`, counting its connections in `balance` too.
    fn sharing(balance: Option<Arc<Balance>>, index: usize) -> Drain {
        Drain {
            share: balance.map(|b| (b, index)),
            ..Drain::default()
        }
    }

    /// Counts a connection as open until the guard drops.
    fn enter(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Some((balance, index)) = &self.share {
            balance.add(*index, true);
        }
        Open {
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
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

/// A connection counted by a [`Drain`].
struct Open {
    drain: Arc<Drain>,
    id: u64,
}

impl Open {
    /// Registers the calling task to be woken when draining starts (a task's waker
    /// stays valid for the task's life, so once is enough).
    async fn register(&self) {
        poll_fn(|cx| {
            lock(&self.drain.wakers).insert(self.id, cx.waker().clone());
            Poll::Ready(())
        })
        .await
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        lock(&self.drain.wakers).remove(&self.id);
        if let Some((balance, index)) = &self.drain.share {
            balance.add(*index, false);
        }
        RELEASED.fetch_add(1, Ordering::Relaxed);
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.all_closed.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

/// Whether a new connection starts with the HTTP/2 connection preface. Peeks without
/// consuming; waits (bounded, on the connection's timer) while the bytes so far are a
/// prefix of the preface.
async fn is_h2_preface(stream: &TcpStream, mut timer: Pin<&mut Sleep>) -> bool {
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
        timer
            .as_mut()
            .reset(Instant::now() + Duration::from_millis(5));
        timer.as_mut().await;
    }
    false
}

/// Gives the heap pages of released connections back to the system.
///
/// glibc's `free` returns memory only from the top of the heap; the 8 KB buffers of
/// thousands of parked or closed connections sit between live allocations, so without a
/// trim the RSS of a burst of connections stays at its peak forever. `malloc_trim(0)`
/// releases every free page but the first of each free chunk; it is run at most once per
/// `period`, and only after at least `min_released` connections were parked or closed
/// since the last one. The daemon is normally linked with jemalloc (src/main.rs), which
/// returns pages by itself; this is for builds and embedders on glibc's malloc, and
/// costs next to nothing when glibc's heap is all but empty.
async fn memory_upkeep(period: Duration, min_released: usize) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let released = RELEASED.load(Ordering::Relaxed);
        if released >= min_released {
            RELEASED.store(0, Ordering::Relaxed);
            let start = Instant::now();
            trim_heap();
            tracing::debug!(released, took = ?start.elapsed(), "heap trimmed");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    crate::sys::malloc_trim();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Runs the daemon until SIGTERM or SIGINT, then shuts down gracefully.
///
/// Thread-per-core: every worker is a `current_thread` runtime, no work stealing and no
/// cross-thread wake-ups (measured: 0.12 against 0.31-0.55 context switches per request
/// for the work-stealing runtime with one worker; README, "Runtime model"). This thread
/// is the first worker; [`RunningGateway::start`] starts the others.
pub fn run(config: Config) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    worker::set(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Short timers so the tests run in well under a second each.
    const TIMERS: ClientTimers = ClientTimers {
        header: Duration::from_millis(400),
        idle: Duration::from_millis(400),
        tick: Duration::from_millis(50),
    };
    /// Generous bounds: other builds share the machine.
    const SOON: Duration = Duration::from_secs(3);

    struct Server {
        addr: SocketAddr,
        drain: Arc<Drain>,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    /// A server whose handler answers `ok`, after sleeping `?sleep=MS` if asked.
    async fn start(timers: ClientTimers) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drain = Arc::new(Drain::default());
        let (stop, stopped) = watch::channel(false);
        let handler = |req: Request<Incoming>, _| async move {
            if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("sleep=")) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            Response::new(GatewayBody::full(Bytes::from_static(b"ok")))
        };
        let task = tokio::spawn(serve(
            listener,
            stopped,
            Duration::from_secs(5),
            timers,
            drain.clone(),
            crate::metrics::Counter::noop(),
            handler,
        ));
        Server {
            addr,
            drain,
            stop,
            task,
        }
    }

    fn parked(server: &Server) -> usize {
        server.drain.parked.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` connections were parked.
    async fn wait_parked(server: &Server, n: usize) {
        let start = Instant::now();
        while parked(server) < n {
            assert!(start.elapsed() < SOON, "never parked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `GET path` and reads the whole response; returns its head.
    async fn exchange(stream: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        read_response(stream).await
    }

    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(SOON, stream.read(&mut chunk))
                .await
                .expect("a response in time")
                .unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8(buf).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        head
    }

    /// Waits for the server to close the connection; returns how long that took.
    async fn closed_after(stream: &mut TcpStream) -> Duration {
        let start = Instant::now();
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(SOON, stream.read(&mut chunk)).await {
            Err(_) => panic!("still open after {SOON:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &chunk[..n]),
        }
    }

    async fn still_open(stream: &mut TcpStream, for_: Duration) -> bool {
        let mut chunk = [0u8; 64];
        tokio::time::timeout(for_, stream.read(&mut chunk))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_quiet_connection_is_parked_and_then_serves_again() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        // Quiet for a tick: parked, still open.
        wait_parked(&server, 1).await;
        assert!(still_open(&mut client, TIMERS.tick).await);
        let head = exchange(&mut client, "/").await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // Pipelined requests are all answered.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let both = read_response(&mut client).await;
        if both.matches("\r\n\r\nok").count() < 2 {
            read_response(&mut client).await;
        }
    }

    #[tokio::test]
    async fn a_head_split_across_a_park_is_kept() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        // hyper read the partial head; the connection is parked with those bytes.
        wait_parked(&server, 1).await;
        assert!(still_open(&mut client, TIMERS.tick * 2).await);
        client.write_all(b": test\r\n\r\n").await.unwrap();
        let head = read_response(&mut client).await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // A head that starts while parked is not parked again half-way (hyper would
        // answer it with `Connection: close`), and is served.
        wait_parked(&server, 2).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        assert!(still_open(&mut client, TIMERS.tick * 3).await);
        assert_eq!(parked(&server), 2);
        client.write_all(b": test\r\n\r\n").await.unwrap();
        let head = read_response(&mut client).await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        let waited = closed_after(&mut client).await;
        assert!(
            waited >= TIMERS.idle - TIMERS.tick * 2,
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_new_connection_is_closed_after_the_header_timeout() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        let waited = closed_after(&mut client).await;
        assert!(
            waited >= TIMERS.header - TIMERS.tick,
            "closed after {waited:?}"
        );
        assert_eq!(parked(&server), 0);
    }

    #[tokio::test]
    async fn a_head_trickling_in_is_cut_at_the_header_timeout() {
        let server = start(TIMERS).await;
        // A byte faster than a tick (never quiet) and slower than two ticks (parked in
        // between, with its partial head).
        for pause in [TIMERS.tick / 2, TIMERS.tick * 3] {
            let mut client = TcpStream::connect(server.addr).await.unwrap();
            exchange(&mut client, "/").await;
            let start = Instant::now();
            let mut gone = false;
            for line in
                std::iter::once(&b"GET / HTTP/1.1\r\n"[..]).chain(std::iter::repeat(&b"X"[..]))
            {
                if client.write_all(line).await.is_err() || !still_open(&mut client, pause).await {
                    gone = true;
                    break;
                }
                if start.elapsed() > SOON {
                    break;
                }
            }
            assert!(
                gone,
                "a trickling head (a byte every {pause:?}) was never cut"
            );
            let waited = start.elapsed();
            assert!(
                waited >= TIMERS.header - TIMERS.tick * 2,
                "cut after {waited:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_long_request_in_flight_is_neither_parked_nor_cut() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        // Longer than the header and idle timeouts, many ticks.
        let head = exchange(&mut client, "/?sleep=700").await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert_eq!(parked(&server), 0);
        exchange(&mut client, "/").await;
    }

    #[tokio::test]
    async fn draining_closes_parked_connections_at_once_and_lets_busy_ones_finish() {
        let server = start(TIMERS).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut idle, "/").await;
        wait_parked(&server, 1).await;
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(b"GET /?sleep=300 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(TIMERS.tick).await;
        let start = Instant::now();
        server.stop.send(true).unwrap();
        // At once: not after the idle timeout or the grace.
        assert!(closed_after(&mut idle).await < TIMERS.idle / 2);
        let head = read_response(&mut busy).await;
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        closed_after(&mut busy).await;
        tokio::time::timeout(SOON, server.task)
            .await
            .unwrap()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
