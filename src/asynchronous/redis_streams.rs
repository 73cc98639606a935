//! The Redis store of asynchronous invocations, shared by every replica given the same
//! `async.url`: events wait in one Redis stream per function read through one
//! consumer group, so each attempt is handed to exactly one replica, and an attempt
//! whose replica died is taken over by another (`XAUTOCLAIM`) once it has been silent
//! for the lease. Each event's data and status live in a hash that expires `retention`
//! after the event ends. docs/async-redis.md describes the keys and the guarantees.
//!
//! Every command is bounded in time ([`COMMAND_BOUND`]): a Redis that does not answer
//! makes the store [`StoreError::Unavailable`] quickly (`Event` invocations get 503),
//! and the connection manager reconnects by itself when Redis is back.
//!
//! Every change that touches more than one key runs as a Lua script, so a replica dying
//! between two commands never leaves an event half moved, and checks that race (abort
//! against claim, finish against a takeover) are decided inside Redis.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, Script, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::store::{
    Aborted, Attempt, Claimed, EventRecord, FunctionCounts, FunctionKey, ListQuery, NewEvent,
    Order, Policy, Receipt, Status, StoreError, Trigger,
};

/// The longest any one command may take before the store counts Redis as unavailable.
pub const COMMAND_BOUND: Duration = Duration::from_secs(2);

/// Every key starts with this.
const PREFIX: &str = "scfgw";
/// The one consumer group of every function's stream.
const GROUP: &str = "scfgw";
/// The set of `namespace/name` of every function that ever had an event (for `counts`).
const FUNCTIONS: &str = "scfgw:functions";
/// Entries a claim looks at before it gives up for this call (aborted or finished
/// events are skipped and acknowledged on the way).
const CLAIM_SCAN: usize = 32;
/// Delayed retries moved into the stream per claim, and expired events removed per
/// purge script call: bounds the time one script holds Redis.
const BATCH: usize = 256;

/// The error body kept for an attempt whose replica stopped during it and that has no
/// retry left: the shape of the gateway's own errors.
pub const REPLICA_STOPPED_ERROR: &str = r#"{"errorCode":405,"errorMessage":"The replica running the attempt stopped","statusCode":405}"#;

/// Shared by the scripts: `setmove` moves an event between the per-status sorted sets
/// (their sizes are the counts; `list` reads them when filtering by status), `begin`
/// starts an attempt.
const LUA_COMMON: &str = r#"
local function setmove(p, id, from, to, score)
  if from then redis.call('ZREM', p .. ':status:' .. from, id) end
  if to then redis.call('ZADD', p .. ':status:' .. to, score, id) end
end

-- Starts an attempt on event `id` of function `p`: `running`, attempts + 1. `mode` is
-- `fresh` for a new stream entry (the event must be queued), else the attempts count
-- read before a takeover, which must not have moved. Answers `ok` and the event's
-- data, or why not (`gone`, `moved`, or the status that forbids it).
local function begin(p, id, mode)
  local key = 'scfgw:event:' .. id
  local f = redis.call('HMGET', key, 'status', 'attempts', 'enq')
  local status = f[1]
  if not status then return {'gone'} end
  if mode == 'fresh' then
    if status ~= 'queued' then return {status} end
  else
    if status ~= 'queued' and status ~= 'running' then return {status} end
    if f[2] ~= mode then return {'moved'} end
  end
  local n = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'running')
  if status ~= 'running' then setmove(p, id, status, 'running', f[3]) end
  local d = redis.call('HMGET', key, 'ns', 'name', 'qualifier', 'body', 'ctype', 'trigger', 'enq')
  local ctype = '0'
  if d[5] then ctype = '1' end
  return {'ok', tostring(n), d[1], d[2], d[3], d[4], d[5] or '', ctype, d[6], d[7], id}
end
"#;

/// KEYS[1] the event's hash. ARGV: prefix, id, namespace, name, qualifier, body,
/// content type, has content type, trigger, enqueued ms, `namespace/name`.
const LUA_ENQUEUE: &str = r#"
local p = ARGV[1]
redis.call('HSET', KEYS[1], 'ns', ARGV[3], 'name', ARGV[4], 'qualifier', ARGV[5],
  'body', ARGV[6], 'trigger', ARGV[9], 'enq', ARGV[10], 'status', 'queued', 'attempts', 0)
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'ctype', ARGV[7]) end
redis.call('XADD', p .. ':stream', '*', 'id', ARGV[2])
redis.call('ZADD', p .. ':events', ARGV[10], ARGV[2])
setmove(p, ARGV[2], false, 'queued', ARGV[10])
redis.call('SADD', KEYS[2], ARGV[11])
return 1
"#;

