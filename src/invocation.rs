//! The life of one invocation, and the one place where it ends.
//!
//! An invocation begins when a request is routed to a function ([`Invocation::begin`]),
//! may be handed to an instance ([`Invocation::hand_over`]), and ends exactly once,
//! whichever way it ends: refused before any instance was touched, failed while it
//! was being forwarded, its response body finished or broke, cut at its deadline, or
//! dropped because the client went away. Every one of those ways goes through
//! [`Invocation::end`] (dropping an unfinished invocation ends it as
//! [`Outcome::ClientClosed`]), which does, in this order:
//!
//! 1. a connection that ended cleanly goes back to its instance's pool, before the slot
//!    is freed, so the next holder of the slot finds it warm;
//! 2. a launched instance whose invocation timed out is stopped (it is still busy in
//!    user code) and the timeout is logged at WARN with the request id;
//! 3. the time on the instance is billed (the rule is [`billed_millis`]) and, for a launched
//!    instance, its `END` and `Report` lines are written and the log tail handed over;
//! 4. the slot is freed;
//! 5. the outcome and duration are counted, and access-logged when asked for.
//!
//! Asynchronous invocations and the cloud API reuse this type: whatever starts an
//! invocation, it ends the same way.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::function::Function;
use crate::instance::cgroup::MemoryProbe;
use crate::instance::logs::{billed_millis, duration_ms, Report};
use crate::metrics::Outcome;
use crate::pool::{Instance, PooledConn, Slot};

/// What the access log says of a request beyond its outcome: kept only when
/// `server.access_log` is on, so an invocation without it carries nothing extra.
pub struct AccessLog {
    pub method: Method,
    pub path: String,
}

/// One invocation, from routing to its end.
pub struct Invocation {
    function: Arc<Function>,
    request_id: HeaderValue,
    started: Instant,
    /// On an instance, from hand-over until the end.
    attempt: Option<Attempt>,
    /// The status the client was (or is being) answered with; 0 until known.
    status: u16,
    access: Option<Box<AccessLog>>,
    ended: bool,
    /// Where the measures go (see [`Invocation::measure`]) until an attempt takes it.
    measured: Option<oneshot::Sender<Measured>>,
}

/// An invocation's time on one instance.
struct Attempt {
    slot: Slot,
    /// When the invocation was handed to the instance: the timeout and billing start.
    handed_over: Instant,
    /// How the invocation's peak memory is being measured.
    memory: MemoryProbe,
    /// Where the log tail goes once the END line is out (`X-Scf-Log-Type: Tail`).
    tail: Option<oneshot::Sender<String>>,
    /// Where the attempt's measures go once it ends (the cloud API's `Result`).
    measured: Option<oneshot::Sender<Measured>>,
}

/// What the end of an invocation's attempt measured, as its `Report` line says it: for
/// a caller that answers with the figures rather than a log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    /// From hand-over to the end of the response.
    pub duration: Duration,
    /// The billed time, in whole milliseconds ([`billed_millis`]).
    pub billed_millis: u64,
    /// The peak memory, where it is measured (a launched instance in a cgroup).
    pub mem_usage_bytes: Option<u64>,
    /// The invocation's last 4 KB of log, for a launched instance with a log.
    pub log: Option<String>,
}

impl Invocation {
    /// Counts a routed request as an invocation in flight.
    pub fn begin(
        function: Arc<Function>,
        request_id: &HeaderValue,
        access: Option<AccessLog>,
    ) -> Invocation {
        function.metrics.begin();
        Invocation {
            function,
            request_id: request_id.clone(),
            started: Instant::now(),
            attempt: None,
            status: 0,
            access: access.map(Box::new),
            ended: false,
            measured: None,
        }
    }

    pub fn function(&self) -> &Function {
        &self.function
    }

