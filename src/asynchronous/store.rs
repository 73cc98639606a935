//! What the two stores of asynchronous invocations share: the records they keep, the
//! questions they answer, and [`Store`], which sends each question to the store the
//! config chose. The embedded store ([`super::embedded`]) keeps one box's events in
//! SQLite; the Redis store ([`super::redis_streams`]) shares them between replicas.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use uuid::Uuid;

use super::embedded::EmbeddedStore;
use super::redis_streams::RedisStore;
use crate::config::{AsyncConfig, AsyncStore};

/// A function, as events name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    pub namespace: String,
    pub name: String,
}

impl FunctionKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> FunctionKey {
        FunctionKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// `namespace/name`.
impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for its first attempt or for a retry.
    Queued,
    /// An attempt is under way (or its replica died during it and it waits to be
    /// claimed again).
    Running,
    Succeeded,
    /// Every attempt failed.
    Failed,
    /// Aborted while queued (`DELETE /v1/requests/{id}`).
    Aborted,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Aborted,
    ];

    /// As the contract spells it (`queued`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Succeeded, failed or aborted: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Aborted)
    }

    /// Its place in [`Status::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What made an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An `Event` invocation (`X-Scf-Invocation-Type: Event`).
    Invoke,
    /// A timer's tick: the instance gets `X-Scf-Trigger-Src: timer`.
    Timer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Invoke => "invoke",
            Trigger::Timer => "timer",
        }
    }

    pub fn parse(text: &str) -> Option<Trigger> {
        match text {
            "invoke" => Some(Trigger::Invoke),
            "timer" => Some(Trigger::Timer),
            _ => None,
        }
    }
}

/// An event to keep, as accepted.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub function: FunctionKey,
    pub qualifier: String,
    pub body: Bytes,
    /// The client's `Content-Type`, passed on to the instance.
    pub content_type: Option<String>,
    pub trigger: Trigger,
    pub enqueued_at: SystemTime,
}

/// An event as `GET /v1/requests/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: Uuid,
    pub function: FunctionKey,
    pub qualifier: String,
    pub status: Status,
    /// Attempts begun so far.
    pub attempts: u32,
    pub enqueued_at: SystemTime,
    /// When the last attempt was handed to an instance.
    pub started_at: Option<SystemTime>,
    /// When it became final.
    pub ended_at: Option<SystemTime>,
    /// The HTTP status of the last attempt: the function's, or the gateway's error's.
    pub status_code: Option<u16>,
    /// The function's response body of the last attempt, if it answered.
    pub result: Option<Bytes>,
    /// The gateway's error body of the last failed attempt.
    pub error: Option<String>,
}

/// An event handed to this replica for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub function: FunctionKey,
    pub qualifier: String,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub trigger: Trigger,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub enqueued_at: SystemTime,
    /// The store's own handle on the claim (the Redis stream entry's id).
    pub receipt: Receipt,
}

/// A store's handle on a claimed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    None,
    Stream(String),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The function answered below 500.
    Succeeded { status_code: u16, result: Bytes },
    /// The function answered 500 or more (its body in `result`), or the gateway failed
    /// the attempt (`error`: its error body; `status_code` its HTTP status).
    Failed {
        status_code: u16,
        result: Option<Bytes>,
        error: Option<String>,
    },
}

/// How `list` sorts, by `enqueued_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// `GET /v1/functions/{name}/requests`'s filters and page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<Status>,
    /// At most 100.
    pub limit: u32,
    pub offset: u32,
    pub order: Order,
}

/// What `abort` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Aborted {
    /// It was queued; now it is aborted.
    Aborted(EventRecord),
    /// It was running or final already: left as it was.
    NotQueued(EventRecord),
    NotFound,
}

/// One function's events by status, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCounts {
    pub function: FunctionKey,
    /// Indexed by [`Status::index`].
    pub by_status: [u64; 5],
    /// When the oldest queued event was accepted.
    pub oldest_queued: Option<SystemTime>,
}

/// Retries and retention, from `[async]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub retries: u32,
    pub retry_delays: Vec<Duration>,
    pub retention: Duration,
}

impl Policy {
    pub fn new(config: &AsyncConfig) -> Policy {
        Policy {
            retries: config.retries,
            retry_delays: config.retry_delays.clone(),
            retention: config.retention,
        }
    }

