//! The request on its way out: the encoded head, then the body frame by frame in its
//! framing, written with as few system calls as the frames allow.

use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::io::AsyncWrite;

use super::encode::Framing;
use super::{Connection, RequestBody, UpstreamError};

/// Pending bytes (the connection's `out` buffer, then a data frame, then a static
/// tail), and the body frames still to come.
pub(super) struct Outgoing<B> {
    body: B,
    /// The body's end (or its failure) was seen; nothing more to pull from it.
    body_done: bool,
    framing: Framing,
    /// What of the connection's `out` buffer is still to write.
    out_pos: usize,
    out_end: usize,
    data: Bytes,
    tail: &'static [u8],
    /// A byte reached the socket: from here the request must never be sent again.
    pub(super) written: bool,
    /// Writing stopped early (the instance closed its side, or the body failed): the
    /// connection cannot carry another request.
    pub(super) abandoned: bool,
}

impl<B: RequestBody> Outgoing<B> {
    /// A request whose head (`head_len` bytes of the connection's `out` buffer) is
    /// encoded, with `body` to follow; `empty` if the body has nothing to send.
    pub(super) fn new(body: B, empty: bool, framing: Framing, head_len: usize) -> Outgoing<B> {
        Outgoing {
            body,
            body_done: empty,
            framing,
            out_pos: 0,
            out_end: head_len,
            data: Bytes::new(),
            tail: b"",
            written: false,
            abandoned: false,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.body_done && !self.pending()
    }

    fn pending(&self) -> bool {
        self.out_pos < self.out_end || !self.data.is_empty() || !self.tail.is_empty()
    }

    /// The body as it was before any of it was taken, for a request none of which was
    /// written: a data frame taken goes back in. Trailers taken were dropped anyway, so
    /// the body sends the same bytes again.
    pub(super) fn into_unsent_body(self) -> B {
        let mut body = self.body;
        body.put_back(self.data);
        body
    }

    pub(super) fn abandon(&mut self) {
        self.body_done = true;
        self.data = Bytes::new();
        self.tail = b"";
        self.out_pos = self.out_end;
        self.abandoned = true;
    }

    /// Writes what is pending and pulls the next body frames, until the body is sent
    /// (`Ready(Ok)`), the socket or the body is not ready (`Pending`), or it fails.
    ///
    /// A frame that is already there is pulled before writing, so a head and a small
    /// body leave in one `writev` (one syscall and one segment, not two).
    pub(super) fn poll_send(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            if self.data.is_empty() && self.tail.is_empty() && !self.body_done {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        self.take(conn, frame)?;
                        continue;
                    }
                    Poll::Pending if !self.pending() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if !self.pending() {
                // Nothing to write and the body ended (a pending body returned above).
                return Poll::Ready(Ok(()));
            }
            let bufs = [
                IoSlice::new(&conn.out[self.out_pos..self.out_end]),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let n = match ready!(Pin::new(&mut conn.io).poll_write_vectored(cx, &bufs)) {
                Ok(0) => return Poll::Ready(Err(UpstreamError::BrokenPipe)),
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(UpstreamError::io(e, false))),
            };
            self.written = true;
            conn.wrote();
            self.advance(n);
        }
    }

    /// Queues a body frame (or the body's end) for writing, framed as the head said.
    fn take(
        &mut self,
        conn: &mut Connection,
        frame: Option<Result<Frame<Bytes>, B::Error>>,
    ) -> Result<(), UpstreamError> {
        let chunked = self.framing == Framing::Chunked;
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.body_done = true;
                return Err(UpstreamError::RequestBody(e.into()));
            }
            None => {
                self.body_done = true;
                if chunked {
                    self.tail = b"0\r\n\r\n";
                }
                return Ok(());
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                // The body's end is often known with its last frame: say so now, in
                // the same write.
                let last = self.body.is_end_stream();
                if chunked {
                    let out = self.reuse_out(conn);
                    // Writing into a Vec cannot fail.
                    let _ = write!(out, "{:x}\r\n", data.len());
                    self.out_end = conn.out.len();
                    self.tail = if last { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                }
                self.body_done = last;
                self.data = data;
            }
            Err(_trailers) => {
                // Trailers end the body, and are not forwarded: an instance that merges
                // them into its headers would otherwise take a client's `X-Scf-*`,
                // `Host` or framing fields for the gateway's.
                self.body_done = true;
                if chunked {
                    self.tail = b"0\r\n\r\n";
                }
            }
        }
        Ok(())
    }

    /// The connection's `out` buffer, to append framing to: emptied first if all of it
    /// was written, else kept (the head may still be waiting to go with this frame).
    fn reuse_out<'c>(&mut self, conn: &'c mut Connection) -> &'c mut Vec<u8> {
        if self.out_pos == self.out_end {
            conn.out.clear();
            self.out_pos = 0;
        }
        &mut conn.out
    }

    fn advance(&mut self, mut n: usize) {
        let from_out = n.min(self.out_end - self.out_pos);
        self.out_pos += from_out;
        n -= from_out;
        let from_data = n.min(self.data.len());
        if from_data == self.data.len() {
            // Drop the frame rather than keep an empty slice of it: it shares the
            // client connection's read buffer, which hyper can reuse only once no
            // slice of it is left (else it allocates a new one for the next request).
            self.data = Bytes::new();
        } else {
            self.data.advance(from_data);
        }
        n -= from_data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http::{HeaderMap, HeaderValue};
    use http_body::Body;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A body of the given frames, in order.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    impl RequestBody for Frames {
        fn put_back(&mut self, data: Bytes) {
            if !data.is_empty() {
                self.0.push_front(Frame::data(data));
            }
        }
    }

    /// What a body framed `framing` looks like on the wire.
    async fn sent(frames: Vec<Frame<Bytes>>, framing: Framing) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(client);
        let mut out = Outgoing::new(Frames(frames.into()), false, framing, 0);
        std::future::poll_fn(|cx| out.poll_send(&mut conn, cx))
            .await
            .unwrap();
        assert!(out.done());
        drop(conn);
        let mut wire = Vec::new();
        server.read_to_end(&mut wire).await.unwrap();
        wire
    }

    #[tokio::test]
    async fn trailers_are_dropped_and_the_chunked_body_still_ends() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-scf-secret-key", HeaderValue::from_static("forged"));
        trailers.insert("host", HeaderValue::from_static("evil"));
        let frames = || {
            vec![
                Frame::data(Bytes::from_static(b"hello")),
                Frame::trailers(trailers.clone()),
            ]
        };
        assert_eq!(
            sent(frames(), Framing::Chunked).await,
            b"5\r\nhello\r\n0\r\n\r\n"
        );
        assert_eq!(sent(frames(), Framing::Length).await, b"hello");
        // A body of trailers alone is an empty chunked body.
        assert_eq!(
            sent(vec![Frame::trailers(trailers.clone())], Framing::Chunked).await,
            b"0\r\n\r\n"
        );
    }
}
