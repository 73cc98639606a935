//! The request on its way out: the encoded head, then the body frame by frame in its
//! framing, written with as few system calls as the frames allow.

use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::io::AsyncWrite;

use super::encode::{put_header, Framing};
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
    /// written: a data frame taken goes back in; `None` if trailers were taken.
    pub(super) fn into_unsent_body(self) -> Option<B> {
        if self.body_done && self.data.is_empty() && self.tail == b"\r\n" {
            // Only taking trailers leaves an empty frame, a finished body and this tail.
            return None;
        }
        let mut body = self.body;
        body.put_back(self.data);
        Some(body)
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
            Err(frame) => {
                // Trailers end the body; only chunked framing can carry them.
                if let Ok(trailers) = frame.into_trailers() {
                    self.body_done = true;
                    if chunked {
                        let out = self.reuse_out(conn);
                        out.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            put_header(out, name.as_str().as_bytes(), value.as_bytes());
                        }
                        self.out_end = conn.out.len();
                        self.tail = b"\r\n";
                    }
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
