//! Asynchronous invocations: `Event` invocations and timer ticks are kept durably in a
//! store, run later on the function's instances through the same invocation life
//! cycle as synchronous ones, retried on failure, and kept for inspection.
//!
//! [`Service`] is the asynchronous side of a running gateway: it opens the store (at
//! start, or at the first `Event` invocation when nothing asks for it sooner), runs a
//! dispatcher per event function (`dispatch`) and the timers ([`timers`]), keeps the
//! metrics' counts and removes events past their retention.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{Notify, OnceCell};
use tokio::task::AbortHandle;

use crate::config::{AsyncConfig, AsyncStore, FunctionKind};
use crate::invoke::Gateway;

pub mod api;
pub mod cron;
mod dispatch;
pub mod embedded;
pub mod redis_streams;
pub mod store;
pub mod timers;

pub use store::{FunctionKey, NewEvent, Status, Store, StoreError, Trigger};

/// The embedded store's database file, in `async.path`.
pub const EMBEDDED_DATABASE: &str = "events.db";
/// How often the store is counted for the metrics and purged of expired events.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);
/// Purges run every this many upkeeps.
const PURGE_EVERY: u32 = 12;

/// The asynchronous side of a running gateway. Shared by every config snapshot.
pub struct Service {
    config: AsyncConfig,
    /// This gateway's name among replicas (its Redis consumer name).
    replica: String,
    store: OnceCell<Store>,
    /// The gateway snapshots, to run attempts on the current one. Weak: the snapshots
    /// hold this service.
    current: OnceLock<Weak<ArcSwap<Gateway>>>,
    /// The runtime of [`Service::start`] (the first worker's): dispatchers and attempts
    /// run there, whichever worker's invocation opened the store.
    home: OnceLock<tokio::runtime::Handle>,
    tasks: Mutex<Tasks>,
    /// Attempts under way, and a signal when they reach zero (shutdown waits for it).
    running: AtomicUsize,
    idle: Notify,
}

#[derive(Default)]
struct Tasks {
    /// One dispatcher per event function, with what wakes it.
    dispatchers: HashMap<FunctionKey, (Arc<Notify>, AbortHandle)>,
    upkeep: Option<AbortHandle>,
    /// The current config's timers, started again after each reload.
    timers: Option<timers::Timers>,
    stopped: bool,
}

