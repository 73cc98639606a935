//! HTTP/1.1 with idle connections parked. A gateway in front of many clients mostly
//! holds keep-alive connections with nothing to do, and hyper keeps its buffers for as
//! long as a connection lives; parking frees them while the socket stays open, so an
//! idle connection costs its socket, a small task and one timer.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::activity::{Activity, InFlight, Tracking};
use super::connection::{request_timeout, ClientTimers};
use super::drain::Drain;
use super::memory::RELEASED;
use crate::body::GatewayBody;

/// Serves HTTP/1.1 on a connection, parking it whenever it is quiet.
///
/// hyper keeps an 8 KB read buffer, an 8 KB header write buffer, the last header map and
/// the in-flight handler's slot for as long as a connection lives: about 22 KB per idle
/// keep-alive connection, measured. So a connection with nothing in flight and no byte
/// moved for a whole `tick` is parked: hyper is shut down without closing the socket
/// (any bytes of a next request head it had read are kept), and the task waits for the
/// socket to become readable with nothing but the socket, this state and one timer; a
/// new hyper connection takes over when bytes arrive. A busy connection pays nothing per
/// request for this (a few counters) and one timer fire per `tick`.
///
/// The same tick enforces `timers.header` (no request started for that long while bytes
/// trickle in or an exchange is stuck: closed, after a 408 if hyper holds part of a
/// head) and, while parked, `timers.idle`.
pub(super) async fn serve_http1<S, F, Fut>(
    stream: &mut S,
    handler: F,
    http1: &http1::Builder,
    drain: &Drain,
    activity: Arc<Activity>,
    timers: ClientTimers,
    mut timer: Pin<&mut Sleep>,
) where
    S: ClientStream,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    // Bytes of a request head hyper had read when the connection was parked.
    let mut leftover = Bytes::new();
    // Ticks in a row without a request in flight or started.
    let mut quiet: u32 = 0;
    loop {
        activity.parking.store(false, Ordering::Relaxed);
        let service = {
            let handler = handler.clone();
            let activity = activity.clone();
            service_fn(move |req| {
                activity.requests.fetch_add(1, Ordering::Relaxed);
                Tracking {
                    inner: handler(req),
                    in_flight: Some(InFlight::new(activity.clone())),
                }
            })
        };
        let leftover_was_empty = leftover.is_empty();
        let io = ClientIo {
            stream: &mut *stream,
            prefix: std::mem::take(&mut leftover),
            activity: &activity,
        };
        // Boxed so that a parked connection's task stays small.
        let mut conn = Box::new(http1.serve_connection(TokioIo::new(io), service));
        let mut told = false;
        let mut seen = (activity.requests(), activity.moved());
        // A new hyper connection closes on a graceful shutdown only before it reads
        // anything or after an exchange; with half a head read it would instead answer
        // that request with `Connection: close`. So it is not parked in between.
        let resumed = seen;
        let replaying = !leftover_was_empty;
        timer.as_mut().reset(Instant::now() + timers.tick);
        // The waker the tick is registered with, once it is.
        let mut ticking: Option<Waker> = None;
        let ended = poll_fn(|cx| loop {
            if !told && drain.is_closing() {
                activity.parking.store(false, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
                told = true;
            }
            if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Some(result));
            }
            // A registered tick wakes this task by itself: polling it again on every
            // wake-up (several per request) would only re-register the same waker.
            if ticking.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !timer.is_elapsed() {
                return Poll::Pending;
            }
            if timer.as_mut().poll(cx).is_pending() {
                ticking = Some(cx.waker().clone());
                return Poll::Pending;
            }
            ticking = None;
            let now = (activity.requests(), activity.moved());
            let busy = activity.in_flight.load(Ordering::Relaxed) > 0 || now.0 != seen.0;
            quiet = if busy { 0 } else { quiet.saturating_add(1) };
            let parking = activity.parking.load(Ordering::Relaxed);
            let parkable = now.0 != resumed.0 || (now.1 == resumed.1 && !replaying);
            if !busy
                && now.1 == seen.1
                && parkable
                && !told
                && !parking
                && !activity.write_blocked.load(Ordering::Relaxed)
            {
                // Idle: hyper finishes at once (it closes an idle connection on a
                // graceful shutdown); the socket stays open, see `ClientIo`.
                activity.parking.store(true, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            } else if !busy && timers.tick * quiet >= timers.header {
                return Poll::Ready(None);
            }
            seen = now;
            timer.as_mut().reset(Instant::now() + timers.tick);
        })
        .await;
        // Too slow: told so if part of a request head came (hyper holds its bytes),
        // unless the client is not even reading what it was sent.
        if ended.is_none() {
            let partial = !(*conn).into_parts().read_buf.is_empty();
            if partial && !activity.write_blocked.load(Ordering::Relaxed) {
                stream.request_timeout();
            }
            return;
        }
        // Closed by the client, not keep-alive, an error or drained: done.
        if !matches!(ended, Some(Ok(()))) || told || !activity.parking.load(Ordering::Relaxed) {
            return;
        }
        // The bytes only: hyper's read buffer (8 KB) is what parking is meant to free. The
        // box that held hyper's state (700 B) is freed here too, not when the loop turns:
        // moved into this block, it ends with it.
        leftover = {
            let conn = conn;
            Bytes::copy_from_slice(&(*conn).into_parts().read_buf)
        };
        drain.parked.fetch_add(1, Ordering::Relaxed);
        RELEASED.fetch_add(1, Ordering::Relaxed);
        // Parked. A partial head keeps its header deadline; otherwise the connection is
        // idle (for `quiet` ticks so far) and the next head's deadline starts afresh.
        let limit = if leftover.is_empty() {
            timers.idle
        } else {
            timers.header
        };
        let deadline = Instant::now() + limit.saturating_sub(timers.tick * quiet);
        match wait_readable(stream, timer.as_mut(), deadline, drain).await {
            Wake::Readable => {}
            Wake::Expired if !leftover.is_empty() => return stream.request_timeout(),
            Wake::Expired | Wake::Gone => return,
        }
        if leftover.is_empty() {
            quiet = 0;
        }
    }
}

