//! How an exchange with an instance fails, in the words an operator reads in a 502.

use std::io;

use http::Request;

use super::BoxError;

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
    /// A `Transfer-Encoding` other than `chunked` alone: decoding only the chunks would
    /// hand the client a body still in a coding nothing tells it about.
    #[error("used an unsupported transfer coding (only chunked is accepted)")]
    UnsupportedTransferCoding,
    #[error("failed the invocation: {0}")]
    Io(io::Error),
    /// The client's request body failed (or broke `max_body_bytes`) on the way.
    #[error("{0}")]
    RequestBody(BoxError),
}

impl UpstreamError {
    pub(super) fn io(e: io::Error, head_seen: bool) -> UpstreamError {
        match e.kind() {
            io::ErrorKind::ConnectionReset => UpstreamError::Reset,
            io::ErrorKind::BrokenPipe => UpstreamError::BrokenPipe,
            io::ErrorKind::UnexpectedEof if head_seen => UpstreamError::ClosedMidBody,
            io::ErrorKind::UnexpectedEof => UpstreamError::ClosedBeforeHead,
            _ => UpstreamError::Io(e),
        }
    }
}

/// Why [`send`](super::send) gave up.
// The request travels back by value: boxing it would allocate on every retry.
#[allow(clippy::large_enum_variant)]
pub enum SendError<B> {
    /// Not a byte reached the instance: the request is back, to be sent elsewhere.
    Unsent(Request<B>),
    /// The request was (at least partly) sent: it must not be sent again.
    Failed(UpstreamError),
}

impl<B> std::fmt::Debug for SendError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent(_) => f.write_str("Unsent(..)"),
            SendError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}
