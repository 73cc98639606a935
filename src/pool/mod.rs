//! A function's instances and the invocations waiting for them.
//!
//! Each instance has `instance_concurrency` slots; an invocation holds one [`Slot`] from
//! hand-over until its response body ends, and a slot is never lent twice. A new
//! invocation takes a free slot on the least-loaded instance that is up (load counted
//! per address, across the functions sharing it; two random choices, falling back to a
//! scan), or waits in a bounded FIFO queue. A released slot goes straight to the oldest
//! waiter, so a burst cannot overtake the queue.
//!
//! Instances come from a source: a static list (its addresses fixed for the pool's
//! life, its host names followed in DNS by [`crate::discovery`]), or a [`Launcher`]
//! that starts processes on demand (see `scale.rs`). The state is one small
//! mutex per pool, held for a few instructions and never across an await. Instances
//! that refuse connections are marked down; a keeper task (see [`connection`]) probes
//! them back in with backoff, and one keeper per address keeps warm keep-alive
//! connections ready.

pub mod connection;
mod scale;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::config::{FunctionConfig, InstanceSource, StaticInstance};
use crate::discovery::{self, Discovery, Name};
use crate::error::AdmitError;
use crate::instance::Launcher;
use crate::metrics::FunctionMetrics;
pub use connection::{Instance, PooledConn, Upstream, Upstreams};

/// Warm connections opened per instance ahead of demand: one per slot, up to this.
const WARM_CAP: usize = 16;
/// Extra time a wait on a starting instance gets beyond `ready_timeout`.
const START_MARGIN: Duration = Duration::from_secs(2);

/// One function's pool.
///
/// `repr(C)` keeps the declared order: what every invocation reads (the metrics handle,
/// the idle timeout and slots per instance, the lock and, inside it, the entries and the
/// queue) comes first, right after the `Arc`'s counts, so it spans two cache lines
/// instead of being spread over the whole struct. With 1,000 functions a pool's lines
/// are seldom still cached when its next invocation comes.
#[repr(C)]
pub struct Pool {
    metrics: FunctionMetrics,
    idle_timeout: Duration,
    per_instance: u32,
    state: Mutex<State>,
    launcher: Option<Arc<Launcher>>,
    function: String,
    queue_depth: usize,
    queue_timeout: Duration,
    warm_target: usize,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Wakes this pool's keepers when an instance goes out of rotation.
    changed: Notify,
    /// Set by [`Pool::close`]: an instance whose start was under way is stopped as
    /// soon as it is up instead of joining the pool.
    closed: std::sync::atomic::AtomicBool,
    /// The runtime of [`Pool::start`] (the first worker's): keepers, starts and
    /// launched processes run there, whichever worker's invocation asked for them, so
    /// they outlive the other workers and the shutdown finds them in one place.
    home: OnceLock<Handle>,
    /// The host names of a static pool's `instances`, followed in DNS.
    names: Option<Box<Names>>,
    /// Wakes the asynchronous dispatcher waiting in [`Pool::acquire_spare`] when a slot
    /// may have become free; only signalled while `spare_wanted` is set, so a pool
    /// without asynchronous work pays one relaxed load per release.
    spare: Notify,
    spare_wanted: std::sync::atomic::AtomicBool,
}

/// What a pool following host names needs: the names, the resolver, and the shared
/// upstreams its discovered instances join.
struct Names {
    names: Vec<Name>,
    upstreams: Upstreams,
}

/// `repr(C)`: the fields an invocation reads first (see [`Pool`]).
#[repr(C)]
struct State {
    /// Stable indices: a slot names its instance by index; a gone instance leaves a
    /// hole that a later one may reuse (slots also check the instance's identity).
    entries: Vec<Option<Entry>>,
    waiters: VecDeque<Waiter>,
    live: usize,
    up_count: usize,
    next_waiter: u64,
    launch: scale::LaunchState,
    /// What the entries' idle times count from.
    epoch: Instant,
    /// The pool follows host names that have not been resolved yet: with no instance,
    /// an invocation waits in the queue for the first answer instead of failing.
    resolving: bool,
}

