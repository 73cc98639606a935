//! What a client connection's task knows of its requests and its socket, so that it can
//! tell an idle connection (which it parks, see `parking`) from a busy one without a
//! timer or a lock per request: a few relaxed counters, bumped where the bytes move and
//! where hyper takes and drops a request, read once per tick.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What a client connection's task and its requests share: counters read once per tick.
/// Everything runs on the connection's task (relaxed atomics only for `Send`).
#[derive(Default)]
pub(super) struct Activity {
    /// Socket reads and writes that moved bytes.
    moved: AtomicU64,
    /// Request heads handed to the handler.
    pub(super) requests: AtomicU64,
    /// Requests whose response body hyper has not dropped yet.
    pub(super) in_flight: AtomicUsize,
    /// The last socket write would have blocked: hyper holds unsent response bytes.
    pub(super) write_blocked: AtomicBool,
    /// hyper is being shut down only to park the connection: keep the socket open.
    pub(super) parking: AtomicBool,
    /// HTTP/2: the client is in the middle of a request head (see `http2`).
    pub(super) head_pending: AtomicBool,
}

impl Activity {
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(super) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    pub(super) fn bump_moved(&self) {
        // One writer (the connection's task): no read-modify-write needed.
        self.moved.store(self.moved() + 1, Ordering::Relaxed);
    }

    pub(super) fn wrote(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.bump_moved();
                self.write_blocked.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.write_blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

/// Counts a request as in flight from its head to the drop of its response body.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The handler's future as hyper's service future, polled in place, marking the
    /// request in flight until its response body is dropped. An `async` block awaiting
    /// the handler's future would hold it twice (the captured future and the awaited
    /// copy side by side), doubling the per-request state hyper keeps.
    pub(super) struct Tracking<F> {
        #[pin]
        pub(super) inner: F,
        pub(super) in_flight: Option<InFlight>,
    }
}

impl<F, B> Future for Tracking<F>
where
    F: Future<Output = Response<B>>,
{
    type Output = Result<Response<Tracked<B>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        // An `Option` only so that the mark can move out of the pinned future.
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that keeps its request counted in flight until hyper drops it.
pub(super) struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
