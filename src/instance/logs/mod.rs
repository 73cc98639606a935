//! Instance output as log records, attributed to invocations.
//!
//! Every launched instance gets an [`InstanceLog`]: its stdout and stderr lines become
//! JSON records with the function's labels and, when attributable, the invocation's
//! `request_id`; around each invocation come `START`, `END` and the Report line, and
//! [`InstanceLog::end`] returns the invocation's log tail. The records, the attribution
//! rules, the ordering and the bounds are specified in `docs/launched-instances.md`.
//!
//! By file: `pipe` reads the pipes, `lines` cuts bytes into records, `attribution`
//! decides whose they are, `emit` writes them out, `report` formats the Report line and
//! `tail` keeps the tail.

mod attribution;
mod emit;
mod lines;
mod pipe;
mod report;
mod tail;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicUsize;
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use attribution::State;
use emit::{emitter, Shared, Stream};
use pipe::{read_pipes, Pipe, READ_CHUNK};

pub use report::{billed_millis, duration_ms, report_line, Report};
pub use tail::base64;

/// Longest record a function line becomes; longer lines are cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;
/// Size of the log tail [`InstanceLog::end`] returns.
pub const TAIL_BYTES: usize = 4096;
/// Per instance: most function-line records waiting for the emitter thread.
pub const QUEUE_LINES: usize = 2048;
/// Per instance: most bytes of function-line text waiting for the emitter thread.
pub const QUEUE_BYTES: usize = 512 * 1024;

/// Who an instance's records belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub function: String,
    pub namespace: String,
    pub instance: String,
}

/// Handle to the log collection of one instance; cheap to clone.
///
/// `begin` and `end` act at the moment they are called, under the instance's lock: what
/// is in the pipes then was written before the call. They work the same after the
/// instance is gone (both pipes at EOF).
#[derive(Clone)]
pub struct InstanceLog {
    state: Arc<Mutex<State>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InstanceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceLog")
            .field("labels", &self.shared.labels)
            .finish_non_exhaustive()
    }
}

impl InstanceLog {
    /// Takes the read ends of the instance's stdout and stderr pipes and starts reading
    /// them. Must be called within a tokio runtime (with IO enabled). Records are emitted
    /// to the `tracing` dispatcher that is the default where `start` is called.
    ///
    /// Fails when a descriptor is not the read end of a pipe, or the emitter thread cannot
    /// be started.
    pub fn start(stdout: OwnedFd, stderr: OwnedFd, labels: Labels) -> io::Result<InstanceLog> {
        let (rx_out, out) = Pipe::new(stdout, Stream::Stdout)?;
        let (rx_err, err) = Pipe::new(stderr, Stream::Stderr)?;
        let emitter = emitter()?;
        let shared = Arc::new(Shared {
            labels,
            dispatch: tracing::dispatcher::get_default(|d| d.clone()),
            queued_lines: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            #[cfg(test)]
            peak_queued_bytes: AtomicUsize::new(0),
        });
        let state = Arc::new(Mutex::new(State {
            pipes: [out, err],
            inflight: HashMap::new(),
            context: None,
            emitter,
            shared: shared.clone(),
            dropped: 0,
            buf: vec![0; READ_CHUNK],
        }));
        tokio::spawn(read_pipes([Some(rx_out), Some(rx_err)], state.clone()));
        Ok(InstanceLog { state, shared })
    }

    /// An invocation was handed to this instance (call it before the request is sent):
    /// emits what the instance wrote before, then `START RequestId: <id>`, and from now
    /// on attributes lines to the invocation while it is the only one in flight.
    ///
    /// Does not wait for anything but the instance's lock, which is held for at most one
    /// 64 KiB read at a time.
    pub fn begin(&self, request_id: &str) {
        self.lock().begin(request_id.into());
    }

    /// The invocation's response has ended: reads what the instance wrote so far and
    /// emits it (still attributed), then `END RequestId: <id>` and the Report line, and
    /// returns the invocation's log tail (its last [`TAIL_BYTES`]). Never waits for the
    /// instance or the emitter. Synchronous on purpose: END must be out before the
    /// slot is freed and the next invocation's START can happen.
    pub fn end(&self, request_id: &str, report: Report) -> String {
        self.lock().end(request_id.into(), &report)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Largest number of function-line bytes that were queued for the emitter at once.
    #[cfg(test)]
    fn peak_queued_bytes(&self) -> usize {
        self.shared.peak_queued_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
