//! Warm keep-alive HTTP/1.1 connections to one instance, and the keeper task that keeps
//! them warm and probes a refusing instance back into rotation.
//!
//! Connections are opened before the first invocation (one per slot, up to a cap) and
//! reopened in the background when the instance closes them. A pooled connection idle
//! for `upstream_idle_timeout` is never handed out and is closed by the keeper, so the
//! gateway, not the instance's keep-alive timer, decides when an idle connection ends:
//! a request never races the instance closing it.
//!
//! Warmth follows demand: an instance with no invocation for `upstream_idle_timeout`
//! lets its connections go and its keeper sleeps until the next invocation wakes it.
//! Keeping every configured slot connected forever would cost a reconnect per slot per
//! idle period, which for thousands of quiet instances is a storm of connects.
//!
//! An [`Upstream`] shared by many static pools has one keeper, started by the first
//! pool listing its address; another pool's instance at that address gets a keeper of
//! its own only while that pool has it out of rotation (to probe it), and that keeper
//! ends once the instance is back and the address is tended. 1,000 functions over four
//! addresses run four keeper tasks, not 4,000.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Pool;
use crate::config::DiscoveryConfig;
use crate::discovery::Discovery;
use crate::instance::{Exit, Launched};
use crate::metrics::FunctionMetrics;
use crate::upstream::h1;

/// How long a connection attempt may take before the instance counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between probes of an instance that refused connections.
const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(50);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One running instance of a function, as the pool sees it.
pub struct Instance {
    /// As configured (`ip:port`) for static instances, the address for discovered
    /// ones, `function-N` for launched ones.
    name: String,
    addr: SocketAddr,
    /// The process, for instances the gateway launched.
    launched: Option<Launched>,
    /// `Host` for event invocations: the address as configured.
    host: HeaderValue,
    /// Its keep-alive connections, shared with every function listing the same address.
    upstream: Arc<Upstream>,
}

/// The keep-alive connections to one address. Connections carry no function state (the
/// stamp is per request), so functions whose static pools list the same address share
/// them, as a reverse proxy's upstream keep-alive pool does: 1,000 functions over four
/// instance processes keep tens of connections warm, not thousands.
pub struct Upstream {
    addr: SocketAddr,
    idle: Mutex<Vec<PooledConn>>,
    /// Open connections, idle or busy.
    live: Arc<AtomicUsize>,
    /// Wakes the keeper when a connection closes, or when a parked keeper's instance
    /// is used again.
    closed: Arc<Notify>,
    /// Milliseconds from `created` to the last hand-over, plus one (0: never used).
    last_used_ms: AtomicU64,
    created: Instant,
    /// The keeper sleeps until the instance is used again.
    parked: AtomicBool,
    /// A keeper tends this upstream (warm-up and eviction).
    tended: AtomicBool,
    /// A pool has started a keeper for this upstream.
    adopted: AtomicBool,
    /// Warm connections to keep: the largest target of the pools sharing it.
    warm_target: AtomicUsize,
    /// Invocations holding a slot on this address, across the pools sharing it.
    inflight: AtomicUsize,
}

/// Upstreams by address and static instances by authority and address, for sharing
/// between static pools, and the resolver of their host names. Cloning it shares it:
/// pools following host names keep a clone to add the addresses they discover.
///
/// A static instance holds nothing of its function's (each pool keeps its own slot
/// counts and up/down state in its entries), so every function listing the same
/// instance shares one `Instance`: 1,000 functions over four instance processes have
/// four, not 4,000, and the `Instance` an invocation reads and reference-counts stays
/// in cache instead of being one more cold line per function.
///
/// Upstreams are held weakly: the connections to an address that no pool lists any
/// more (a discovered address that vanished) close when its last instance goes.
#[derive(Clone)]
pub struct Upstreams {
    shared: Arc<SharedUpstreams>,
}