/// 32 bytes: four entries fill two cache lines, and picking an instance reads them all
/// (hence the idle time as milliseconds from an epoch, not an `Instant`).
struct Entry {
    instance: Arc<Instance>,
    /// The instance's upstream, so that weighing an entry's load reads the shared
    /// per-address counter without first loading the `Instance` (one cache line per
    /// entry, per function, that the pick would otherwise touch for every candidate).
    upstream: Arc<Upstream>,
    /// When `inflight` last dropped to zero, in milliseconds from the state's `epoch`;
    /// kept for launched instances only, the ones idle scale-down stops (a static
    /// pool's release does not read the clock).
    idle_since_ms: u64,
    inflight: u32,
    up: bool,
    /// A keeper task runs for this entry (see [`connection::keep`]).
    keeper: bool,
    /// An address of a host name: it leaves when the name stops resolving to it.
    discovered: bool,
}

impl Entry {
    fn new(instance: Arc<Instance>, idle_since_ms: u64) -> Entry {
        Entry {
            upstream: instance.upstream().clone(),
            instance,
            idle_since_ms,
            inflight: 0,
            up: true,
            keeper: false,
            discovered: false,
        }
    }

    /// How long the instance has been without invocations as of `now`, once its
    /// `inflight` is zero.
    fn idle_for(&self, epoch: Instant, now: Instant) -> Duration {
        now.saturating_duration_since(epoch + Duration::from_millis(self.idle_since_ms))
    }
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Option<Entry>>() == 32);

/// Milliseconds from `epoch` to `now`, as entries keep their idle times.
fn ms_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// A pool as the admin API shows it (see [`Pool::status`]).
pub struct PoolStatus {
    pub instances: Vec<InstanceStatus>,
    /// Instances being started, not yet in the pool.
    pub starting: usize,
    /// Invocations waiting for a slot.
    pub queued: usize,
}

/// One instance of a pool.
pub struct InstanceStatus {
    pub instance: Arc<Instance>,
    /// In rotation; false while it refuses connections (it is probed back in).
    pub up: bool,
    /// This function's invocations on it.
    pub inflight: u32,
}

type WaitResult = Result<Slot, AdmitError>;

struct Waiter {
    id: u64,
    tx: oneshot::Sender<WaitResult>,
}

impl Pool {
    pub fn new(
        function: &FunctionConfig,
        idle_timeout: Duration,
        metrics: FunctionMetrics,
        launcher: Option<Arc<Launcher>>,
        upstreams: &Upstreams,
    ) -> Arc<Pool> {
        let mut entries: Vec<Option<Entry>> = Vec::new();
        let mut names = Vec::new();
        if let InstanceSource::Static(list) = &function.source {
            for i in list {
                match i {
                    StaticInstance::Fixed { authority, addr } => {
                        entries.push(Some(Entry::new(upstreams.instance(authority, *addr), 0)))
                    }
                    StaticInstance::Named {
                        authority,
                        host,
                        port,
                    } => names.push(Name {
                        authority: authority.clone(),
                        host: host.clone(),
                        port: *port,
                    }),
                }
            }
        }
        let names = (!names.is_empty()).then(|| {
            Box::new(Names {
                names,
                upstreams: upstreams.clone(),
            })
        });
        let n = entries.len();
        metrics.set_queue_depth(0);
        let pool = Arc::new(Pool {
            function: function.name.clone(),
            per_instance: function.instance_concurrency,
            queue_depth: function.queue_depth as usize,
            queue_timeout: function.queue_timeout,
            warm_target: (function.instance_concurrency as usize).min(WARM_CAP),
            idle_timeout,
            metrics,
            launcher,
            state: Mutex::new(State {
                entries,
                live: n,
                up_count: n,
                waiters: VecDeque::new(),
                next_waiter: 0,
                launch: scale::LaunchState::default(),
                epoch: Instant::now(),
                resolving: names.is_some(),
            }),
            tasks: Mutex::new(Vec::new()),
            changed: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            home: OnceLock::new(),
            names,
            spare: Notify::new(),
            spare_wanted: std::sync::atomic::AtomicBool::new(false),
        });
        pool.publish_instances(&pool.state.lock());
        pool
    }

