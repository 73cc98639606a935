//! The contract's Prometheus series: our own small registry, because the request path
//! must stay cheap even with thousands of functions.
//!
//! Each function owns one cache-aligned block of atomic cells ([`FunctionMetrics`]),
//! allocated once when the gateway starts. Recording is a relaxed atomic add on a cell
//! the request already reaches through its function: no key hashing, no registry
//! lookup, no lock, no allocation, no floating point. The cells one invocation touches
//! (in-flight gauge, success counter, reused-connection counter, duration sum, billing
//! and the fast histogram buckets) share the block's first cache line, so a typical
//! request pulls in one or two lines of metrics state however many functions there are,
//! where a general-purpose recorder makes every series its own allocation
//! (docs/adr/0003-metrics-cells.md).
//!
//! The text exposition is rendered here, on scrape, in a fixed order: the families in
//! the order of the contract, functions in the order they were registered. The admin API
//! reads the same cells, and the last few cold starts and errors ([`recent`]).

pub mod recent;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use recent::{ColdStart, Recent, RecentError, Ring};

const INVOCATIONS: &str = "scf_gateway_invocations_total";
const DURATION: &str = "scf_gateway_invocation_duration_seconds";
const INFLIGHT: &str = "scf_gateway_inflight";
const QUEUE_DEPTH: &str = "scf_gateway_queue_depth";
const INSTANCES: &str = "scf_gateway_instances";
const COLD_STARTS: &str = "scf_gateway_cold_starts_total";
const COLD_START_SECONDS: &str = "scf_gateway_cold_start_seconds";
const UPSTREAM_CONNECTIONS: &str = "scf_gateway_upstream_connections_total";
const BILLED: &str = "scf_gateway_billed_gb_seconds_total";
const WORKER_CONNECTIONS: &str = "scf_gateway_worker_connections_total";
const ASYNC_EVENTS: &str = "scf_gateway_async_events";
const ASYNC_ATTEMPTS: &str = "scf_gateway_async_attempts_total";
const ASYNC_OLDEST: &str = "scf_gateway_async_oldest_queued_seconds";

/// The duration buckets' upper bounds (inclusive), in nanoseconds so that a sample is
/// placed by integer comparison; from sub-millisecond proxy hops to the longest
/// function timeouts.
const BOUNDS_NANOS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// The same bounds as `le` label values, in seconds.
const BOUNDS_TEXT: [&str; 16] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "60",
];