struct SharedUpstreams {
    by_addr: Mutex<AddrMap>,
    instances: Mutex<HashMap<(String, SocketAddr), Arc<Instance>>>,
    discovery: Arc<Discovery>,
}

#[derive(Default)]
struct AddrMap {
    map: HashMap<SocketAddr, Weak<Upstream>>,
    /// Size at which dead entries are swept next (amortised: twice the live size).
    sweep_at: usize,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new(&DiscoveryConfig::default())
    }
}

impl Upstreams {
    /// Host names are resolved as `discovery` says.
    pub fn new(discovery: &DiscoveryConfig) -> Upstreams {
        Upstreams {
            shared: Arc::new(SharedUpstreams {
                by_addr: Mutex::default(),
                instances: Mutex::default(),
                discovery: Arc::new(Discovery::new(discovery)),
            }),
        }
    }

    /// The upstream of `addr`, created on first use (or once the last one is gone).
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        let mut by_addr = self.shared.by_addr.lock();
        if let Some(upstream) = by_addr.map.get(&addr).and_then(Weak::upgrade) {
            return upstream;
        }
        let upstream = Arc::new(Upstream::new(addr));
        if by_addr.map.len() >= by_addr.sweep_at {
            by_addr.map.retain(|_, u| u.strong_count() > 0);
            by_addr.sweep_at = (by_addr.map.len() * 2).max(64);
        }
        by_addr.map.insert(addr, Arc::downgrade(&upstream));
        upstream
    }

    /// The static instance at `addr`, reached with `Host: authority`, created on
    /// first use and shared by every pool listing it.
    pub fn instance(&self, authority: &str, addr: SocketAddr) -> Arc<Instance> {
        // Start-up only: the upstream is looked up (and the key built) even when the
        // instance exists already.
        let upstream = self.get(addr);
        self.shared
            .instances
            .lock()
            .entry((authority.to_owned(), addr))
            .or_insert_with(|| Arc::new(Instance::fixed(authority, addr, upstream)))
            .clone()
    }

    /// A new instance at a discovered `addr` of the host name `authority`, over the
    /// address's shared upstream. Not shared with other pools, and new each time the
    /// address joins: an entry's identity then tells a slot taken before the address
    /// left from one taken after it came back.
    pub(crate) fn discovered(&self, authority: &str, addr: SocketAddr) -> Arc<Instance> {
        let mut instance = Instance::fixed(authority, addr, self.get(addr));
        instance.name = addr.to_string();
        Arc::new(instance)
    }

    /// The resolver of host names in `instances`.
    pub(crate) fn discovery(&self) -> &Arc<Discovery> {
        &self.shared.discovery
    }
}

/// A keep-alive connection. Dropping it closes the connection; returning it with
/// [`Instance::checkin`] keeps it for the next invocation. No task drives it: the
/// invocation using it does (see [`h1`]).
///
/// Its socket is registered with the reactor of one worker's runtime, its home (see
/// [`crate::worker`]): used from another worker it would still work, but every
/// readiness event would cross threads. So [`Upstream::checkout`] hands a worker its
/// own connections and moves a foreign one over only when it has none idle.
pub struct PooledConn {
    /// Boxed: a pooled connection is moved several times per invocation (out of the
    /// pool, into the exchange, into the response body, back), and travels inside
    /// the response body that hyper moves too.
    pub(super) h1: Box<h1::Connection>,
    idle_since: Instant,
    /// The worker whose reactor the socket is registered with.
    home: usize,
    /// Counts the connection as open until it is dropped.
    _live: LiveGuard,
}

