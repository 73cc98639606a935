//! A TCP connection to an instance and the buffers that live as long as it does: the
//! read buffer responses are decoded out of, the buffer request heads are encoded
//! into, and the header names this instance spells.

use std::future::Future;
use std::io;
#[cfg(test)]
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::head::HeaderNames;

/// First read size; doubled while reads fill it (large bodies), up to [`MAX_READ`].
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// A TCP connection to an instance with its buffers.
pub struct Connection {
    pub(super) io: TcpStream,
    pub(super) read: BytesMut,
    next_read: usize,
    /// Request heads and chunk framing on their way out; kept for its capacity.
    pub(super) out: Vec<u8>,
    pub(super) names: HeaderNames,
    /// `TCP_QUICKACK` was set since this side last wrote (see [`Connection::ack_now`]).
    quick_ack: bool,
}

impl Connection {
    pub fn new(io: TcpStream) -> Connection {
        Connection {
            io,
            read: BytesMut::new(),
            next_read: MIN_READ,
            out: Vec::with_capacity(1024),
            names: HeaderNames::default(),
            quick_ack: false,
        }
    }

    /// Whether the instance closed the connection (or sent something unasked) while it
    /// sat in the pool. Costs a syscall only when the reactor reported the socket
    /// readable; otherwise it is one atomic load, with no waker to register.
    pub fn is_closed(&self) -> bool {
        // A byte read here is one nobody asked for: the connection is dropped with it.
        match self.io.try_read(&mut [0u8; 1]) {
            // The readiness was stale (and is now cleared), or there was none.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // End of stream, an error, or bytes nobody asked for: not reusable.
            Ok(_) | Err(_) => true,
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
            quick_ack,
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
            quick_ack,
        })
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.io.local_addr().unwrap()
    }

    /// Reads more into the read buffer; `Ok(0)` is the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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

    /// [`Connection::poll_fill`] for the rest of a response that has begun to arrive:
    /// before waiting, the bytes already read are acknowledged at once.
    ///
    /// An instance that writes its head and its body separately (Python's
    /// `http.server`, for one) has the body held back by Nagle's algorithm until the
    /// head is acknowledged, while this side, having just sent a request, delays its
    /// acknowledgement in the hope of piggybacking it on the next request, which never
    /// comes before the body: both wait for the delayed-ACK timer (about 40 ms on
    /// Linux). Only a response read in parts pays the system call; one that arrives in
    /// one segment never waits here.
    pub(super) fn poll_fill_rest(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let polled = self.poll_fill(cx);
        if polled.is_pending() {
            self.ack_now();
        }
        polled
    }

    /// Sets `TCP_QUICKACK`, once per turn of the conversation: Linux leaves quick-ACK
    /// mode again when this side next sends data soon after receiving (see
    /// [`Connection::wrote`]), so it is set again after each write, not kept.
    fn ack_now(&mut self) {
        if self.quick_ack {
            return;
        }
        self.quick_ack = true;
        #[cfg(target_os = "linux")]
        {
            // A socket that refuses the option only loses the shortcut.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.io, true);
        }
    }

    /// Notes that bytes went out: the kernel may be back to delaying acknowledgements.
    pub(super) fn wrote(&mut self) {
        self.quick_ack = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Connection::new(client), server)
    }

    /// Waits (bounded) until the socket reports readable, so `is_closed` sees it.
    async fn readable(conn: &Connection) {
        tokio::time::timeout(Duration::from_secs(30), conn.io.readable())
            .await
            .expect("the socket became readable")
            .unwrap();
    }

    #[tokio::test]
    async fn a_quiet_connection_is_reusable() {
        let (conn, _server) = pair().await;
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn bytes_an_instance_sent_while_idle_make_the_connection_unusable() {
        let (conn, mut server) = pair().await;
        // A late or unsolicited response: never to be taken for the next request's.
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        readable(&conn).await;
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_unusable() {
        let (conn, server) = pair().await;
        drop(server);
        readable(&conn).await;
        assert!(conn.is_closed());
    }
}
