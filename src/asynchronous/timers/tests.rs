use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::*;
use crate::asynchronous::cron::days_from_civil;
use crate::config::{FunctionKind, InstanceSource};

fn utc(year: i64, month: u32, day: u32, h: u64, m: u64, s: u64) -> SystemTime {
    let days = u64::try_from(days_from_civil(year, month, day)).unwrap();
    UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s)
}

fn timer(name: &str, cron: &str, message: &str) -> TimerConfig {
    TimerConfig {
        name: name.to_string(),
        cron: cron.to_string(),
        schedule: Schedule::parse(cron).unwrap(),
        message: message.to_string(),
        enabled: true,
    }
}

fn function(name: &str, timers: Vec<TimerConfig>) -> FunctionConfig {
    FunctionConfig {
        name: name.to_string(),
        namespace: "default".to_string(),
        version: "$LATEST".to_string(),
        kind: FunctionKind::Event,
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        instance_concurrency: 1,
        queue_depth: 100,
        queue_timeout: Duration::from_secs(1),
        source: InstanceSource::Static(Vec::new()),
        timers,
    }
}

/// A store stand-in shared by "replicas": `once` is true for the first asker of a key.
#[derive(Default)]
struct FakeSink {
    keys: Mutex<HashSet<String>>,
    events: Mutex<Vec<NewEvent>>,
    failing: AtomicBool,
}

impl Sink for FakeSink {
    fn once(
        &self,
        key: &str,
        _ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let result = if self.failing.load(Ordering::Relaxed) {
            Err(StoreError::Unavailable("down".into()))
        } else {
            Ok(self.keys.lock().insert(key.to_string()))
        };
        std::future::ready(result)
    }

    fn submit(&self, event: NewEvent) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.events.lock().push(event);
        std::future::ready(Ok(()))
    }
}

impl FakeSink {
    /// The `Time` of every event so far, with its timer's name.
    fn fired(&self) -> Vec<(String, String)> {
        self.events
            .lock()
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                (
                    v["TriggerName"].as_str().unwrap().to_string(),
                    v["Time"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// A wall clock that follows tokio's paused clock from `base`, plus `jump` seconds.
#[derive(Clone)]
struct FakeClock {
    base: SystemTime,
    start: tokio::time::Instant,
    jump: Arc<AtomicU64>,
}

impl FakeClock {
    fn new(base: SystemTime) -> FakeClock {
        FakeClock {
            base,
            start: tokio::time::Instant::now(),
            jump: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed() + Duration::from_secs(self.jump.load(Ordering::Relaxed))
    }
}

fn times(fired: &[(String, String)]) -> Vec<&str> {
    fired.iter().map(|(_, t)| t.as_str()).collect()
}

// ---- pure parts --------------------------------------------------------------------

#[test]
fn waits_until_the_tick_and_not_after() {
    let tick = utc(2026, 12, 8, 3, 1, 0);
    assert_eq!(
        wait_for(tick, utc(2026, 12, 8, 3, 0, 0)),
        Some(Duration::from_secs(60))
    );
    assert_eq!(wait_for(tick, tick), None);
    assert_eq!(wait_for(tick, tick + Duration::from_secs(5)), None);
}

#[test]
fn missed_ticks_are_skipped() {
    let every_minute = Schedule::parse("0 * * * * * *").unwrap();
    let fired = utc(2026, 12, 8, 3, 1, 0);
    // On time: the next one.
    assert_eq!(
        next_tick(&every_minute, fired, fired + Duration::from_millis(20)),
        Some(utc(2026, 12, 8, 3, 2, 0))
    );
    // After an hour's stall: the first after now, none of the sixty in between.
    assert_eq!(
        next_tick(&every_minute, fired, utc(2026, 12, 8, 4, 1, 30)),
        Some(utc(2026, 12, 8, 4, 2, 0))
    );
    // A clock stepped back: still after the tick fired.
    assert_eq!(
        next_tick(&every_minute, fired, utc(2026, 12, 8, 2, 0, 0)),
        Some(utc(2026, 12, 8, 3, 2, 0))
    );
}

#[test]
fn the_event_is_the_contracts() {
    let t = timer("every-minute", "0 */1 * * * * *", "tick \"quoted\"");
    let body = event_body(&t, utc(2026, 12, 8, 3, 0, 0));
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"Type":"Timer","TriggerName":"every-minute","Time":"2026-12-08T03:00:00Z","Message":"tick \"quoted\""}"#
    );
    let task = TimerTask {
        function: FunctionKey::new("ns", "f"),
        timer: t,
    };
    assert_eq!(
        tick_key(&task, utc(2026, 12, 8, 3, 0, 0)),
        "ns/f/every-minute/1796698800"
    );
}

// ---- the tasks, on a paused clock --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn each_tick_becomes_one_timer_event() {
    let sink = Arc::new(FakeSink::default());
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0) + Duration::from_millis(500));
    let mut off = timer("off", "* * * * * * *", "");
    off.enabled = false;
    let functions = [function(
        "hello",
        vec![timer("every-second", "*/1 * * * * * *", "hi"), off],
    )];
    let timers = start_with(&functions, sink.clone(), clock);
    assert_eq!(timers.len(), 1, "a disabled timer does not run");
    tokio::time::sleep(Duration::from_millis(3200)).await;

