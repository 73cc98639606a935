//! HTTP/2 client connections, with the same two timers as HTTP/1.1. hyper's HTTP/2 server
//! has neither: a connection with no stream stays open as long as the client likes, and
//! a header block the client never finishes (HEADERS without END_HEADERS, then
//! CONTINUATION frames dribbled) holds the connection without ever becoming a request,
//! since nothing else may be sent on the connection meanwhile. So the socket is read
//! through [`H2Io`], which follows the frame headers going by (not their payloads) to
//! know when a header block is open, and the connection's tick does the rest: GOAWAY
//! after `idle` with no request in flight, and the connection closed when a header
//! block (or a frame header) stays unfinished for `header`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::{Activity, InFlight, Tracking};
use super::connection::ClientTimers;
use super::drain::Drain;
use crate::body::GatewayBody;

/// Serves HTTP/2 (prior knowledge) on a connection until it closes, the client is too
/// slow with a header block, it has been idle for `timers.idle` (GOAWAY, then closed
/// once the client has had `timers.header` to finish), or the gateway drains.
pub(super) async fn serve_http2<S, F, Fut>(
    stream: S,
    handler: F,
    http2: &http2::Builder<TokioExecutor>,
    drain: &Drain,
    activity: Arc<Activity>,
    timers: ClientTimers,
    mut timer: Pin<&mut Sleep>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            activity.requests.fetch_add(1, Ordering::Relaxed);
            Tracking {
                inner: handler(req),
                in_flight: Some(InFlight::new(activity.clone())),
            }
        })
    };
    let io = H2Io {
        stream,
        frames: Frames::after_preface(),
        activity: activity.clone(),
    };
    let mut conn = Box::pin(http2.serve_connection(TokioIo::new(io), service));
    // Why the connection is being shut down, if it is: drained, or idle.
    let mut told = false;
    let mut idle_told = false;
    // Ticks in a row: without a request in flight or started; with a header block open;
    // since the GOAWAY for idleness.
    let (mut idle, mut heading, mut closing) = (0u32, 0u32, 0u32);
    let mut requests = activity.requests();
    let mut ticking: Option<Waker> = None;
    timer.as_mut().reset(Instant::now() + timers.tick);
    poll_fn(|cx| loop {
        if !told && drain.is_closing() {
            conn.as_mut().graceful_shutdown();
            told = true;
        }
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // As for HTTP/1.1 (see `serve_http1`): a registered tick wakes the task itself.
        if ticking.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !timer.is_elapsed() {
            return Poll::Pending;
        }
        if timer.as_mut().poll(cx).is_pending() {
            ticking = Some(cx.waker().clone());
            return Poll::Pending;
        }
        ticking = None;
        let now = activity.requests();
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0 || now != requests;
        requests = now;
        idle = if busy { 0 } else { idle.saturating_add(1) };
        heading = if activity.head_pending.load(Ordering::Relaxed) {
            heading.saturating_add(1)
        } else {
            0
        };
        if timers.tick * heading >= timers.header {
            // A request that never finishes its head: nothing to answer, close.
            return Poll::Ready(());
        }
        if idle_told {
            // A client that neither finishes nor acknowledges within `header` is gone.
            closing += 1;
            if timers.tick * closing >= timers.header {
                return Poll::Ready(());
            }
        } else if !told && timers.tick * idle >= timers.idle {
            conn.as_mut().graceful_shutdown();
            (told, idle_told) = (true, true);
        }
        timer.as_mut().reset(Instant::now() + timers.tick);
    })
    .await
}

