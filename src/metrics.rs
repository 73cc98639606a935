//! The contract's Prometheus series, recorded without slowing the hot path.
//!
//! Every handle a request touches is registered once per function when the gateway
//! starts, so recording is an atomic add on a handle the request already holds: no
//! key hashing, no registry lookup, no lock. Each gateway has its own recorder (not a
//! process-global one), so several gateways can live in one test process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const INVOCATIONS: &str = "scf_gateway_invocations_total";
const DURATION: &str = "scf_gateway_invocation_duration_seconds";
const INFLIGHT: &str = "scf_gateway_inflight";
const QUEUE_DEPTH: &str = "scf_gateway_queue_depth";
const UPSTREAM_CONNECTIONS: &str = "scf_gateway_upstream_connections_total";
const INSTANCES: &str = "scf_gateway_instances";
const COLD_STARTS: &str = "scf_gateway_cold_starts_total";
const BILLED: &str = "scf_gateway_billed_gb_seconds_total";
const WORKER_CONNECTIONS: &str = "scf_gateway_worker_connections_total";

/// Seconds: from sub-millisecond proxy hops to the longest function timeouts.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static METADATA: Metadata<'static> = Metadata::new("scf_gateway", Level::INFO, None);

/// Per function: its billed micro-GB-seconds.
type BillingCells = Vec<(String, Arc<AtomicU64>)>;

/// How an invocation ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    NotFound,
    BodyTooLarge,
    ResponseTooLarge,
    Timeout,
    InstanceError,
    Throttled,
    /// The instance was killed for exceeding its memory limit.
    OutOfMemory,
    /// The client went away before the response was complete.
    ClientClosed,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::NotFound,
        Outcome::BodyTooLarge,
        Outcome::ResponseTooLarge,
        Outcome::Timeout,
        Outcome::InstanceError,
        Outcome::Throttled,
        Outcome::OutOfMemory,
        Outcome::ClientClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NotFound => "not_found",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::ResponseTooLarge => "response_too_large",
            Outcome::Timeout => "timeout",
            Outcome::InstanceError => "instance_error",
            Outcome::Throttled => "throttled",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::ClientClosed => "client_closed",
        }
    }
}

/// The gateway's metrics registry and its text rendering.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// `scf_gateway_billed_gb_seconds_total` per function: fractional, so kept as exact
    /// integer micro-units and rendered here rather than through integer counters.
    billing: Arc<Mutex<BillingCells>>,
}

impl Registry {
    pub fn new() -> Registry {
        // Fixed, valid buckets: this cannot fail, but a failure would only cost the
        // histogram its buckets (it would render as a summary), never the gateway.
        let builder = PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Registry {
            recorder: Arc::new(recorder),
            handle,
            billing: Arc::default(),
        }
    }

