//! Bodies as they cross the gateway, always streamed frame by frame as `Bytes`.
//!
//! - [`LimitedBody`]: a client's request body on its way to an instance, cut when it
//!   passes `max_body_bytes`; what follows the cut is read and discarded (bounded) so
//!   the client gets to read the 413.
//! - [`InvocationBody`]: an instance's response on its way to the client. It carries the
//!   invocation's deadline, the event-response size limit and the [`Lease`] (slot and
//!   connection), so the end of the body is the end of the invocation: the slot is
//!   freed, the connection goes back to the pool only after a clean end, and the
//!   outcome is recorded.
//! - [`GatewayBody`]: what a client receives, either of the above or a small buffer
//!   (error bodies).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::error::{BodyTooLarge, ForwardError};
use crate::invoke::Accounting;
use crate::metrics::Outcome;
use crate::pool::{PooledConn, Slot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// After a request body passes the limit, at most this much more is read and dropped
/// so the client can finish sending and read the answer.
pub const DRAIN_LIMIT: u64 = 32 * 1024 * 1024;

// === impl LimitedBody ===

/// A client's request body, cut at the limit.
pub struct LimitedBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    state: LimitState,
}

enum LimitState {
    Passing,
    Draining { dropped: u64 },
    Done,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            state: LimitState::Passing,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                LimitState::Done => return Poll::Ready(None),
                LimitState::Passing => {
                    let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => return Poll::Ready(None),
                    };
                    if let Some(data) = frame.data_ref() {
                        this.seen += data.len() as u64;
                        if this.seen > this.limit {
                            // This frame would cross the limit: it is not forwarded.
                            this.state = LimitState::Draining {
                                dropped: data.len() as u64,
                            };
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                LimitState::Draining { ref mut dropped } => {
                    match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) if *dropped <= DRAIN_LIMIT => {
                            *dropped += frame.data_ref().map_or(0, |d| d.len() as u64);
                        }
                        _ => {
                            this.state = LimitState::Done;
                            let err = BodyTooLarge { limit: this.limit };
                            return Poll::Ready(Some(Err(err.into())));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            LimitState::Passing => self.inner.is_end_stream(),
            LimitState::Draining { .. } => false,
            LimitState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            LimitState::Passing => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// Reads and drops the rest of a refused request body, bounded by [`DRAIN_LIMIT`], so
/// the client can finish sending and read the answer.
pub async fn discard(mut body: Incoming) {
    use http_body_util::BodyExt;
    let mut dropped = 0u64;
    while dropped <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => dropped += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

/// What a request to an instance carries.
pub enum UpstreamBody {
    Client(LimitedBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Client(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client(b) => b.size_hint(),
        }
    }
}

// === impl InvocationBody ===

/// What an invocation holds until its response body ends.
pub struct Lease {
    pub slot: Slot,
    pub conn: PooledConn,
    pub accounting: Accounting,
}

impl Lease {
    /// Ends the invocation: a clean end returns the connection to the pool (before the
    /// slot is freed, so the next holder of the slot finds it warm); anything else
    /// closes it.
    fn finish(self, outcome: Outcome) {
        let Lease {
            slot,
            conn,
            accounting,
        } = self;
        if outcome == Outcome::Success {
            slot.instance().checkin(conn);
        } else {
            drop(conn);
        }
        drop(slot);
        accounting.finish(outcome);
    }
}

/// An instance's response body on its way to the client.
pub struct InvocationBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: u64,
    seen: u64,
    lease: Option<Lease>,
}

impl InvocationBody {
    pub fn new(
        inner: Incoming,
        deadline: Pin<Box<Sleep>>,
        limit: u64,
        lease: Lease,
    ) -> InvocationBody {
        let mut body = InvocationBody {
            inner,
            deadline,
            limit,
            seen: 0,
            lease: Some(lease),
        };
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        if body.inner.is_end_stream() {
            body.finish(Outcome::Success);
        }
        body
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(lease) = self.lease.take() {
            lease.finish(outcome);
        }
    }
}

impl Body for InvocationBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.lease.is_none() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            // Past the timeout with the response under way: cut the stream.
            let err = this
                .lease
                .as_ref()
                .and_then(|l| l.accounting.timeout_error());
            this.finish(Outcome::Timeout);
            return Poll::Ready(err.map(|e| Err(e.into())));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.remaining() as u64;
                    if this.seen > this.limit {
                        this.finish(Outcome::ResponseTooLarge);
                        return Poll::Ready(Some(Err(ForwardError::ResponseTooLarge.into())));
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Success);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(Outcome::InstanceError);
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.finish(Outcome::Success);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lease.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InvocationBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server is gone).
        self.finish(Outcome::ClientClosed);
    }
}

// === impl GatewayBody ===

/// The body of every response the gateway sends.
pub enum GatewayBody {
    Invocation(InvocationBody),
    Full(Option<Bytes>),
}

impl GatewayBody {
    pub fn full(data: Bytes) -> GatewayBody {
        GatewayBody::Full(Some(data))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Invocation(b) => Pin::new(b).poll_frame(cx),
            GatewayBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Invocation(b) => b.is_end_stream(),
            GatewayBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Invocation(b) => b.size_hint(),
            GatewayBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
