//! An instance's response body as the client polls it: decoded out of the
//! connection's read buffer as it arrives, while the request body, if it is still
//! flowing, keeps being sent (full duplex).

use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::decode::BodyDecoder;
use super::request::Outgoing;
use super::{BoxError, Connection, RequestBody, UpstreamError};

/// An instance's response body, read off the connection `C` holds as the client polls
/// it. Once it has ended cleanly, [`ResponseBody::take_reusable`] gives the connection
/// back.
pub struct ResponseBody<C, B> {
    pub(super) decoder: BodyDecoder,
    pub(super) keep_alive: bool,
    pub(super) out: Outgoing<B>,
    pub(super) conn: Option<C>,
}

impl<C, B> ResponseBody<C, B>
where
    C: DerefMut<Target = Connection>,
    B: RequestBody,
{
    /// The connection, if the exchange ended cleanly and it can carry another one: not
    /// if a byte came after the response, read with it or reported by the reactor
    /// since (a second response nobody asked for would answer the next request).
    pub fn take_reusable(&mut self) -> Option<C> {
        let clean =
            self.decoder.is_done() && self.keep_alive && self.out.done() && !self.out.abandoned;
        match self.conn.take() {
            Some(conn) if clean && conn.read.is_empty() && !conn.is_closed() => Some(conn),
            _ => None,
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let conn: &mut Connection = conn;
        if !self.out.done() {
            // Full duplex: the request body keeps flowing while the response streams.
            if let Poll::Ready(Err(e)) = self.out.poll_send(conn, cx) {
                self.out.abandon();
                if let UpstreamError::RequestBody(e) = e {
                    return Poll::Ready(Some(Err(e)));
                }
                // The instance stopped reading the request; its response may go on.
            }
        }
        loop {
            match self.decoder.decode(&mut conn.read) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.decoder.is_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(conn.poll_fill_rest(cx)) {
                Ok(0) => {
                    return match self.decoder.end_of_stream() {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(UpstreamError::io(e, true).into()))),
            }
        }
    }
}

impl<C, B> Body for ResponseBody<C, B>
where
    C: DerefMut<Target = Connection> + Unpin,
    B: RequestBody,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_data(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken exchange leaves the connection in an unknown state: close it.
            this.conn = None;
        }
        polled.map(|data| data.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}
