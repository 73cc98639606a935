//! Records on their way out: one emitter thread, shared by every instance, turns them
//! into `tracing` events within the dispatcher that was the default when the instance
//! was started (with the gateway's JSON formatter, one line on stdout each).
//!
//! The readers never wait for it: they send over an unbounded channel, and each
//! instance's function lines are admitted only within a budget
//! ([`QUEUE_LINES`](super::QUEUE_LINES) lines and [`QUEUE_BYTES`](super::QUEUE_BYTES)
//! bytes queued); beyond it they are dropped and counted, and one `<N> lines of output
//! dropped` record says so. START, END and Report bypass the budget.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use tracing::Dispatch;

use super::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What the reader and the emitter thread share for one instance.
pub(super) struct Shared {
    pub(super) labels: Labels,
    pub(super) dispatch: Dispatch,
    /// Function-line records queued for the emitter (the line budget).
    pub(super) queued_lines: AtomicUsize,
    pub(super) queued_bytes: AtomicUsize,
    #[cfg(test)]
    pub(super) peak_queued_bytes: AtomicUsize,
}

pub(super) enum Kind {
    Line(Stream),
    /// START / END / Report.
    Control,
    Dropped(u64),
}

/// One record on its way to the emitter thread.
pub(super) struct Record {
    pub(super) shared: Arc<Shared>,
    pub(super) kind: Kind,
    pub(super) request_id: Option<Arc<str>>,
    pub(super) text: String,
}

impl Record {
    pub(super) fn emit(&self) {
        let l = &self.shared.labels;
        let request_id = self.request_id.as_deref();
        tracing::dispatcher::with_default(&self.shared.dispatch, || match self.kind {
            Kind::Line(stream) => tracing::info!(
                target: "function",
                function = %l.function,
                namespace = %l.namespace,
                instance = %l.instance,
                request_id,
                stream = stream.as_str(),
                "{}",
                self.text
            ),
            Kind::Control => tracing::info!(
                target: "function",
                function = %l.function,
                namespace = %l.namespace,
                instance = %l.instance,
                request_id,
                "{}",
                self.text
            ),
            Kind::Dropped(n) => tracing::warn!(
                target: "function",
                function = %l.function,
                namespace = %l.namespace,
                instance = %l.instance,
                request_id,
                "{n} lines of output dropped"
            ),
        });
    }
}

/// The sender to the emitter thread, started on first use and shared by all instances.
pub(super) fn emitter() -> io::Result<mpsc::Sender<Record>> {
    static EMITTER: OnceLock<mpsc::Sender<Record>> = OnceLock::new();
    if let Some(tx) = EMITTER.get() {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel::<Record>();
    std::thread::Builder::new()
        .name("instance-logs".into())
        .spawn(move || {
            for record in rx {
                // A panicking subscriber must not end log emission for every instance.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| record.emit()));
                if matches!(record.kind, Kind::Line(_)) {
                    let shared = &record.shared;
                    shared.queued_lines.fetch_sub(1, Ordering::Relaxed);
                    shared
                        .queued_bytes
                        .fetch_sub(record.text.len(), Ordering::Relaxed);
                }
            }
        })?;
    // Two first uses at once: the loser's thread ends when its sender is dropped here.
    let _ = EMITTER.set(tx);
    Ok(EMITTER.get().expect("emitter set").clone())
}