/// One cell per bucket, plus one for samples above the last bound (the `+Inf` bucket
/// is the total of all of them).
const BUCKETS: usize = BOUNDS_NANOS.len() + 1;

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
    /// Every outcome, in rendering order.
    pub const ALL: [Outcome; 9] = [
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

/// The cells of one function. `repr(C)` keeps the declared order, so the fields every
/// invocation writes stay together at the start; `align(64)` starts the block on a
/// cache line of its own.
#[repr(C, align(64))]
#[derive(Default)]
struct FunctionCells {
    // --- Written by (nearly) every invocation: the first cache line. ---
    inflight: AtomicI64,
    success: AtomicU64,
    reused_connections: AtomicU64,
    /// Sum of the durations in microseconds (each rounded to the nearest): u64 lasts
    /// for centuries of accumulated invocation time.
    duration_sum_micros: AtomicU64,
    /// Billed micro-GB-seconds: exact integer sums, rendered as GB-seconds.
    billed_micro: AtomicU64,
    /// Per bucket, not cumulative: a sample adds to one cell. The first three (up to
    /// 2.5 ms) complete the first cache line.
    duration_buckets: [AtomicU64; BUCKETS],

    // --- The rest: failures, background work, state changes. ---
    not_found: AtomicU64,
    body_too_large: AtomicU64,
    response_too_large: AtomicU64,
    timeout: AtomicU64,
    instance_error: AtomicU64,
    throttled: AtomicU64,
    out_of_memory: AtomicU64,
    client_closed: AtomicU64,
    new_connections: AtomicU64,
    queue_depth: AtomicI64,
    instances_starting: AtomicI64,
    instances_ready: AtomicI64,
    instances_down: AtomicI64,
    cold_starts: AtomicU64,
    /// How long cold starts took, from the decision to start to ready: per bucket as
    /// `duration_buckets`, and their sum in microseconds.
    cold_start_buckets: [AtomicU64; BUCKETS],
    cold_start_sum_micros: AtomicU64,
    recent: Recent,
}

impl FunctionCells {
    fn invocations(&self, outcome: Outcome) -> &AtomicU64 {
        match outcome {
            Outcome::Success => &self.success,
            Outcome::NotFound => &self.not_found,
            Outcome::BodyTooLarge => &self.body_too_large,
            Outcome::ResponseTooLarge => &self.response_too_large,
            Outcome::Timeout => &self.timeout,
            Outcome::InstanceError => &self.instance_error,
            Outcome::Throttled => &self.throttled,
            Outcome::OutOfMemory => &self.out_of_memory,
            Outcome::ClientClosed => &self.client_closed,
        }
    }
}

/// The metrics of one function: a handle to its cells. Cloning shares them.
#[derive(Clone)]
pub struct FunctionMetrics {
    cells: Arc<FunctionCells>,
}

impl FunctionMetrics {
    /// An invocation was routed to the function: it is in flight until [`Self::end`].
    pub fn begin(&self) {
        self.cells.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// An invocation ended: no longer in flight, counted by outcome and duration.
    pub fn end(&self, outcome: Outcome, elapsed: Duration) {
        let cells = &*self.cells;
        cells.inflight.fetch_sub(1, Ordering::Relaxed);
        cells.invocations(outcome).fetch_add(1, Ordering::Relaxed);
        let nanos = nanos(elapsed);
        cells.duration_buckets[bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        cells
            .duration_sum_micros
            .fetch_add(nanos.saturating_add(500) / 1_000, Ordering::Relaxed);
    }

    /// Invocations waiting for a slot; set under the pool's lock when the queue changes.
    pub fn set_queue_depth(&self, waiting: usize) {
        self.cells
            .queue_depth
            .store(gauge(waiting), Ordering::Relaxed);
    }

    /// Instances by state; set when they change, never per invocation.
    pub fn set_instances(&self, starting: usize, ready: usize, down: usize) {
        let cells = &*self.cells;
        cells
            .instances_starting
            .store(gauge(starting), Ordering::Relaxed);
        cells.instances_ready.store(gauge(ready), Ordering::Relaxed);
        cells.instances_down.store(gauge(down), Ordering::Relaxed);
    }

    /// A cold start that took `took`, from the decision to start to ready.
    pub fn cold_start(&self, took: Duration) {
        let cells = &*self.cells;
        cells.cold_starts.fetch_add(1, Ordering::Relaxed);
        let nanos = nanos(took);
        cells.cold_start_buckets[bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        cells
            .cold_start_sum_micros
            .fetch_add(nanos.saturating_add(500) / 1_000, Ordering::Relaxed);
        cells.recent.cold_starts.push(ColdStart {
            at: std::time::SystemTime::now(),
            took,
        });
    }

    /// An invocation of the function was answered with an error.
    pub fn error(&self, error: RecentError) {
        self.cells.recent.errors.push(error);
    }

    /// Adds an invocation's billed GB-seconds: memory in GB times the billed duration.
    pub fn bill(&self, memory_mb: u32, billed_ms: u64) {
        // micro-GB-seconds = MB / 1024 * ms / 1000 * 1e6
        let micro = u64::from(memory_mb)
            .saturating_mul(billed_ms)
            .saturating_mul(1_000)
            / 1_024;
        self.cells.billed_micro.fetch_add(micro, Ordering::Relaxed);
    }

    /// An invocation got a connection: one opened for it, or one from the warm pool.
    pub fn connection(&self, reused: bool) {
        let cell = if reused {
            &self.cells.reused_connections
        } else {
            &self.cells.new_connections
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }
}

// === What the admin API reads ===

impl FunctionMetrics {
    pub fn invocations(&self, outcome: Outcome) -> u64 {
        self.cells.invocations(outcome).load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> i64 {
        self.cells.inflight.load(Ordering::Relaxed)
    }

    /// Invocations waiting for a slot.
    pub fn queued(&self) -> i64 {
        self.cells.queue_depth.load(Ordering::Relaxed)
    }

    pub fn cold_starts(&self) -> u64 {
        self.cells.cold_starts.load(Ordering::Relaxed)
    }

    /// The last cold starts, newest first.
    pub fn recent_cold_starts(&self) -> Vec<ColdStart> {
        self.cells.recent.cold_starts.newest_first()
    }

    /// The last error answers, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.cells.recent.errors.newest_first()
    }
}

/// A duration in whole nanoseconds (saturating: no invocation lasts 584 years).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// The bucket of a sample: the first bound it does not exceed, else the overflow cell.
/// Most invocations are fast, so a scan from the smallest bound ends early.
fn bucket(nanos: u64) -> usize {
    BOUNDS_NANOS
        .iter()
        .position(|&bound| nanos <= bound)
        .unwrap_or(BOUNDS_NANOS.len())
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The gateway's metrics registry and its text rendering. Each gateway has its own
/// (not a process-global one), so several gateways can live in one test process.
#[derive(Clone, Default)]
pub struct Registry {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Requests that matched no function (`function="-"`).
    unmatched: AtomicU64,
    unmatched_errors: Ring<RecentError>,
    /// Client connections accepted per worker thread, by worker index.
    workers: Mutex<Vec<Arc<AtomicU64>>>,
    /// Touched only to register (at start-up) and to render (on scrape).
    functions: Mutex<Functions>,
    /// Asynchronous invocations: written per attempt and by the store's periodic
    /// count, never on the synchronous path.
    asynchronous: Mutex<AsyncSeries>,
}

/// The asynchronous series, by `function` label (summed over namespaces, like the
/// other series labelled by `function` alone).
#[derive(Default)]
struct AsyncSeries {
    /// Set once the gateway has a store: the families are rendered from then on.
    active: bool,
    /// Events by status, as the store last counted them.
    events: std::collections::BTreeMap<String, [u64; 5]>,
    /// Seconds the oldest queued event has waited, as last counted.
    oldest: std::collections::BTreeMap<String, f64>,
    /// Attempts by result: `[succeeded, failed]`.
    attempts: std::collections::BTreeMap<String, [u64; 2]>,
}

/// The registered functions, grouped by name: the series labelled only by `function`
/// are one per name, summed over the namespaces that use it.
#[derive(Default)]
struct Functions {
    names: Vec<Named>,
    index: HashMap<String, usize>,
}

struct Named {
    /// The `function` label value, escaped.
    label: String,
    /// Per namespace: the `namespace` label value (escaped) and the cells.
    members: Vec<(String, Arc<FunctionCells>)>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Counts a request that matched no function, answered with `error`.
    pub fn unmatched(&self, error: RecentError) {
        self.shared.unmatched.fetch_add(1, Ordering::Relaxed);
        self.shared.unmatched_errors.push(error);
    }

    /// Requests that matched no function, and the last of their errors (newest first).
    pub fn unmatched_errors(&self) -> (u64, Vec<RecentError>) {
        let count = self.shared.unmatched.load(Ordering::Relaxed);
        (count, self.shared.unmatched_errors.newest_first())
    }

    /// The metrics of one function, allocated on first use; asking again for the same
    /// function and namespace returns the same cells.
    pub fn function(&self, function: &str, namespace: &str) -> FunctionMetrics {
        let mut functions = self.shared.functions.lock();
        let Functions { names, index } = &mut *functions;
        let at = *index.entry(function.to_owned()).or_insert_with(|| {
            names.push(Named {
                label: escape(function),
                members: Vec::new(),
            });
            names.len() - 1
        });
        let named = &mut names[at];
        let namespace = escape(namespace);
        if let Some((_, cells)) = named.members.iter().find(|(ns, _)| *ns == namespace) {
            return FunctionMetrics {
                cells: cells.clone(),
            };
        }
        let cells = Arc::new(FunctionCells::default());
        named.members.push((namespace, cells.clone()));
        FunctionMetrics { cells }
    }

    /// The store's latest count of asynchronous events, by function and status
    /// (indexed like `Status::ALL`), with the age of each function's oldest queued one.
    pub fn set_async_events(&self, counts: Vec<(String, [u64; 5], Option<Duration>)>) {
        let mut series = self.shared.asynchronous.lock();
        series.active = true;
        series.events.clear();
        series.oldest.clear();
        for (function, by_status, oldest) in counts {
            let label = escape(&function);
            let cells = series.events.entry(label.clone()).or_default();
            for (cell, n) in cells.iter_mut().zip(by_status) {
                *cell += n;
            }
            let age = oldest.map_or(0.0, |d| d.as_secs_f64());
            let kept = series.oldest.entry(label).or_default();
            *kept = kept.max(age);
        }
    }

    /// Counts an attempt of an asynchronous event of `function`.
    pub fn async_attempt(&self, function: &str, succeeded: bool) {
        let mut series = self.shared.asynchronous.lock();
        series.active = true;
        let cells = series.attempts.entry(escape(function)).or_default();
        cells[usize::from(!succeeded)] += 1;
    }

    /// Prometheus text exposition (format 0.0.4) of every series.
    pub fn render(&self) -> String {
        let functions = self.shared.functions.lock();
        let names = &functions.names;
        let members: usize = names.iter().map(|n| n.members.len()).sum();
        // Roughly 40 lines of about 100 bytes per function.
        let mut out = String::with_capacity(4_096 + 4_096 * members.max(names.len()));

        family(&mut out, INVOCATIONS, "counter");
        for named in names {
            for (namespace, cells) in &named.members {
                for outcome in Outcome::ALL {
                    let value = cells.invocations(outcome).load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{INVOCATIONS}{{function=\"{}\",namespace=\"{namespace}\",outcome=\"{}\"}} {value}",
                        named.label,
                        outcome.as_str()
                    );
                }
            }
        }
        let unmatched = self.shared.unmatched.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{INVOCATIONS}{{function=\"-\",namespace=\"-\",outcome=\"{}\"}} {unmatched}\n",
            Outcome::NotFound.as_str()
        );

        histogram_family(&mut out, DURATION, names, |c| {
            (&c.duration_buckets, &c.duration_sum_micros)
        });

        gauge_family(&mut out, INFLIGHT, names, |c| &c.inflight);
        gauge_family(&mut out, QUEUE_DEPTH, names, |c| &c.queue_depth);

        labelled_family(&mut out, INSTANCES, "gauge", "state", names, |named| {
            [
                ("starting", sum_gauge(named, |c| &c.instances_starting)),
                ("ready", sum_gauge(named, |c| &c.instances_ready)),
                ("down", sum_gauge(named, |c| &c.instances_down)),
            ]
        });

        family(&mut out, COLD_STARTS, "counter");
        for named in names {
            let value = sum_counter(named, |c| &c.cold_starts);
            let _ = writeln!(out, "{COLD_STARTS}{{function=\"{}\"}} {value}", named.label);
        }
        out.push('\n');

        histogram_family(&mut out, COLD_START_SECONDS, names, |c| {
            (&c.cold_start_buckets, &c.cold_start_sum_micros)
        });

        labelled_family(
            &mut out,
            UPSTREAM_CONNECTIONS,
            "counter",
            "reused",
            names,
            |named| {
                [
                    ("false", sum_counter(named, |c| &c.new_connections)),
                    ("true", sum_counter(named, |c| &c.reused_connections)),
                ]
            },
        );

        family(&mut out, BILLED, "counter");
        for named in names {
            let micro = sum_counter(named, |c| &c.billed_micro);
            let _ = writeln!(
                out,
                "{BILLED}{{function=\"{}\"}} {}.{:06}",
                named.label,
                micro / 1_000_000,
                micro % 1_000_000
            );
        }

        render_async(&mut out, &self.shared.asynchronous.lock());

        let workers = self.shared.workers.lock();
        if !workers.is_empty() {
            out.push('\n');
            family(&mut out, WORKER_CONNECTIONS, "counter");
            for (worker, cell) in workers.iter().enumerate() {
                let value = cell.load(Ordering::Relaxed);
                let _ = writeln!(out, "{WORKER_CONNECTIONS}{{worker=\"{worker}\"}} {value}");
            }
        }
        out
    }

    /// Client connections accepted by one worker thread (`worker="0"`, ...): how the
    /// shared listening socket spreads connections over the workers.
    pub fn worker_connections(&self, worker: usize) -> Counter {
        let mut workers = self.shared.workers.lock();
        if workers.len() <= worker {
            workers.resize_with(worker + 1, Arc::default);
        }
        Counter(Some(workers[worker].clone()))
    }
}

/// A counter outside the per-function cells: one atomic, shared with the registry.
#[derive(Clone, Default)]
pub struct Counter(Option<Arc<AtomicU64>>);

impl Counter {
    /// A counter that counts nothing, for servers whose figures are not reported.
    pub fn noop() -> Counter {
        Counter(None)
    }

    pub fn increment(&self, n: u64) {
        if let Some(cell) = &self.0 {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// `scf_gateway_async_events{function,status}`,
/// `scf_gateway_async_attempts_total{function,result}` and
/// `scf_gateway_async_oldest_queued_seconds{function}`, once the gateway has a store.
fn render_async(out: &mut String, series: &AsyncSeries) {
    if !series.active {
        return;
    }
    const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "aborted"];
    out.push('\n');
    family(out, ASYNC_EVENTS, "gauge");
    for (label, counts) in &series.events {
        for (status, n) in STATUSES.iter().zip(counts) {
            let _ = writeln!(
                out,
                "{ASYNC_EVENTS}{{function=\"{label}\",status=\"{status}\"}} {n}"
            );
        }
    }
    out.push('\n');
    family(out, ASYNC_ATTEMPTS, "counter");
    for (label, [succeeded, failed]) in &series.attempts {
        let _ = writeln!(
            out,
            "{ASYNC_ATTEMPTS}{{function=\"{label}\",result=\"succeeded\"}} {succeeded}"
        );
        let _ = writeln!(
            out,
            "{ASYNC_ATTEMPTS}{{function=\"{label}\",result=\"failed\"}} {failed}"
        );
    }
    out.push('\n');
    family(out, ASYNC_OLDEST, "gauge");
    for (label, age) in &series.oldest {
        let _ = writeln!(out, "{ASYNC_OLDEST}{{function=\"{label}\"}} {age:.3}");
    }
}

fn family(out: &mut String, name: &str, kind: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A histogram family, one histogram per function, summed over its members' cells.
fn histogram_family(
    out: &mut String,
    name: &str,
    names: &[Named],
    cells_of: impl Fn(&FunctionCells) -> (&[AtomicU64; BUCKETS], &AtomicU64),
) {
    family(out, name, "histogram");
    for named in names {
        let mut buckets = [0u64; BUCKETS];
        let mut sum_micros = 0u64;
        for (_, cells) in &named.members {
            let (cells_buckets, sum) = cells_of(cells);
            for (total, cell) in buckets.iter_mut().zip(cells_buckets) {
                *total = total.wrapping_add(cell.load(Ordering::Relaxed));
            }
            sum_micros = sum_micros.wrapping_add(sum.load(Ordering::Relaxed));
        }
        histogram(out, name, &named.label, &buckets, sum_micros);
    }
    out.push('\n');
}

/// One function's histogram: cumulative buckets, `+Inf` (every sample), sum and count.
fn histogram(
    out: &mut String,
    name: &str,
    function: &str,
    buckets: &[u64; BUCKETS],
    sum_micros: u64,
) {
    let mut cumulative = 0u64;
    for (le, count) in BOUNDS_TEXT.iter().zip(buckets) {
        cumulative = cumulative.wrapping_add(*count);
        let _ = writeln!(
            out,
            "{name}_bucket{{function=\"{function}\",le=\"{le}\"}} {cumulative}"
        );
    }
    // `_count` is the same total as `+Inf`, read from the same cells, so a scrape never
    // shows a bucket above the count even while invocations are being recorded.
    let count = cumulative.wrapping_add(buckets[BOUNDS_NANOS.len()]);
    let _ = writeln!(
        out,
        "{name}_bucket{{function=\"{function}\",le=\"+Inf\"}} {count}"
    );
    out.push_str(name);
    let _ = write!(out, "_sum{{function=\"{function}\"}} ");
    seconds(out, sum_micros);
    let _ = writeln!(out, "\n{name}_count{{function=\"{function}\"}} {count}");
}

/// Microseconds as decimal seconds, without trailing zeros (`100.503`, `2`, `0.000001`).
fn seconds(out: &mut String, micros: u64) {
    let whole = micros / 1_000_000;
    let mut fraction = micros % 1_000_000;
    let _ = write!(out, "{whole}");
    if fraction == 0 {
        return;
    }
    let mut digits = 6;
    while fraction % 10 == 0 {
        fraction /= 10;
        digits -= 1;
    }
    let _ = write!(out, ".{fraction:0digits$}");
}

fn gauge_family(
    out: &mut String,
    name: &str,
    names: &[Named],
    cell: impl Fn(&FunctionCells) -> &AtomicI64,
) {
    family(out, name, "gauge");
    for named in names {
        let value = sum_gauge(named, &cell);
        let _ = writeln!(out, "{name}{{function=\"{}\"}} {value}", named.label);
    }
    out.push('\n');
}

/// A family labelled by `function` and one more label over fixed values (`state`,
/// `reused`), one line per function and value.
fn labelled_family<V: std::fmt::Display, const N: usize>(
    out: &mut String,
    name: &str,
    kind: &str,
    label: &str,
    names: &[Named],
    values: impl Fn(&Named) -> [(&'static str, V); N],
) {
    family(out, name, kind);
    for named in names {
        for (value_label, value) in values(named) {
            let _ = writeln!(
                out,
                "{name}{{function=\"{}\",{label}=\"{value_label}\"}} {value}",
                named.label
            );
        }
    }
    out.push('\n');
}

fn sum_gauge(named: &Named, cell: impl Fn(&FunctionCells) -> &AtomicI64) -> i64 {
    named.members.iter().fold(0i64, |sum, (_, c)| {
        sum.wrapping_add(cell(c).load(Ordering::Relaxed))
    })
}

fn sum_counter(named: &Named, cell: impl Fn(&FunctionCells) -> &AtomicU64) -> u64 {
    named.members.iter().fold(0u64, |sum, (_, c)| {
        sum.wrapping_add(cell(c).load(Ordering::Relaxed))
    })
}

/// A label value as the text format wants it: backslash, double quote and line feed
/// escaped. (Config validation keeps names plain; this keeps the output valid anyway.)
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one line that starts with `series ` (panics if not exactly one).
    fn value<'a>(text: &'a str, series: &str) -> &'a str {
        let prefix = format!("{series} ");
        let found: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{series} in:\n{text}");
        found[0]
    }

    fn bucket_series(function: &str, le: &str) -> String {
        format!("{DURATION}_bucket{{function=\"{function}\",le=\"{le}\"}}")
    }

    #[test]
    fn renders_the_contract_series() {
        let registry = Registry::new();
        let m = registry.function("hello", "default");
        m.begin();
        m.end(Outcome::Success, Duration::from_millis(3));
        m.begin();
        m.end(Outcome::Timeout, Duration::from_millis(500));
        m.connection(true);
        m.begin();
        m.set_queue_depth(0);
        registry.unmatched(RecentError {
            at: std::time::SystemTime::now(),
            status: 404,
            code: 435,
            message: "no route".into(),
            request_id: "r".into(),
        });
        let text = registry.render();
        let inv = |o: &str| {
            format!("{INVOCATIONS}{{function=\"hello\",namespace=\"default\",outcome=\"{o}\"}}")
        };
        assert_eq!(value(&text, &inv("success")), "1");
        assert_eq!(value(&text, &inv("timeout")), "1");
        assert_eq!(value(&text, &inv("not_found")), "0");
        assert_eq!(value(&text, &inv("client_closed")), "0");
        assert_eq!(
            value(
                &text,
                "scf_gateway_invocations_total{function=\"-\",namespace=\"-\",outcome=\"not_found\"}"
            ),
            "1"
        );
        assert_eq!(value(&text, &bucket_series("hello", "0.005")), "1");
        assert_eq!(
            value(
                &text,
                "scf_gateway_upstream_connections_total{function=\"hello\",reused=\"true\"}"
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "scf_gateway_upstream_connections_total{function=\"hello\",reused=\"false\"}"
            ),
            "0"
        );
        assert_eq!(
            value(&text, "scf_gateway_inflight{function=\"hello\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "scf_gateway_queue_depth{function=\"hello\"}"),
            "0"
        );
        assert_eq!(
            value(
                &text,
                "scf_gateway_instances{function=\"hello\",state=\"ready\"}"
            ),
            "0"
        );
        assert_eq!(
            value(&text, "scf_gateway_cold_starts_total{function=\"hello\"}"),
            "0"
        );
        assert_eq!(
            value(
                &text,
                "scf_gateway_billed_gb_seconds_total{function=\"hello\"}"
            ),
            "0.000000"
        );
        for kind in [
            "# TYPE scf_gateway_invocations_total counter",
            "# TYPE scf_gateway_invocation_duration_seconds histogram",
            "# TYPE scf_gateway_inflight gauge",
            "# TYPE scf_gateway_queue_depth gauge",
            "# TYPE scf_gateway_instances gauge",
            "# TYPE scf_gateway_cold_starts_total counter",
            "# TYPE scf_gateway_upstream_connections_total counter",
            "# TYPE scf_gateway_billed_gb_seconds_total counter",
        ] {
            assert_eq!(text.lines().filter(|l| *l == kind).count(), 1, "{kind}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf() {
        let registry = Registry::new();
        let m = registry.function("f", "default");
        // On a bound counts in that bucket (`le` is inclusive); just above it, the next.
        m.end(Outcome::Success, Duration::from_micros(500));
        m.end(Outcome::Success, Duration::from_nanos(500_001));
        m.end(Outcome::Success, Duration::from_millis(7));
        m.end(Outcome::Success, Duration::from_secs(60));
        m.end(Outcome::Success, Duration::from_secs(61));
        m.end(Outcome::Success, Duration::MAX);
        let text = registry.render();
        let expected = [
            ("0.0005", 1),
            ("0.001", 2),
            ("0.0025", 2),
            ("0.005", 2),
            ("0.01", 3),
            ("0.025", 3),
            ("1", 3),
            ("30", 3),
            ("60", 4),
            ("+Inf", 6),
        ];
        for (le, count) in expected {
            assert_eq!(
                value(&text, &bucket_series("f", le)),
                count.to_string(),
                "le={le}"
            );
        }
        assert_eq!(
            value(&text, &format!("{DURATION}_count{{function=\"f\"}}")),
            "6"
        );
        // Buckets in increasing order, `+Inf` last, then sum and count.
        let order: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(DURATION) && l.contains("function=\"f\""))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(order.len(), 19);
        assert_eq!(order[0], bucket_series("f", "0.0005"));
        assert_eq!(order[15], bucket_series("f", "60"));
        assert_eq!(order[16], bucket_series("f", "+Inf"));
        assert!(order[17].ends_with("_sum{function=\"f\"}"));
        assert!(order[18].ends_with("_count{function=\"f\"}"));
    }

    #[test]
    fn sum_is_rendered_in_seconds_without_float_noise() {
        let registry = Registry::new();
        let m = registry.function("f", "default");
        let sum = format!("{DURATION}_sum{{function=\"f\"}}");
        assert_eq!(value(&registry.render(), &sum), "0");
        m.end(Outcome::Success, Duration::from_millis(3));
        m.end(Outcome::Timeout, Duration::from_millis(500));
        m.end(Outcome::Timeout, Duration::from_secs(100));
        assert_eq!(value(&registry.render(), &sum), "100.503");
        m.end(Outcome::Success, Duration::from_micros(497));
        assert_eq!(value(&registry.render(), &sum), "100.503497");
        // Rounded to the nearest microsecond.
        m.end(Outcome::Success, Duration::from_nanos(2_499));
        m.end(Outcome::Success, Duration::from_nanos(1_500));
        assert_eq!(value(&registry.render(), &sum), "100.503501");
        m.end(Outcome::Success, Duration::from_nanos(496_499_000));
        assert_eq!(value(&registry.render(), &sum), "101");

        let mut out = String::new();
        seconds(&mut out, 1);
        assert_eq!(out, "0.000001");
        out.clear();
        seconds(&mut out, 2_050_000);
        assert_eq!(out, "2.05");
    }

    #[test]
    fn gauges_go_down_and_below_zero_shows_as_negative() {
        let registry = Registry::new();
        let m = registry.function("f", "default");
        let inflight = "scf_gateway_inflight{function=\"f\"}";
        m.begin();
        m.begin();
        m.begin();
        assert_eq!(value(&registry.render(), inflight), "3");
        m.end(Outcome::Success, Duration::ZERO);
        assert_eq!(value(&registry.render(), inflight), "2");
        m.end(Outcome::ClientClosed, Duration::ZERO);
        m.end(Outcome::ClientClosed, Duration::ZERO);
        assert_eq!(value(&registry.render(), inflight), "0");
        // An unbalanced end is visible, not wrapped around to 2^64 - 1.
        m.end(Outcome::ClientClosed, Duration::ZERO);
        assert_eq!(value(&registry.render(), inflight), "-1");

        m.set_queue_depth(7);
        m.set_queue_depth(2);
        assert_eq!(
            value(
                &registry.render(),
                "scf_gateway_queue_depth{function=\"f\"}"
            ),
            "2"
        );
        m.set_instances(1, 3, 0);
        m.set_instances(0, 2, 1);
        let text = registry.render();
        let state = |s: &str| format!("scf_gateway_instances{{function=\"f\",state=\"{s}\"}}");
        assert_eq!(value(&text, &state("starting")), "0");
        assert_eq!(value(&text, &state("ready")), "2");
        assert_eq!(value(&text, &state("down")), "1");
    }

    #[test]
    fn counters_billing_and_cold_starts() {
        let registry = Registry::new();
        let m = registry.function("f", "default");
        m.connection(false);
        m.connection(true);
        m.connection(true);
        m.cold_start(Duration::from_millis(180));
        m.cold_start(Duration::from_millis(40));
        // 128 MB for 5 ms = 0.000625 GB-s; 1024 MB for 1,500 ms = 1.5 GB-s.
        m.bill(128, 5);
        m.bill(1_024, 1_500);
        let text = registry.render();
        let conn = |r: &str| format!("{UPSTREAM_CONNECTIONS}{{function=\"f\",reused=\"{r}\"}}");
        assert_eq!(value(&text, &conn("false")), "1");
        assert_eq!(value(&text, &conn("true")), "2");
        assert_eq!(
            value(&text, "scf_gateway_cold_starts_total{function=\"f\"}"),
            "2"
        );
        let cold = |le: &str| format!("{COLD_START_SECONDS}_bucket{{function=\"f\",le=\"{le}\"}}");
        assert_eq!(value(&text, &cold("0.025")), "0");
        assert_eq!(value(&text, &cold("0.05")), "1");
        assert_eq!(value(&text, &cold("0.25")), "2");
        assert_eq!(value(&text, &cold("+Inf")), "2");
        assert_eq!(
            value(
                &text,
                "scf_gateway_cold_start_seconds_count{function=\"f\"}"
            ),
            "2"
        );
        assert_eq!(
            value(&text, "scf_gateway_cold_start_seconds_sum{function=\"f\"}"),
            "0.22"
        );
        assert_eq!(
            value(&text, "scf_gateway_billed_gb_seconds_total{function=\"f\"}"),
            "1.500625"
        );
        // The status page's ring: newest first.
        let recent: Vec<Duration> = m.recent_cold_starts().iter().map(|c| c.took).collect();
        assert_eq!(
            recent,
            [Duration::from_millis(40), Duration::from_millis(180)]
        );
    }

    #[test]
    fn one_series_per_name_and_stable_order() {
        let registry = Registry::new();
        let a = registry.function("b-first", "default");
        let b = registry.function("a-second", "default");
        // The same name in another namespace: its own invocations, shared per-function
        // series (they carry no namespace label), summed.
        let c = registry.function("b-first", "other");
        // Asking again gives the same cells, not a duplicate series.
        let a2 = registry.function("b-first", "default");
        a.begin();
        c.begin();
        a2.end(Outcome::Success, Duration::from_millis(1));
        c.end(Outcome::Success, Duration::from_millis(1));
        b.end(Outcome::Throttled, Duration::from_millis(1));
        let text = registry.render();
        assert_eq!(text, registry.render(), "rendering is deterministic");
        assert_eq!(
            value(&text, "scf_gateway_inflight{function=\"b-first\"}"),
            "0"
        );
        let inv = |f: &str, ns: &str| {
            format!("{INVOCATIONS}{{function=\"{f}\",namespace=\"{ns}\",outcome=\"success\"}}")
        };
        assert_eq!(value(&text, &inv("b-first", "default")), "1");
        assert_eq!(value(&text, &inv("b-first", "other")), "1");
        assert_eq!(value(&text, &bucket_series("b-first", "+Inf")), "2");
        assert_eq!(value(&text, &bucket_series("a-second", "+Inf")), "1");
        // Registration order, not alphabetical or hashed.
        let first = |needle: &str| text.find(needle).unwrap_or(usize::MAX);
        assert!(
            first("scf_gateway_inflight{function=\"b-first\"}")
                < first("scf_gateway_inflight{function=\"a-second\"}")
        );
        assert!(first(&inv("b-first", "other")) < first(&inv("a-second", "default")));
        // Families in the contract's order, each introduced once.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(types.len(), 9);
        assert!(types[0].contains(INVOCATIONS) && types[1].contains(DURATION));
    }

    #[test]
    fn label_values_are_escaped() {
        let registry = Registry::new();
        registry.function("a\"b\\c\nd", "default");
        let text = registry.render();
        assert!(
            text.contains("scf_gateway_inflight{function=\"a\\\"b\\\\c\\nd\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn the_hot_cells_share_the_first_cache_line() {
        assert_eq!(std::mem::align_of::<FunctionCells>(), 64);
        let cells = FunctionCells::default();
        let base = &cells as *const FunctionCells as usize;
        let line = |p: *const u8| (p as usize - base) / 64;
        assert_eq!(line(&cells.inflight as *const _ as *const u8), 0);
        assert_eq!(line(&cells.success as *const _ as *const u8), 0);
        assert_eq!(line(&cells.reused_connections as *const _ as *const u8), 0);
        assert_eq!(line(&cells.duration_sum_micros as *const _ as *const u8), 0);
        assert_eq!(line(&cells.billed_micro as *const _ as *const u8), 0);
        // Up to 2.5 ms on the first line, up to 1 s on the second.
        assert_eq!(line(&cells.duration_buckets[2] as *const _ as *const u8), 0);
        assert_eq!(
            line(&cells.duration_buckets[10] as *const _ as *const u8),
            1
        );
    }

    #[test]
    fn worker_connections_render_per_worker_and_only_once_registered() {
        let registry = Registry::new();
        assert!(!registry.render().contains(WORKER_CONNECTIONS));
        registry.worker_connections(1).increment(3);
        registry.worker_connections(0).increment(1);
        registry.worker_connections(1).increment(2);
        Counter::noop().increment(7);
        let text = registry.render();
        assert!(text.contains("# TYPE scf_gateway_worker_connections_total counter\n"));
        assert!(text.contains("scf_gateway_worker_connections_total{worker=\"0\"} 1\n"));
        assert!(text.contains("scf_gateway_worker_connections_total{worker=\"1\"} 5\n"));
    }
}
