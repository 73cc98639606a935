//! Bodies as they cross the gateway, always streamed frame by frame as `Bytes`.
//!
//! - [`LimitedBody`]: a client's request body on its way to an instance, cut when it
//!   passes `max_body_bytes`; what follows the cut is read and discarded (bounded) so
//!   the client gets to read the 413.
//! - [`InvocationBody`]: an instance's response on its way to the client. It carries the
//!   invocation's deadline, the event-response size limit and the [`Invocation`]
//!   itself, so the end of the body is the end of the invocation; the connection is
//!   handed back for reuse only after a clean end.
//! - [`GatewayBody`]: what a client receives, either of the above or a small buffer
//!   (error bodies).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{BodyTooLarge, ForwardError};
use crate::invocation::Invocation;
use crate::metrics::Outcome;
use crate::pool::PooledConn;
use crate::upstream::h1;

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
    /// Data taken but never sent (its connection failed first), given back for the
    /// request's next try: it comes first, and counts in the size again.
    replay: Option<Bytes>,
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
            replay: None,
        }
    }

    /// Gives back data taken from this body but not sent, to be taken again first.
    pub fn put_back(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.replay = Some(data);
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
        if let Some(data) = this.replay.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
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
        self.replay.is_none()
            && match self.state {
                LimitState::Passing => self.inner.is_end_stream(),
                LimitState::Draining { .. } => false,
                LimitState::Done => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let rest = match self.state {
            LimitState::Passing => self.inner.size_hint(),
            _ => SizeHint::default(),
        };
        let Some(replay) = &self.replay else {
            return rest;
        };
        let n = replay.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + n);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + n);
        }
        hint
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

/// What a request to an instance carries: the client's body, cut at the limit.
pub type UpstreamBody = LimitedBody;

/// A request found unsent on a dead pooled connection comes back whole for its next try.
impl h1::RequestBody for LimitedBody {
    fn put_back(&mut self, data: Bytes) {
        LimitedBody::put_back(self, data);
    }
}

/// An instance's response body, as the HTTP/1 client decodes it off a pooled connection.
pub type ResponseBody = h1::ResponseBody<PooledConn, UpstreamBody>;

// === impl InvocationBody ===

/// The invocation, shared between the body and its deadline watchdog.
enum LeaseState {
    Active(Invocation),
    TimedOut(ForwardError),
    Ended,
}

/// An instance's response body on its way to the client.
///
/// The deadline is enforced by a watchdog task armed once the body does not end on its
/// first poll: a client that stops reading stops hyper from polling the body, and the
/// slot must still be freed at the deadline.
pub struct InvocationBody {
    inner: ResponseBody,
    limit: u64,
    seen: u64,
    deadline: Instant,
    /// Held inline until the watchdog is armed (most bodies end on their first poll),
    /// then shared with it.
    state: Holder,
    watchdog: Option<AbortHandle>,
    /// The client left: the body is being read to its end and thrown away.
    abandoned: bool,
}

enum Holder {
    Inline(LeaseState),
    Shared(Arc<Mutex<LeaseState>>),
}

impl Holder {
    /// Runs `f` on the invocation's state, wherever it lives.
    fn with<R>(&mut self, f: impl FnOnce(&mut LeaseState) -> R) -> R {
        match self {
            Holder::Inline(state) => f(state),
            Holder::Shared(shared) => f(&mut shared.lock()),
        }
    }
}

impl InvocationBody {
    pub fn new(
        inner: ResponseBody,
        deadline: Instant,
        limit: u64,
        invocation: Invocation,
    ) -> InvocationBody {
        let mut body = InvocationBody {
            inner,
            limit,
            seen: 0,
            deadline,
            state: Holder::Inline(LeaseState::Active(invocation)),
            watchdog: None,
            abandoned: false,
        };
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        if body.inner.is_end_stream() {
            body.finish(Outcome::Success);
        }
        body
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let state = self.state.with(|s| std::mem::replace(s, LeaseState::Ended));
        if let LeaseState::Active(invocation) = state {
            let conn = match outcome {
                Outcome::Success => self.inner.take_reusable(),
                _ => None,
            };
            let outcome = match outcome {
                Outcome::Success if self.abandoned => Outcome::ClientClosed,
                outcome => outcome,
            };
            invocation.end(outcome, conn);
        }
    }

