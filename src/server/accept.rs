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

use super::activity::Activity;
use super::connection::{client_connection, ClientTimers};
use super::drain::Drain;
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
pub(crate) const H2_CONNECTION_WINDOW: u32 = 512 * 1024;
/// Response bytes queued per HTTP/2 stream while the client's window is closed.
pub(crate) const H2_SEND_BUFFER: usize = 32 * 1024;

/// Accepts connections until told to stop, then drains them for at most `grace`.
/// Several workers may serve one listening socket: each is woken by a new connection
/// and one wins the accept (the others' `EAGAIN` stays inside tokio). The first to run
/// would take a whole burst, so a worker with more than its share of open connections
/// (see [`Balance`](super::balance::Balance)) leaves new ones to the others until that
/// changes.
pub(super) async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    timers: ClientTimers,
    drain: Arc<Drain>,
    connections: crate::metrics::Counter,
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
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.increment(1);
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    // The connection's long-lived allocations (task, registration,
                    // activity) are made here, side by side, not between the short-lived
                    // buffers of requests: that keeps the heap of many idle
                    // connections dense (see `memory_upkeep`).
                    tokio::spawn(client_connection(
                        stream,
                        peer,
                        handler.clone(),
                        builders.clone(),
                        drain.enter(),
                        Arc::new(Activity::default()),
                        timers,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