/// A client connection as `serve_http1` serves it: the socket itself, or a TLS session
/// over it (see `tls`).
pub(super) trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    /// The socket, waited on while the connection is parked.
    fn socket(&self) -> &TcpStream;

    /// Whether bytes already taken from the socket wait to be read (a TLS session's
    /// decrypted records): then the connection is readable whatever the socket says.
    fn has_buffered(&self) -> bool {
        false
    }

    /// Tells a client too slow with its request head so (see `request_timeout`).
    fn request_timeout(&self) {
        request_timeout(self.socket())
    }
}

impl ClientStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

#[derive(PartialEq, Eq)]
pub(super) enum Wake {
    Readable,
    Expired,
    /// Shutting down, or the socket failed.
    Gone,
}

/// Waits until the socket has bytes to read, the client closes, the deadline passes or
/// the gateway drains.
pub(super) async fn wait_readable<S: ClientStream>(
    stream: &S,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    drain: &Drain,
) -> Wake {
    timer.as_mut().reset(deadline);
    poll_fn(|cx| {
        if drain.is_closing() {
            return Poll::Ready(Wake::Gone);
        }
        if stream.has_buffered() {
            return Poll::Ready(Wake::Readable);
        }
        // A peek, not `poll_read_ready`: readiness may be reported spuriously (it is
        // for a new connection), and a client that only closed is gone.
        let mut byte = [0u8; 1];
        match stream.socket().poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Wake::Readable),
            Poll::Ready(_) => return Poll::Ready(Wake::Gone),
            Poll::Pending => {}
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Wake::Expired),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The socket as hyper sees it: borrowed (so hyper can be dropped without closing it),
/// first replaying the bytes kept from a parked connection, counting what moves.
struct ClientIo<'a, S> {
    stream: &'a mut S,
    prefix: Bytes,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bump_moved();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.stream).poll_write(cx, buf);
        this.activity.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs);
        this.activity.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::server::testing::*;

    #[tokio::test]
    async fn a_quiet_connection_is_parked_and_then_serves_again() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        // Quiet for a tick: parked, still open.
        wait_parked(&server, 1).await;
        assert!(still_open(&mut client, TIMERS.tick).await);
        let head = exchange(&mut client, "/").await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // Pipelined requests are all answered.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let both = read_response(&mut client).await;
        if both.matches("\r\n\r\nok").count() < 2 {
            read_response(&mut client).await;
        }
    }

    #[tokio::test]
    async fn a_head_split_across_a_park_is_kept() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        // hyper read the partial head; the connection is parked with those bytes.
        wait_parked(&server, 1).await;
        assert!(still_open(&mut client, TIMERS.tick * 2).await);
        client.write_all(b": test\r\n\r\n").await.unwrap();
        let head = read_response(&mut client).await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // A head that starts while parked is not parked again half-way (hyper would
        // answer it with `Connection: close`), and is served.
        wait_parked(&server, 2).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        assert!(still_open(&mut client, TIMERS.tick * 3).await);
        assert_eq!(parked(&server), 2);
        client.write_all(b": test\r\n\r\n").await.unwrap();
        let head = read_response(&mut client).await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        exchange(&mut client, "/").await;
        let waited = closed_after(&mut client).await;
        assert!(
            waited >= TIMERS.idle - TIMERS.tick * 2,
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_head_trickling_in_is_cut_at_the_header_timeout() {
        let server = start(TIMERS).await;
        // A byte faster than a tick (never quiet) and slower than two ticks (parked in
        // between, with its partial head).
        for pause in [TIMERS.tick / 2, TIMERS.tick * 3] {
            let mut client = TcpStream::connect(server.addr).await.unwrap();
            exchange(&mut client, "/").await;
            let start = Instant::now();
            let mut gone = false;
            for line in
                std::iter::once(&b"GET / HTTP/1.1\r\n"[..]).chain(std::iter::repeat(&b"X"[..]))
            {
                if client.write_all(line).await.is_err() || !still_open(&mut client, pause).await {
                    gone = true;
                    break;
                }
                if start.elapsed() > SOON {
                    break;
                }
            }
            assert!(
                gone,
                "a trickling head (a byte every {pause:?}) was never cut"
            );
            let waited = start.elapsed();
            assert!(
                waited >= TIMERS.header - TIMERS.tick * 2,
                "cut after {waited:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_partial_head_is_answered_408_at_the_header_timeout() {
        let server = start(TIMERS).await;
        // On a new connection, and on one that is parked with its partial head.
        for parked_first in [false, true] {
            let mut client = TcpStream::connect(server.addr).await.unwrap();
            if parked_first {
                exchange(&mut client, "/").await;
            }
            let start = Instant::now();
            client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
            let answer = read_to_close(&mut client).await;
            assert!(
                answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
                "{answer:?}"
            );
            let waited = start.elapsed();
            assert!(
                waited >= TIMERS.header - TIMERS.tick * 2,
                "cut after {waited:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_long_request_in_flight_is_neither_parked_nor_cut() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        // Longer than the header and idle timeouts, many ticks.
        let head = exchange(&mut client, "/?sleep=700").await;
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert_eq!(parked(&server), 0);
        exchange(&mut client, "/").await;
    }
}