    /// Starts the background work: a keeper for each static instance whose address no
    /// other pool keeps yet (warm connections; a pool's other instances get a keeper
    /// when they go out of rotation, to probe them), and the DNS discovery of its host
    /// names; for launched functions the scaler and the `min_instances`. Needs a Tokio
    /// runtime.
    pub fn start(self: &Arc<Self>) {
        let _ = self.home.set(Handle::current());
        self.adopt_keepers();
        if self.launcher.is_some() {
            let task = self.spawn(scale::supervise(self.clone()));
            self.tasks.lock().push(task.abort_handle());
        }
        if let Some(names) = &self.names {
            let discovery: Arc<Discovery> = names.upstreams.discovery().clone();
            let task = self.spawn(discovery::follow(
                self.clone(),
                names.names.clone(),
                discovery,
            ));
            self.tasks.lock().push(task.abort_handle());
        }
    }

    /// Starts a keeper for each static instance whose address no pool keeps. Called at
    /// start, and again when a reload retired the pool that kept one of them.
    pub fn adopt_keepers(self: &Arc<Self>) {
        let adopted: Vec<usize> = {
            let state = self.state.lock();
            (0..state.entries.len())
                .filter(|&i| match &state.entries[i] {
                    Some(e) => {
                        // The address's keeper may be another pool's: tell it the target.
                        e.instance.upstream().want_warm(self.warm_target);
                        e.instance.upstream().adopt()
                    }
                    None => false,
                })
                .collect()
        };
        for index in adopted {
            self.spawn_keeper(index);
        }
    }