    /// Whether the invocation is still on its instance (not ended, not timed out).
    fn is_active(&self) -> bool {
        match &self.state {
            Holder::Inline(state) => matches!(state, LeaseState::Active(_)),
            Holder::Shared(shared) => matches!(&*shared.lock(), LeaseState::Active(_)),
        }
    }

    /// The client left before the body ended. A departed client does not end the
    /// invocation early: the rest of the response is read and thrown away, so the
    /// instance keeps its slot until its response has ended (and its connection goes
    /// back to the pool) or the deadline passed (then it is a timed-out invocation),
    /// and the invocation is billed and logged like any other.
    pub async fn drain(mut self: Box<Self>) {
        self.abandoned = true;
        let deadline = self.deadline;
        let body = &mut self;
        let ended = tokio::time::timeout_at(deadline, async {
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut **body).poll_frame(cx)).await
            {
                if frame.is_err() {
                    break;
                }
            }
        })
        .await;
        if ended.is_err() {
            self.finish(Outcome::Timeout);
        }
    }

    /// Arms the deadline watchdog (once). At the deadline it ends the invocation and
    /// wakes the task polling this body (the connection's, the same for its whole life),
    /// which then cuts the stream even if the instance has gone quiet.
    fn arm(&mut self, waker: &Waker) {
        if self.watchdog.is_some() {
            return;
        }
        let shared = match &mut self.state {
            Holder::Shared(shared) => shared.clone(),
            Holder::Inline(state) => {
                let state = std::mem::replace(state, LeaseState::Ended);
                let shared = Arc::new(Mutex::new(state));
                self.state = Holder::Shared(shared.clone());
                shared
            }
        };
        let deadline = self.deadline;
        let waker = waker.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let mut state = shared.lock();
            let error = match &*state {
                LeaseState::Active(invocation) => invocation.function().timeout_error(),
                _ => return,
            };
            if let LeaseState::Active(invocation) =
                std::mem::replace(&mut *state, LeaseState::TimedOut(error))
            {
                drop(state);
                // Frees the slot and records 433; the connection is closed with the
                // body (at its next poll, or when the client goes).
                invocation.end(Outcome::Timeout, None);
                waker.wake();
            }
        });
        self.watchdog = Some(task.abort_handle());
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
        let verdict = this.state.with(|state| match state {
            LeaseState::Active(_) => None,
            LeaseState::Ended => Some(None),
            LeaseState::TimedOut(e) => Some(Some(e.clone())),
        });
        match verdict {
            None => {}
            Some(None) => return Poll::Ready(None),
            // Past the timeout with the response under way: cut the stream.
            Some(Some(err)) => return Poll::Ready(Some(Err(err.into()))),
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                this.arm(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(frame) => frame,
        };
        match frame {
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
                } else {
                    this.arm(cx.waker());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(Outcome::InstanceError);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(Outcome::Success);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Holder::Inline(state) => matches!(state, LeaseState::Ended),
            Holder::Shared(shared) => matches!(&*shared.lock(), LeaseState::Ended),
        }
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
    Invocation(ToClient),
    Full(Option<Bytes>),
}

impl GatewayBody {
    pub fn full(data: Bytes) -> GatewayBody {
        GatewayBody::Full(Some(data))
    }

    pub fn invocation(body: InvocationBody) -> GatewayBody {
        GatewayBody::Invocation(ToClient(Some(Box::new(body))))
    }
}

/// An invocation's response body as the client's connection holds it.
///
/// Boxed: one allocation per invocation is cheaper than copying the body (with its
/// connection and invocation, ~400 bytes) each of the several times the response moves
/// on its way through hyper's dispatcher.
pub struct ToClient(Option<Box<InvocationBody>>);

impl Drop for ToClient {
    fn drop(&mut self) {
        // Dropped before its end: the client went away. The invocation goes on in a task
        // of its own (see `InvocationBody::drain`).
        if !self.0.as_ref().is_some_and(|body| body.is_active()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(body) = self.0.take() {
            runtime.spawn(body.drain());
        }
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
            GatewayBody::Invocation(ToClient(Some(b))) => Pin::new(b).poll_frame(cx),
            GatewayBody::Invocation(ToClient(None)) => Poll::Ready(None),
            GatewayBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Invocation(ToClient(Some(b))) => b.is_end_stream(),
            GatewayBody::Invocation(ToClient(None)) => true,
            GatewayBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Invocation(ToClient(Some(b))) => b.size_hint(),
            GatewayBody::Invocation(ToClient(None)) => SizeHint::with_exact(0),
            GatewayBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