impl Instance {
    /// A static instance at `addr`, reached with `Host: authority`, over the upstream
    /// it shares with the other static pools listing `addr` (see [`Upstreams::instance`]).
    fn fixed(authority: &str, addr: SocketAddr, upstream: Arc<Upstream>) -> Instance {
        Instance {
            name: authority.to_owned(),
            addr,
            launched: None,
            host: HeaderValue::from_str(authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            upstream,
        }
    }

    /// An instance the gateway started: its address is its own.
    pub fn launched(launched: Launched) -> Instance {
        let addr = launched.process.addr();
        Instance {
            name: launched.name.clone(),
            addr,
            launched: Some(launched),
            host: HeaderValue::from_str(&addr.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            upstream: Arc::new(Upstream::new(addr)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_launched(&self) -> bool {
        self.launched.is_some()
    }

    pub fn process(&self) -> Option<&Launched> {
        self.launched.as_ref()
    }

    /// Resolves when a launched instance's process has exited; `None` at once for
    /// static instances (the gateway does not see them exit).
    pub async fn exited(&self) -> Option<Exit> {
        match &self.launched {
            Some(l) => Some(l.process.exited().await),
            None => None,
        }
    }

    /// Stops a launched instance (SIGTERM, SIGKILL after `grace`); nothing for static ones.
    pub async fn stop(&self, grace: Duration) {
        if let Some(l) = &self.launched {
            l.process.stop(grace).await;
        }
    }

    /// Kills a launched instance now.
    pub fn kill(&self) {
        if let Some(l) = &self.launched {
            l.process.kill();
        }
    }

    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The keep-alive connections this instance is reached over.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Records a hand-over (see [`Upstream::touch`]).
    pub fn touch(&self, now: Instant) {
        self.upstream.touch(now);
    }

    pub fn live_connections(&self) -> usize {
        self.upstream.live_connections()
    }

    pub fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<PooledConn> {
        self.upstream.checkout(idle_timeout, now)
    }

    pub fn checkin(&self, conn: PooledConn, now: Instant) {
        self.upstream.checkin(conn, now);
    }

    pub async fn connect(&self, metrics: &FunctionMetrics) -> io::Result<PooledConn> {
        self.upstream.connect(metrics).await
    }

    pub fn clear_idle(&self) {
        self.upstream.clear_idle();
    }
}

impl Upstream {
    fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(Notify::new()),
            last_used_ms: AtomicU64::new(0),
            created: Instant::now(),
            parked: AtomicBool::new(false),
            tended: AtomicBool::new(false),
            adopted: AtomicBool::new(false),
            warm_target: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
        }
    }

    /// Records a hand-over at `now`; wakes the keeper if it was parked for lack of
    /// demand.
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.created).as_millis() as u64 + 1;
        // Written once per millisecond at most: the line is shared by every function
        // using this address, and by every worker thread.
        if self.last_used_ms.load(Ordering::Relaxed) != ms {
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            self.closed.notify_one();
        }
    }

    /// Used (or created) within the last `window`.
    fn recently_used(&self, window: Duration) -> bool {
        let last = match self.last_used_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => Duration::from_millis(ms - 1),
        };
        self.created.elapsed().saturating_sub(last) < window
    }

