//! Graceful shutdown of a worker's client connections: tell each one to finish what is
//! in flight and close, and know when the last has. Its own type rather than
//! hyper-util's watcher, which re-registers on a watch channel at every poll of every
//! connection; here a connection pays one flag check per poll. Every open connection is
//! counted here, so this is also where the worker's share in [`Balance`], the count of
//! released connections and the connection's permit under `server.max_connections` are
//! kept.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Poll, Waker};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::balance::Balance;
use super::memory::RELEASED;

/// Tells every open connection to finish what is in flight and close: a connection
/// registers its task's waker once, then checks one flag when polled.
#[derive(Default)]
pub(super) struct Drain {
    closing: AtomicBool,
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    all_closed: Notify,
    /// HTTP/1 connections parked so far (a figure for tests).
    pub(super) parked: AtomicUsize,
    /// The worker's place among those sharing its listening socket, if any.
    pub(super) share: Option<(Arc<Balance>, usize)>,
    /// Permits for open connections, shared by every worker of a listener
    /// (`server.max_connections`); `None`: unbounded.
    pub(super) limit: Option<Arc<Semaphore>>,
}

impl Drain {
    /// The drain of worker `index`, counting its connections in `balance` too, taking
    /// a permit of `limit` for each.
    pub(super) fn sharing(
        balance: Option<Arc<Balance>>,
        index: usize,
        limit: Arc<Semaphore>,
    ) -> Drain {
        Drain {
            share: balance.map(|b| (b, index)),
            limit: Some(limit),
            ..Drain::default()
        }
    }

    /// The drain of a listener served by one worker, with its own `max` connections.
    pub(super) fn limited(max: usize) -> Drain {
        Drain {
            limit: Some(Arc::new(Semaphore::new(max))),
            ..Drain::default()
        }
    }

    /// Counts a connection as open until the guard drops, holding its `permit` so long.
    pub(super) fn enter(self: &Arc<Self>, permit: Option<OwnedSemaphorePermit>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Some((balance, index)) = &self.share {
            balance.add(*index, true);
        }
        Open {
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            _permit: permit,
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(super) fn start(&self) {
        self.closing.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.wakers.lock().drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    pub(super) async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection counted by a [`Drain`].
pub(super) struct Open {
    pub(super) drain: Arc<Drain>,
    id: u64,
    /// The connection's place under `server.max_connections`, given back on close.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Open {
    /// Registers the calling task to be woken when draining starts (a task's waker
    /// stays valid for the task's life, so once is enough).
    pub(super) async fn register(&self) {
        poll_fn(|cx| {
            self.drain.wakers.lock().insert(self.id, cx.waker().clone());
            Poll::Ready(())
        })
        .await
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.drain.wakers.lock().remove(&self.id);
        if let Some((balance, index)) = &self.drain.share {
            balance.add(*index, false);
        }
        RELEASED.fetch_add(1, Ordering::Relaxed);
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::server::testing::*;

    #[tokio::test]
    async fn draining_closes_parked_connections_at_once_and_lets_busy_ones_finish() {
        let server = start(TIMERS).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut idle, "/").await;
        wait_parked(&server, 1).await;
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(b"GET /?sleep=300 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(TIMERS.tick).await;
        let start = Instant::now();
        server.stop.send(true).unwrap();
        // At once: not after the idle timeout or the grace.
        assert!(closed_after(&mut idle).await < TIMERS.idle / 2);
        let head = read_response(&mut busy).await;
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        closed_after(&mut busy).await;
        tokio::time::timeout(SOON, server.task)
            .await
            .unwrap()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