/// KEYS[1] the function's stream. ARGV: prefix, now ms, retries to move at most,
/// consumer, entries to look at at most. Moves due retries into the stream (inside
/// Redis, so each is added once however many replicas ask at the same moment), then
/// reads new entries for this consumer until one starts an attempt, acknowledging and
/// deleting those with nothing to run (aborted, gone). Answers `begin`'s `ok` list with
/// the entry id appended, or `none`.
const LUA_CLAIM: &str = r#"
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. ':delayed', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. ':delayed', id)
  redis.call('XADD', KEYS[1], '*', 'id', id)
end
for _ = 1, tonumber(ARGV[5]) do
  local r = redis.call('XREADGROUP', 'GROUP', 'scfgw', ARGV[4], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
  if not r or not r[1] or not r[1][2][1] then return {'none'} end
  local entry = r[1][2][1]
  local fields = entry[2]
  local id = false
  for j = 1, #fields, 2 do
    if fields[j] == 'id' then id = fields[j + 1] end
  end
  if id then
    local out = begin(p, id, 'fresh')
    if out[1] == 'ok' then
      table.insert(out, entry[1])
      return out
    end
  end
  redis.call('XACK', KEYS[1], 'scfgw', entry[1])
  redis.call('XDEL', KEYS[1], entry[1])
end
return {'none'}
"#;

/// ARGV: prefix, id, mode: `begin` for an entry taken over from a silent replica.
const LUA_BEGIN: &str = r#"
return begin(ARGV[1], ARGV[2], ARGV[3])
"#;

/// KEYS[1] the event's hash. ARGV: attempt, now ms, stream, entry id, consumer.
/// Records the start and takes the entry back to this consumer with its idle time
/// reset, so no other replica takes it over while it runs.
const LUA_STARTED: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'started', ARGV[2])
redis.call('XCLAIM', ARGV[3], 'scfgw', ARGV[5], 0, ARGV[4], 'JUSTID')
return 1
"#;

/// KEYS[1] the event's hash. ARGV: prefix, id, attempt, next status (`succeeded`,
/// `failed`, or `queued` for a retry), now ms, status code, has result, result, has
/// error, error, retry due ms, retention ms, expiry ms, entry id. Answers the status
/// now; an attempt that is no longer the event's current one changes nothing.
const LUA_FINISH: &str = r#"
local p = ARGV[1]
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'enq')
if not f[1] then
  redis.call('XACK', p .. ':stream', 'scfgw', ARGV[14])
  redis.call('XDEL', p .. ':stream', ARGV[14])
  return 'gone'
end
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return f[1] end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'code', ARGV[6])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'result', ARGV[8]) else redis.call('HDEL', KEYS[1], 'result') end
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'error', ARGV[10]) else redis.call('HDEL', KEYS[1], 'error') end
if ARGV[4] == 'queued' then
  redis.call('ZADD', p .. ':delayed', ARGV[11], ARGV[2])
else
  redis.call('HSET', KEYS[1], 'ended', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[12])
  redis.call('ZADD', p .. ':expires', ARGV[13], ARGV[2])
end
setmove(p, ARGV[2], 'running', ARGV[4], f[3])
redis.call('XACK', p .. ':stream', 'scfgw', ARGV[14])
redis.call('XDEL', p .. ':stream', ARGV[14])
return ARGV[4]
"#;

/// KEYS[1] the event's hash. ARGV: id, now ms, retention ms, expiry ms. Aborts the
/// event if it is queued; its stream entry, if any, is skipped by whoever reads it.
const LUA_ABORT: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'status', 'ns', 'name', 'enq')
if not f[1] then return 'gone' end
if f[1] ~= 'queued' then return f[1] end
local p = 'scfgw:' .. f[2] .. '/' .. f[3]
redis.call('HSET', KEYS[1], 'status', 'aborted', 'ended', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', p .. ':expires', ARGV[4], ARGV[1])
redis.call('ZREM', p .. ':delayed', ARGV[1])
setmove(p, ARGV[1], 'queued', 'aborted', f[4])
return 'aborted'
"#;

/// ARGV: prefix, now ms, at most. Forgets events whose retention ran out (their hash
/// has expired, or is removed here) from the function's index and status sets.
const LUA_PURGE: &str = r#"
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. ':expires', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. ':expires', id)
  redis.call('ZREM', p .. ':events', id)
  setmove(p, id, 'succeeded', false, 0)
  setmove(p, id, 'failed', false, 0)
  setmove(p, id, 'aborted', false, 0)
  redis.call('DEL', 'scfgw:event:' .. id)