    /// Open connections, idle or busy.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The calling worker's most recently used idle connection that is still open and
    /// not idle too long at `now`; if it has none, another worker's, moved to this one.
    pub fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<PooledConn> {
        let here = crate::worker::current();
        loop {
            let conn = {
                let mut idle = self.idle.lock();
                // Tens long at most, and with one worker the last one matches.
                let i = match idle.iter().rposition(|c| c.home == here) {
                    Some(i) => i,
                    None => idle.len().checked_sub(1)?,
                };
                idle.remove(i)
            };
            // Closed by the instance, or too old to trust: dropped (closes it).
            if now.saturating_duration_since(conn.idle_since) >= idle_timeout {
                continue;
            }
            let conn = if conn.home == here {
                conn
            } else {
                match conn.rehome(here) {
                    Some(conn) => conn,
                    None => continue,
                }
            };
            if !conn.h1.is_closed() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose last exchange completed cleanly at `now`.
    pub fn checkin(&self, mut conn: PooledConn, now: Instant) {
        conn.idle_since = now;
        self.idle.lock().push(conn);
    }

    /// Opens a new keep-alive connection (TCP_NODELAY, HTTP/1.1), counted as new.
    pub async fn connect(&self, metrics: &FunctionMetrics) -> io::Result<PooledConn> {
        self.live.fetch_add(1, Ordering::AcqRel);
        self.open(metrics).await
    }

    /// Counts a warm-up connection in before opening it, only while fewer than `target`
    /// are open or opening: keepers of several functions sharing this upstream must not
    /// each open their own.
    fn reserve_warm(&self, target: usize) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < target).then_some(n + 1)
            })
            .is_ok()
    }

    /// Opens a connection already counted in `live`; the count is given back if it fails
    /// (or the caller gives up waiting).
    async fn open(&self, metrics: &FunctionMetrics) -> io::Result<PooledConn> {
        let live = LiveGuard {
            live: self.live.clone(),
            closed: self.closed.clone(),
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        metrics.connection(false);
        Ok(PooledConn {
            h1: Box::new(h1::Connection::new(stream)),
            idle_since: Instant::now(),
            home: crate::worker::current(),
            _live: live,
        })
    }

    /// Closes idle connections older than the limit; returns how many remain.
    fn evict_idle(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        idle.retain_mut(|c| now.duration_since(c.idle_since) < idle_timeout && !c.h1.is_closed());
        idle.len()
    }

    pub fn clear_idle(&self) {
        self.idle.lock().clear();
    }

    /// Counts a slot taken on this address (by any pool).
    pub(super) fn slot_taken(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a slot given back.
    pub(super) fn slot_freed(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Invocations in flight on this address, across the pools sharing it.
    pub(super) fn load(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Raises the number of warm connections to keep to at least `target`.
    pub(super) fn want_warm(&self, target: usize) {
        if self.warm_target.fetch_max(target, Ordering::AcqRel) < target {
            // The keeper tops up at once rather than at its next tick.
            self.closed.notify_one();
        }
    }

    /// True for the first pool to ask: it starts the keeper of this upstream.
    pub(super) fn adopt(&self) -> bool {
        !self.adopted.swap(true, Ordering::AcqRel)
    }

    /// The tending keeper's instance left its pool, or the pool that adopted the
    /// address closed: the next pool to list the address adopts it again. (A second
    /// keeper that finds it tended retires.)
    pub(super) fn disown(&self) {
        self.adopted.store(false, Ordering::Release);
    }

    /// Makes the calling keeper the tender, unless another one is.
    fn claim(self: &Arc<Self>) -> Option<Tending> {
        self.tended
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Tending(self.clone()))
    }
}

// === impl PooledConn ===

impl PooledConn {
    /// Registers the connection with the calling worker's reactor (two `epoll_ctl`
    /// calls and a peek); `None` if it cannot be moved or the instance closed it.
    fn rehome(self, here: usize) -> Option<PooledConn> {
        let PooledConn {
            h1,
            idle_since,
            home: _,
            _live,
        } = self;
        Some(PooledConn {
            h1: Box::new(h1.rehome().ok()?),
            idle_since,
            home: here,
            _live,
        })
    }
}

/// The right to tend an upstream; given up on drop (also when the keeper task is
/// aborted), so that a keeper probing it back into rotation can take it over.
struct Tending(Arc<Upstream>);

impl Drop for Tending {
    fn drop(&mut self) {
        self.0.tended.store(false, Ordering::Release);
    }
}

/// Counts a connection (or an attempt to open one) as gone and wakes the keeper,
/// however it ends.
struct LiveGuard {
    live: Arc<AtomicUsize>,
    closed: Arc<Notify>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.closed.notify_one();
    }
}

/// The keeper of one instance: tops up warm connections while the instance is up, and
/// probes it with backoff while it is down. Ends when the instance leaves the pool.
/// Of the keepers whose instances share an upstream, only the tender warms and evicts;
/// another one ends once its instance is back in rotation.
pub(super) async fn keep(pool: Arc<Pool>, index: usize, instance: Arc<Instance>) {
    let idle_timeout = pool.idle_timeout;
    let tick = (idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let metrics = pool.metrics().clone();
    let upstream = instance.upstream().clone();
    upstream.want_warm(pool.warm_target);
    let mut backoff = PROBE_BACKOFF_MIN;
    let mut tending: Option<Tending> = None;
    loop {
        // Registered before the state is read, so a change in between is not missed.
        let changed = pool.changed.notified();
        match pool.instance_state(index, &instance) {
            None => {
                if tending.is_some() {
                    upstream.disown();
                }
                return;
            }
            Some(true) => {
                backoff = PROBE_BACKOFF_MIN;
                if tending.is_none() {
                    tending = upstream.claim();
                }
                if tending.is_none() {
                    if pool.retire_keeper(index, &instance) {
                        return;
                    }
                    continue;
                }
                upstream.evict_idle(idle_timeout);
                let active = upstream.recently_used(idle_timeout);
                let target = upstream.warm_target.load(Ordering::Acquire);
                while active && upstream.reserve_warm(target) {
                    match upstream.open(&metrics).await {
                        Ok(conn) => instance.checkin(conn, Instant::now()),
                        Err(_) => {
                            pool.mark_down(index, &instance);
                            break;
                        }
                    }
                }
                if !active && instance.live_connections() == 0 {
                    // Nothing to keep warm: sleep until an invocation touches it (or
                    // this pool takes the instance out of rotation).
                    upstream.parked.store(true, Ordering::Release);
                    if !upstream.recently_used(idle_timeout) {
                        tokio::select! {
                            _ = upstream.closed.notified() => {}
                            _ = changed => {}
                        }
                    }
                    upstream.parked.store(false, Ordering::Release);
                    continue;
                }
                tokio::select! {
                    _ = upstream.closed.notified() => {}
                    _ = changed => {}
                    _ = tokio::time::sleep(tick) => {}
                }
            }
            Some(false) => {
                // Probing: a keeper whose pool still has the instance up may tend it.
                tending = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(PROBE_BACKOFF_MAX);
                if let Ok(conn) = instance.connect(&metrics).await {
                    instance.checkin(conn, Instant::now());
                    pool.mark_up(index, &instance);
                }
            }
        }
    }
}

// === impl PooledConn ===

/// The HTTP/1 client drives a pooled connection as its own.
impl std::ops::Deref for PooledConn {
    type Target = h1::Connection;

    fn deref(&self) -> &h1::Connection {
        &self.h1
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut h1::Connection {
        &mut self.h1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;
    use crate::worker;

    const FRESH: Duration = Duration::from_secs(60);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Static pools listing the same instance share one `Instance`; another spelling
    /// of the address is another instance (its own `Host`) over the same connections.
    #[test]
    fn static_instances_are_shared_by_authority_and_address() {
        let upstreams = Upstreams::default();
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let a = upstreams.instance("127.0.0.1:9000", addr);
        let b = upstreams.instance("127.0.0.1:9000", addr);
        let named = upstreams.instance("fn.internal:9000", addr);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &named));
        assert_eq!(named.host(), "fn.internal:9000");
        assert!(Arc::ptr_eq(a.upstream(), named.upstream()));
        let other = upstreams.instance("127.0.0.1:9001", "127.0.0.1:9001".parse().unwrap());
        assert!(!Arc::ptr_eq(a.upstream(), other.upstream()));
    }

    /// Two workers' runtimes, driven in turn from this thread (each `block_on` marks
    /// the thread as that worker): the registrations are as real as on two threads.
    #[test]
    fn checkout_prefers_the_workers_own_connections_and_moves_a_foreign_one_over() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepted_tx.send(stream.unwrap()).is_err() {
                    return;
                }
            }
        });
        let upstream = Upstream::new(addr);
        let metrics = Registry::new().function("f", "default");
        let (rt0, rt1) = (runtime(), runtime());
        let on = |index: usize, rt: &tokio::runtime::Runtime, f: &mut dyn FnMut()| {
            worker::set(index);
            rt.block_on(async { f() });
            worker::set(0);
        };

        // Worker 0 opens a and b.
        let (a, b) = rt0.block_on(async {
            let a = upstream.connect(&metrics).await.unwrap();
            let b = upstream.connect(&metrics).await.unwrap();
            let ids = (a.h1.local_addr(), b.h1.local_addr());
            upstream.checkin(a, Instant::now());
            upstream.checkin(b, Instant::now());
            ids
        });
        let server_a = accepted.recv().unwrap();
        let _server_b = accepted.recv().unwrap();

        // Worker 1 has none of its own: the most recent (b) moves over.
        on(1, &rt1, &mut || {
            let conn = upstream.checkout(FRESH, Instant::now()).unwrap();
            assert_eq!((conn.home, conn.h1.local_addr()), (1, b));
            assert!(!conn.h1.is_closed());
            upstream.checkin(conn, Instant::now());
        });
        // Worker 0 takes its own a, though b was checked in last.
        on(0, &rt0, &mut || {
            let conn = upstream.checkout(FRESH, Instant::now()).unwrap();
            assert_eq!((conn.home, conn.h1.local_addr()), (0, a));
            upstream.checkin(conn, Instant::now());
        });
        // And worker 1 its own b, though a was.
        on(1, &rt1, &mut || {
            let conn = upstream.checkout(FRESH, Instant::now()).unwrap();
            assert_eq!((conn.home, conn.h1.local_addr()), (1, b));
            // Busy elsewhere: a is worker 0's, and the instance closes it meanwhile.
            let _ = server_a.shutdown(std::net::Shutdown::Both);
            std::thread::sleep(Duration::from_millis(50));
            // A closed foreign connection is not handed out, nor kept.
            assert!(upstream.checkout(FRESH, Instant::now()).is_none());
            upstream.checkin(conn, Instant::now());
        });
        assert_eq!(upstream.live_connections(), 1);
        assert_eq!(upstream.idle.lock().len(), 1);
    }

    /// A pooled connection the instance reset is found dead by the write that carries
    /// the head and the first body frame: the request comes back whole for a fresh
    /// connection, the frame taken to go with the head included.
    #[tokio::test]
    async fn a_request_unsent_on_a_dead_connection_comes_back_with_its_whole_body() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;

        // A client's request body as the gateway gets it: from hyper, all of it there.
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let (body_tx, body_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = front.accept().await.unwrap();
            let body_tx = parking_lot::Mutex::new(Some(body_tx));
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                if let Some(tx) = body_tx.lock().take() {
                    let _ = tx.send(req.into_body());
                }
                std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let incoming = body_rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut req = http::Request::new(crate::body::LimitedBody::client(incoming, 1 << 20));
        *req.method_mut() = http::Method::POST;

        // A pooled connection the instance has reset, not yet noticed.
        let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::new(back.local_addr().unwrap());
        let metrics = Registry::new().function("f", "default");
        let conn = upstream.connect(&metrics).await.unwrap();
        let (instance_side, _) = back.accept().await.unwrap();
        instance_side.set_zero_linger().unwrap();
        drop(instance_side);
        tokio::time::sleep(Duration::from_millis(50)).await;

        let returned = match h1::send(conn, req, &[]).await {
            Err(h1::SendError::Unsent(req)) => req,
            Err(h1::SendError::Failed(e)) => panic!("not sent, but failed: {e}"),
            Ok(_) => panic!("a reset connection answered"),
        };
        let body = returned.into_body();
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
