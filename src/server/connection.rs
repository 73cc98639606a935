//! One client connection's task, from accept to close: the timers that bound a client,
//! and the choice between HTTP/2 with prior knowledge and HTTP/1.1 (see `parking`). The
//! task of every open connection holds this future for the connection's whole life,
//! parked or not, which is why it is written to stay small.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::activity::Activity;
use super::drain::Open;
use super::http2::serve_http2;
use super::parking::{serve_http1, wait_readable, Wake};
use crate::body::GatewayBody;

/// How client connections are timed (`server.header_read_timeout` and
/// `server.client_idle_timeout`, docs/behaviour.md, "Client connections").
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientTimers {
    /// A new connection must send its first byte within this, and a request head must
    /// be complete this long after its first byte (slow clients, slowloris).
    pub header: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle: Duration,
    /// Granularity of both checks, and how long an HTTP/1 connection must be quiet
    /// before it is parked (its HTTP state and buffers released).
    pub tick: Duration,
}

/// The longest tick: both timers hold to about this, and a quiet HTTP/1 connection is
/// parked after it. Shorter only when a timer is configured shorter than a few ticks.
const MAX_TICK: Duration = Duration::from_millis(500);

impl ClientTimers {
    /// The timers of `server.header_read_timeout` and `server.client_idle_timeout`,
    /// checked every [`MAX_TICK`], or every eighth of the shorter one if that is less
    /// (so a short timer still holds to an eighth of itself).
    pub(crate) fn new(header: Duration, idle: Duration) -> ClientTimers {
        let tick = (header.min(idle) / 8).clamp(Duration::from_millis(1), MAX_TICK);
        ClientTimers { header, idle, tick }
    }
}

/// One client connection, from accept to close. A client that goes away mid-request is
/// not the gateway's error, so connection errors end the task silently.
///
/// An `async` block, not an `async fn`: an `async fn`'s future keeps its arguments twice
/// (as captured and as moved into its body, 152 bytes here), and this future is all a
/// parked connection's task holds.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see above
pub(super) fn client_connection<F, Fut>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: F,
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
    open: Open,
    activity: Arc<Activity>,
    timers: ClientTimers,
) -> impl Future<Output = ()>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    async move {
        open.register().await;
        let drain = &*open.drain;
        // One timer for the connection's whole life, reset (never reallocated) per phase.
        let mut timer = pin!(tokio::time::sleep(timers.header));
        // No HTTP state (hyper's buffers) until the client sends something, and a client
        // that sends nothing is closed after `timers.header`.
        if wait_readable(
            &stream,
            timer.as_mut(),
            Instant::now() + timers.header,
            drain,
        )
        .await
            != Wake::Readable
        {
            return;
        }
        let first_byte = Instant::now();
        // HTTP/2 with prior knowledge, told apart from HTTP/1.1 by one peek per connection
        // rather than a rewinding reader per read.
        let h2 = match is_h2_preface(&stream, timer.as_mut(), first_byte + timers.header).await {
            Some(h2) => h2,
            None => {
                request_timeout(&stream);
                return;
            }
        };
        if h2 {
            let handler = move |req| handler(req, peer);
            serve_http2(stream, handler, &builders.1, drain, activity, timers, timer).await;
            return;
        }
        let handler = move |req| handler(req, peer);
        serve_http1(
            &mut stream,
            handler,
            &builders.0,
            drain,
            activity,
            timers,
            timer,
        )
        .await;
    }
}

/// What a client whose request head did not arrive within `header_read_timeout` is told
/// before the connection closes, where part of a head came (RFC 9110 §15.5.9). One
/// non-blocking write of a few bytes on a socket with nothing else queued: if it does
/// not fit, the client was not reading anyway.
pub(super) fn request_timeout(stream: &TcpStream) {
    const RESPONSE: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let _ = stream.try_write(RESPONSE);
}

/// Whether a new connection starts with the HTTP/2 connection preface; `None` if its
/// first bytes are a prefix of the preface and the rest has not come by `deadline`.
/// Peeks without consuming; waits (on the connection's timer) while the bytes so far
/// are a prefix of the preface.
async fn is_h2_preface(
    stream: &TcpStream,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
) -> Option<bool> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    // A peek does not wait for more bytes than there are, so waiting for the rest of
    // the preface polls: every 5 ms at first (the rest of a real preface is a segment
    // away), backing off to a tick, so a client that stops half-way costs little.
    let mut pause = Duration::from_millis(5);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Some(false),
            Ok(n) => n,
        };
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // A prefix of the preface so far: the rest is on its way.
        timer.as_mut().reset((Instant::now() + pause).min(deadline));
        timer.as_mut().await;
        pause = (pause * 2).min(MAX_TICK);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use crate::server::testing::*;

    #[tokio::test]
    async fn a_silent_new_connection_is_closed_after_the_header_timeout() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        let waited = closed_after(&mut client).await;
        assert!(
            waited >= TIMERS.header - TIMERS.tick,
            "closed after {waited:?}"
        );
        assert_eq!(parked(&server), 0);
    }
}