    let fired = sink.fired();
    assert_eq!(
        times(&fired),
        [
            "2026-12-08T03:00:01Z",
            "2026-12-08T03:00:02Z",
            "2026-12-08T03:00:03Z"
        ]
    );
    let events = sink.events.lock();
    let ids: HashSet<uuid::Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3, "every tick has its own request id");
    for e in events.iter() {
        assert_eq!(e.function, FunctionKey::new("default", "hello"));
        assert_eq!(e.qualifier, "$LATEST");
        assert_eq!(e.trigger, Trigger::Timer);
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        assert_eq!(e.id.get_version_num(), 4);
    }
}

#[tokio::test(start_paused = true)]
async fn replicas_sharing_a_store_fire_each_tick_once() {
    let sink = Arc::new(FakeSink::default());
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0));
    let functions = [function(
        "hello",
        vec![
            timer("a", "* * * * * * *", ""),
            timer("b", "*/2 * * * * * *", ""),
        ],
    )];
    let _one = start_with(&functions, sink.clone(), clock.clone());
    let _two = start_with(&functions, sink.clone(), clock);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut fired = sink.fired();
    fired.sort();
    let expected: Vec<(String, String)> =
        [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 2), ("b", 4)]
            .iter()
            .map(|(name, s)| (name.to_string(), format!("2026-12-08T03:00:0{s}Z")))
            .collect();
    assert_eq!(fired, expected);
}

#[tokio::test(start_paused = true)]
async fn a_stall_fires_the_tick_waited_for_then_skips_to_the_future() {
    let sink = Arc::new(FakeSink::default());
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0));
    let jump = clock.jump.clone();
    let functions = [function("hello", vec![timer("m", "0 * * * * * *", "")])];
    let _timers = start_with(&functions, sink.clone(), clock);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(times(&sink.fired()), ["2026-12-08T03:01:00Z"]);
    // The wall clock leaps an hour ahead while the task sleeps for 03:02.
    // Its sleep ends at 04:02 by the wall clock: 03:02 fires, late, and the next tick
    // waited for is 04:03, not 03:03.
    jump.store(3600, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        times(&sink.fired()),
        ["2026-12-08T03:01:00Z", "2026-12-08T03:02:00Z"]
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        times(&sink.fired()),
        [
            "2026-12-08T03:01:00Z",
            "2026-12-08T03:02:00Z",
            "2026-12-08T04:03:00Z"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn store_failures_lose_ticks_but_not_the_timer() {
    let sink = Arc::new(FakeSink::default());
    sink.failing.store(true, Ordering::Relaxed);
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0));
    let functions = [function("hello", vec![timer("s", "* * * * * * *", "")])];
    let _timers = start_with(&functions, sink.clone(), clock);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(sink.fired().is_empty());
    sink.failing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(times(&sink.fired()), ["2026-12-08T03:00:03Z"]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_timers_stops_them() {
    let sink = Arc::new(FakeSink::default());
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0));
    let functions = [function("hello", vec![timer("s", "* * * * * * *", "")])];
    let timers = start_with(&functions, sink.clone(), clock);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(timers);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(times(&sink.fired()), ["2026-12-08T03:00:01Z"]);
}

#[tokio::test(start_paused = true)]
async fn a_timer_with_no_tick_to_come_ends() {
    let sink = Arc::new(FakeSink::default());
    let clock = FakeClock::new(utc(2026, 12, 8, 3, 0, 0));
    let functions = [function(
        "hello",
        vec![timer("past", "0 0 0 1 1 * 2020", "")],
    )];
    let timers = start_with(&functions, sink.clone(), clock);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(timers.tasks.iter().all(|t| t.is_finished()));
    assert!(sink.fired().is_empty());
}
