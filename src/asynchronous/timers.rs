//! Timer triggers: one task per enabled `[[functions.timers]]` entry sleeps until its
//! next cron tick (UTC, by the wall clock) and turns the tick into one asynchronous
//! invocation with the contract's timer event.
//!
//! Replicas sharing a Redis store each run every timer; the tick's key
//! (`namespace/function/timer/unix-seconds`) is claimed once across them
//! ([`Store::once`](super::Store::once)), so only one of them submits it. Ticks that
//! passed while no gateway ran, or while this one was stalled, are not replayed: the
//! tick a task was waiting for fires even if late, and the next one waited for is the
//! first after now.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::cron::{rfc3339, Schedule};
use super::{FunctionKey, NewEvent, Service, StoreError, Trigger};
use crate::config::{FunctionConfig, TimerConfig};

/// How long a tick's key is held in the store: far longer than replicas' clocks differ
/// or a tick takes to submit, far shorter than anything worth keeping.
const ONCE_TTL: Duration = Duration::from_secs(600);

/// The longest single sleep: the wall clock is read again at least this often, so that
/// a clock stepped forward (NTP, a resumed VM) is noticed soon.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The timers' tasks; dropping it stops them.
pub struct Timers {
    tasks: Vec<JoinHandle<()>>,
}

impl Timers {
    /// Timers running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts a task for every enabled timer of `functions` (on the current runtime).
pub fn start(functions: &[FunctionConfig], service: Arc<Service>) -> Timers {
    start_with(functions, service, SystemClock)
}

/// What a timer does with its ticks: the service's store, or a test's stand-in.
trait Sink: Send + Sync + 'static {
    fn once(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn submit(&self, event: NewEvent) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Sink for Service {
    async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.opened()?.once(key, ttl).await
    }

    async fn submit(&self, event: NewEvent) -> Result<(), StoreError> {
        Service::enqueue(self, event).await
    }
}

/// The wall clock ticks are computed from; a test's is its own.
trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

#[derive(Clone)]
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

fn start_with<S: Sink, C: Clock + Clone>(
    functions: &[FunctionConfig],
    sink: Arc<S>,
    clock: C,
) -> Timers {
    let mut tasks = Vec::new();
    for f in functions {
        for timer in f.timers.iter().filter(|t| t.enabled) {
            let timer = TimerTask {
                function: FunctionKey::new(&f.namespace, &f.name),
                timer: timer.clone(),
            };
            tracing::debug!(
                function = %timer.function,
                timer = timer.timer.name,
                cron = timer.timer.cron,
                "timer started"
            );
            tasks.push(tokio::spawn(run(timer, sink.clone(), clock.clone())));
        }
    }
    Timers { tasks }
}

/// One timer, as its task knows it.
struct TimerTask {
    function: FunctionKey,
    timer: TimerConfig,
}

/// The timer's life: wait for each tick, fire it, on to the next.
async fn run<S: Sink, C: Clock>(timer: TimerTask, sink: Arc<S>, clock: C) {
    let name = &timer.timer.name;
    let mut tick = timer.timer.schedule.next_after(clock.now());
    // True while ticks fail: one warning per streak, not per tick.
    let mut failing = false;
    while let Some(due) = tick {
        while let Some(wait) = wait_for(due, clock.now()) {
            tokio::time::sleep(wait.min(MAX_SLEEP)).await;
        }
        match fire(&timer, sink.as_ref(), due, clock.now()).await {
            Ok(()) => {
                if failing {
                    tracing::info!(function = %timer.function, timer = name, "timer ticks fire again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        function = %timer.function,
                        timer = name,
                        error = %e,
                        "timer tick lost: the asynchronous store failed"
                    );
                }
                failing = true;
            }
        }
        tick = next_tick(&timer.timer.schedule, due, clock.now());
    }
    tracing::debug!(function = %timer.function, timer = name, "timer has no tick to come");
}

/// How long to sleep before `tick` at `now`; `None` when it is due.
fn wait_for(tick: SystemTime, now: SystemTime) -> Option<Duration> {
    tick.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// The tick to wait for after `fired` at `now`: the next one after `fired`, unless it
/// has passed too; then the first after now (missed ticks are not replayed).
fn next_tick(schedule: &Schedule, fired: SystemTime, now: SystemTime) -> Option<SystemTime> {
    schedule.next_after(fired.max(now))
}

/// The event of a tick, as the contract fixes it (the field order too).
#[derive(Serialize)]
struct TimerEvent<'a> {
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(rename = "TriggerName")]
    trigger_name: &'a str,
    #[serde(rename = "Time")]
    time: String,
    #[serde(rename = "Message")]
    message: &'a str,
}

fn event_body(timer: &TimerConfig, tick: SystemTime) -> Bytes {
    let event = TimerEvent {
        kind: "Timer",
        trigger_name: &timer.name,
        time: rfc3339(tick),
        message: &timer.message,
    };
    // A struct of strings always serializes.
    Bytes::from(serde_json::to_vec(&event).unwrap_or_default())
}

/// The tick's key, the same on every replica.
fn tick_key(timer: &TimerTask, tick: SystemTime) -> String {
    let secs = tick
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{}/{}/{}/{secs}",
        timer.function.namespace, timer.function.name, timer.timer.name
    )
}

/// Submits the tick, unless another replica has.
async fn fire<S: Sink>(
    timer: &TimerTask,
    sink: &S,
    tick: SystemTime,
    now: SystemTime,
) -> Result<(), StoreError> {
    if !sink.once(&tick_key(timer, tick), ONCE_TTL).await? {
        tracing::debug!(
            function = %timer.function,
            timer = timer.timer.name,
            tick = rfc3339(tick),
            "timer tick fired by another replica"
        );
        return Ok(());
    }
    let id = crate::headers::new_uuid();
    sink.submit(NewEvent {
        id,
        function: timer.function.clone(),
        qualifier: "$LATEST".to_string(),
        body: event_body(&timer.timer, tick),
        content_type: Some("application/json".to_string()),
        trigger: Trigger::Timer,
        enqueued_at: now,
    })
    .await?;
    tracing::debug!(
        function = %timer.function,
        timer = timer.timer.name,
        tick = rfc3339(tick),
        request_id = %id,
        "timer tick fired"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
