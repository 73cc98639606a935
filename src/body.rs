//! Bodies as they cross the gateway, streamed frame by frame as `Bytes`.
//!
//! - [`LimitedBody`]: a client's request body on its way to an instance, cut when it
//!   passes `max_body_bytes`; what follows the cut is read and discarded (bounded) so
//!   the client gets to read the 413. A small body is read whole into memory before an
//!   instance is chosen ([`LimitedBody::poll_buffer`], within [`BUFFER_THRESHOLD`] and the
//!   process-wide [`BUFFER_BUDGET`]), so that a slow client holds no instance slot.
//! - [`InvocationBody`]: an instance's response on its way to the client. It carries the
//!   invocation's deadline, the event-response size limit and the [`Invocation`]
//!   itself, so the end of the body is the end of the invocation; the connection is
//!   handed back for reuse only after a clean end.
//! - [`GatewayBody`]: what a client receives, either of the above or a small buffer
//!   (error bodies).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{BodyTooLarge, ClientBodyError, ForwardError};
use crate::invocation::Invocation;
use crate::metrics::Outcome;
use crate::pool::PooledConn;
use crate::upstream::h1;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// After a request body passes the limit, at most this much more is read and dropped
/// so the client can finish sending and read the answer.
pub const DRAIN_LIMIT: u64 = 32 * 1024 * 1024;

// === request body buffering ===

/// A request body announced (or seen) at most this long is read whole before an
/// instance is chosen, so a slow client holds no instance slot while it sends. 64 KB
/// covers nearly every event and form post (an SCF event is JSON, typically a few KB),
/// and is what nginx's `client_body_buffer_size` keeps in memory on 64-bit systems
/// before it spools to disk. Longer bodies stream (see [`LimitedBody::poll_buffer`]).
pub const BUFFER_THRESHOLD: u64 = 64 * 1024;

/// The most request-body bytes held at once for clients that are slow to send them,
/// across the process: 1,024 bodies at the threshold. Past it, bodies stream as they
/// come, so a flood of slow senders costs at most this much memory, not a slot each.
pub const BUFFER_BUDGET: u64 = 64 * 1024 * 1024;

/// The process's buffered request bodies, in bytes.
pub static BUDGET: Budget = Budget::new(BUFFER_BUDGET);

/// A cap on bytes held, shared by everything that reserves from it.
pub struct Budget {
    held: AtomicU64,
    cap: u64,
}

impl Budget {
    pub const fn new(cap: u64) -> Budget {
        Budget {
            held: AtomicU64::new(0),
            cap,
        }
    }

