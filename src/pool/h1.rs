//! The HTTP/1.1 client for instances ([`crate::upstream::h1`]) bound to what an
//! invocation gives it: a [`PooledConn`] holds the connection, and the request carries
//! a client's [`UpstreamBody`]. The names here are the client's, with those two filled
//! in.

use std::ops::{Deref, DerefMut};

use http::Request;

use super::PooledConn;
use crate::body::{LimitedBody, UpstreamBody};
use crate::upstream::h1;

pub use h1::{Connection, Framers, UpstreamError};

pub type Sending = h1::Sending<PooledConn, UpstreamBody>;
pub type ResponseBody = h1::ResponseBody<PooledConn, UpstreamBody>;
pub type SendError = h1::SendError<UpstreamBody>;

/// [`h1::send`] on a pooled connection.
pub fn send(conn: PooledConn, req: Request<UpstreamBody>, extra: &[&[u8]]) -> Sending {
    h1::send(conn, req, extra)
}

impl Deref for PooledConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.h1
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.h1
    }
}

impl h1::RequestBody for LimitedBody {
    fn put_back(&mut self, data: bytes::Bytes) {
        LimitedBody::put_back(self, data);
    }
}
