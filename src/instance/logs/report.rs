//! The Report line that closes an invocation's log ([`report_line`]), the billing rule
//! ([`billed_millis`]) and durations as log fields ([`duration_ms`]).

use std::time::Duration;

/// What the Report line of an invocation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// From handing the invocation to the instance to the end of its response.
    pub duration: Duration,
    /// The function's configured memory.
    pub memory_mb: u32,
    /// Peak memory of the invocation, when measured.
    pub mem_usage_bytes: Option<u64>,
    /// How long the instance took to start, when the invocation waited for that.
    pub init_duration: Option<Duration>,
}

/// `Report RequestId: <id> Duration:<ms>ms BilledDuration:<ms>ms Memory:<MB>MB MemUsage:<MB>MB`:
/// - `Duration` in milliseconds with exactly 2 decimals, rounded half up (`Duration:12.35ms`);
/// - `BilledDuration` is the duration rounded **up** to the next whole millisecond
///   (12.01 ms -> 13, exactly 12 ms -> 12, 0 -> 0), see [`billed_millis`];
/// - `Memory` is the configured `memory_mb`, an integer;
/// - `MemUsage` is the invocation's peak memory in MiB (1 MB = 1,048,576 bytes, as
///   `memory_mb`) with exactly 2 decimals, rounded half up; `MemUsage:0.00MB` when unknown;
/// - ` InitDuration:<ms>ms` follows, in the format of `Duration`, when the invocation
///   waited for its instance's cold start.
pub fn report_line(request_id: &str, report: &Report) -> String {
    let duration = millis_text(report.duration);
    let usage = report.mem_usage_bytes.unwrap_or(0) as u128;
    let usage = hundredths((usage * 100 + (1 << 19)) >> 20);
    let mut line = format!(
        "Report RequestId: {request_id} Duration:{duration}ms BilledDuration:{}ms Memory:{}MB MemUsage:{usage}MB",
        billed_millis(report.duration),
        report.memory_mb
    );
    if let Some(init) = report.init_duration {
        line.push_str(" InitDuration:");
        line.push_str(&millis_text(init));
        line.push_str("ms");
    }
    line
}

/// Milliseconds with exactly 2 decimals, rounded half up: `12.35`.
fn millis_text(d: Duration) -> String {
    hundredths((d.as_nanos() + 5_000) / 10_000)
}

/// The billed duration: the duration rounded up to the next whole millisecond.
pub fn billed_millis(duration: Duration) -> u64 {
    duration.as_nanos().div_ceil(1_000_000) as u64
}

/// `1234` -> `"12.34"`.
fn hundredths(v: u128) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

/// A duration as a log field, in milliseconds with at most 3 decimals (whole
/// microseconds, rounded half up): `172.979`, never `172.97886300000002`.
///
/// The microseconds are exact in an `f64` and one division by 1000 is correctly rounded,
/// so the shortest representation that JSON and `Display` print has at most 3 decimals.
pub fn duration_ms(duration: Duration) -> f64 {
    let micros = (duration.as_nanos() + 500) / 1000;
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests;
