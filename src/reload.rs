//! Config reload (`SIGHUP`, `POST /admin/reload`): the file is read and validated again,
//! a new [`Gateway`] is built beside the running one and swapped in atomically, so
//! every invocation that starts after the swap sees the new config and none that
//! started before it is disturbed.
//!
//! What a function keeps is decided by [`keeps_instances`]: a function whose instances
//! would be the same (same static addresses, or the same launch settings) keeps its
//! pool, and so its instances, their warm connections and its queue. The pools of
//! removed or changed functions are retired: they take no new invocations, finish the
//! ones they have, then are closed. An invalid file changes nothing.
//!
//! Reloads run one at a time. The request path only loads the current gateway from an
//! [`ArcSwap`] (no lock); everything else happens here, off that path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{
    AsyncStore, Config, ConfigErrors, FunctionConfig, InstanceSource, ServerConfig, StaticInstance,
};
use crate::invoke::{Built, Gateway};
use crate::pool::Pool;
use crate::server::TlsHandle;

/// The gateway every new invocation uses; swapped by a reload.
pub type Current = Arc<ArcSwap<Gateway>>;

/// How long a retired pool's launched instances get to exit on SIGTERM before SIGKILL.
const INSTANCE_STOP_GRACE: Duration = Duration::from_secs(3);

/// How often a retired pool is looked at until its last invocation ended.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// True when `new` (in `new_config`) would run on the same instances as `old` (in
/// `old_config`), so the reload keeps its pool.
///
/// The pool's own settings (`instance_concurrency`, `queue_depth`, `queue_timeout`)
/// count too: a change of one of them makes a new pool. For a static pool that costs
/// nothing visible, since its instances' warm connections are kept per address and
/// shared; a launched function gets new instances. Settings that only the request path
/// reads (`timeout`, `type`, routes, stamps) change in place.
pub fn keeps_instances(
    old_config: &Config,
    old: &FunctionConfig,
    new_config: &Config,
    new: &FunctionConfig,
) -> bool {
    let pool_settings = old.name == new.name
        && old.namespace == new.namespace
        && old.instance_concurrency == new.instance_concurrency
        && old.queue_depth == new.queue_depth
        && old.queue_timeout == new.queue_timeout
        && old_config.server.upstream_idle_timeout == new_config.server.upstream_idle_timeout;
    pool_settings
        && match (&old.source, &new.source) {
            // Host names are followed as `[discovery]` says.
            (InstanceSource::Static(a), InstanceSource::Static(b)) => {
                a == b
                    && (old_config.discovery == new_config.discovery
                        || !a.iter().any(|i| matches!(i, StaticInstance::Named { .. })))
            }
            // A launched instance is started with the function's identity, memory and
            // the platform's names in its environment, and an image function with the
            // `[images]` settings.
            (InstanceSource::Launch(a), InstanceSource::Launch(b)) => {
                a == b
                    && old.version == new.version
                    && old.memory_mb == new.memory_mb
                    && old_config.platform == new_config.platform
                    && (a.image.is_none() || old_config.images == new_config.images)
            }
            _ => false,
        }
}

/// The settings a running gateway took at start and cannot change without a restart,
/// by their config keys.
fn restart_needed(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("server.listen", running.listen != new.listen);
    check(
        "server.admin_listen",
        running.admin_listen != new.admin_listen,
    );
    check("server.workers", running.workers != new.workers);
    check(
        "server.max_connections",
        running.max_connections != new.max_connections,
    );
    check(
        "server.header_read_timeout",
        running.header_read_timeout != new.header_read_timeout,
    );
    check(
        "server.client_idle_timeout",
        running.client_idle_timeout != new.client_idle_timeout,
    );
    check(
        "server.shutdown_grace",
        running.shutdown_grace != new.shutdown_grace,
    );
    // Turning TLS on or off changes what the listener speaks; a new certificate, key
    // or handshake timeout does not (they are reloaded).
    check("server.tls", running.tls.is_some() != new.tls.is_some());
    keys
}

