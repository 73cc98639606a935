//! The gateway's HTTP/1.1 client for instances, driven by the invoking task itself.
//!
//! Why not hyper's client: its `SendRequest` hands each request to a separate
//! connection task through a channel and gets the response head back through another,
//! so every invocation paid two extra task wake-ups and a general-purpose client state
//! machine — about a third of the gateway's user-space instructions per request
//! (callgrind, loadtests/README.md). Talking to an instance is a narrow case: one
//! request at a time, with headers the gateway has already cleaned, to a server it
//! keeps in a pool. Here the invocation's task writes the request (head and first body
//! frame in one `writev`), parses the response head with `httparse` (as hyper does),
//! and the response body is decoded as the client reads it, zero-copy out of the
//! connection's read buffer.
//!
//! Covered: request bodies streamed frame by frame with their framing (`Content-Length`
//! as given, otherwise chunked), full duplex (the request body keeps flowing while the
//! response streams); response framing as RFC 9112 §6.3 orders it (HEAD, 204 and 304
//! without a body, then chunked, then `Content-Length`, else until close); interim 1xx
//! responses skipped; keep-alive by version and `Connection`. Not covered, on purpose:
//! upgrades (the gateway strips `Upgrade` before a request gets here), pipelining, and
//! response trailers (read and dropped, as the gateway's clients get none).

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
#[cfg(test)]
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::PooledConn;
use crate::body::{BoxError, UpstreamBody};

/// First read size; doubled while reads fill it (large bodies), up to [`MAX_READ`].
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// A response head larger than this is refused (hyper's client allows ~400 KB; an
/// instance answering with 64 KB of headers is broken).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A chunk-size line or trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// How an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("closed the connection before answering (crashed or reset)")]
    ClosedBeforeHead,
    #[error("closed the connection before the response ended")]
    ClosedMidBody,
    #[error("reset the connection")]
    Reset,
    #[error("closed the connection while the request was being sent")]
    BrokenPipe,
    #[error("sent an invalid HTTP response: {0}")]
    Invalid(&'static str),
    #[error("failed the invocation: {0}")]
    Io(io::Error),
    /// The client's request body failed (or broke `max_body_bytes`) on the way.
    #[error("{0}")]
    RequestBody(BoxError),
}

impl UpstreamError {
    fn io(e: io::Error, head_seen: bool) -> UpstreamError {
        match e.kind() {
            io::ErrorKind::ConnectionReset => UpstreamError::Reset,
            io::ErrorKind::BrokenPipe => UpstreamError::BrokenPipe,
            io::ErrorKind::UnexpectedEof if head_seen => UpstreamError::ClosedMidBody,
            io::ErrorKind::UnexpectedEof => UpstreamError::ClosedBeforeHead,
            _ => UpstreamError::Io(e),
        }
    }
}

/// Why [`send`] gave up.
// The request travels back by value: boxing it would allocate on every retry.
#[allow(clippy::large_enum_variant)]
pub enum SendError {
    /// Not a byte reached the instance: the request is back, to be sent elsewhere.
    Unsent(Request<UpstreamBody>),
    /// The request was (at least partly) sent: it must not be sent again.
    Failed(UpstreamError),
}

/// A TCP connection to an instance with its buffers, which live as long as it does.
pub struct Connection {
    io: TcpStream,
    read: BytesMut,
    next_read: usize,
    /// Request heads and chunk framing on their way out; kept for its capacity.
    out: Vec<u8>,
    /// Header names as this instance spells them, parsed once: an instance answers
    /// with the same few names in the same order every time, and parsing a name
    /// (lower-casing, matching the standard set, copying an unknown one) was the
    /// largest single cost of reading a response head.
    names: Vec<(Box<[u8]>, HeaderName)>,
}

/// At most this many spellings are remembered per connection.
const NAME_CACHE: usize = 32;

impl Connection {
    pub fn new(io: TcpStream) -> Connection {
        Connection {
            io,
            read: BytesMut::new(),
            next_read: MIN_READ,
            out: Vec::with_capacity(1024),
            names: Vec::new(),
        }
    }

