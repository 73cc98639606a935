//! A worker's accept loop: where client connections enter, where a worker holding more
//! than its share stops taking them, and where, at shutdown, accepting ends and draining
//! begins. The same loop serves the invocation listener on every worker and the admin
//! listener, with a different handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::Activity;
use super::connection::{client_connection, ClientTimers};
use super::drain::Drain;
use super::tls::{self, TlsHandle};
use crate::body::GatewayBody;

/// Concurrent streams one HTTP/2 client connection may open (the contract's limit;
/// hyper's own default is 200).
pub(crate) const MAX_H2_STREAMS: u32 = 100;

/// The largest request head taken (request line and header fields; HTTP/2: the header
/// list as RFC 9113 counts it): 431 past it.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// HTTP/2 flow control towards clients: what one stream, and one connection over all its
/// streams, may send of request bodies ahead of the gateway reading them. It bounds the
/// request body bytes an HTTP/2 connection can make the gateway hold (the connection
/// window); a single upload still has a window of several round trips on any LAN.
pub(crate) const H2_STREAM_WINDOW: u32 = 256 * 1024;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Response bytes queued per HTTP/2 stream while the client's window is closed.
pub(crate) const H2_SEND_BUFFER: usize = 32 * 1024;

/// The first and the longest wait after a failed `accept` (out of file descriptors,
/// say): it doubles while accepting keeps failing.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often a repeated warning of the accept loop is logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning logged at most once per [`WARN_EVERY`], with how many times its cause
/// happened since it was last logged.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn note(&mut self, warn: impl FnOnce(u64)) {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_none_or(|last| now >= last + WARN_EVERY) {
            warn(self.count);
            self.count = 0;
            self.last = Some(now);
        }
    }
}

/// Accepts connections until told to stop, then drains them for at most `grace`.
/// Several workers may serve one listening socket: each is woken by a new connection
/// and one wins the accept (the others' `EAGAIN` stays inside tokio). The first to run
/// would take a whole burst, so a worker with more than its share of open connections
/// (see [`Balance`](super::balance::Balance)) leaves new ones to the others until that
/// changes. A worker takes a permit of `server.max_connections` (shared by all workers,
/// in its `drain`) before each accept. With `tls`, each connection's task does the TLS
/// handshake first (see `tls`).
#[allow(clippy::too_many_arguments)] // the loop's whole configuration, read once
pub(super) async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    timers: ClientTimers,
    drain: Arc<Drain>,
    connections: crate::metrics::Counter,
    tls: Option<TlsHandle>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    // No hyper timer for HTTP/1: its header-read timeout allocates and arms a timer per
    // request. The connection task keeps one coarse timer instead (see `serve_http1`).
    //
    // The head limit is exact: hyper checks the length of every parsed head against
    // `max_header_size` (free: the parser has it), while the read buffer's bound only
    // stops a head that never completes (hyper checks it between reads, so one read can
    // overshoot it).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .adaptive_window(false)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    let builders = Arc::new((http1, http2));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let (mut failing, mut full) = (Throttled::default(), Throttled::default());
    'accepting: loop {
        if let Some((balance, index)) = &drain.share {
            loop {
                // Created before the check: a change in between is not missed.
                let changed = balance.changed.notified();
                if !balance.over_share(*index) {
                    break;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = stop.changed() => break 'accepting,
                }
            }
        }
        // A place under `server.max_connections` first: past it, new connections wait
        // in the listen backlog while the open ones are served.
        let permit = match &drain.limit {
            None => None,
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    full.note(|waited| {
                        tracing::warn!(
                            waited,
                            "server.max_connections reached: new connections wait in the listen backlog"
                        )
                    });
                    tokio::select! {
                        permit = limit.clone().acquire_owned() => permit.ok(),
                        _ = stop.changed() => break 'accepting,
                    }
                }
            },
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    connections.increment(1);
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    // The connection's long-lived allocations (task, registration,
                    // activity) are made here, side by side, not between the short-lived
                    // buffers of requests: that keeps the heap of many idle
                    // connections dense (see `memory_upkeep`).
                    let (open, activity) = (drain.enter(permit), Arc::new(Activity::default()));
                    match &tls {
                        None => tokio::spawn(client_connection(
                            stream,
                            peer,
                            handler.clone(),
                            builders.clone(),
                            open,
                            activity,
                            timers,
                        )),
                        Some(tls) => tokio::spawn(tls::client_connection(
                            stream,
                            peer,
                            handler.clone(),
                            builders.clone(),
                            open,
                            activity,
                            timers,
                            tls.clone(),
                        )),
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, growing, instead of
                    // spinning; the permit goes back meanwhile.
                    drop(permit);
                    failing.note(|failed| {
                        tracing::warn!(error = %e, failed, retry_in = ?backoff, "accept failed")
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let open = drain.open();
    drain.start();
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!(
            connections = open,
            ?grace,
            "shutdown grace expired with invocations still in flight"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeated_warning_is_logged_once_per_period_with_its_count() {
        let mut throttled = Throttled::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttled.note(|n| logged.push(n));
        }
        assert_eq!(logged, [1], "the first at once, the next four held back");
        tokio::time::advance(WARN_EVERY).await;
        throttled.note(|n| logged.push(n));
        assert_eq!(logged, [1, 5], "then one line counting what was held back");
    }
}