    /// The wait before the next attempt after failed attempt number `attempt` (from
    /// 1); `None` when no retry is left and the event has failed.
    pub fn retry_after(&self, attempt: u32) -> Option<Duration> {
        if attempt > self.retries {
            return None;
        }
        let index = (attempt as usize).saturating_sub(1);
        Some(
            self.retry_delays
                .get(index)
                .or(self.retry_delays.last())
                .copied()
                .unwrap_or_default(),
        )
    }
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now (Redis down): `Event` invocations get 503.
    #[error("the asynchronous event store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error, or holds something it cannot read.
    #[error("the asynchronous event store failed: {0}")]
    Failed(String),
}

/// The store the config chose. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Embedded(Arc<EmbeddedStore>),
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Opens (creating if needed) the store of `config`. `replica` names this gateway
    /// among replicas (its consumer name in Redis).
    pub async fn open(config: &AsyncConfig, replica: &str) -> Result<Store, StoreError> {
        let policy = Policy::new(config);
        Ok(match &config.store {
            AsyncStore::Embedded { path } => {
                Store::Embedded(Arc::new(EmbeddedStore::open(path, policy).await?))
            }
            AsyncStore::Redis { url } => {
                Store::Redis(Arc::new(RedisStore::open(url, replica, policy).await?))
            }
        })
    }

    /// Keeps the event durably: on disk (fsync'd by SQLite's commit) or acknowledged by
    /// Redis. Only then may the caller answer 202.
    pub async fn enqueue(&self, event: NewEvent) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.enqueue(event).await,
            Store::Redis(s) => s.enqueue(event).await,
        }
    }

    /// The function's next due event, now `running` with its attempt counted, or none.
    /// With Redis, also an event whose attempt on another replica has been silent for
    /// `lease` (that replica died).
    pub async fn claim(
        &self,
        function: &FunctionKey,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        match self {
            Store::Embedded(s) => s.claim(function, lease).await,
            Store::Redis(s) => s.claim(function, lease).await,
        }
    }

    /// The claimed event was handed to an instance now: sets `startedAt` and renews the
    /// claim for `lease`.
    pub async fn started(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.started(claimed, lease).await,
            Store::Redis(s) => s.started(claimed, lease).await,
        }
    }

    /// Records how the attempt ended and what follows by the policy: final, or queued
    /// again for a retry. Returns the event's status now.
    pub async fn finish(&self, claimed: &Claimed, attempt: Attempt) -> Result<Status, StoreError> {
        match self {
            Store::Embedded(s) => s.finish(claimed, attempt).await,
            Store::Redis(s) => s.finish(claimed, attempt).await,
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.get(id).await,
            Store::Redis(s) => s.get(id).await,
        }
    }

    pub async fn list(
        &self,
        function: &FunctionKey,
        query: &ListQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.list(function, query).await,
            Store::Redis(s) => s.list(function, query).await,
        }
    }

    /// Aborts a queued event.
    pub async fn abort(&self, id: Uuid) -> Result<Aborted, StoreError> {
        match self {
            Store::Embedded(s) => s.abort(id).await,
            Store::Redis(s) => s.abort(id).await,
        }
    }

    /// Events by function and status, for the metrics.
    pub async fn counts(&self) -> Result<Vec<FunctionCounts>, StoreError> {
        match self {
            Store::Embedded(s) => s.counts().await,
            Store::Redis(s) => s.counts().await,
        }
    }

    /// Removes events that ended more than `retention` ago. Returns how many.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => s.purge().await,
            Store::Redis(s) => s.purge().await,
        }
    }

    /// True for the one caller, across every replica sharing the store, that first
    /// asks for `key` within `ttl` (a timer's tick fires once). The embedded store
    /// serves one gateway: always true.
    pub async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(_) => Ok(true),
            Store::Redis(s) => s.once(key, ttl).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_delays_and_the_last_delay_repeats() {
        let policy = Policy {
            retries: 3,
            retry_delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            retention: Duration::from_secs(3600),
        };
        assert_eq!(policy.retry_after(1), Some(Duration::from_secs(60)));
        assert_eq!(policy.retry_after(2), Some(Duration::from_secs(120)));
        assert_eq!(policy.retry_after(3), Some(Duration::from_secs(120)));
        assert_eq!(policy.retry_after(4), None);
        let none = Policy {
            retries: 0,
            ..policy
        };
        assert_eq!(none.retry_after(1), None);
    }

    #[test]
    fn statuses_read_back_as_written() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(Status::ALL[status.index()], status);
        }
        assert_eq!(Status::parse("done"), None);
    }
}