    /// Whether the instance closed the connection (or sent something unasked) while it
    /// sat in the pool. Costs a syscall only when the socket reported readable.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // End of stream, an error, or bytes nobody asked for: not reusable. Pending
            // means the readiness was stale and is now cleared.
            Poll::Ready(Ok(())) => self.poll_fill(&mut cx).is_ready(),
        }
    }

    /// Moves the connection to the calling thread's runtime: deregistered from the
    /// reactor that opened it, registered with this one. Fails if the instance closed
    /// it (or sent something unasked) meanwhile: checked on the bare socket, since a
    /// fresh registration knows no readiness yet.
    pub fn rehome(self) -> io::Result<Connection> {
        let Connection {
            io,
            read,
            next_read,
            out,
            names,
        } = self;
        let io = io.into_std()?;
        match io.peek(&mut [0u8; 1]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
            Ok(_) => return Err(io::ErrorKind::ConnectionAborted.into()),
        }
        Ok(Connection {
            io: TcpStream::from_std(io)?,
            read,
            next_read,
            out,
            names,
        })
    }

    #[cfg(test)]
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.io.local_addr().unwrap()
    }

    /// Reads more into the read buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.next_read / 2 {
            self.read.reserve(self.next_read);
        }
        let spare = self.read.capacity() - self.read.len();
        let n = ready!(pin!(self.io.read_buf(&mut self.read)).poll(cx))?;
        if n == spare && self.next_read < MAX_READ {
            self.next_read *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// The name spelled `raw`, from the names this connection has seen (first where the
    /// last response had its `i`-th header), else parsed and remembered.
    fn header_name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, UpstreamError> {
        if let Some((seen, name)) = self.names.get(i) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        if let Some((_, name)) = self.names.iter().find(|(seen, _)| **seen == *raw) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)
            .map_err(|_| UpstreamError::Invalid("invalid header name"))?;
        if self.names.len() < NAME_CACHE {
            self.names.push((raw.into(), name.clone()));
        }
        Ok(name)
    }

    /// Parses a complete response head off the read buffer, skipping interim (1xx)
    /// responses; `None` while more bytes are needed.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Head>, UpstreamError> {
        loop {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let result = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.read,
                &mut slots,
            );
            let len = match result {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.read.len() > MAX_HEAD => {
                    return Err(UpstreamError::Invalid("response head too large"))
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(UpstreamError::Invalid("too many headers"))
                }
                Err(_) => return Err(UpstreamError::Invalid("malformed response head")),
            };
            let code = parsed.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(UpstreamError::Invalid("unexpected protocol switch"));
                }
                self.read.advance(len);
                continue;
            }
            let status = StatusCode::from_u16(code)
                .map_err(|_| UpstreamError::Invalid("invalid status code"))?;
            let version = match parsed.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            // Header values become slices of the head's bytes, not copies: note where
            // names and values are, then freeze the head.
            let base = self.read.as_ptr() as usize;
            let offset = |s: &[u8]| s.as_ptr() as usize - base;
            let mut spans = [Span::default(); MAX_HEADERS];
            let count = parsed.headers.len();
            for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
                *span = Span {
                    name: (name as u32, (name + h.name.len()) as u32),
                    value: (value as u32, (value + h.value.len()) as u32),
                };
            }
            let head = self.read.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(count);
            let mut framers = Framers::default();
            for (i, &span) in spans[..count].iter().enumerate() {
                let name = self.header_name(i, &head[span.name()])?;
                let value = HeaderValue::from_maybe_shared(head.slice(span.value()))
                    .map_err(|_| UpstreamError::Invalid("invalid header value"))?;
                framers.note(&name, &value);
                headers.append(name, value);
            }
            let decode = framers.decode(method, status)?;
            let keep_alive = framers.keep_alive(version) && !matches!(decode, Decode::ToClose);
            return Ok(Some(Head {
                status,
                version,
                headers,
                decode,
                keep_alive,
            }));
        }
    }
}