    /// Makes the pool's discovered instances those of `desired` (host name as
    /// written, address), as the names resolve now: new addresses join (warm: their
    /// keeper opens connections ahead of invocations, as at start), vanished ones
    /// take no new invocation and finish those in flight. Fixed instances stay.
    pub fn set_discovered(self: &Arc<Self>, desired: &[(String, SocketAddr)]) {
        let Some(names) = &self.names else {
            return;
        };
        let (current, first) = {
            let state = self.state.lock();
            let current: Vec<(usize, Arc<Instance>)> = state
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| match e {
                    Some(e) if e.discovered => Some((i, e.instance.clone())),
                    _ => None,
                })
                .collect();
            (current, state.resolving)
        };
        let keys: Vec<(String, SocketAddr)> = current
            .iter()
            .map(|(_, i)| (discovered_name(i), i.addr()))
            .collect();
        let (leaving, joining) = discovery::diff(&keys, desired);
        if leaving.is_empty() && joining.is_empty() && !first {
            return;
        }
        let joining: Vec<Arc<Instance>> = joining
            .into_iter()
            .map(|(authority, addr)| names.upstreams.discovered(authority, *addr))
            .collect();
        let (joined, dropped_waiters) = {
            let mut state = self.state.lock();
            state.resolving = false;
            for &k in &leaving {
                state.remove(&current[k].1);
            }
            let joined: Vec<(usize, Arc<Instance>)> = joining
                .into_iter()
                .map(|instance| {
                    let index = state.insert(instance.clone());
                    if let Some(e) = state.entries[index].as_mut() {
                        e.discovered = true;
                    }
                    (index, instance)
                })
                .collect();
            self.publish_instances(&state);
            // Nothing left to wait for: the queue fails now rather than at its timeout.
            let dropped = if state.up_count == 0 {
                self.metrics.set_queue_depth(0);
                std::mem::take(&mut state.waiters)
            } else {
                VecDeque::new()
            };
            (joined, dropped)
        };
        drop(dropped_waiters);
        // Keepers of the instances that left see it and end.
        self.changed.notify_waiters();
        for &k in &leaving {
            let instance = &current[k].1;
            tracing::info!(
                function = %self.function,
                name = %discovered_name(instance),
                instance = %instance.name(),
                "instance left: its name no longer resolves to it; in-flight invocations finish"
            );
        }
        for (index, instance) in joined {
            tracing::info!(
                function = %self.function,
                name = %discovered_name(&instance),
                instance = %instance.name(),
                "instance joined: its name resolves to it"
            );
            instance.upstream().want_warm(self.warm_target);
            if instance.upstream().adopt() {
                self.spawn_keeper(index);
            }
            self.hand_out(index, None);
        }
    }

    /// Spawns background work on the pool's home runtime.
    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.home.get() {
            Some(home) => home.spawn(task),
            None => tokio::spawn(task),
        }
    }

    fn spawn_keeper(self: &Arc<Self>, index: usize) {
        let instance = match self.state.lock().entries.get_mut(index) {
            Some(Some(e)) if !e.keeper => {
                e.keeper = true;
                e.instance.clone()
            }
            _ => return,
        };
        let task = self.spawn(connection::keep(self.clone(), index, instance));
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    /// Ends the keeper of an instance that is up while another keeper tends its
    /// upstream. False if the instance went down meanwhile: then it still has to probe.
    fn retire_keeper(&self, index: usize, instance: &Arc<Instance>) -> bool {
        let mut state = self.state.lock();
        match state.entries.get_mut(index).and_then(Option::as_mut) {
            Some(e) if Arc::ptr_eq(&e.instance, instance) => {
                if e.up {
                    e.keeper = false;
                }
                e.up
            }
            _ => true,
        }
    }

    /// Stops the background tasks and, for launched functions, every instance.
    pub async fn close(&self, grace: Duration) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let instances: Vec<Arc<Instance>> = {
            let mut state = self.state.lock();
            state.waiters.clear();
            state.up_count = 0;
            state.live = 0;
            self.publish_instances(&state);
            self.metrics.set_queue_depth(0);
            state
                .entries
                .drain(..)
                .flatten()
                .map(|e| {
                    if e.keeper {
                        // Its keeper is gone: another pool at the address may adopt it.
                        e.upstream.disown();
                    }
                    e.instance
                })
                .collect()
        };
        let mut stops = Vec::new();
        for instance in instances {
            instance.clear_idle();
            stops.push(tokio::spawn(async move { instance.stop(grace).await }));
        }
        for stop in stops {
            let _ = stop.await;
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    pub fn per_instance(&self) -> u32 {
        self.per_instance
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The instances currently in the pool.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.state
            .lock()
            .entries
            .iter()
            .flatten()
            .map(|e| e.instance.clone())
            .collect()
    }

    /// `queue_depth`: invocations allowed to wait for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    /// The instances, the starts under way and the waiting invocations, read together
    /// (for the admin API; never on the request path).
    pub fn status(&self) -> PoolStatus {
        let state = self.state.lock();
        PoolStatus {
            instances: state
                .entries
                .iter()
                .flatten()
                .map(|e| InstanceStatus {
                    instance: e.instance.clone(),
                    up: e.up,
                    inflight: e.inflight,
                })
                .collect(),
            starting: state.launch.starting,
            queued: state.waiters.len(),
        }
    }

    /// How many instances the pool may try for one invocation before giving up.
    pub fn max_attempts(&self) -> usize {
        let live = self.state.lock().live;
        live.max(
            self.launcher
                .as_ref()
                .map_or(0, |l| l.policy().max_instances as usize),
        ) + 1
    }

    /// Publishes the instance and queue gauges again: after a retired pool of the same
    /// function (whose gauges these are too) was closed.
    pub fn republish(&self) {
        let state = self.state.lock();
        self.publish_instances(&state);
        self.metrics.set_queue_depth(state.waiters.len());
    }

    /// No invocation holds a slot or waits for one: a retired pool can be closed.
    pub fn is_idle(&self) -> bool {
        let state = self.state.lock();
        state.waiters.is_empty() && state.entries.iter().flatten().all(|e| e.inflight == 0)
    }

    /// Ready for traffic: a launched function with `min_instances > 0` has an instance up.
    pub fn is_ready(&self) -> bool {
        match &self.launcher {
            Some(l) if l.policy().min_instances > 0 => self.state.lock().up_count > 0,
            _ => true,
        }
    }

    /// Takes a free slot, waiting in the queue for at most `queue_timeout` (or, when
    /// the wait is for an instance being started, `ready_timeout` plus that).
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        let (id, rx, limit) = {
            let mut state = self.state.lock();
            if state.waiters.is_empty() {
                if let Some(slot) = state
                    .pick(self.per_instance)
                    .and_then(|index| self.take_slot(&mut state, index))
                {
                    return Ok(slot);
                }
            }
            // A wait for a busy instance is bounded by the queue; a wait for an instance
            // being started for this invocation by the start itself (`ready_timeout`).
            let mut for_start = None;
            match &self.launcher {
                None if state.up_count == 0 && state.live == 0 && !state.resolving => {
                    return Err(self.no_address())
                }
                None if state.up_count == 0 && !state.resolving => {
                    return Err(self.none_reachable())
                }
                None => {}
                Some(launcher) => match scale::on_demand(self, &mut state, launcher) {
                    scale::Demand::Wait => {}
                    scale::Demand::Starting => for_start = Some(launcher.policy().ready_timeout),
                    scale::Demand::FailFast(e) => return Err(e),
                },
            }
            if for_start.is_none() && state.waiters.len() >= self.queue_depth {
                return Err(self.queue_full(state.live));
            }
            // The start reports its own failure at `ready_timeout`; the margin lets that
            // answer arrive first.
            let limit = match for_start {
                Some(ready) => ready + self.queue_timeout + START_MARGIN,
                None => self.queue_timeout,
            };
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiters.push_back(Waiter { id, tx });
            self.metrics.set_queue_depth(state.waiters.len());
            (id, rx, (limit, for_start))
        };
        let (limit, for_start) = limit;
        let mut wait = QueueWait {
            pool: self,
            id,
            rx: Some(rx),
        };
        let result = match wait.rx.as_mut() {
            Some(rx) => tokio::time::timeout(limit, rx).await,
            None => return Err(self.none_reachable()),
        };
        match result {
            Ok(Ok(outcome)) => {
                wait.rx = None;
                outcome
            }
            // The pool dropped every waiter: no instance is left.
            Ok(Err(_)) => {
                wait.rx = None;
                Err(match self.state.lock().live {
                    0 if self.names.is_some() => self.no_address(),
                    _ => self.none_reachable(),
                })
            }
            Err(_elapsed) => match wait.cancel() {
                // A slot arrived just as the wait ran out: use it.
                Some(Ok(slot)) => Ok(slot),
                Some(Err(e)) => Err(e),
                // Never 432 for a wait on a start: it is the start that did not deliver.
                None => Err(match for_start {
                    Some(ready) => AdmitError::StartFailed {
                        function: self.function.clone(),
                        message: format!(
                            "No instance of function [{}] became available within {}ms of \
                             being started for this invocation",
                            self.function,
                            ready.as_millis()
                        ),
                        never_listened: true,
                    },
                    None => self.queue_expired(limit),
                }),
            },
        }
    }

    /// Takes a free slot for an asynchronous event, never a place in the queue:
    /// synchronous callers come first. Only when none waits is a free slot taken; else
    /// this waits, outside the queue, until a release finds no synchronous waiter. A
    /// launched function with no free slot is scaled as for a synchronous invocation
    /// (one start at a time for this demand). Fails, like a synchronous acquire, when
    /// the function has no reachable instance or cannot start one.
    pub async fn acquire_spare(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        use std::sync::atomic::Ordering;
        /// A slot freed by a path that does not signal (an instance joining) is seen
        /// after this at the latest.
        const RECHECK: Duration = Duration::from_millis(200);
        struct Wanted<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Wanted<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.spare_wanted.store(true, Ordering::Relaxed);
        let _wanted = Wanted(&self.spare_wanted);
        loop {
            {
                let mut state = self.state.lock();
                if state.waiters.is_empty() {
                    if let Some(slot) = state
                        .pick(self.per_instance)
                        .and_then(|index| self.take_slot(&mut state, index))
                    {
                        return Ok(slot);
                    }
                    match &self.launcher {
                        None if state.up_count == 0 && state.live == 0 && !state.resolving => {
                            return Err(self.no_address())
                        }
                        None if state.up_count == 0 && !state.resolving => {
                            return Err(self.none_reachable())
                        }
                        None => {}
                        Some(launcher) => {
                            if let scale::Demand::FailFast(e) =
                                scale::on_demand(self, &mut state, launcher)
                            {
                                return Err(e);
                            }
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(RECHECK, self.spare.notified()).await;
        }
    }

    /// A slot may be free for [`Pool::acquire_spare`]. Called outside the lock.
    fn spare_freed(&self) {
        if self.spare_wanted.load(std::sync::atomic::Ordering::Relaxed) {
            self.spare.notify_one();
        }
    }

    fn take_slot(self: &Arc<Self>, state: &mut State, index: usize) -> Option<Slot> {
        let entry = state.entries.get_mut(index)?.as_mut()?;
        entry.inflight += 1;
        entry.upstream.slot_taken();
        Some(Slot {
            pool: self.clone(),
            index,
            instance: entry.instance.clone(),
            init: None,
        })
    }

    /// Gives a slot back: to the oldest waiter if there is one, else to the instance.
    fn release(self: &Arc<Self>, index: usize, instance: &Arc<Instance>) {
        let waiter = {
            let mut state = self.state.lock();
            let Some(entry) = state.entries.get_mut(index).and_then(Option::as_mut) else {
                instance.upstream().slot_freed();
                return;
            };
            if !Arc::ptr_eq(&entry.instance, instance) {
                // The instance is gone and its place reused: nothing to give back.
                instance.upstream().slot_freed();
                return;
            }
            let up = entry.up;
            let waiter = if up { state.waiters.pop_front() } else { None };
            match waiter {
                Some(w) => {
                    self.metrics.set_queue_depth(state.waiters.len());
                    w
                }
                None => {
                    instance.upstream().slot_freed();
                    let epoch = state.epoch;
                    if let Some(entry) = state.entries[index].as_mut() {
                        entry.inflight -= 1;
                        if entry.inflight == 0 && self.launcher.is_some() {
                            entry.idle_since_ms = ms_since(epoch, Instant::now());
                        }
                    }
                    drop(state);
                    self.spare_freed();
                    return;
                }
            }
        };
        // The slot changes hands without ever being free. If the waiter gave up in the
        // meantime the slot comes back here, dropped outside the lock, and goes on to
        // the next waiter.
        let slot = Slot {
            pool: self.clone(),
            index,
            instance: instance.clone(),
            init: None,
        };
        if let Err(back) = waiter.tx.send(Ok(slot)) {
            drop(back);
        }
    }

    /// Takes an instance out of rotation after it refused a connection. Returns true
    /// when this call changed its state.
    pub fn mark_down(self: &Arc<Self>, index: usize, instance: &Arc<Instance>) -> bool {
        let (dropped_waiters, probe) = {
            let mut state = self.state.lock();
            let Some(entry) = state.entries.get_mut(index).and_then(Option::as_mut) else {
                return false;
            };
            if !entry.up || !Arc::ptr_eq(&entry.instance, instance) {
                return false;
            }
            entry.up = false;
            // Probing it back is a keeper's job; start one unless it has one.
            let probe = !entry.keeper;
            state.up_count -= 1;
            self.publish_instances(&state);
            let dropped = if state.up_count == 0 && self.launcher.is_none() {
                self.metrics.set_queue_depth(0);
                std::mem::take(&mut state.waiters)
            } else {
                VecDeque::new()
            };
            (dropped, probe)
        };
        if probe {
            self.spawn_keeper(index);
        }
        self.changed.notify_waiters();
        tracing::warn!(
            function = %self.function,
            instance = %instance.name(),
            "instance refused a connection; out of rotation until it answers again"
        );
        // Waiters learn there is nothing left when their sender drops (outside the lock).
        drop(dropped_waiters);
        true
    }

    /// Puts an instance back into rotation and hands its free slots to waiters.
    pub fn mark_up(self: &Arc<Self>, index: usize, instance: &Arc<Instance>) {
        {
            let mut state = self.state.lock();
            let Some(entry) = state.entries.get_mut(index).and_then(Option::as_mut) else {
                return;
            };
            if entry.up || !Arc::ptr_eq(&entry.instance, instance) {
                return;
            }
            entry.up = true;
            state.up_count += 1;
            self.publish_instances(&state);
        }
        tracing::info!(
            function = %self.function,
            instance = %instance.name(),
            "instance answers again; back in rotation"
        );
        self.hand_out(index, None);
    }

    /// Hands the free slots of one instance to waiters; `init` is how long the
    /// instance took to start when it was started for them.
    fn hand_out(self: &Arc<Self>, index: usize, init: Option<Duration>) {
        loop {
            let (waiter, slot) = {
                let mut state = self.state.lock();
                let free = match state.entries.get(index).and_then(Option::as_ref) {
                    Some(e) => e.up && e.inflight < self.per_instance,
                    None => false,
                };
                if !free || state.waiters.is_empty() {
                    drop(state);
                    self.spare_freed();
                    return;
                }
                let Some(w) = state.waiters.pop_front() else {
                    return;
                };
                let Some(mut slot) = self.take_slot(&mut state, index) else {
                    state.waiters.push_front(w);
                    return;
                };
                slot.init = init;
                self.metrics.set_queue_depth(state.waiters.len());
                (w, slot)
            };
            if let Err(back) = waiter.tx.send(Ok(slot)) {
                drop(back);
            }
        }
    }

    /// `Some(up)` while the instance is in the pool, `None` once it left.
    fn instance_state(&self, index: usize, instance: &Arc<Instance>) -> Option<bool> {
        match self
            .state
            .lock()
            .entries
            .get(index)
            .and_then(Option::as_ref)
        {
            Some(e) if Arc::ptr_eq(&e.instance, instance) => Some(e.up),
            _ => None,
        }
    }

    /// Updates `scf_gateway_instances{state}` from the state (called under the lock,
    /// only when instances change, never per invocation).
    fn publish_instances(&self, state: &State) {
        let ready = state.up_count;
        let down = state.live - state.up_count;
        self.metrics
            .set_instances(state.launch.starting, ready, down);
    }

    /// Instances the function can have (launched: `max_instances`), from the live count
    /// the caller read under the lock.
    fn capacity(&self, live: usize) -> usize {
        self.launcher
            .as_ref()
            .map_or(live, |l| l.policy().max_instances as usize)
    }

    fn retry_after_secs(&self) -> u64 {
        self.queue_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    fn queue_full(&self, live: usize) -> AdmitError {
        let instances = self.capacity(live);
        AdmitError::QueueFull {
            function: self.function.clone(),
            slots: instances as u64 * u64::from(self.per_instance),
            instances,
            per_instance: self.per_instance,
            queue_depth: self.queue_depth,
            retry_after_secs: self.retry_after_secs(),
        }
    }

    fn queue_expired(&self, waited: Duration) -> AdmitError {
        let instances = self.capacity(self.state.lock().live);
        AdmitError::QueueTimeout {
            function: self.function.clone(),
            slots: instances as u64 * u64::from(self.per_instance),
            instances,
            per_instance: self.per_instance,
            waited_ms: waited.as_millis(),
            retry_after_secs: self.retry_after_secs(),
        }
    }

    fn no_address(&self) -> AdmitError {
        AdmitError::NoInstance {
            function: self.function.clone(),
            reason: "its host names resolve to no address".to_owned(),
        }
    }

    fn none_reachable(&self) -> AdmitError {
        AdmitError::NoInstance {
            function: self.function.clone(),
            reason: "every instance refused connections".to_owned(),
        }
    }
}

impl State {
    /// The least-loaded instance that is up and has a free slot. Load is counted per
    /// address, across every function whose pool lists it: a thousand functions that
    /// each see their own instances idle would otherwise pile onto one address at
    /// random, several times its fair share on some. Two
    /// random choices keep the cost flat for large pools; a scan from a random start
    /// catches the case where both choices are full, and spreads ties.
    fn pick(&self, per_instance: u32) -> Option<usize> {
        let n = self.entries.len();
        let load = |i: usize| match &self.entries[i] {
            Some(e) if e.up && e.inflight < per_instance => Some(e.upstream.load()),
            _ => None,
        };
        if n > 4 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            match (load(a), load(b)) {
                (Some(la), Some(lb)) => return Some(if lb < la { b } else { a }),
                (Some(_), None) => return Some(a),
                (None, Some(_)) => return Some(b),
                (None, None) => {}
            }
        }
        let start = if n > 1 { fastrand::usize(..n) } else { 0 };
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if let Some(l) = load(i) {
                if best.is_none_or(|(_, b)| l < b) {
                    best = Some((i, l));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Adds an instance at a free index.
    fn insert(&mut self, instance: Arc<Instance>) -> usize {
        let entry = Entry::new(instance, ms_since(self.epoch, Instant::now()));
        self.live += 1;
        self.up_count += 1;
        match self.entries.iter().position(Option::is_none) {
            Some(i) => {
                self.entries[i] = Some(entry);
                i
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        }
    }

    /// Takes an instance out of the pool for good (stopped, crashed, recycled).
    fn remove(&mut self, instance: &Arc<Instance>) -> bool {
        let found = self.entries.iter().position(|e| {
            e.as_ref()
                .is_some_and(|e| Arc::ptr_eq(&e.instance, instance))
        });
        match found {
            Some(i) => {
                if let Some(e) = self.entries[i].take() {
                    self.live -= 1;
                    if e.up {
                        self.up_count -= 1;
                    }
                }
                true
            }
            None => false,
        }
    }
}

/// The host name (as written, with its port) a discovered instance was found under:
/// the `Host` its invocations carry.
fn discovered_name(instance: &Instance) -> String {
    String::from_utf8_lossy(instance.host().as_bytes()).into_owned()
}

/// A waiter's place in the queue; leaving it (timeout, or the client going away)
/// removes the place, and a slot that raced in is given back.
struct QueueWait<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    rx: Option<oneshot::Receiver<WaitResult>>,
}

impl QueueWait<'_> {
    fn cancel(&mut self) -> Option<WaitResult> {
        let mut rx = self.rx.take()?;
        {
            let mut state = self.pool.state.lock();
            if let Some(pos) = state.waiters.iter().position(|w| w.id == self.id) {
                state.waiters.remove(pos);
                self.pool.metrics.set_queue_depth(state.waiters.len());
                return None;
            }
        }
        // Not in the queue any more: a slot (or an error) was sent, or the queue dropped.
        rx.close();
        rx.try_recv().ok()
    }
}

impl Drop for QueueWait<'_> {
    fn drop(&mut self) {
        // A slot taken here is released by its own drop, outside the lock.
        drop(self.cancel());
    }
}

/// The right to run one invocation on one instance. Dropping it frees the slot.
pub struct Slot {
    pool: Arc<Pool>,
    index: usize,
    instance: Arc<Instance>,
    /// Set when the invocation waited for its instance's cold start: how long that
    /// took (the Report line's `InitDuration`).
    init: Option<Duration>,
}

impl Slot {
    pub fn init_duration(&self) -> Option<Duration> {
        self.init
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.index, &self.instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FunctionKind;
    use crate::metrics::Registry;

    const NAME: &str = "svc:80";

    fn followed(addrs: &[SocketAddr]) -> Vec<(String, SocketAddr)> {
        addrs.iter().map(|a| (NAME.to_owned(), *a)).collect()
    }

    /// A pool following one host name, with one slot per instance.
    fn pool_of_a_name(upstreams: &Upstreams) -> Arc<Pool> {
        let function = FunctionConfig {
            name: "f".into(),
            namespace: "default".into(),
            version: "$LATEST".into(),
            kind: FunctionKind::Event,
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            instance_concurrency: 1,
            queue_depth: 10,
            queue_timeout: Duration::from_secs(5),
            source: InstanceSource::Static(vec![StaticInstance::Named {
                authority: NAME.into(),
                host: "svc".into(),
                port: 80,
            }]),
            timers: Vec::new(),
        };
        let metrics = Registry::new().function("f", "default");
        Pool::new(&function, Duration::from_secs(4), metrics, None, upstreams)
    }

    /// Addresses leave and come back while a slot on one of them is held: the slot is
    /// given back to nothing, and the address that came back counts from zero.
    #[tokio::test]
    async fn discovered_instances_join_and_leave_around_held_slots() {
        let upstreams = Upstreams::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        // Held here, and adopted: no keeper dials these addresses during the test.
        let kept: Vec<Arc<Upstream>> = [a, b].iter().map(|&x| upstreams.get(x)).collect();
        for u in &kept {
            assert!(u.adopt());
        }
        let pool = pool_of_a_name(&upstreams);

        // Before the first answer an invocation waits for it.
        let early = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.map(|s| s.instance().addr()) }
        });
        tokio::task::yield_now().await;
        pool.set_discovered(&followed(&[a]));
        assert_eq!(early.await.unwrap().unwrap(), a);

        let on_a = pool.acquire().await.unwrap();
        assert_eq!(on_a.instance().addr(), a);
        // a leaves, b joins: new invocations go to b only.
        pool.set_discovered(&followed(&[b]));
        let on_b = pool.acquire().await.unwrap();
        assert_eq!(on_b.instance().addr(), b);
        drop(on_b);
        assert_eq!(pool.instances().len(), 1);

        // a comes back while its old slot is held; the old slot goes back to nothing.
        pool.set_discovered(&followed(&[a, b]));
        drop(on_a);
        assert_eq!(kept[0].load(), 0);
        let s1 = pool.acquire().await.unwrap();
        let s2 = pool.acquire().await.unwrap();
        let mut got = [s1.instance().addr(), s2.instance().addr()];
        got.sort();
        assert_eq!(got, [a, b]);
        drop((s1, s2));

        // No address at all: invocations fail at once, saying why.
        pool.set_discovered(&[]);
        match pool.acquire().await {
            Err(AdmitError::NoInstance { reason, .. }) => {
                assert_eq!(reason, "its host names resolve to no address")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a slot on an empty pool"),
        }
        assert_eq!(pool.instances().len(), 0);
    }
}
