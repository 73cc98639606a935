//! Scaling a launched function: cold starts on demand up to `max_instances`, the
//! `min_instances` kept warm, idle instances stopped after `idle_timeout`, crashed ones
//! taken out, and a start-up that keeps failing backed off instead of spun.
//!
//! Nothing starts without demand beyond `min_instances`: a start is triggered only by
//! an invocation that finds no free slot and no start already coming for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Instance, Pool, State};
use crate::error::AdmitError;
use crate::instance::{Launcher, StartError};

/// How long instances get to stop gracefully (SIGTERM) before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the pool remembers about starting instances.
#[derive(Default)]
pub(super) struct LaunchState {
    /// Starts under way.
    pub starting: usize,
    /// Consecutive failed starts, for the backoff.
    failures: u32,
    /// No new start before this, after failures.
    backoff_until: Option<Instant>,
    /// The last start-up error, to fail fast with while backing off.
    last_error: Option<AdmitError>,
}

impl LaunchState {
    fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }
}

/// What an invocation without a free slot should do.
pub(super) enum Demand {
    /// Wait for a busy instance (bounded by `queue_timeout`).
    Wait,
    /// Wait for an instance being started for it (bounded by `ready_timeout`).
    Starting,
    /// The function cannot start right now: fail with the last start-up error.
    FailFast(AdmitError),
}

/// Called under the pool's lock when an invocation finds no free slot.
pub(super) fn on_demand(pool: &Arc<Pool>, state: &mut State, launcher: &Arc<Launcher>) -> Demand {
    let per_instance = pool.per_instance as usize;
    // Starts already under way will serve this many waiters.
    if state.waiters.len() < state.launch.starting * per_instance {
        return Demand::Starting;
    }
    let now = Instant::now();
    if state.launch.in_backoff(now) {
        if state.up_count == 0 && state.launch.starting == 0 {
            if let Some(e) = &state.launch.last_error {
                return Demand::FailFast(e.clone());
            }
        }
        return Demand::Wait;
    }
    if state.live + state.launch.starting < launcher.policy().max_instances as usize {
        begin_start(pool, state);
        return Demand::Starting;
    }
    Demand::Wait
}

fn begin_start(pool: &Arc<Pool>, state: &mut State) {
    state.launch.starting += 1;
    pool.publish_instances(state);
    pool.spawn(start_one(pool.clone()));
}

/// Starts one instance and hands its slots to waiters, or fails them with the reason.
async fn start_one(pool: Arc<Pool>) {
    let Some(launcher) = pool.launcher.clone() else {
        return;
    };
    let began = Instant::now();
    match launcher.launch().await {
        Ok(launched) => {
            let instance = Arc::new(Instance::launched(launched));
            let index = {
                let mut state = pool.state.lock();
                state.launch.starting -= 1;
                // Closed while it started (a reload retired the pool, or shutdown).
                (!pool.is_closed()).then(|| {
                    state.launch.failures = 0;
                    state.launch.backoff_until = None;
                    state.launch.last_error = None;
                    let index = state.insert(instance.clone());
                    pool.publish_instances(&state);
                    index
                })
            };
            let Some(index) = index else {
                instance.stop(STOP_GRACE).await;
                return;
            };
            let took = began.elapsed();
            pool.metrics.cold_start(took);
            tracing::info!(
                function = %pool.function,
                instance = %instance.name(),
                addr = %instance.addr(),
                duration_ms = crate::instance::logs::duration_ms(took),
                "cold start"
            );
            pool.spawn_keeper(index);
            pool.spawn(watch_exit(pool.clone(), instance));
            pool.hand_out(index, Some(took));
        }
        Err(e) => {
            let error = admit_error(&pool.function, &e);
            match &e {
                // The platform's own line, logged as the client receives it.
                StartError::NeverListened { .. } => {
                    tracing::warn!(function = %pool.function, "{e}")
                }
                _ => {
                    tracing::warn!(function = %pool.function, error = %e, "instance failed to start")
                }
            }
            let doomed: Vec<super::Waiter> = {
                let mut state = pool.state.lock();
                let launch = &mut state.launch;
                launch.starting -= 1;
                launch.failures += 1;
                let exp = launch.failures.saturating_sub(1).min(16);
                let backoff = (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX);
                launch.backoff_until = Some(Instant::now() + backoff);
                launch.last_error = Some(error.clone());
                // The waiters this start was for get its error; when nothing else can
                // serve, all of them do.
                let n = if state.up_count == 0 && state.launch.starting == 0 {
                    state.waiters.len()
                } else {
                    (pool.per_instance as usize).min(state.waiters.len())
                };
                let doomed = state.waiters.drain(..n).collect();
                pool.metrics.set_queue_depth(state.waiters.len());
                pool.publish_instances(&state);
                doomed
            };
            for waiter in doomed {
                let _ = waiter.tx.send(Err(error.clone()));
            }
        }
    }
}