/// Where a header's name and value sit in the response head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// A parsed response head and what it says about the body and the connection.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    decode: Decode,
    keep_alive: bool,
}

/// How the rest of the response body is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decode {
    Length(u64),
    Chunked(Chunk),
    ToClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers(usize),
}

/// The headers that frame a response's body and say whether its connection stays open,
/// noted while the head is read into its map: three lookups in the map afterwards
/// (a hash and a probe each) cost more than comparing each name as it goes by, which
/// for these standard names is an integer comparison.
struct Framers {
    /// Whether the last `Transfer-Encoding` line ends in `chunked`: only the final
    /// coding decides (RFC 9112 §6.3).
    transfer_encoding: Option<bool>,
    /// Every `Content-Length` item agreed so far, or why they did not. An error waits
    /// until [`Framers::decode`]: a `Transfer-Encoding`, or a response without a body,
    /// makes the length irrelevant.
    content_length: Result<Option<u64>, &'static str>,
    connection_close: bool,
    connection_keep_alive: bool,
}

impl Default for Framers {
    fn default() -> Self {
        Framers {
            transfer_encoding: None,
            content_length: Ok(None),
            connection_close: false,
            connection_keep_alive: false,
        }
    }
}

impl Framers {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == TRANSFER_ENCODING {
            let chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            self.transfer_encoding = Some(chunked);
        } else if name == CONTENT_LENGTH {
            self.note_length(value.as_bytes());
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                }
            }
        }
    }

    fn note_length(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let Ok(agreed) = self.content_length else {
                return;
            };
            let n = std::str::from_utf8(item.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            self.content_length = match (n, agreed) {
                (None, _) => Err("invalid content-length"),
                (Some(n), Some(l)) if l != n => Err("conflicting content-length"),
                (Some(n), _) => Ok(Some(n)),
            };
        }
    }

    /// How the body is read: RFC 9112 §6.3, in its order.
    fn decode(&self, method: &Method, status: StatusCode) -> Result<Decode, UpstreamError> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Decode::Done);
        }
        if let Some(chunked) = self.transfer_encoding {
            return Ok(if chunked {
                Decode::Chunked(Chunk::Size)
            } else {
                Decode::ToClose
            });
        }
        Ok(match self.content_length.map_err(UpstreamError::Invalid)? {
            Some(0) => Decode::Done,
            Some(n) => Decode::Length(n),
            None => Decode::ToClose,
        })
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it unless
    /// told `keep-alive`.
    fn keep_alive(&self, version: Version) -> bool {
        !self.connection_close && (version != Version::HTTP_10 || self.connection_keep_alive)
    }
}

// === request ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// No body, or one whose length the head announced.
    Length,
    Chunked,
}

/// The request on its way out: pending bytes (the connection's `out` buffer, then a data
/// frame, then a static tail), and the body frames still to come.
struct Outgoing {
    body: UpstreamBody,
    /// The body's end (or its failure) was seen; nothing more to pull from it.
    body_done: bool,
    framing: Framing,
    /// What of the connection's `out` buffer is still to write.
    out_pos: usize,
    out_end: usize,
    data: Bytes,
    tail: &'static [u8],
    /// A byte reached the socket: from here the request must never be sent again.
    written: bool,
    /// Writing stopped early (the instance closed its side, or the body failed): the
    /// connection cannot carry another request.
    abandoned: bool,
}

impl Outgoing {
    fn done(&self) -> bool {
        self.body_done && !self.pending()
    }

    fn pending(&self) -> bool {
        self.out_pos < self.out_end || !self.data.is_empty() || !self.tail.is_empty()
    }

    /// The body as it was before any of it was taken, for a request none of which was
    /// written: a data frame taken goes back in; `None` if trailers were taken.
    fn into_unsent_body(self) -> Option<UpstreamBody> {
        if self.body_done && self.data.is_empty() && self.tail == b"\r\n" {
            // Only taking trailers leaves an empty frame, a finished body and this tail.
            return None;
        }
        let mut body = self.body;
        body.put_back(self.data);
        Some(body)
    }

    fn abandon(&mut self) {
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
    fn poll_send(
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
            self.advance(n);
        }
    }

