//! The gateway's HTTP/1.1 client for instances, driven by the invoking task itself.
//!
//! Why not hyper's client: its `SendRequest` hands each request to a separate
//! connection task through a channel and gets the response head back through another,
//! so every invocation paid two extra task wake-ups and a general-purpose client state
//! machine — about a third of the gateway's user-space instructions per request.
//! Talking to an instance is a narrow case: one request at a time, with headers the
//! gateway has already cleaned, to a server it keeps in a pool. Here the invocation's
//! task writes the request (head and first body frame in one `writev`), parses the
//! response head with `httparse` (as hyper does), and the response body is decoded as
//! the client reads it, zero-copy out of the connection's read buffer.
//!
//! Covered: request bodies streamed frame by frame with their framing (`Content-Length`
//! as given, otherwise chunked), full duplex (the request body keeps flowing while the
//! response streams); response framing as RFC 9112 §6.3 orders it (HEAD, 204 and 304
//! without a body, then chunked, then `Content-Length`, else until close); interim 1xx
//! responses skipped; keep-alive by version and `Connection`.
//!
//! A connection is reused only after an exchange framed cleanly end to end: the request
//! fully written before the final response head arrived, the response body ended by
//! its own framing, and not a byte after it (read with it, or arriving while the
//! connection sits idle, see [`Connection::is_closed`]). Anything else, an answer to a
//! request not yet sent whole, a second response nobody asked for, a `101`, a broken
//! body, retires the connection, so an instance out of step with its requests cannot
//! stay out of step on it.
//!
//! Not covered, on purpose: upgrades (the gateway strips `Upgrade` and `Expect` before
//! a request gets here, and a `101` is refused as invalid), pipelining, transfer codings
//! other than chunked (refused, see [`Framers`]), and response trailers (read and
//! dropped, as the gateway's clients get none).
//!
//! The client knows nothing of pools or invocations: it borrows a [`Connection`] through
//! whatever holds it (any `DerefMut<Target = Connection>`, which [`ResponseBody`] hands
//! back once the body ended cleanly) and sends any [`RequestBody`].
//!
//! | file | holds |
//! |---|---|
//! | `conn` | the socket and its buffers |
//! | `encode` | the request head on the wire |
//! | `request` | the request body on its way out |
//! | `head` | the response head parser (bytes in, no socket) |
//! | `framing` | how a response is framed, whether its connection stays |
//! | `decode` | the response body decoder (bytes in, no socket) |
//! | `response` | the response body as a client polls it |
//! | `error` | how an exchange fails |

mod conn;
mod decode;
mod encode;
mod error;
mod framing;
mod head;
mod request;
mod response;

use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;

pub use conn::Connection;
pub use decode::BodyDecoder;
pub use error::{SendError, UpstreamError};
pub use framing::Framers;
pub use head::{parse_head, HeaderNames, ResponseHead};
pub use response::ResponseBody;

use encode::encode_head;
use request::Outgoing;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body the client can send: `Bytes` frames, and a way to give back a frame
/// it took but never wrote, so that a request found unsent (its pooled connection was
/// dead) comes back whole for another connection.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Unpin {
    /// Gives back `data`, the last frame taken from this body, to be taken again first.
    /// Empty `data` gives nothing back.
    fn put_back(&mut self, data: Bytes);
}

/// A body whose one frame is taken whole: given back, it is whole again.
impl RequestBody for http_body_util::Full<Bytes> {
    fn put_back(&mut self, data: Bytes) {
        if !data.is_empty() {
            *self = http_body_util::Full::new(data);
        }
    }
}

impl RequestBody for http_body_util::Empty<Bytes> {
    fn put_back(&mut self, _: Bytes) {}
}

// === send ===

