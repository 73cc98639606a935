//! Reading the instance's stdout and stderr pipes.
//!
//! One tokio task per instance waits for either pipe to become readable and reads it
//! under the instance's lock, one 64 KiB chunk at a time. A begin or end takes the same
//! lock and first [drains](State::drain) both pipes, reading the descriptors directly
//! (a short read means the pipe was empty) instead of trusting the reactor's possibly
//! stale readiness: so what is in the pipes at that moment is exactly what was written
//! before the call.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::net::unix::pipe;

use super::attribution::State;
use super::emit::Stream;

/// One read from a pipe.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Bytes the task reads from one pipe per readiness event before it yields.
const READ_TURN: usize = 256 * 1024;
/// Most bytes a begin/end reads from one pipe "right now": a pipe holds 64 KiB by
/// default and at most 1 MiB unless root raised `fs.pipe-max-size`; a writer refilling
/// it as fast as it is read must not keep begin/end reading forever.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// One of the two pipes, as the state sees it. `file` is a duplicate of the descriptor
/// the reading task polls, for reading "everything in the pipe right now" at begin/end,
/// which `Receiver::try_read` cannot promise (it returns `WouldBlock` without a syscall
/// while the reactor has not yet seen the readiness event).
pub(super) struct Pipe {
    pub(super) stream: Stream,
    /// `None` once the stream hit EOF.
    pub(super) file: Option<File>,
    /// The current line so far (no newline yet); at most [`MAX_LINE`](super::MAX_LINE) bytes.
    pub(super) pending: Vec<u8>,
}

impl Pipe {
    pub(super) fn new(fd: OwnedFd, stream: Stream) -> io::Result<(pipe::Receiver, Pipe)> {
        // Checks that it is a pipe's read end and makes it non-blocking (shared by the dup).
        let rx = pipe::Receiver::from_owned_fd(fd)?;
        let file = File::from(rx.as_fd().try_clone_to_owned()?);
        let pipe = Pipe {
            stream,
            file: Some(file),
            pending: Vec::new(),
        };
        Ok((rx, pipe))
    }
}

pub(super) enum Outcome {
    Data(usize),
    WouldBlock,
    Closed,
}

/// The reading task: waits for either pipe to become readable and reads it under the
/// lock, one chunk at a time, until both hit EOF.
pub(super) async fn read_pipes(mut rx: [Option<pipe::Receiver>; 2], state: Arc<Mutex<State>>) {
    loop {
        let (i, ready) = {
            let [out, err] = &rx;
            tokio::select! {
                r = readable(out.as_ref()), if out.is_some() => (0, r),
                r = readable(err.as_ref()), if err.is_some() => (1, r),
                else => break,
            }
        };
        let mut total = 0;
        while total < READ_TURN {
            let Some(r) = &rx[i] else { break };
            let mut st = state.lock();
            let outcome = match ready {
                // A begin/end may have seen the EOF first.
                _ if st.pipes[i].file.is_none() => Outcome::Closed,
                Ok(()) => st.read_chunk(i, |buf| r.try_read(buf)),
                Err(_) => {
                    st.close(i);
                    Outcome::Closed
                }
            };
            drop(st);
            match outcome {
                Outcome::Data(n) => total += n.max(1),
                Outcome::WouldBlock => break,
                Outcome::Closed => rx[i] = None,
            }
        }
        if total >= READ_TURN {
            // Still more to read: let others (a begin/end waiting for the lock, other
            // tasks) in between turns.
            tokio::task::yield_now().await;
        }
    }
}

async fn readable(rx: Option<&pipe::Receiver>) -> io::Result<()> {
    match rx {
        Some(rx) => rx.readable().await,
        None => std::future::pending().await,
    }
}

// === impl State: reading (the state itself is in `attribution`) ===

impl State {
    /// One read from open pipe `i` with `read`, fed into lines; closes it at EOF.
    fn read_chunk(
        &mut self,
        i: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Outcome {
        let mut buf = std::mem::take(&mut self.buf);
        let outcome = match read(&mut buf) {
            Ok(0) => Outcome::Closed,
            Ok(n) => {
                self.feed(i, &buf[..n]);
                Outcome::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::WouldBlock,
            // Interrupted: nothing read, try again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Outcome::Data(0),
            Err(_) => Outcome::Closed,
        };
        self.buf = buf;
        if let Outcome::Closed = outcome {
            self.close(i);
        }
        outcome
    }

    /// Reads everything in both pipes right now, bypassing the reactor's readiness: until
    /// `WouldBlock`, a short read (the pipe was empty at that instant), EOF or
    /// [`DRAIN_LIMIT`] (against a writer refilling the pipe as fast as it is read).
    pub(super) fn drain(&mut self) {
        for i in 0..2 {
            let mut total = 0;
            while total < DRAIN_LIMIT {
                let Some(file) = self.pipes[i].file.take() else {
                    break;
                };
                let outcome = self.read_chunk(i, |buf| (&file).read(buf));
                if let Outcome::Closed = outcome {
                    break;
                }
                self.pipes[i].file = Some(file);
                match outcome {
                    // A short read emptied the pipe: all written before the call is read.
                    Outcome::Data(n) if n == 0 || n == READ_CHUNK => total += n,
                    _ => break,
                }
            }
        }
    }

    /// EOF (or a read error) on pipe `i`: its partial line is emitted, the pipe closed.
    pub(super) fn close(&mut self, i: usize) {
        self.pipes[i].file = None;
        self.flush_partial(i);
        if self.pipes.iter().all(|p| p.file.is_none()) {
            self.flush_dropped();
        }
    }
}