    /// Queues a body frame (or the body's end) for writing, framed as the head said.
    fn take(
        &mut self,
        conn: &mut Connection,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Result<(), UpstreamError> {
        let chunked = self.framing == Framing::Chunked;
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.body_done = true;
                return Err(UpstreamError::RequestBody(e));
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

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head into `out` and says how the body is framed: as the client
/// framed it when it gave a length, chunked when the length is unknown.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    extra: &[&[u8]],
    empty_body: bool,
    exact_len: Option<u64>,
) -> Framing {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for lines in extra {
        out.extend_from_slice(lines);
    }
    let framing = if parts.headers.contains_key(CONTENT_LENGTH) {
        Framing::Length
    } else if empty_body {
        // A body-carrying method says "empty" explicitly, as clients do.
        if !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        ) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Length
    } else if let Some(n) = exact_len {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

// === exchange ===

/// Sends `req` on `conn`, with `extra` (complete header lines, already encoded) after
/// its headers, and waits for the response head. The body streams on inside
/// the returned response's [`ResponseBody`], which also owns the connection until the
/// body ends.
///
/// The head is encoded here, before the first poll; the returned future holds the
/// exchange and the request's head once (an `async fn` would keep its arguments and
/// their moved-in copies side by side, and this future lives inside every
/// invocation's state).
pub fn send(mut conn: PooledConn, req: Request<UpstreamBody>, extra: &[&[u8]]) -> Sending {
    let (parts, body) = req.into_parts();
    let empty = body.is_end_stream();
    let framing = encode_head(
        &mut conn.h1.out,
        &parts,
        extra,
        empty,
        body.size_hint().exact(),
    );
    let exchange = Exchange {
        out: Outgoing {
            body,
            body_done: empty,
            framing,
            out_pos: 0,
            out_end: conn.h1.out.len(),
            data: Bytes::new(),
            tail: b"",
            written: false,
            abandoned: false,
        },
        conn,
        write_error: None,
    };
    Sending {
        pending: Some((exchange, parts)),
    }
}

/// The future of [`send`]: the response head, or why there is none.
pub struct Sending {
    /// `None` once it has completed.
    pending: Option<(Exchange, http::request::Parts)>,
}

impl Future for Sending {
    type Output = Result<Response<ResponseBody>, SendError>;

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
                let mut response = Response::new(ResponseBody {
                    decode: head.decode,
                    keep_alive: head.keep_alive,
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
                // so the request is whole; trailers cannot, so that rare request fails.
                match exchange.out.into_unsent_body() {
                    Some(body) => Err(SendError::Unsent(Request::from_parts(parts, body))),
                    None => Err(SendError::Failed(e)),
                }
            }
            Err(e) => Err(SendError::Failed(e)),
        })
    }
}

struct Exchange {
    conn: PooledConn,
    out: Outgoing,
    /// Writing failed, but the instance may still have answered: its answer wins.
    write_error: Option<UpstreamError>,
}

impl Exchange {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<Head, UpstreamError>> {
        let conn = &mut self.conn.h1;
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
            if let Some(head) = conn.parse_head(method)? {
                return Poll::Ready(Ok(head));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    let e = self
                        .write_error
                        .take()
                        .unwrap_or(UpstreamError::ClosedBeforeHead);
                    return Poll::Ready(Err(e));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(UpstreamError::io(e, false))),
            }
        }
    }
}

/// An instance's response body, read off the connection as the client polls it. Once
/// it has ended cleanly, [`ResponseBody::take_reusable`] gives the connection back.
pub struct ResponseBody {
    decode: Decode,
    keep_alive: bool,
    out: Outgoing,
    conn: Option<PooledConn>,
}

impl ResponseBody {
    /// The connection, if the exchange ended cleanly and it can carry another one.
    pub fn take_reusable(&mut self) -> Option<PooledConn> {
        let clean = self.decode == Decode::Done
            && self.keep_alive
            && self.out.done()
            && !self.out.abandoned;
        match self.conn.take() {
            Some(conn) if clean && conn.h1.read.is_empty() => Some(conn),
            _ => None,
        }
    }
}