/// The contract's answer for a failed start: 503/405 for an instance that never
/// listened, 502/405 for one that exited or could not be spawned.
fn admit_error(function: &str, e: &StartError) -> AdmitError {
    AdmitError::StartFailed {
        function: function.to_owned(),
        message: e.to_string(),
        never_listened: matches!(e, StartError::NeverListened { .. }),
    }
}

/// Takes an instance that exited out of the pool (its in-flight invocations fail on
/// their connections) and cleans up after it.
async fn watch_exit(pool: Arc<Pool>, instance: Arc<Instance>) {
    let Some(exit) = instance.exited().await else {
        return;
    };
    let removed = {
        let mut state = pool.state.lock();
        let removed = state.remove(&instance);
        replace_for_waiters(&pool, &mut state);
        pool.publish_instances(&state);
        removed
    };
    if removed {
        tracing::warn!(
            function = %pool.function,
            instance = %instance.name(),
            "instance {exit}"
        );
    }
    instance.clear_idle();
    instance.stop(Duration::ZERO).await;
}

/// After an instance left, invocations still waiting would otherwise wait for a slot
/// that no longer exists: start a replacement for them (within `max_instances`).
fn replace_for_waiters(pool: &Arc<Pool>, state: &mut State) {
    let Some(launcher) = &pool.launcher else {
        return;
    };
    let per_instance = pool.per_instance as usize;
    let covered = state.launch.starting * per_instance;
    if state.waiters.len() > covered
        && !state.launch.in_backoff(Instant::now())
        && state.live + state.launch.starting < launcher.policy().max_instances as usize
    {
        begin_start(pool, state);
    }
}

/// Keeps `min_instances` running and stops instances idle past `idle_timeout`.
pub(super) async fn supervise(pool: Arc<Pool>) {
    let Some(launcher) = pool.launcher.clone() else {
        return;
    };
    let policy = launcher.policy();
    let min = policy.min_instances as usize;
    let idle_timeout = policy.idle_timeout;
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let idle: Vec<Arc<Instance>> = {
            let mut state = pool.state.lock();
            let now = Instant::now();
            while state.live + state.launch.starting < min && !state.launch.in_backoff(now) {
                begin_start(&pool, &mut state);
            }
            let mut spare = state.live.saturating_sub(min);
            let mut idle = Vec::new();
            for entry in state.entries.iter().flatten() {
                if spare == 0 {
                    break;
                }
                if entry.inflight == 0 && entry.idle_for(state.epoch, now) >= idle_timeout {
                    idle.push(entry.instance.clone());
                    spare -= 1;
                }
            }
            for instance in &idle {
                state.remove(instance);
            }
            if !idle.is_empty() {
                pool.publish_instances(&state);
            }
            idle
        };
        for instance in idle {
            tracing::info!(
                function = %pool.function,
                instance = %instance.name(),
                "stopping idle instance"
            );
            instance.clear_idle();
            pool.spawn(async move { instance.stop(STOP_GRACE).await });
        }
        tokio::time::sleep(tick).await;
    }
}

impl Pool {
    /// A launched instance whose invocation timed out is still busy in user code: take
    /// it out and kill it, so nothing queues behind a hung handler.
    pub fn recycle(self: &Arc<Self>, instance: &Arc<Instance>) {
        if !instance.is_launched() {
            return;
        }
        {
            let mut state = self.state.lock();
            state.remove(instance);
            replace_for_waiters(self, &mut state);
            self.publish_instances(&state);
        }
        instance.kill();
    }
}