/// The socket as hyper's HTTP/2 server reads it, the frame headers followed on the way.
struct H2Io<S> {
    stream: S,
    frames: Frames,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.frames.feed(&buf.filled()[before..]);
            this.activity
                .head_pending
                .store(this.frames.head_pending(), Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Where the client's byte stream is among HTTP/2 frames: only the 9-byte frame headers
/// are looked at, payloads are skipped by their length (one step per frame, not per
/// byte).
#[derive(Debug)]
struct Frames {
    /// Bytes of the preface or of the current frame's payload still to come.
    skip: usize,
    /// The frame header being received, and how much of it has come.
    header: [u8; 9],
    have: u8,
    /// A HEADERS or PUSH_PROMISE frame without END_HEADERS came, and no CONTINUATION
    /// with it since: a request head is half-way.
    block_open: bool,
    /// The current frame is part of a header block (its payload is still arriving).
    in_header_frame: bool,
}

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl Frames {
    /// The stream of a connection whose 24-byte preface is still to be read.
    fn after_preface() -> Frames {
        Frames {
            skip: 24,
            header: [0; 9],
            have: 0,
            block_open: false,
            in_header_frame: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        loop {
            let skipped = self.skip.min(bytes.len());
            self.skip -= skipped;
            bytes = &bytes[skipped..];
            if self.skip == 0 {
                self.in_header_frame = false;
            }
            if bytes.is_empty() {
                return;
            }
            let at = usize::from(self.have);
            let n = (9 - at).min(bytes.len());
            self.header[at..at + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.have += n as u8;
            if self.have < 9 {
                return;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            match kind {
                HEADERS | PUSH_PROMISE => self.block_open = flags & END_HEADERS == 0,
                CONTINUATION if flags & END_HEADERS != 0 => self.block_open = false,
                _ => {}
            }
            self.in_header_frame =
                self.skip > 0 && matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        }
    }

    /// Whether the client is in the middle of a request head: a header block open, a
    /// frame of one still arriving, or a frame header cut short.
    fn head_pending(&self) -> bool {
        self.block_open || self.in_header_frame || self.have > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[test]
    fn a_header_block_is_open_from_headers_to_the_continuation_that_ends_it() {
        let mut frames = Frames::after_preface();
        frames.feed(&[b'P'; 24]);
        assert!(!frames.head_pending());
        // SETTINGS, whole: nothing pending.
        frames.feed(&frame(0x4, 0, 6));
        assert!(!frames.head_pending());
        // HEADERS without END_HEADERS, fed a byte at a time.
        for b in frame(HEADERS, 0, 5) {
            frames.feed(&[b]);
            assert!(frames.head_pending());
        }
        frames.feed(&frame(CONTINUATION, 0, 3));
        assert!(frames.head_pending());
        let end = frame(CONTINUATION, END_HEADERS, 3);
        frames.feed(&end[..10]);
        assert!(frames.head_pending(), "its payload is still arriving");
        frames.feed(&end[10..]);
        assert!(!frames.head_pending());
        // A whole HEADERS with END_HEADERS and a DATA frame in one read.
        let mut both = frame(HEADERS, END_HEADERS, 20);
        both.extend(frame(0x0, 0, 100));
        frames.feed(&both);
        assert!(!frames.head_pending());
        // A frame header cut short is pending.
        frames.feed(&frame(0x6, 0, 8)[..4]);
        assert!(frames.head_pending());
    }
}

#[cfg(test)]
mod connection_tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::server::testing::*;

    async fn h2_client(
        server: &Server,
    ) -> (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(stream).await.unwrap();
        (client, tokio::spawn(conn))
    }

    #[tokio::test]
    async fn an_idle_connection_gets_goaway_after_the_idle_timeout() {
        let server = start(TIMERS).await;
        let (client, conn) = h2_client(&server).await;
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get("http://test/").body(()).unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let start = Instant::now();
        // The connection ends cleanly: GOAWAY, then closed.
        tokio::time::timeout(SOON, conn)
            .await
            .expect("closed in time")
            .unwrap()
            .unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= TIMERS.idle - TIMERS.tick * 2,
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_keeps_the_connection_open() {
        let server = start(TIMERS).await;
        let (client, _conn) = h2_client(&server).await;
        let mut client = client.ready().await.unwrap();
        // Longer than the idle and header timeouts.
        let req = http::Request::get("http://test/?sleep=900")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn a_header_block_never_finished_is_closed_at_the_header_timeout() {
        let server = start(TIMERS).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // HEADERS on stream 1 without END_HEADERS (":method: GET", indexed), then a
        // CONTINUATION whose fields ("accept-encoding", indexed) are dribbled a byte at
        // a time. (h2 itself allows only a few CONTINUATION frames per block.)
        client
            .write_all(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82])
            .await
            .unwrap();
        client
            .write_all(&[0, 0, 100, 0x9, 0, 0, 0, 0, 1])
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            if client.write_all(&[0x90]).await.is_err() || !open_for(&mut client, TIMERS.tick).await
            {
                break;
            }
            assert!(start.elapsed() < SOON, "never closed");
        }
        let waited = start.elapsed();
        assert!(
            waited >= TIMERS.header - TIMERS.tick * 2,
            "closed after {waited:?}"
        );
    }

    /// Whether the server keeps the connection open for `for_`, whatever it sends.
    async fn open_for(stream: &mut TcpStream, for_: Duration) -> bool {
        let deadline = Instant::now() + for_;
        let mut chunk = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Err(_) => return true,
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => {}
            }
        }
    }
}