/// One frame from what is buffered; `None` when more must be read.
fn decode_buffered(
    decode: &mut Decode,
    read: &mut BytesMut,
) -> Result<Option<Bytes>, UpstreamError> {
    loop {
        match decode {
            Decode::Done => return Ok(None),
            Decode::ToClose => {
                return Ok((!read.is_empty()).then(|| read.split().freeze()));
            }
            Decode::Length(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(read.len() as u64);
                *left -= n;
                if *left == 0 {
                    *decode = Decode::Done;
                }
                return Ok(Some(read.split_to(n as usize).freeze()));
            }
            Decode::Chunked(chunk) => match *chunk {
                Chunk::Size => {
                    let Some(end) = line_end(read) else {
                        return too_long(read.len(), MAX_CHUNK_LINE, "chunk size line too long");
                    };
                    let size = chunk_size(&read[..end])?;
                    read.advance(end + 2);
                    *chunk = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if read.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(read.len() as u64);
                    *chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                    return Ok(Some(read.split_to(n as usize).freeze()));
                }
                Chunk::DataEnd => {
                    if read.len() < 2 {
                        return Ok(None);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(UpstreamError::Invalid("chunk not followed by CRLF"));
                    }
                    read.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers(seen) => {
                    let Some(end) = line_end(read) else {
                        return too_long(seen + read.len(), MAX_TRAILERS, "trailers too long");
                    };
                    read.advance(end + 2);
                    if end == 0 {
                        *decode = Decode::Done;
                    } else {
                        *chunk = Chunk::Trailers(seen + end + 2);
                    }
                }
            },
        }
    }
}

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn too_long<T>(len: usize, limit: usize, what: &'static str) -> Result<Option<T>, UpstreamError> {
    if len > limit {
        Err(UpstreamError::Invalid(what))
    } else {
        Ok(None)
    }
}

/// The hex size at the start of a chunk-size line (extensions after `;` are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(UpstreamError::Invalid("invalid chunk size"));
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char)
            .to_digit(16)
            .ok_or(UpstreamError::Invalid("invalid chunk size"))?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

impl ResponseBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        let Some(pooled) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let conn = &mut pooled.h1;
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
            match decode_buffered(&mut self.decode, &mut conn.read) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.decode == Decode::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.decode == Decode::ToClose => {
                    self.decode = Decode::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(UpstreamError::ClosedMidBody.into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(UpstreamError::io(e, true).into()))),
            }
        }
    }
}

impl Body for ResponseBody {
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
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// What the head reader notes, from a whole map.
    fn framers(map: &HeaderMap) -> Framers {
        let mut framers = Framers::default();
        for (name, value) in map {
            framers.note(name, value);
        }
        framers
    }

    fn framing(
        method: &Method,
        status: StatusCode,
        map: &HeaderMap,
    ) -> Result<Decode, UpstreamError> {
        framers(map).decode(method, status)
    }