impl Service {
    pub fn new(config: &AsyncConfig) -> Service {
        Service {
            config: config.clone(),
            replica: replica_name(),
            store: OnceCell::new(),
            current: OnceLock::new(),
            home: OnceLock::new(),
            tasks: Mutex::new(Tasks::default()),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// The largest event accepted (`async.max_event_bytes`).
    pub fn max_event_bytes(&self) -> u64 {
        self.config.max_event_bytes
    }

    /// Starts serving: opens the store now when the config asks for it (an `[async]`
    /// section, timers, or an embedded store that already exists, so that waiting
    /// events resume), then runs the dispatchers and the timers. A store that cannot be opened now is
    /// reported and opened again at the next `Event` invocation.
    pub async fn start(self: &Arc<Self>, current: &Arc<ArcSwap<Gateway>>) {
        let _ = self.current.set(Arc::downgrade(current));
        let _ = self.home.set(tokio::runtime::Handle::current());
        let timers = current
            .load()
            .config()
            .functions
            .iter()
            .any(|f| f.timers.iter().any(|t| t.enabled));
        if timers || self.wanted_at_start() {
            match self.store().await {
                Ok(_) => {}
                Err(e) => tracing::error!("cannot open the asynchronous event store: {e}"),
            }
        }
        self.reconcile();
    }

    fn wanted_at_start(&self) -> bool {
        if self.config.configured {
            return true;
        }
        match &self.config.store {
            AsyncStore::Embedded { path } => path.join(EMBEDDED_DATABASE).exists(),
            AsyncStore::Redis { .. } => true,
        }
    }

    /// The store, opened on first use.
    pub async fn store(self: &Arc<Self>) -> Result<&Store, StoreError> {
        let opened = self.store.initialized();
        let store = self
            .store
            .get_or_try_init(|| Store::open(&self.config, &self.replica))
            .await?;
        if !opened {
            self.reconcile();
        }
        Ok(store)
    }

    /// The store if it is open.
    fn opened(&self) -> Result<&Store, StoreError> {
        self.store
            .get()
            .ok_or_else(|| StoreError::Unavailable("the store is not open".into()))
    }

    /// Keeps `event` durably (opening the store if need be), then wakes its function's
    /// dispatcher.
    pub async fn submit(self: &Arc<Self>, event: NewEvent) -> Result<(), StoreError> {
        self.store().await?;
        self.enqueue(event).await
    }

    /// [`Service::submit`] on a store already open.
    pub async fn enqueue(&self, event: NewEvent) -> Result<(), StoreError> {
        let key = event.function.clone();
        self.opened()?.enqueue(event).await?;
        if let Some((wake, _)) = self.tasks.lock().dispatchers.get(&key) {
            wake.notify_one();
        }
        Ok(())
    }

    /// The gateway serving now.
    fn gateway(&self) -> Option<Arc<Gateway>> {
        Some(self.current.get()?.upgrade()?.load_full())
    }

    /// Runs a dispatcher for each event function of the current config, and stops
    /// those of functions it no longer has. Called at start, when the store opens and
    /// after each reload.
    pub fn reconcile(self: &Arc<Self>) {
        let (Some(store), Some(gateway), Some(home)) =
            (self.store.get(), self.gateway(), self.home.get())
        else {
            return;
        };
        let wanted: Vec<FunctionKey> = gateway
            .functions()
            .iter()
            .filter(|f| f.kind == FunctionKind::Event)
            .map(|f| FunctionKey::new(f.namespace.clone(), f.name.clone()))
            .collect();
        let mut tasks = self.tasks.lock();
        if tasks.stopped {
            return;
        }
        tasks.dispatchers.retain(|key, (_, task)| {
            let keep = wanted.contains(key) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if tasks.dispatchers.contains_key(&key) {
                continue;
            }
            let wake = Arc::new(Notify::new());
            let task = home.spawn(dispatch::run(
                self.clone(),
                store.clone(),
                key.clone(),
                wake.clone(),
            ));
            tasks.dispatchers.insert(key, (wake, task.abort_handle()));
        }
        // Timers keep no state: the new config's replace the old ones, and a tick
        // already fired is not fired again (the next is the first after now).
        tasks.timers = None;
        let _runtime = home.enter();
        tasks.timers = Some(timers::start(&gateway.config().functions, self.clone()));
        if tasks.upkeep.is_none() {
            let task = home.spawn(upkeep(self.clone(), store.clone()));
            tasks.upkeep = Some(task.abort_handle());
        }
    }

    /// Stops the dispatchers and the upkeep, then waits (at most `grace`) for the
    /// attempts under way. An attempt cut short is run again at the next start.
    pub async fn stop(&self, grace: Duration) {
        {
            let mut tasks = self.tasks.lock();
            tasks.stopped = true;
            for (_, (_, task)) in tasks.dispatchers.drain() {
                task.abort();
            }
            if let Some(task) = tasks.upkeep.take() {
                task.abort();
            }
            tasks.timers = None;
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }

    fn attempt_began(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    fn attempt_ended(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Counts the store's events for the metrics, and purges expired ones.
async fn upkeep(service: Arc<Service>, store: Store) {
    let mut round: u32 = 0;
    loop {
        if let Some(gateway) = service.gateway() {
            match store.counts().await {
                Ok(counts) => {
                    let now = SystemTime::now();
                    let counts = counts
                        .into_iter()
                        .map(|c| {
                            let age = c.oldest_queued.and_then(|t| now.duration_since(t).ok());
                            (c.function.name, c.by_status, age)
                        })
                        .collect();
                    gateway.registry().set_async_events(counts);
                }
                Err(e) => tracing::debug!("cannot count asynchronous events: {e}"),
            }
        }
        if round % PURGE_EVERY == 0 {
            match store.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "expired asynchronous events removed"),
                Err(e) => tracing::debug!("cannot remove expired asynchronous events: {e}"),
            }
        }
        round = round.wrapping_add(1);
        tokio::time::sleep(UPKEEP_PERIOD).await;
    }
}

/// `host-pid-random`: unique among replicas, and among restarts of one.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".to_owned());
    let random = crate::headers::new_uuid().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}