    /// The instance the invocation was handed to, if it was.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        self.attempt.as_ref().map(|a| a.slot.instance())
    }

    /// Hands the invocation to the instance holding `slot`, as of `at`: for a launched
    /// instance `START` is written and from here its output belongs to this invocation,
    /// and its memory peak is measured.
    pub fn hand_over(&mut self, slot: Slot, at: Instant) -> &Arc<Instance> {
        let memory = start_logs(
            slot.instance(),
            &self.request_id,
            slot.pool().per_instance(),
        );
        let attempt = self.attempt.insert(Attempt {
            slot,
            handed_over: at,
            memory,
            tail: None,
            measured: self.measured.take(),
        });
        attempt.slot.instance()
    }

    /// Asks for what the end of the invocation's (last) attempt measures, however it
    /// ends. The receiver gets nothing if the invocation never reached an instance.
    pub fn measure(&mut self) -> oneshot::Receiver<Measured> {
        let (tx, rx) = oneshot::channel();
        match self.attempt.as_mut() {
            Some(attempt) => attempt.measured = Some(tx),
            None => self.measured = Some(tx),
        }
        rx
    }

    /// Asks for the invocation's log tail, sent once its `END` line is out. `None` where
    /// there is no log to tail (a static instance, or not handed over).
    pub fn tail(&mut self) -> Option<oneshot::Receiver<String>> {
        let attempt = self.attempt.as_mut()?;
        if !attempt.slot.instance().is_launched() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        attempt.tail = Some(tx);
        Some(rx)
    }

    /// The instance took nothing of the request (its connection was refused after
    /// hand-over): that attempt ends, billed and logged, and the invocation may be handed
    /// to another instance.
    pub fn abandon_attempt(&mut self) {
        if let Some(mut attempt) = self.attempt.take() {
            // The measures are the next attempt's.
            self.measured = attempt.measured.take();
            attempt.end(
                &self.function,
                &self.request_id,
                Outcome::InstanceError,
                None,
                Instant::now(),
            );
        }
    }

    /// Takes the invocation over, leaving an ended husk behind: for work that must go on
    /// after the future that owned the invocation is gone (a client that left before its
    /// answer does not end the invocation early).
    pub fn detach(&mut self) -> Invocation {
        let detached = Invocation {
            function: self.function.clone(),
            request_id: self.request_id.clone(),
            started: self.started,
            attempt: self.attempt.take(),
            status: self.status,
            access: self.access.take(),
            ended: self.ended,
            measured: self.measured.take(),
        };
        self.ended = true;
        detached
    }

    /// The status the client is answered with, for the access log.
    pub fn responded(&mut self, status: StatusCode) {
        self.status = status.as_u16();
    }

    /// Ends the invocation with the gateway's error `e`.
    pub fn fail(mut self, e: &GatewayError) {
        self.status = e.status_and_code().0.as_u16();
        self.function.metrics.error(e.recent(&self.request_id));
        self.end(e.outcome(), None);
    }

    /// Ends the invocation (see the module's doc for what that does). `conn` is the
    /// instance's connection when the exchange ended cleanly and it can be reused.
    pub fn end(mut self, outcome: Outcome, conn: Option<PooledConn>) {
        self.finish(outcome, conn, Instant::now());
    }

    fn finish(&mut self, outcome: Outcome, conn: Option<PooledConn>, now: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(attempt) = self.attempt.take() {
            attempt.end(&self.function, &self.request_id, outcome, conn, now);
        }
        let elapsed = now.saturating_duration_since(self.started);
        self.function.metrics.end(outcome, elapsed);
        if let Some(access) = &self.access {
            let status = match (self.status, outcome) {
                // nginx's convention for a client that left before its answer.
                (0, Outcome::ClientClosed) => 499,
                (status, _) => status,
            };
            tracing::info!(
                target: "access",
                request_id = self.request_id.to_str().unwrap_or_default(),
                function = %self.function.name,
                namespace = %self.function.namespace,
                method = %access.method,
                path = %access.path,
                status,
                outcome = outcome.as_str(),
                duration_ms = duration_ms(elapsed),
                "invocation"
            );
        }
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server is going).
        if !self.ended {
            self.finish(Outcome::ClientClosed, None, Instant::now());
        }
    }
}

// === impl Attempt ===

impl Attempt {
    fn end(
        self,
        function: &Function,
        request_id: &HeaderValue,
        outcome: Outcome,
        conn: Option<PooledConn>,
        now: Instant,
    ) {
        let Attempt {
            slot,
            handed_over,
            memory,
            tail,
            measured,
        } = self;
        let instance = slot.instance();
        if let Some(conn) = conn {
            instance.checkin(conn, now);
        }
        if outcome == Outcome::Timeout && instance.is_launched() {
            tracing::warn!(
                request_id = request_id.to_str().unwrap_or_default(),
                function = %function.name,
                namespace = %function.namespace,
                instance = %instance.name(),
                "invocation timed out after {}; stopping its instance",
                humane(function.timeout),
            );
            slot.pool().recycle(instance);
        }
        let duration = now.saturating_duration_since(handed_over);
        let init = slot.init_duration();
        let (log, mem_usage_bytes) =
            end_logs(instance, function, request_id, duration, init, memory).unzip();
        if let (Some(tx), Some(text)) = (tail, &log) {
            let _ = tx.send(text.clone());
        }
        if let Some(tx) = measured {
            let _ = tx.send(Measured {
                duration,
                billed_millis: billed_millis(duration),
                mem_usage_bytes: mem_usage_bytes.flatten(),
                log,
            });
        }
        drop(slot);
    }
}

/// `START` for a launched instance; its memory probe (per invocation only when
/// invocations cannot overlap on it: the cgroup's peak is per instance).
fn start_logs(instance: &Instance, request_id: &HeaderValue, per_instance: u32) -> MemoryProbe {
    let Some(launched) = instance.process() else {
        return MemoryProbe::None;
    };
    let probe = match launched.process.cgroup() {
        Some(cgroup) => cgroup.probe(per_instance == 1),
        None => MemoryProbe::None,
    };
    if let Some(log) = &launched.log {
        log.begin(request_id.to_str().unwrap_or_default());
    }
    probe
}

/// Bills the time on the instance; for a launched instance writes `END` and `Report`
/// (after its output so far) and gives back the log tail and the measured memory.
fn end_logs(
    instance: &Instance,
    function: &Function,
    request_id: &HeaderValue,
    duration: Duration,
    init_duration: Option<Duration>,
    memory: MemoryProbe,
) -> Option<(String, Option<u64>)> {
    function
        .metrics
        .bill(function.memory_mb, billed_millis(duration));
    let launched = instance.process()?;
    let log = launched.log.as_ref()?;
    let mem_usage_bytes = memory.finish(launched.process.cgroup());
    let report = Report {
        duration,
        memory_mb: function.memory_mb,
        mem_usage_bytes,
        init_duration,
    };
    let text = log.end(request_id.to_str().unwrap_or_default(), report);
    Some((text, mem_usage_bytes))
}

/// `3s`, `500ms`: a duration as a person configured it.
fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_configured() {
        assert_eq!(humane(Duration::from_secs(3)), "3s");
        assert_eq!(humane(Duration::from_millis(1500)), "1500ms");
    }
}
