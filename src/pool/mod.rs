//! A function's instances and the invocations waiting for them.
//!
//! Each instance has `instance_concurrency` slots; an invocation holds one [`Slot`] from
//! hand-over until its response body ends, and a slot is never lent twice. A new
//! invocation takes a free slot on the least-loaded instance that is up (two random
//! choices, falling back to a scan), or waits in a bounded FIFO queue. A released slot
//! goes straight to the oldest waiter, so a burst cannot overtake the queue.
//!
//! The state is one small mutex per pool, held for a few instructions and never across
//! an await. Instances that refuse connections are marked down; the per-instance keeper
//! task (see [`connection`]) probes them back in with backoff and keeps warm keep-alive
//! connections ready.

pub mod connection;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::config::{FunctionConfig, InstanceSource};
use crate::error::AdmitError;
use crate::metrics::FunctionMetrics;
pub use connection::{Instance, PooledConn, UpstreamSender};

/// Warm connections opened per instance ahead of demand: one per slot, up to this.
const WARM_CAP: usize = 16;

/// One function's pool.
pub struct Pool {
    function: String,
    instances: Box<[Arc<Instance>]>,
    per_instance: u32,
    queue_depth: usize,
    queue_timeout: Duration,
    warm_target: usize,
    idle_timeout: Duration,
    metrics: FunctionMetrics,
    state: Mutex<State>,
    keepers: Mutex<Vec<AbortHandle>>,
}

struct State {
    inflight: Vec<u32>,
    up: Vec<bool>,
    up_count: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Slot>,
}

impl Pool {
    pub fn new(
        function: &FunctionConfig,
        idle_timeout: Duration,
        metrics: FunctionMetrics,
    ) -> Arc<Pool> {
        let instances: Box<[Arc<Instance>]> = match &function.source {
            InstanceSource::Static(list) => list
                .iter()
                .map(|i| Arc::new(Instance::new(i.addr, &i.authority)))
                .collect(),
            InstanceSource::Launch(_) => Box::new([]),
        };
        let n = instances.len();
        metrics.queue_depth.set(0.0);
        Arc::new(Pool {
            function: function.name.clone(),
            per_instance: function.instance_concurrency,
            queue_depth: function.queue_depth as usize,
            queue_timeout: function.queue_timeout,
            warm_target: (function.instance_concurrency as usize).min(WARM_CAP),
            idle_timeout,
            metrics,
            instances,
            state: Mutex::new(State {
                inflight: vec![0; n],
                up: vec![true; n],
                up_count: n,
                waiters: VecDeque::new(),
                next_waiter: 0,
            }),
            keepers: Mutex::new(Vec::new()),
        })
    }