/// The `[async]` store keys a running gateway opened its store with at start.
fn async_restart_needed(running: &AsyncStore, new: &AsyncStore) -> Vec<&'static str> {
    match (running, new) {
        (AsyncStore::Embedded { path: a }, AsyncStore::Embedded { path: b }) if a != b => {
            vec!["async.path"]
        }
        (AsyncStore::Redis { url: a }, AsyncStore::Redis { url: b }) if a != b => {
            vec!["async.url"]
        }
        (AsyncStore::Embedded { .. }, AsyncStore::Redis { .. })
        | (AsyncStore::Redis { .. }, AsyncStore::Embedded { .. }) => vec!["async.store"],
        _ => Vec::new(),
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    /// Functions that kept their pool.
    pub kept: usize,
    /// Functions that got a new pool (added, or their instances changed).
    pub started: usize,
    /// Pools retired: drained, then closed.
    pub retired: usize,
    /// Keys that changed in the file but take effect only after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Reloads the config of a running gateway; shared by the signal handler and the admin
/// listener.
pub struct Reloader {
    current: Current,
    /// Where the config is read from.
    path: PathBuf,
    /// The `[server]` the listeners and workers were started with.
    running: ServerConfig,
    /// The asynchronous store opened at start.
    running_store: AsyncStore,
    /// The certificate of `server.listen`, with `[server.tls]`.
    tls: Option<TlsHandle>,
    /// The current gateway's drop signal; the lock makes reloads take turns.
    unused: tokio::sync::Mutex<oneshot::Receiver<()>>,
    /// Retired pools still draining, with the task that closes them.
    retiring: Mutex<Vec<Retiring>>,
}

/// Pools a reload retired, and the task that drains and closes them.
struct Retiring {
    task: JoinHandle<()>,
    pools: Vec<Arc<Pool>>,
}

impl Reloader {
    /// Serves `built` as the current gateway, started from `config`.
    pub fn new(config: &Config, built: Built, tls: Option<TlsHandle>) -> Reloader {
        Reloader {
            current: Arc::new(ArcSwap::from_pointee(built.gateway)),
            path: config.path.clone(),
            running: config.server.clone(),
            running_store: config.asynchronous.store.clone(),
            tls,
            unused: tokio::sync::Mutex::new(built.unused),
            retiring: Mutex::new(Vec::new()),
        }
    }

    pub fn current(&self) -> &Current {
        &self.current
    }

    /// Reads the config file again and applies it. An invalid file changes nothing;
    /// its errors are logged and returned. So does a TLS certificate and key that can
    /// no longer be loaded (the config's check read them a moment before).
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => {
                for line in errors.to_string().lines() {
                    tracing::error!("config reload refused: {line}");
                }
                return Err(errors);
            }
            Err(e) => {
                let errors = ConfigErrors {
                    file: self.path.clone(),
                    errors: vec![crate::config::ConfigError {
                        location: crate::config::Location::None,
                        message: format!("reading the file failed: {e}"),
                    }],
                };
                tracing::error!("config reload refused: {errors}");
                return Err(errors);
            }
        };
        self.apply(config).await
    }

    /// Swaps in a gateway built for `config` (already validated), after the TLS
    /// certificate of `[server.tls]`: if that cannot be loaded, nothing changes.
    pub async fn apply(&self, config: Config) -> Result<Reloaded, ConfigErrors> {
        let mut unused = self.unused.lock().await;
        if let (Some(handle), Some(tls)) = (&self.tls, &config.server.tls) {
            if let Err(e) = handle.reload(tls) {
                let errors = ConfigErrors {
                    file: config.path.clone(),
                    errors: vec![crate::config::ConfigError {
                        location: crate::config::Location::KeyPath("server.tls".into()),
                        message: e.to_string(),
                    }],
                };
                tracing::error!("config reload refused: {errors}");
                return Err(errors);
            }
        }
        let previous = self.current.load_full();
        let mut restart_needed = restart_needed(&self.running, &config.server);
        restart_needed.extend(async_restart_needed(
            &self.running_store,
            &config.asynchronous.store,
        ));
        // The longest a retired pool may still be busy: its function's timeout, after
        // a small body read bounded by the request head time, then the response.
        let drain_limit = previous
            .config()
            .functions
            .iter()
            .map(|f| f.timeout + f.queue_timeout)
            .max()
            .unwrap_or_default()
            + previous.config().server.header_read_timeout
            + previous.config().server.shutdown_grace;
        let built = Gateway::build(Arc::new(config), Some(&previous));
        drop(previous);
        for pool in &built.new_pools {
            pool.start();
        }
        let reloaded = Reloaded {
            kept: built.gateway.functions().len() - built.new_pools.len(),
            started: built.new_pools.len(),
            retired: built.retired_pools.len(),
            restart_needed,
        };
        self.current.store(Arc::new(built.gateway));
        // Dispatchers for added event functions, none for removed ones.
        if let Some(events) = self.current.load().events() {
            events.reconcile();
        }
        let previous_unused = std::mem::replace(&mut *unused, built.unused);
        drop(unused);

        if !built.retired_pools.is_empty() {
            let task = tokio::spawn(retire(
                previous_unused,
                built.retired_pools.clone(),
                self.current.clone(),
                drain_limit,
            ));
            let mut retiring = self.retiring.lock();
            retiring.retain(|r| !r.task.is_finished());
            retiring.push(Retiring {
                task,
                pools: built.retired_pools,
            });
        }
        tracing::info!(
            kept = reloaded.kept,
            started = reloaded.started,
            retired = reloaded.retired,
            "config reloaded"
        );
        for key in &reloaded.restart_needed {
            tracing::warn!(
                key,
                "config reload: {key} changed; it takes effect after a restart"
            );
        }
        Ok(reloaded)
    }

    /// At shutdown: closes the pools still draining after a reload.
    pub async fn close_retiring(&self) {
        let retiring: Vec<_> = self.retiring.lock().drain(..).collect();
        for Retiring { task, pools } in retiring {
            task.abort();
            for pool in pools {
                pool.close(INSTANCE_STOP_GRACE).await;
            }
        }
    }
}

/// Drains and closes the pools a reload retired: once no request runs on the gateway
/// that routed to them (`unused`), and each has no invocation left, or after `limit`.
async fn retire(
    unused: oneshot::Receiver<()>,
    pools: Vec<Arc<Pool>>,
    current: Current,
    limit: Duration,
) {
    let drained = async {
        let _ = unused.await;
        for pool in &pools {
            while !pool.is_idle() {
                tokio::time::sleep(IDLE_CHECK).await;
            }
        }
    };
    if tokio::time::timeout(limit, drained).await.is_err() {
        tracing::warn!(
            pools = pools.len(),
            ?limit,
            "retired functions still had invocations after the drain limit; closing them"
        );
    }
    for pool in &pools {
        pool.close(INSTANCE_STOP_GRACE).await;
        tracing::debug!(function = pool.function(), "retired pool closed");
    }
    // A retired pool may have kept an address that a current pool lists too, and the
    // current pool of a changed function shares its metrics with the retired one.
    for function in current.load().functions() {
        function.pool().adopt_keepers();
        function.pool().republish();
    }
}

#[cfg(test)]
mod tests;