    /// Reserves `n` bytes; false (and nothing reserved) if that would pass the cap.
    fn try_reserve(&self, n: u64) -> bool {
        let before = self.held.fetch_add(n, Ordering::Relaxed);
        if before + n > self.cap {
            self.held.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes reserved now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// Bytes reserved from a [`Budget`] for one body, given back when dropped.
pub struct Reservation {
    budget: &'static Budget,
    held: u64,
}

impl Reservation {
    pub fn new(budget: &'static Budget) -> Reservation {
        Reservation { budget, held: 0 }
    }

    /// Makes the reservation cover `total` bytes; false if the budget cannot.
    fn cover(&mut self, total: u64) -> bool {
        if total <= self.held {
            return true;
        }
        if !self.budget.try_reserve(total - self.held) {
            return false;
        }
        self.held = total;
        true
    }

    /// `data` carrying this reservation (taken from `self`): the bytes stay counted
    /// until the last handle on them is dropped, once written to the instance.
    fn attach(&mut self, data: Bytes) -> Bytes {
        let reservation = Reservation {
            budget: self.budget,
            held: std::mem::take(&mut self.held),
        };
        Bytes::from_owner(Reserved {
            data,
            _reservation: reservation,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.release(self.held);
        }
    }
}

/// Bytes that keep their reservation for as long as they live.
struct Reserved {
    data: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Reserved {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

// === impl LimitedBody ===

/// A client's request body, cut at the limit. Its start may have been read into memory
/// before the request went anywhere ([`LimitedBody::poll_buffer`]); that part is sent
/// first, then what is still to come.
pub struct LimitedBody<B = Incoming> {
    inner: B,
    seen: u64,
    limit: u64,
    state: LimitState,
    /// Data already read, to be sent first: the buffered start of the body, or data
    /// taken but never sent (its connection failed first) given back for the request's
    /// next try.
    replay: Option<Bytes>,
    /// The frame that ended buffering by passing the threshold, sent after `replay`.
    /// Boxed: rare, and the body moves with every request.
    next: Option<Box<Bytes>>,
}

enum LimitState {
    Passing,
    Draining { dropped: u64 },
    Done,
}

impl<B> LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(inner: B, limit: u64) -> LimitedBody<B> {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            state: LimitState::Passing,
            replay: None,
            next: None,
        }
    }

    /// Gives back data taken from this body but not sent, to be taken again first.
    pub fn put_back(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.replay = Some(data);
        }
    }

    /// Reads the body into memory while it stays within [`BUFFER_THRESHOLD`] (and
    /// `max_body_bytes`) and the budget lasts. Ready once the whole body is in hand, or
    /// once it is clear it will not be: announced longer than the threshold, grown past
    /// it, or over the budget. Then what was read goes first and the rest streams.
    ///
    /// Without a `reservation` (the first poll) nothing is counted: what is read then
    /// came with the request head, and is in memory whether it is buffered or
    /// streamed. Waiting for more (a slow sender) counts every byte held, read or
    /// announced, in the `reservation`; the bytes read carry it until they are written
    /// to an instance.
    ///
    /// A body whose first frame is all of it is kept as that frame (no copy); a body in
    /// several frames is gathered into `gathered`, one allocation, as it comes: small
    /// frames kept apart would each pin the whole read buffer they were cut from.
    /// Trailers are dropped (they would be anyway on the way to the instance).
    ///
    /// Call only before the body's first frame is taken.
    pub fn poll_buffer(
        &mut self,
        gathered: &mut BytesMut,
        mut reservation: Option<&mut Reservation>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ClientBodyError>> {
        let cap = BUFFER_THRESHOLD.min(self.limit);
        let announced = self.inner.size_hint().exact();
        if announced.is_some_and(|rest| self.seen + rest > cap) {
            // Announced longer: streamed from the start.
            return Poll::Ready(Ok(()));
        }
        if let Some(r) = reservation.as_deref_mut() {
            // Known in advance: all of it counted at once.
            if !r.cover(self.seen + announced.unwrap_or(0)) {
                self.seal(gathered, Some(r));
                return Poll::Ready(Ok(()));
            }
        }
        loop {
            if !matches!(self.state, LimitState::Passing) {
                return Poll::Ready(Ok(()));
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    self.state = LimitState::Done;
                    let e: BoxError = e.into();
                    return Poll::Ready(Err(ClientBodyError::of(&*e)));
                }
                Poll::Ready(None) => {
                    self.state = LimitState::Done;
                    self.seal(gathered, reservation);
                    return Poll::Ready(Ok(()));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let n = data.len() as u64;
            let counted = match reservation.as_deref_mut() {
                Some(r) => r.cover(self.seen + n),
                None => true,
            };
            if self.seen + n > cap || !counted {
                // Not buffered whole: what was read goes first, this frame next.
                self.seal(gathered, reservation);
                self.seen += n;
                if self.seen > self.limit {
                    self.state = LimitState::Draining { dropped: n };
                } else {
                    self.next = Some(Box::new(data));
                }
                return Poll::Ready(Ok(()));
            }
            self.seen += n;
            if let Some(first) = self.replay.take() {
                // What the body will come to, when its length is known.
                let rest = self.inner.size_hint().exact().unwrap_or(0);
                let want = (self.seen + rest).min(cap);
                gathered.reserve(usize::try_from(want).unwrap_or(0));
                gathered.extend_from_slice(&first);
                gathered.extend_from_slice(&data);
            } else if gathered.is_empty() {
                self.replay = Some(data);
            } else {
                gathered.extend_from_slice(&data);
            }
            if self.inner.is_end_stream() {
                self.state = LimitState::Done;
                self.seal(gathered, reservation);
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Makes what was gathered the data sent first, carrying the reservation if any.
    fn seal(&mut self, gathered: &mut BytesMut, reservation: Option<&mut Reservation>) {
        if !gathered.is_empty() {
            self.replay = Some(gathered.split().freeze());
        }
        if let Some(r) = reservation {
            if let Some(data) = self.replay.take() {
                self.replay = Some(r.attach(data));
            }
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
        if let Some(data) = this.next.take() {
            return Poll::Ready(Some(Ok(Frame::data(*data))));
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
            && self.next.is_none()
            && match self.state {
                LimitState::Passing => self.inner.is_end_stream(),
                LimitState::Draining { .. } => false,
                LimitState::Done => true,
            }
    }

    /// A buffered body keeps its length unknown (as `Done` has no hint): a client that
    /// sent it chunked gets it to the instance chunked; one that sent a length has its
    /// `Content-Length` header, which frames it.
    fn size_hint(&self) -> SizeHint {
        let rest = match self.state {
            LimitState::Passing => self.inner.size_hint(),
            _ => SizeHint::default(),
        };
        let n = self.replay.as_ref().map_or(0, |d| d.len() as u64)
            + self.next.as_ref().map_or(0, |d| d.len() as u64);
        if n == 0 {
            return rest;
        }
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

/// What a request to an instance carries: the client's body, cut at the limit; or, for
/// an asynchronous event run from the store, nothing streams: the stored event is the
/// body's data in hand ([`LimitedBody::stored`]).
pub type UpstreamBody = LimitedBody<ClientBody>;

/// The body under an [`UpstreamBody`]: the client's, or none.
pub type ClientBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;

impl LimitedBody<ClientBody> {
    /// A client's body, cut at `limit`.
    pub fn client(body: Incoming, limit: u64) -> UpstreamBody {
        LimitedBody::new(http_body_util::Either::Left(body), limit)
    }

    /// A body that is all in hand: an event kept in the asynchronous store.
    pub fn stored(data: Bytes) -> UpstreamBody {
        let limit = data.len() as u64;
        let mut body = LimitedBody::new(
            http_body_util::Either::Right(http_body_util::Empty::new()),
            limit,
        );
        body.put_back(data);
        body
    }
}

/// A request found unsent on a dead pooled connection comes back whole for its next try.
impl<B> h1::RequestBody for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::task::Waker;

    use super::*;

    /// A body of the given frames, all there at once, announcing its length if `exact`.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        exact: Option<u64>,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let frame = self.frames.pop_front();
            let len = frame.as_ref().and_then(|f| f.data_ref()).map(|d| d.len());
            if let (Some(exact), Some(len)) = (&mut self.exact, len) {
                *exact -= len as u64;
            }
            Poll::Ready(frame.map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty() || self.exact == Some(0)
        }

        fn size_hint(&self) -> SizeHint {
            self.exact
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    fn body(parts: &[&'static [u8]], exact: bool) -> LimitedBody<Frames> {
        let len = parts.iter().map(|p| p.len() as u64).sum();
        let frames = Frames {
            frames: parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p)))
                .collect(),
            exact: exact.then_some(len),
        };
        LimitedBody::new(frames, 1 << 20)
    }

    fn new_budget(cap: u64) -> &'static Budget {
        Box::leak(Box::new(Budget::new(cap)))
    }

    /// Buffers `body` (every frame is there at once), counting in `reservation` if
    /// given, and returns what it then sends.
    fn buffer_then_send(
        body: &mut LimitedBody<Frames>,
        reservation: Option<&mut Reservation>,
    ) -> Vec<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut gathered = BytesMut::new();
        match body.poll_buffer(&mut gathered, reservation, &mut cx) {
            Poll::Ready(Ok(())) => {}
            other => panic!("{other:?}"),
        }
        let mut sent = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *body).poll_frame(&mut cx) {
            sent.push(frame.unwrap().into_data().unwrap());
        }
        sent
    }

    #[test]
    fn a_body_in_one_frame_is_kept_as_that_frame() {
        let frame: &'static [u8] = b"{\"key\":\"value\"}";
        let mut limited = body(&[frame], true);
        let sent = buffer_then_send(&mut limited, None);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].as_ptr(), frame.as_ptr(), "not copied");
        assert!(limited.is_end_stream());
    }

    #[test]
    fn a_body_in_pieces_is_gathered_and_keeps_its_length_unknown() {
        let mut limited = body(&[b"ab", b"cd", b"ef"], false);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(limited
            .poll_buffer(&mut BytesMut::new(), None, &mut cx)
            .is_ready());
        // Unknown length stays unknown: a chunked client's body goes on chunked.
        assert_eq!(limited.size_hint().exact(), None);
        assert_eq!(limited.size_hint().lower(), 6);
        let sent = buffer_then_send(&mut limited, None);
        assert_eq!(sent, [Bytes::from_static(b"abcdef")]);
    }

    #[test]
    fn a_body_growing_past_the_threshold_streams_on_after_what_was_read() {
        static BIG: [u8; 40 * 1024] = [b'a'; 40 * 1024];
        let parts: [&'static [u8]; 4] = [&BIG, &BIG, b"tail", b"end"];
        let sent = buffer_then_send(&mut body(&parts, false), None);
        let lens: Vec<usize> = sent.iter().map(|b| b.len()).collect();
        // The first 40 KiB read, then the frame that crossed, then the rest as it came.
        assert_eq!(lens, [40 * 1024, 40 * 1024, 4, 3]);
    }

    #[test]
    fn a_body_announced_past_the_threshold_is_not_read() {
        static BIG: [u8; BUFFER_THRESHOLD as usize + 1] = [b'a'; BUFFER_THRESHOLD as usize + 1];
        let mut limited = body(&[&BIG], true);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(limited
            .poll_buffer(&mut BytesMut::new(), None, &mut cx)
            .is_ready());
        assert_eq!(limited.inner.inner_len(), 1, "left to stream");
    }

    #[test]
    fn bytes_held_for_a_slow_sender_count_until_they_are_gone() {
        let budget = new_budget(1024);
        let mut reservation = Reservation::new(budget);
        let sent = buffer_then_send(&mut body(&[b"0123", b"4567"], true), Some(&mut reservation));
        assert_eq!(budget.held(), 8, "the bytes carry their share");
        drop(reservation);
        assert_eq!(budget.held(), 8);
        drop(sent);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn over_the_budget_a_body_streams() {
        let budget = new_budget(10);
        let mut cx = Context::from_waker(Waker::noop());
        // Announced: over the budget, not read at all.
        let mut limited = body(&[b"0123456789x"], true);
        let mut reservation = Reservation::new(budget);
        assert!(limited
            .poll_buffer(&mut BytesMut::new(), Some(&mut reservation), &mut cx)
            .is_ready());
        assert_eq!(limited.inner.inner_len(), 1, "streams");
        assert_eq!(budget.held(), 0);
        // Unknown length: counted as it comes; what fits is read, then it streams.
        let mut reservation = Reservation::new(budget);
        let sent = buffer_then_send(
            &mut body(&[b"01234", b"56789x"], false),
            Some(&mut reservation),
        );
        assert_eq!(
            sent,
            [Bytes::from_static(b"01234"), Bytes::from_static(b"56789x")]
        );
        drop((sent, reservation));
        assert_eq!(budget.held(), 0);
    }

    impl Frames {
        fn inner_len(&self) -> usize {
            self.frames.len()
        }
    }
}