end
return #ids
"#;

/// The fields of an event's hash that [`EventRecord`] shows, in [`RedisStore::record`]'s
/// order (the body is left in Redis).
const RECORD_FIELDS: [&str; 11] = [
    "ns",
    "name",
    "qualifier",
    "status",
    "attempts",
    "enq",
    "started",
    "ended",
    "code",
    "result",
    "error",
];

struct Scripts {
    enqueue: Script,
    claim: Script,
    begin: Script,
    started: Script,
    finish: Script,
    abort: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_common = |body: &str| Script::new(&format!("{LUA_COMMON}{body}"));
        Scripts {
            enqueue: with_common(LUA_ENQUEUE),
            claim: with_common(LUA_CLAIM),
            begin: with_common(LUA_BEGIN),
            started: Script::new(LUA_STARTED),
            finish: with_common(LUA_FINISH),
            abort: with_common(LUA_ABORT),
            purge: with_common(LUA_PURGE),
        }
    }
}

/// Events shared by replicas in one Redis. Cheap to share: one multiplexed connection
/// that every call clones.
pub struct RedisStore {
    conn: ConnectionManager,
    /// `host:port` of Redis, for messages (the URL may hold a password).
    endpoint: String,
    /// This replica's consumer name in every function's group.
    replica: String,
    policy: Policy,
    scripts: Scripts,
    /// Functions whose consumer group this store has made sure of.
    groups: Mutex<HashSet<FunctionKey>>,
    /// When this store last looked for attempts to take over, by function.
    swept: Mutex<HashMap<FunctionKey, Instant>>,
}

/// How `begin` answered.
enum Begun {
    Claimed(Box<Claimed>),
    /// Nothing to run for this entry: acknowledge it and read on.
    Skip,
}