    /// Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        let billing = self.billing.lock().unwrap_or_else(|p| p.into_inner());
        if !billing.is_empty() {
            let _ = writeln!(text, "# TYPE {BILLED} counter");
            for (function, micro) in billing.iter() {
                let micro = micro.load(Ordering::Relaxed);
                let _ = writeln!(
                    text,
                    "{BILLED}{{function=\"{function}\"}} {}.{:06}",
                    micro / 1_000_000,
                    micro % 1_000_000
                );
            }
        }
        text
    }

    fn billing_cell(&self, function: &str) -> Arc<AtomicU64> {
        let mut billing = self.billing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, cell)) = billing.iter().find(|(f, _)| f == function) {
            return cell.clone();
        }
        let cell = Arc::new(AtomicU64::new(0));
        billing.push((function.to_owned(), cell.clone()));
        cell
    }

    /// Folds recorded histogram samples into their buckets; run it periodically so
    /// unscraped samples do not pile up.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// Client connections accepted by one worker thread (`worker="0"`, ...): how the
    /// shared listening socket spreads connections over the workers.
    pub fn worker_connections(&self, worker: usize) -> Counter {
        self.counter(
            WORKER_CONNECTIONS,
            vec![Label::new("worker", worker.to_string())],
        )
    }

    /// The counter of requests that matched no function (`function="-"`).
    pub fn unmatched(&self) -> Counter {
        self.counter(
            INVOCATIONS,
            vec![
                Label::new("function", "-"),
                Label::new("namespace", "-"),
                Label::new("outcome", Outcome::NotFound.as_str()),
            ],
        )
    }

    /// Handles for one function.
    pub fn function(&self, function: &str, namespace: &str) -> FunctionMetrics {
        let f = || Label::new("function", function.to_owned());
        let invocations = Outcome::ALL.map(|o| {
            self.counter(
                INVOCATIONS,
                vec![
                    f(),
                    Label::new("namespace", namespace.to_owned()),
                    Label::new("outcome", o.as_str()),
                ],
            )
        });
        FunctionMetrics {
            invocations,
            duration: self.histogram(DURATION, vec![f()]),
            inflight: self.gauge(INFLIGHT, vec![f()]),
            queue_depth: self.gauge(QUEUE_DEPTH, vec![f()]),
            new_connections: self.counter(
                UPSTREAM_CONNECTIONS,
                vec![f(), Label::new("reused", "false")],
            ),
            reused_connections: self.counter(
                UPSTREAM_CONNECTIONS,
                vec![f(), Label::new("reused", "true")],
            ),
            instances_starting: self.gauge(INSTANCES, vec![f(), Label::new("state", "starting")]),
            instances_ready: self.gauge(INSTANCES, vec![f(), Label::new("state", "ready")]),
            instances_down: self.gauge(INSTANCES, vec![f(), Label::new("state", "down")]),
            cold_starts: self.counter(COLD_STARTS, vec![f()]),
            billed_micro: self.billing_cell(function),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// Pre-registered handles of one function.
#[derive(Clone)]
pub struct FunctionMetrics {
    invocations: [Counter; 9],
    duration: Histogram,
    pub inflight: Gauge,
    pub queue_depth: Gauge,
    new_connections: Counter,
    reused_connections: Counter,
    instances_starting: Gauge,
    instances_ready: Gauge,
    instances_down: Gauge,
    cold_starts: Counter,
    /// Billed micro-GB-seconds: exact integer sums, rendered as GB-seconds.
    billed_micro: Arc<AtomicU64>,
}

impl FunctionMetrics {
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.invocations[i].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    /// Instances by state; set when they change, never per invocation.
    pub fn set_instances(&self, starting: usize, ready: usize, down: usize) {
        self.instances_starting.set(starting as f64);
        self.instances_ready.set(ready as f64);
        self.instances_down.set(down as f64);
    }

    pub fn cold_start(&self) {
        self.cold_starts.increment(1);
    }

    /// Adds an invocation's billed GB-seconds: memory in GB times the billed duration.
    pub fn bill(&self, memory_mb: u32, billed_ms: u64) {
        // micro-GB-seconds = MB / 1024 * ms / 1000 * 1e6
        let micro = u64::from(memory_mb) * billed_ms * 1_000 / 1_024;
        self.billed_micro.fetch_add(micro, Ordering::Relaxed);
    }

    /// An invocation got a connection: one opened for it, or one from the warm pool.
    pub fn connection(&self, reused: bool) {
        if reused {
            self.reused_connections.increment(1);
        } else {
            self.new_connections.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_series() {
        let registry = Registry::new();
        let m = registry.function("hello", "default");
        m.record(Outcome::Success, Duration::from_millis(3));
        m.record(Outcome::Timeout, Duration::from_millis(500));
        m.connection(true);
        m.inflight.increment(1.0);
        m.queue_depth.set(0.0);
        registry.run_upkeep();
        let text = registry.render();
        assert!(text.contains(
            "scf_gateway_invocations_total{function=\"hello\",namespace=\"default\",outcome=\"success\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "scf_gateway_invocation_duration_seconds_bucket{function=\"hello\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "scf_gateway_upstream_connections_total{function=\"hello\",reused=\"true\"} 1"
        ));
        assert!(text.contains("scf_gateway_inflight{function=\"hello\"} 1"));
        assert!(text.contains("scf_gateway_queue_depth{function=\"hello\"} 0"));
    }
}