    /// Starts one keeper per instance: warm connections and health probing. Needs a
    /// Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let mut keepers = lock(&self.keepers);
        for index in 0..self.instances.len() {
            let task = tokio::spawn(connection::keep(self.clone(), index));
            keepers.push(task.abort_handle());
        }
    }

    /// Stops the keepers; pooled connections close as their last users drop them.
    pub fn close(&self) {
        for keeper in lock(&self.keepers).drain(..) {
            keeper.abort();
        }
        for instance in self.instances.iter() {
            instance.clear_idle();
        }
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Takes a free slot, waiting in the queue for at most `queue_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        let (id, rx) = {
            let mut state = lock(&self.state);
            if state.up_count == 0 {
                return Err(self.none_reachable());
            }
            if state.waiters.is_empty() {
                if let Some(index) = state.pick(self.per_instance) {
                    state.inflight[index] += 1;
                    return Ok(Slot::new(self.clone(), index));
                }
            }
            if state.waiters.len() >= self.queue_depth {
                return Err(self.queue_full());
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiters.push_back(Waiter { id, tx });
            self.metrics.queue_depth.set(state.waiters.len() as f64);
            (id, rx)
        };
        let mut wait = QueueWait {
            pool: self,
            id,
            rx: Some(rx),
        };
        let rx = wait
            .rx
            .as_mut()
            .map(|rx| tokio::time::timeout(self.queue_timeout, rx));
        let result = match rx {
            Some(rx) => rx.await,
            None => return Err(self.none_reachable()),
        };
        match result {
            Ok(Ok(slot)) => {
                wait.rx = None;
                Ok(slot)
            }
            // The pool dropped every waiter: no instance is left.
            Ok(Err(_)) => {
                wait.rx = None;
                Err(self.none_reachable())
            }
            Err(_elapsed) => match wait.cancel() {
                // A slot arrived just as the wait ran out: use it.
                Some(slot) => Ok(slot),
                None => Err(self.queue_expired()),
            },
        }
    }

    /// Gives a slot back: to the oldest waiter if there is one, else to the instance.
    fn release(self: &Arc<Self>, index: usize) {
        let waiter = {
            let mut state = lock(&self.state);
            let waiter = if state.up[index] {
                state.waiters.pop_front()
            } else {
                None
            };
            match waiter {
                Some(w) => {
                    self.metrics.queue_depth.set(state.waiters.len() as f64);
                    w
                }
                None => {
                    state.inflight[index] -= 1;
                    return;
                }
            }
        };
        // The slot changes hands without ever being free. If the waiter gave up in the
        // meantime the slot comes back here, dropped outside the lock, and goes on to
        // the next waiter.
        if let Err(slot) = waiter.tx.send(Slot::new(self.clone(), index)) {
            drop(slot);
        }
    }

    /// Takes an instance out of rotation after it refused a connection. Returns true
    /// when this call changed its state.
    pub fn mark_down(&self, index: usize) -> bool {
        let dropped_waiters = {
            let mut state = lock(&self.state);
            if !state.up[index] {
                return false;
            }
            state.up[index] = false;
            state.up_count -= 1;
            if state.up_count == 0 {
                self.metrics.queue_depth.set(0.0);
                std::mem::take(&mut state.waiters)
            } else {
                VecDeque::new()
            }
        };
        tracing::warn!(
            function = %self.function,
            instance = %self.instances[index].addr(),
            "instance refused a connection; out of rotation until it answers again"
        );
        // Waiters learn there is nothing left when their sender drops (outside the lock).
        drop(dropped_waiters);
        true
    }

    /// Puts an instance back into rotation and hands its free slots to waiters.
    pub fn mark_up(self: &Arc<Self>, index: usize) {
        {
            let mut state = lock(&self.state);
            if state.up[index] {
                return;
            }
            state.up[index] = true;
            state.up_count += 1;
        }
        tracing::info!(
            function = %self.function,
            instance = %self.instances[index].addr(),
            "instance answers again; back in rotation"
        );
        loop {
            let waiter = {
                let mut state = lock(&self.state);
                if state.inflight[index] >= self.per_instance || !state.up[index] {
                    return;
                }
                let Some(w) = state.waiters.pop_front() else {
                    return;
                };
                state.inflight[index] += 1;
                self.metrics.queue_depth.set(state.waiters.len() as f64);
                w
            };
            if let Err(slot) = waiter.tx.send(Slot::new(self.clone(), index)) {
                drop(slot);
            }
        }
    }

    pub fn is_up(&self, index: usize) -> bool {
        lock(&self.state).up[index]
    }

    /// In-flight invocations per instance, for tests and the admin API.
    pub fn inflight(&self) -> Vec<u32> {
        lock(&self.state).inflight.clone()
    }

    fn slots(&self) -> u64 {
        self.instances.len() as u64 * u64::from(self.per_instance)
    }

    fn retry_after_secs(&self) -> u64 {
        self.queue_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    fn queue_full(&self) -> AdmitError {
        AdmitError::QueueFull {
            function: self.function.clone(),
            slots: self.slots(),
            instances: self.instances.len(),
            per_instance: self.per_instance,
            queue_depth: self.queue_depth,
            retry_after_secs: self.retry_after_secs(),
        }
    }

    fn queue_expired(&self) -> AdmitError {
        AdmitError::QueueTimeout {
            function: self.function.clone(),
            slots: self.slots(),
            instances: self.instances.len(),
            per_instance: self.per_instance,
            waited_ms: self.queue_timeout.as_millis(),
            retry_after_secs: self.retry_after_secs(),
        }
    }

    fn none_reachable(&self) -> AdmitError {
        AdmitError::NoInstance {
            function: self.function.clone(),
            reason: format!(
                "all {} instance(s) refused connections",
                self.instances.len()
            ),
        }
    }
}

impl State {
    /// The least-loaded instance that is up and has a free slot. Two random choices
    /// keep the cost flat for large pools; a scan from a random start catches the case
    /// where both choices are full, and spreads ties.
    fn pick(&self, per_instance: u32) -> Option<usize> {
        let n = self.inflight.len();
        let free = |i: usize| self.up[i] && self.inflight[i] < per_instance;
        if n > 4 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            match (free(a), free(b)) {
                (true, true) => {
                    return Some(if self.inflight[b] < self.inflight[a] {
                        b
                    } else {
                        a
                    })
                }
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                (false, false) => {}
            }
        }
        let start = if n > 1 { fastrand::usize(..n) } else { 0 };
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if free(i) && best.is_none_or(|b| self.inflight[i] < self.inflight[b]) {
                best = Some(i);
            }
        }
        best
    }
}

/// A waiter's place in the queue; leaving it (timeout, or the client going away)
/// removes the place, and a slot that raced in is given back.
struct QueueWait<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    rx: Option<oneshot::Receiver<Slot>>,
}

impl QueueWait<'_> {
    fn cancel(&mut self) -> Option<Slot> {
        let mut rx = self.rx.take()?;
        {
            let mut state = lock(&self.pool.state);
            if let Some(pos) = state.waiters.iter().position(|w| w.id == self.id) {
                state.waiters.remove(pos);
                self.pool
                    .metrics
                    .queue_depth
                    .set(state.waiters.len() as f64);
                return None;
            }
        }
        // Not in the queue any more: a slot was sent (or the queue was dropped).
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
}

impl Slot {
    fn new(pool: Arc<Pool>, index: usize) -> Slot {
        Slot { pool, index }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.pool.instances[self.index]
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn addr(&self) -> SocketAddr {
        self.instance().addr()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

/// Poisoning only means another thread panicked while holding the lock; the state it
/// guards is a handful of counters that stay consistent, so carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