impl RedisStore {
    /// Connects to Redis at `url`, failing within [`COMMAND_BOUND`] with
    /// [`StoreError::Unavailable`] when it cannot be reached: the caller may retry.
    /// Once open, the store reconnects by itself whenever the connection drops.
    pub async fn open(
        url: &crate::config::Secret,
        replica: &str,
        policy: Policy,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url.expose())
            .map_err(|_| StoreError::Failed("async.url is not a valid redis:// URL".into()))?;
        let endpoint = client.get_connection_info().addr.to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(COMMAND_BOUND)
            .set_response_timeout(COMMAND_BOUND)
            .set_factor(50)
            .set_max_delay(1000)
            .set_number_of_retries(2);
        let conn = match tokio::time::timeout(
            COMMAND_BOUND,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to redis at {endpoint}: {}",
                    describe(&e)
                )))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "redis at {endpoint} did not answer within {COMMAND_BOUND:?}"
                )))
            }
        };
        Ok(RedisStore {
            conn,
            endpoint,
            replica: replica.to_owned(),
            policy,
            scripts: Scripts::new(),
            groups: Mutex::new(HashSet::new()),
            swept: Mutex::new(HashMap::new()),
        })
    }

    pub async fn enqueue(&self, event: NewEvent) -> Result<(), StoreError> {
        let prefix = prefix(&event.function);
        let id = event.id.to_string();
        let (ctype, has_ctype) = match &event.content_type {
            Some(c) => (c.as_str(), "1"),
            None => ("", "0"),
        };
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation
            .key(event_key(event.id))
            .key(FUNCTIONS)
            .arg(&prefix)
            .arg(&id)
            .arg(&event.function.namespace)
            .arg(&event.function.name)
            .arg(&event.qualifier)
            .arg(event.body.as_ref())
            .arg(ctype)
            .arg(has_ctype)
            .arg(event.trigger.as_str())
            .arg(millis(event.enqueued_at))
            .arg(event.function.to_string());
        let mut conn = self.conn.clone();
        self.bounded("enqueue", invocation.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    pub async fn claim(
        &self,
        function: &FunctionKey,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        self.ensure_group(function).await?;
        match self.claim_once(function, lease).await {
            Err(Failure::NoGroup) => {
                // Redis lost the group (restarted without persistence, flushed):
                // make it again and ask once more.
                self.groups.lock().remove(function);
                self.ensure_group(function).await?;
                self.claim_once(function, lease)
                    .await
                    .map_err(Failure::into)
            }
            other => other.map_err(Failure::into),
        }
    }

    async fn claim_once(
        &self,
        function: &FunctionKey,
        lease: Duration,
    ) -> Result<Option<Claimed>, Failure> {
        let prefix = prefix(function);
        let stream = format!("{prefix}:stream");
        let mut conn = self.conn.clone();

        // Attempts whose replica has been silent for the lease: that replica died.
        if self.sweep_due(function, lease) {
            let reply: Value = self
                .bounded(
                    "claim",
                    redis::cmd("XAUTOCLAIM")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg(&self.replica)
                        .arg(lease.as_millis() as u64)
                        .arg("0-0")
                        // One at a time: an entry taken over is this replica's from
                        // then on, with its idle time reset, so one taken but not run
                        // now would wait another whole lease.
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn),
                )
                .await?;
            let taken = match &reply {
                Value::Array(parts) => parts.get(1).map(entries).unwrap_or_default(),
                _ => Vec::new(),
            };
            if !taken.is_empty() {
                // More may be waiting: the next claim looks again at once.
                self.swept.lock().remove(function);
            }
            for (entry, id) in taken {
                match self.take_over(function, &prefix, &entry, id).await? {
                    Begun::Claimed(claimed) => return Ok(Some(*claimed)),
                    Begun::Skip => self.drop_entry(&stream, &entry).await?,
                }
            }
        }

        // Due retries join the stream; the next new entry starts its attempt.
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&stream)
            .arg(&prefix)
            .arg(now_ms())
            .arg(BATCH)
            .arg(&self.replica)
            .arg(CLAIM_SCAN);
        let mut reply: Vec<Vec<u8>> = self
            .bounded("claim", invocation.invoke_async(&mut conn))
            .await?;
        if reply.len() != BEGUN_LEN + 1 {
            return Ok(None);
        }
        let entry = reply.pop().and_then(|e| String::from_utf8(e).ok());
        let Some(entry) = entry else {
            return Err(Failure::Store(StoreError::Failed(
                "redis answered a claim with an unreadable stream entry id".into(),
            )));
        };
        match begun(reply, &entry)? {
            Begun::Claimed(claimed) => Ok(Some(*claimed)),
            Begun::Skip => Ok(None),
        }
    }

    /// Whether this claim should look for attempts taken over from silent replicas:
    /// a few times per lease (at most every 5 s), not at every claim.
    fn sweep_due(&self, function: &FunctionKey, lease: Duration) -> bool {
        let every = (lease / 4).min(Duration::from_secs(5));
        let now = Instant::now();
        let mut swept = self.swept.lock();
        match swept.get_mut(function) {
            Some(last) if now.duration_since(*last) < every => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                swept.insert(function.clone(), now);
                true
            }
        }
    }

    /// An entry taken over from a replica that went silent. If its attempt had begun,
    /// that attempt failed (the contract counts a gateway dying during an attempt as a
    /// failure): with a retry left, it runs again now here; without, it ends `failed`.
    async fn take_over(
        &self,
        function: &FunctionKey,
        prefix: &str,
        entry: &str,
        id: Option<Uuid>,
    ) -> Result<Begun, Failure> {
        let Some(id) = id else {
            return Ok(Begun::Skip);
        };
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = self
            .bounded(
                "claim",
                redis::cmd("HMGET")
                    .arg(event_key(id))
                    .arg("status")
                    .arg("attempts")
                    .query_async(&mut conn),
            )
            .await?;
        let status = fields.first().cloned().flatten();
        let attempts_text = fields.get(1).cloned().flatten().unwrap_or_default();
        let attempts: u32 = attempts_text.parse().unwrap_or(0);
        match status.as_deref() {
            Some("running") if self.policy.retry_after(attempts).is_none() => {
                let claimed = Claimed {
                    id,
                    function: function.clone(),
                    qualifier: String::new(),
                    body: Bytes::new(),
                    content_type: None,
                    trigger: Trigger::Invoke,
                    attempt: attempts,
                    enqueued_at: UNIX_EPOCH,
                    receipt: Receipt::Stream(entry.to_owned()),
                };
                let stopped = Attempt::Failed {
                    status_code: 405,
                    result: None,
                    error: Some(REPLICA_STOPPED_ERROR.to_owned()),
                };
                self.finish_with(&claimed, stopped, false).await?;
                Ok(Begun::Skip)
            }
            Some("running") | Some("queued") => self.begin(prefix, id, entry, &attempts_text).await,
            _ => Ok(Begun::Skip),
        }
    }

    /// Starts an attempt on the event of stream entry `entry` (taken over: `mode` is the
    /// attempts count read before).
    async fn begin(
        &self,
        prefix: &str,
        id: Uuid,
        entry: &str,
        mode: &str,
    ) -> Result<Begun, Failure> {
        let mut invocation = self.scripts.begin.prepare_invoke();
        invocation.arg(prefix).arg(id.to_string()).arg(mode);
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self
            .bounded("claim", invocation.invoke_async(&mut conn))
            .await?;
        begun(reply, entry)
    }

    /// Acknowledges and deletes a stream entry there is nothing to run for.
    async fn drop_entry(&self, stream: &str, entry: &str) -> Result<(), Failure> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(entry)
            .ignore();
        let mut conn = self.conn.clone();
        self.bounded("claim", pipe.query_async::<()>(&mut conn))
            .await?;
        Ok(())
    }

    pub async fn started(&self, claimed: &Claimed, _lease: Duration) -> Result<(), StoreError> {
        let Receipt::Stream(entry) = &claimed.receipt else {
            return Err(StoreError::Failed(
                "a claim of the redis store has no stream entry".into(),
            ));
        };
        let mut invocation = self.scripts.started.prepare_invoke();
        invocation
            .key(event_key(claimed.id))
            .arg(claimed.attempt)
            .arg(now_ms())
            .arg(format!("{}:stream", prefix(&claimed.function)))
            .arg(entry)
            .arg(&self.replica);
        let mut conn = self.conn.clone();
        self.bounded("started", invocation.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    pub async fn finish(&self, claimed: &Claimed, attempt: Attempt) -> Result<Status, StoreError> {
        self.finish_with(claimed, attempt, true)
            .await
            .map_err(Failure::into)
    }

    /// `finish`; a failed attempt is retried only if `may_retry` and the policy
    /// leaves a retry.
    async fn finish_with(
        &self,
        claimed: &Claimed,
        attempt: Attempt,
        may_retry: bool,
    ) -> Result<Status, Failure> {
        let Receipt::Stream(entry) = &claimed.receipt else {
            return Err(Failure::Store(StoreError::Failed(
                "a claim of the redis store has no stream entry".into(),
            )));
        };
        let now = now_ms();
        let (next, code, result, error, due) = match attempt {
            Attempt::Succeeded {
                status_code,
                result,
            } => (Status::Succeeded, status_code, Some(result), None, 0),
            Attempt::Failed {
                status_code,
                result,
                error,
            } => {
                let retry = may_retry
                    .then(|| self.policy.retry_after(claimed.attempt))
                    .flatten();
                match retry {
                    Some(delay) => (
                        Status::Queued,
                        status_code,
                        result,
                        error,
                        now.saturating_add(delay.as_millis() as i64),
                    ),
                    None => (Status::Failed, status_code, result, error, 0),
                }
            }
        };
        let retention = (self.policy.retention.as_millis() as i64).max(1);
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(event_key(claimed.id))
            .arg(prefix(&claimed.function))
            .arg(claimed.id.to_string())
            .arg(claimed.attempt)
            .arg(next.as_str())
            .arg(now)
            .arg(code)
            .arg(if result.is_some() { "1" } else { "0" })
            .arg(result.as_deref().unwrap_or_default())
            .arg(if error.is_some() { "1" } else { "0" })
            .arg(error.as_deref().unwrap_or_default())
            .arg(due)
            .arg(retention)
            .arg(now.saturating_add(retention))
            .arg(entry);
        let mut conn = self.conn.clone();
        let status: String = self
            .bounded("finish", invocation.invoke_async(&mut conn))
            .await?;
        Status::parse(&status).ok_or_else(|| {
            Failure::Store(StoreError::Failed(format!(
                "event {} is no longer in redis (its retention ran out)",
                claimed.id
            )))
        })
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<Option<Vec<u8>>> = self
            .bounded(
                "get",
                redis::cmd("HMGET")
                    .arg(event_key(id))
                    .arg(&RECORD_FIELDS[..])
                    .query_async(&mut conn),
            )
            .await?;
        record(id, fields)
    }

    /// Reads the status set when filtering by status, else the function's index: one
    /// range read plus one pipelined read of the page's hashes either way.
    pub async fn list(
        &self,
        function: &FunctionKey,
        query: &ListQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let prefix = prefix(function);
        let index = match query.status {
            Some(status) => format!("{prefix}:status:{}", status.as_str()),
            None => format!("{prefix}:events"),
        };
        let start = query.offset as i64;
        let stop = start + query.limit.clamp(1, 100) as i64 - 1;
        let range = match query.order {
            Order::Asc => "ZRANGE",
            Order::Desc => "ZREVRANGE",
        };
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .bounded(
                "list",
                redis::cmd(range)
                    .arg(&index)
                    .arg(start)
                    .arg(stop)
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(event_key(*id))
                .arg(&RECORD_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<Vec<u8>>>> =
            self.bounded("list", pipe.query_async(&mut conn)).await?;
        let mut records = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (id, fields) in ids.into_iter().zip(rows) {
            match record(id, fields)? {
                Some(r) => records.push(r),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            // Expired before `purge` came by: forget them now.
            let mut pipe = redis::pipe();
            for id in gone {
                let id = id.to_string();
                pipe.cmd("ZREM")
                    .arg(format!("{prefix}:events"))
                    .arg(&id)
                    .ignore();
                for status in [Status::Succeeded, Status::Failed, Status::Aborted] {
                    pipe.cmd("ZREM")
                        .arg(format!("{prefix}:status:{}", status.as_str()))
                        .arg(&id)
                        .ignore();
                }
            }
            self.bounded("list", pipe.query_async::<()>(&mut conn))
                .await?;
        }
        Ok(records)
    }

    pub async fn abort(&self, id: Uuid) -> Result<Aborted, StoreError> {
        let now = now_ms();
        let retention = (self.policy.retention.as_millis() as i64).max(1);
        let mut invocation = self.scripts.abort.prepare_invoke();
        invocation
            .key(event_key(id))
            .arg(id.to_string())
            .arg(now)
            .arg(retention)
            .arg(now.saturating_add(retention));
        let mut conn = self.conn.clone();
        let answer: String = self
            .bounded("abort", invocation.invoke_async(&mut conn))
            .await?;
        let Some(record) = self.get(id).await? else {
            return Ok(Aborted::NotFound);
        };
        Ok(if answer == "aborted" {
            Aborted::Aborted(record)
        } else {
            Aborted::NotQueued(record)
        })
    }

    /// Exact for queued and running events; final ones whose retention ran out since
    /// the last `purge` are still counted until it runs.
    pub async fn counts(&self) -> Result<Vec<FunctionCounts>, StoreError> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = self
            .bounded(
                "counts",
                redis::cmd("SMEMBERS").arg(FUNCTIONS).query_async(&mut conn),
            )
            .await?;
        names.sort();
        let functions: Vec<FunctionKey> = names
            .iter()
            .filter_map(|n| n.split_once('/'))
            .map(|(ns, name)| FunctionKey::new(ns, name))
            .collect();
        if functions.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for function in &functions {
            let prefix = prefix(function);
            for status in Status::ALL {
                pipe.cmd("ZCARD")
                    .arg(format!("{prefix}:status:{}", status.as_str()));
            }
            pipe.cmd("ZRANGE")
                .arg(format!("{prefix}:status:queued"))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let replies: Vec<Value> = self.bounded("counts", pipe.query_async(&mut conn)).await?;
        let mut out = Vec::with_capacity(functions.len());
        for (function, chunk) in functions.into_iter().zip(replies.chunks(6)) {
            let mut by_status = [0u64; 5];
            for (slot, value) in by_status.iter_mut().zip(chunk) {
                *slot = match value {
                    Value::Int(n) => (*n).max(0) as u64,
                    _ => 0,
                };
            }
            let oldest_queued = chunk.get(5).and_then(|v| match v {
                Value::Array(pair) => pair
                    .get(1)
                    .and_then(text)
                    .and_then(|s| s.parse::<f64>().ok().map(|ms| from_ms(ms as i64))),
                _ => None,
            });
            out.push(FunctionCounts {
                function,
                by_status,
                oldest_queued,
            });
        }
        Ok(out)
    }

    /// The hashes expire by themselves (their TTL is the retention); this removes the
    /// ids of those that did from the indexes.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let names: Vec<String> = self
            .bounded(
                "purge",
                redis::cmd("SMEMBERS").arg(FUNCTIONS).query_async(&mut conn),
            )
            .await?;
        let now = now_ms();
        let mut total = 0u64;
        for name in names {
            let Some((ns, name)) = name.split_once('/') else {
                continue;
            };
            let prefix = prefix(&FunctionKey::new(ns, name));
            loop {
                let mut invocation = self.scripts.purge.prepare_invoke();
                invocation.arg(&prefix).arg(now).arg(BATCH);
                let removed: i64 = self
                    .bounded("purge", invocation.invoke_async(&mut conn))
                    .await?;
                total += removed.max(0) as u64;
                if (removed as usize) < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// `SET scfgw:once:{key} 1 NX PX ttl`: true for the first caller only.
    pub async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .bounded(
                "once",
                redis::cmd("SET")
                    .arg(format!("{PREFIX}:once:{key}"))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg((ttl.as_millis() as u64).max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Creates the function's consumer group (and its stream) unless this store did
    /// already. From id 0: events enqueued before the group existed are read too.
    async fn ensure_group(&self, function: &FunctionKey) -> Result<(), StoreError> {
        if self.groups.lock().contains(function) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: Result<(), Failure> = self
            .bounded(
                "claim",
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(format!("{}:stream", prefix(function)))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn),
            )
            .await;
        match created {
            Ok(()) | Err(Failure::BusyGroup) => {
                self.groups.lock().insert(function.clone());
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one command within [`COMMAND_BOUND`], sorting its errors.
    async fn bounded<T>(
        &self,
        what: &str,
        command: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(COMMAND_BOUND, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.sort(what, &e)),
            Err(_) => Err(Failure::Store(StoreError::Unavailable(format!(
                "redis at {} did not answer {what} within {COMMAND_BOUND:?}",
                self.endpoint
            )))),
        }
    }

    fn sort(&self, what: &str, e: &RedisError) -> Failure {
        if e.to_string().contains("NOGROUP") {
            return Failure::NoGroup;
        }
        if e.code() == Some("BUSYGROUP") {
            return Failure::BusyGroup;
        }
        let unreachable = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::BusyLoadingError | ErrorKind::TryAgain | ErrorKind::MasterDown
            );
        let message = format!("redis at {} ({what}): {}", self.endpoint, describe(e));
        Failure::Store(if unreachable {
            StoreError::Unavailable(message)
        } else {
            StoreError::Failed(message)
        })
    }
}

/// An error of one command: the store's, or one the store handles itself.
enum Failure {
    Store(StoreError),
    /// The stream has no consumer group (Redis lost it).
    NoGroup,
    /// The consumer group exists already.
    BusyGroup,
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> StoreError {
        match f {
            Failure::Store(e) => e,
            Failure::NoGroup => StoreError::Failed("redis lost a consumer group".into()),
            Failure::BusyGroup => StoreError::Failed("redis consumer group exists".into()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

/// The error's kind and detail, never the URL.
fn describe(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

/// `scfgw:{namespace}/{name}`: what every key of the function starts with.
fn prefix(function: &FunctionKey) -> String {
    format!("{PREFIX}:{}/{}", function.namespace, function.name)
}

fn event_key(id: Uuid) -> String {
    format!("{PREFIX}:event:{id}")
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Stream entries `[[entry id, [field, value, ...]], ...]` as (entry id, event id);
/// deleted entries (nil) are left out, an entry without a readable id keeps `None`.
fn entries(v: &Value) -> Vec<(String, Option<Uuid>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let entry = text(pair.first()?)?;
            let id = match pair.get(1) {
                Some(Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text).as_deref() == Some("id"))
                    .and_then(|kv| kv.get(1).and_then(text))
                    .and_then(|s| Uuid::parse_str(&s).ok()),
                _ => None,
            };
            Some((entry, id))
        })
        .collect()
}

/// Items of the Lua `begin`'s `ok` answer.
const BEGUN_LEN: usize = 11;

/// The claim the Lua `begin` answered: `ok`, attempt, namespace, name, qualifier, body,
/// content type, has content type, trigger, enqueued ms, id.
fn begun(reply: Vec<Vec<u8>>, entry: &str) -> Result<Begun, Failure> {
    if reply.len() != BEGUN_LEN || reply[0] != b"ok" {
        return Ok(Begun::Skip);
    }
    let mut items = reply.into_iter().skip(1);
    let mut next = || items.next().unwrap_or_default();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).ok();
    let attempt = next();
    let (ns, name, qualifier) = (next(), next(), next());
    let body = Bytes::from(next());
    let (ctype, has_ctype, trigger, enqueued) = (next(), next(), next(), next());
    let id = text(next())
        .and_then(|i| Uuid::parse_str(&i).ok())
        .ok_or_else(|| {
            Failure::Store(StoreError::Failed(
                "redis answered a claim with an unreadable request id".into(),
            ))
        })?;
    let bad = |what: &str| Failure::Store(unreadable(id, what));
    let attempt: u32 = text(attempt)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| bad("attempts"))?;
    let enqueued_at = text(enqueued)
        .and_then(|e| e.parse::<i64>().ok())
        .map(from_ms)
        .ok_or_else(|| bad("enqueuedAt"))?;
    let (Some(ns), Some(name), Some(qualifier)) = (text(ns), text(name), text(qualifier)) else {
        return Err(bad("function"));
    };
    let content_type = if has_ctype == b"1" { text(ctype) } else { None };
    let trigger = text(trigger)
        .and_then(|t| Trigger::parse(&t))
        .unwrap_or(Trigger::Invoke);
    Ok(Begun::Claimed(Box::new(Claimed {
        id,
        function: FunctionKey::new(ns, name),
        qualifier,
        body,
        content_type,
        trigger,
        attempt,
        enqueued_at,
        receipt: Receipt::Stream(entry.to_owned()),
    })))
}

fn unreadable(id: Uuid, what: &str) -> StoreError {
    StoreError::Failed(format!("event {id} in redis has an unreadable {what}"))
}

/// An [`EventRecord`] from the hash's [`RECORD_FIELDS`]; none when the hash is gone.
fn record(id: Uuid, fields: Vec<Option<Vec<u8>>>) -> Result<Option<EventRecord>, StoreError> {
    let mut fields = fields.into_iter();
    let mut next = || fields.next().flatten();
    let string = |v: Option<Vec<u8>>| v.and_then(|b| String::from_utf8(b).ok());
    let number = |v: Option<Vec<u8>>| string(v).and_then(|s| s.parse::<i64>().ok());
    let ns = string(next());
    let name = string(next());
    let qualifier = string(next()).unwrap_or_default();
    let Some(status) = string(next()) else {
        return Ok(None);
    };
    let status = Status::parse(&status).ok_or_else(|| unreadable(id, "status"))?;
    let (Some(ns), Some(name)) = (ns, name) else {
        return Err(unreadable(id, "function"));
    };
    let attempts = number(next()).unwrap_or(0).clamp(0, u32::MAX as i64) as u32;
    let enqueued_at = from_ms(number(next()).ok_or_else(|| unreadable(id, "enqueuedAt"))?);
    let started_at = number(next()).map(from_ms);
    let ended_at = number(next()).map(from_ms);
    let status_code = number(next()).and_then(|c| u16::try_from(c).ok());
    let result = next().map(Bytes::from);
    let error = string(next());
    Ok(Some(EventRecord {
        id,
        function: FunctionKey::new(ns, name),
        qualifier,
        status,
        attempts,
        enqueued_at,
        started_at,
        ended_at,
        status_code,
        result,
        error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn a_started_attempt_reads_back_from_the_script_answer() {
        let id = Uuid::from_u128(7);
        let reply = vec![
            b("ok"),
            b("3"),
            b("default"),
            b("fn"),
            b("$LATEST"),
            b("{}"),
            b(""),
            b("0"),
            b("timer"),
            b("1000"),
            b(&id.to_string()),
        ];
        let Ok(Begun::Claimed(claimed)) = begun(reply, "1-0") else {
            panic!("a claim");
        };
        assert_eq!(claimed.id, id);
        assert_eq!(claimed.attempt, 3);
        assert_eq!(claimed.function, FunctionKey::new("default", "fn"));
        assert_eq!(claimed.content_type, None);
        assert_eq!(claimed.trigger, Trigger::Timer);
        assert_eq!(claimed.enqueued_at, from_ms(1000));
        assert_eq!(claimed.receipt, Receipt::Stream("1-0".into()));
        assert!(matches!(begun(vec![b("aborted")], "1-0"), Ok(Begun::Skip)));
    }

    #[test]
    fn a_record_without_its_hash_is_none_and_a_bad_status_is_an_error() {
        let id = Uuid::from_u128(9);
        assert_eq!(record(id, vec![None; RECORD_FIELDS.len()]).unwrap(), None);
        let mut fields: Vec<Option<Vec<u8>>> = vec![None; RECORD_FIELDS.len()];
        fields[0] = Some(b("default"));
        fields[1] = Some(b("fn"));
        fields[3] = Some(b("done"));
        fields[5] = Some(b("5"));
        assert!(record(id, fields.clone()).is_err());
        fields[3] = Some(b("queued"));
        let r = record(id, fields).unwrap().unwrap();
        assert_eq!(r.status, Status::Queued);
        assert_eq!(r.attempts, 0);
        assert_eq!(r.enqueued_at, from_ms(5));
        assert_eq!(r.result, None);
    }

    #[test]
    fn keys_start_with_the_prefix() {
        let f = FunctionKey::new("ns", "name");
        assert_eq!(prefix(&f), "scfgw:ns/name");
        assert_eq!(
            event_key(Uuid::nil()),
            "scfgw:event:00000000-0000-0000-0000-000000000000"
        );
    }
}
