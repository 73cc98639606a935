//! Giving the memory of released client connections back to the system. Idle and closed
//! connections free their buffers in the middle of the heap, where glibc's `free` cannot
//! return them; without this, the RSS after a burst of connections would stay at its
//! peak. The connection code only counts what it releases; one task does the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often released connection memory may be given back to the system, and after how
/// many released connections (see `memory_upkeep`).
pub(super) const TRIM_PERIOD: Duration = Duration::from_secs(1);
pub(super) const TRIM_AFTER_RELEASED: usize = 256;

/// Connections parked or closed since the last `malloc_trim` (see `memory_upkeep`).
pub(super) static RELEASED: AtomicUsize = AtomicUsize::new(0);

/// Gives the heap pages of released connections back to the system.
///
/// glibc's `free` returns memory only from the top of the heap; the 8 KB buffers of
/// thousands of parked or closed connections sit between live allocations, so without a
/// trim the RSS of a burst of connections stays at its peak forever. `malloc_trim(0)`
/// releases every free page but the first of each free chunk; it is run at most once per
/// `period`, and only after at least `min_released` connections were parked or closed
/// since the last one. The daemon is normally linked with jemalloc (src/main.rs), which
/// returns pages by itself; this is for builds and embedders on glibc's malloc, and
/// costs next to nothing when glibc's heap is all but empty.
pub(super) async fn memory_upkeep(period: Duration, min_released: usize) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let released = RELEASED.load(Ordering::Relaxed);
        if released >= min_released {
            RELEASED.store(0, Ordering::Relaxed);
            let start = Instant::now();
            trim_heap();
            tracing::debug!(released, took = ?start.elapsed(), "heap trimmed");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    crate::sys::malloc_trim();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
