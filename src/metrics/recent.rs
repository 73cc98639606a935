//! The last few cold starts and errors of each function, and of requests that matched no
//! function, for the status page: what happened lately, with times, where the counters
//! only say how often.
//!
//! Small bounded rings behind a lock of their own, written only off the success path (a
//! cold start, an error answer) and read on a page view: an invocation that succeeds on
//! a warm instance never touches them.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// Entries kept per ring: enough to see a pattern, small enough to render at a glance.
pub const KEPT: usize = 20;

/// An error the gateway answered with.
#[derive(Clone, Debug)]
pub struct RecentError {
    pub at: SystemTime,
    /// HTTP status of the answer.
    pub status: u16,
    /// The SCF error code (`errorCode`).
    pub code: u16,
    /// `errorMessage`: may hold what the client sent (a host, a path), so escape it
    /// wherever it is shown.
    pub message: String,
    pub request_id: String,
}

/// A cold start: when it was ready and how long it took from the decision to start.
#[derive(Clone, Copy, Debug)]
pub struct ColdStart {
    pub at: SystemTime,
    pub took: Duration,
}

/// The last [`KEPT`] entries, oldest first.
pub(super) struct Ring<T>(Mutex<VecDeque<T>>);

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring(Mutex::new(VecDeque::new()))
    }
}

impl<T: Clone> Ring<T> {
    pub(super) fn push(&self, entry: T) {
        let evicted = {
            let mut ring = self.0.lock();
            let evicted = if ring.len() == KEPT {
                ring.pop_front()
            } else {
                None
            };
            ring.push_back(entry);
            evicted
        };
        // Freed after the lock is released: the lock is held for the moves only.
        drop(evicted);
    }

    /// A copy of the entries, newest first.
    pub(super) fn newest_first(&self) -> Vec<T> {
        self.0.lock().iter().rev().cloned().collect()
    }
}

/// One function's rings.
#[derive(Default)]
pub(super) struct Recent {
    pub(super) errors: Ring<RecentError>,
    pub(super) cold_starts: Ring<ColdStart>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest_entries() {
        let ring = Ring::default();
        assert!(ring.newest_first().is_empty());
        for i in 0..KEPT + 5 {
            ring.push(i);
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0], KEPT + 4);
        assert_eq!(kept[KEPT - 1], 5);
    }
}