/// Sends `req` on the connection `conn` holds, with `extra` (complete header lines,
/// already encoded) after its headers, and waits for the response head. The body
/// streams on inside the returned response's [`ResponseBody`], which also owns `conn`
/// until the body ends.
///
/// The head is encoded here, before the first poll; the returned future holds the
/// exchange and the request's head once (an `async fn` would keep its arguments and
/// their moved-in copies side by side, and this future lives inside every
/// invocation's state).
pub fn send<C, B>(mut conn: C, req: Request<B>, extra: &[&[u8]]) -> Sending<C, B>
where
    C: DerefMut<Target = Connection>,
    B: RequestBody,
{
    let (parts, body) = req.into_parts();
    let empty = body.is_end_stream();
    let exact = body.size_hint().exact();
    let framing = encode_head(&mut conn.out, &parts, extra, empty, exact);
    let head_len = conn.out.len();
    let exchange = Exchange {
        out: Outgoing::new(body, empty, framing, head_len),
        conn,
        write_error: None,
        answered: false,
    };
    Sending {
        pending: Some((exchange, parts)),
    }
}

/// The future of [`send`]: the response head, or why there is none.
pub struct Sending<C, B> {
    /// `None` once it has completed.
    pending: Option<(Exchange<C, B>, http::request::Parts)>,
}

impl<C, B> Future for Sending<C, B>
where
    C: DerefMut<Target = Connection> + Unpin,
    B: RequestBody,
{
    type Output = Result<Response<ResponseBody<C, B>>, SendError<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Completed already: like a fused future, it stays pending.
        let Some((exchange, parts)) = this.pending.as_mut() else {
            return Poll::Pending;
        };
        let result = ready!(exchange.poll_head(cx, &parts.method));
        let Some((exchange, parts)) = this.pending.take() else {
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(head) => {
                // An answer that came before the request was fully written was not
                // framed as one: HTTP/1.1 has no way to tell it from a late one meant
                // for an earlier request, so that connection carries nothing more.
                let answered_early = !exchange.out.done();
                let mut response = Response::new(ResponseBody {
                    decoder: head.body,
                    keep_alive: head.keep_alive && !answered_early,
                    out: exchange.out,
                    conn: Some(exchange.conn),
                });
                *response.status_mut() = head.status;
                *response.version_mut() = head.version;
                *response.headers_mut() = head.headers;
                Ok(response)
            }
            Err(e) if !exchange.out.written && !matches!(e, UpstreamError::RequestBody(_)) => {
                // Nothing went out: the connection was dead before the request touched
                // it. A body frame already taken (to go with the head) goes back in,
                // so the request is whole.
                let body = exchange.out.into_unsent_body();
                Err(SendError::Unsent(Request::from_parts(parts, body)))
            }
            Err(e) => Err(SendError::Failed(e)),
        })
    }
}

/// A request on its way and the connection it travels on, until the response head.
struct Exchange<C, B> {
    conn: C,
    out: Outgoing<B>,
    /// Writing failed, but the instance may still have answered: its answer wins.
    write_error: Option<UpstreamError>,
    /// Bytes of the answer (an interim response, or part of the head) have arrived.
    answered: bool,
}

impl<C, B> Exchange<C, B>
where
    C: DerefMut<Target = Connection>,
    B: RequestBody,
{
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, UpstreamError>> {
        let conn: &mut Connection = &mut self.conn;
        loop {
            if !self.out.done() {
                if let Poll::Ready(Err(e)) = self.out.poll_send(conn, cx) {
                    if matches!(e, UpstreamError::RequestBody(_)) || !self.out.written {
                        return Poll::Ready(Err(e));
                    }
                    self.out.abandon();
                    self.write_error = Some(e);
                }
            }
            if let Some(head) = parse_head(&mut conn.read, &mut conn.names, method)? {
                return Poll::Ready(Ok(head));
            }
            // Waiting for the instance to answer costs nothing extra; waiting for the
            // rest of an answer that has begun acknowledges what came (see
            // `Connection::poll_fill_rest`).
            let filled = if self.answered {
                conn.poll_fill_rest(cx)
            } else {
                conn.poll_fill(cx)
            };
            match ready!(filled) {
                Ok(0) => {
                    let e = self
                        .write_error
                        .take()
                        .unwrap_or(UpstreamError::ClosedBeforeHead);
                    return Poll::Ready(Err(e));
                }
                Ok(_) => self.answered = true,
                Err(e) => return Poll::Ready(Err(UpstreamError::io(e, false))),
            }
        }
    }
}