    fn keep_alive(version: Version, map: &HeaderMap) -> bool {
        framers(map).keep_alive(version)
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let ok = StatusCode::OK;
        let cl = headers(&[("content-length", "5")]);
        assert_eq!(framing(&Method::POST, ok, &cl).unwrap(), Decode::Length(5));
        assert_eq!(framing(&Method::HEAD, ok, &cl).unwrap(), Decode::Done);
        assert_eq!(
            framing(&Method::GET, StatusCode::NO_CONTENT, &cl).unwrap(),
            Decode::Done
        );
        assert_eq!(
            framing(&Method::GET, StatusCode::NOT_MODIFIED, &cl).unwrap(),
            Decode::Done
        );
        let te = headers(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "5"),
        ]);
        assert_eq!(
            framing(&Method::GET, ok, &te).unwrap(),
            Decode::Chunked(Chunk::Size)
        );
        let te = headers(&[("transfer-encoding", "gzip")]);
        assert_eq!(framing(&Method::GET, ok, &te).unwrap(), Decode::ToClose);
        assert_eq!(
            framing(&Method::GET, ok, &HeaderMap::new()).unwrap(),
            Decode::ToClose
        );
        let same = headers(&[("content-length", "5, 5")]);
        assert_eq!(framing(&Method::GET, ok, &same).unwrap(), Decode::Length(5));
        for bad in ["5, 6", "-1", "+5", "", "0x5"] {
            let h = headers(&[("content-length", bad)]);
            assert!(framing(&Method::GET, ok, &h).is_err(), "{bad:?}");
            // A bad length does not matter where no length is read.
            assert_eq!(framing(&Method::HEAD, ok, &h).unwrap(), Decode::Done);
        }
        let lines = headers(&[("content-length", "7"), ("content-length", "7")]);
        assert_eq!(
            framing(&Method::GET, ok, &lines).unwrap(),
            Decode::Length(7)
        );
        let lines = headers(&[("content-length", "7"), ("content-length", "8")]);
        assert!(framing(&Method::GET, ok, &lines).is_err());
        // Transfer-Encoding wins over a length, even an invalid one before it.
        let te_later = headers(&[("content-length", "x"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            framing(&Method::GET, ok, &te_later).unwrap(),
            Decode::Chunked(Chunk::Size)
        );
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        assert!(keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keep_alive(
            Version::HTTP_10,
            &headers(&[("connection", "Keep-Alive")])
        ));
        assert!(!keep_alive(
            Version::HTTP_11,
            &headers(&[("connection", "foo, Close")])
        ));
        // `close` wins wherever it is.
        assert!(!keep_alive(
            Version::HTTP_10,
            &headers(&[("connection", "close"), ("connection", "keep-alive")])
        ));
    }

    fn body(mut decode: Decode, wire: &[u8]) -> (Vec<Vec<u8>>, Result<Decode, UpstreamError>) {
        let mut read = BytesMut::from(wire);
        let mut frames = Vec::new();
        loop {
            match decode_buffered(&mut decode, &mut read) {
                Ok(Some(data)) => frames.push(data.to_vec()),
                Ok(None) => return (frames, Ok(decode)),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n0\r\nx-t: 1\r\n\r\n";
        let (frames, end) = body(Decode::Chunked(Chunk::Size), wire);
        assert_eq!(frames, vec![b"hello".to_vec(), b" ".to_vec()]);
        assert_eq!(end.unwrap(), Decode::Done);
        // Cut anywhere, it waits for more instead of failing.
        let (frames, end) = body(Decode::Chunked(Chunk::Size), b"a\r\n01234");
        assert_eq!(frames, vec![b"01234".to_vec()]);
        assert_eq!(end.unwrap(), Decode::Chunked(Chunk::Data(5)));
        let (_, end) = body(Decode::Chunked(Chunk::Size), b"5\r\nhelloXX");
        assert!(end.is_err());
        let (_, end) = body(Decode::Chunked(Chunk::Size), b"zz\r\n");
        assert!(end.is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(body(Decode::Chunked(Chunk::Size), &long).1.is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (frames, end) = body(Decode::Length(3), b"abcdef");
        assert_eq!(frames, vec![b"abc".to_vec()]);
        assert_eq!(end.unwrap(), Decode::Done);
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = "/web/a?x=1".parse().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req.into_parts().0
    }

    #[test]
    fn heads_carry_the_target_headers_and_framing() {
        let mut out = Vec::new();
        let parts = request(Method::POST, &[("content-length", "2"), ("x-a", "b")]);
        let framing = encode_head(&mut out, &parts, &[b"x-b: c\r\n"], false, None);
        assert_eq!(framing, Framing::Length);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /web/a?x=1 HTTP/1.1\r\ncontent-length: 2\r\nx-a: b\r\nx-b: c\r\n\r\n"
        );
        let parts = request(Method::POST, &[]);
        encode_head(&mut out, &parts, &[], true, None);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let parts = request(Method::GET, &[]);
        encode_head(&mut out, &parts, &[], true, None);
        assert!(out.ends_with(b"HTTP/1.1\r\n\r\n"));
    }
}
