//! Spreading new connections over the workers that share one listening socket. Every
//! worker is woken by a new connection and the first to run wins the accept, so without
//! a count of who holds what, one worker would take a whole burst (measured: 56 of 64
//! wrk connections on one of two workers).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The open client connections of each worker sharing a listening socket.
pub(super) struct Balance {
    open: Box<[AtomicUsize]>,
    /// Notified whenever a worker opens or closes a connection.
    pub(super) changed: Notify,
}

/// Connections a worker may have above the least-loaded one and still accept.
const ACCEPT_SLACK: usize = 1;

impl Balance {
    pub(super) fn new(workers: usize) -> Balance {
        Balance {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        }
    }

    pub(super) fn over_share(&self, index: usize) -> bool {
        let mine = self.open[index].load(Ordering::Relaxed);
        self.open
            .iter()
            .any(|o| mine > o.load(Ordering::Relaxed) + ACCEPT_SLACK)
    }

    pub(super) fn add(&self, index: usize, opened: bool) {
        if opened {
            self.open[index].fetch_add(1, Ordering::Relaxed);
        } else {
            self.open[index].fetch_sub(1, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_more_than_the_slack_above_the_least_loaded_is_over_its_share() {
        let balance = Balance::new(3);
        assert!(!balance.over_share(0));
        balance.add(0, true);
        assert!(!balance.over_share(0), "within the slack");
        balance.add(0, true);
        assert!(balance.over_share(0));
        assert!(!balance.over_share(1) && !balance.over_share(2));
        // Any worker below counts: one of the other two catching up is not enough.
        balance.add(1, true);
        assert!(balance.over_share(0));
        balance.add(2, true);
        assert!(!balance.over_share(0));
        balance.add(1, false);
        assert!(balance.over_share(0));
    }
}
