//! Which output line belongs to which invocation.
//!
//! A line is attributed to an invocation when it is the only one in flight on the
//! instance (always so with `instance_concurrency = 1`); otherwise its record has no
//! `request_id`. Whenever the context changes (begin/end), a partial last line is
//! emitted under the old context, so no record mixes two. The full rules are in
//! `docs/launched-instances.md`.
//!
//! Why a lock and not a command channel to the reading task: a command is processed
//! whenever the task gets to it, and by then the instance may already have printed the
//! invocation's first lines, which a drain at that point would attribute to the
//! previous context. Under the lock, "what is in the pipe" is exactly "what was written
//! before the call". The lock is never held across an `.await`; the reader holds it for
//! one chunk, a begin/end for one drain.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use super::emit::{Kind, Record, Shared};
use super::pipe::Pipe;
use super::report::{report_line, Report};
use super::tail::Tail;
use super::{QUEUE_BYTES, QUEUE_LINES};

/// An instance's output state: behind its lock, shared by the reading task and the
/// handles.
pub(super) struct State {
    pub(super) pipes: [Pipe; 2],
    /// Invocations in flight, with their tails.
    pub(super) inflight: HashMap<Arc<str>, Tail>,
    /// The invocation lines are attributed to: the only one in flight, if any.
    pub(super) context: Option<Arc<str>>,
    pub(super) emitter: mpsc::Sender<Record>,
    pub(super) shared: Arc<Shared>,
    /// Function lines dropped since the last drop notice.
    pub(super) dropped: u64,
    pub(super) buf: Vec<u8>,
}

impl State {
    /// One function line (or piece): into the tail of its invocation and, within the
    /// budget, to the emitter.
    pub(super) fn line(&mut self, i: usize, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if let Some(id) = &self.context {
            if let Some(tail) = self.inflight.get_mut(id) {
                tail.push(&text);
            }
        }
        let s = self.shared.clone();
        if s.queued_lines.load(Ordering::Relaxed) >= QUEUE_LINES
            || s.queued_bytes.load(Ordering::Relaxed) >= QUEUE_BYTES
        {
            self.dropped += 1;
            return;
        }
        self.flush_dropped();
        s.queued_lines.fetch_add(1, Ordering::Relaxed);
        let _queued = s.queued_bytes.fetch_add(text.len(), Ordering::Relaxed) + text.len();
        #[cfg(test)]
        s.peak_queued_bytes.fetch_max(_queued, Ordering::Relaxed);
        let record = Record {
            shared: s,
            kind: Kind::Line(self.pipes[i].stream),
            request_id: self.context.clone(),
            text: text.into_owned(),
        };
        self.send(record);
    }

    pub(super) fn flush_dropped(&mut self) {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.send(Record {
                shared: self.shared.clone(),
                kind: Kind::Dropped(n),
                request_id: self.context.clone(),
                text: String::new(),
            });
        }
    }

    fn send(&self, record: Record) {
        if let Err(mpsc::SendError(record)) = self.emitter.send(record) {
            // Only if the emitter thread died; undo the budget so nothing leaks.
            if matches!(record.kind, Kind::Line(_)) {
                self.shared.queued_lines.fetch_sub(1, Ordering::Relaxed);
                self.shared
                    .queued_bytes
                    .fetch_sub(record.text.len(), Ordering::Relaxed);
            }
        }
    }

    /// A START/END/Report line: into the invocation's tail and to the emitter.
    fn control(&mut self, id: &Arc<str>, text: String, tail: &mut Tail) {
        tail.push(&text);
        self.send(Record {
            shared: self.shared.clone(),
            kind: Kind::Control,
            request_id: Some(id.clone()),
            text,
        });
    }

    /// Changes the attribution context; what was read so far stays with the old one.
    fn set_context(&mut self, new: Option<Arc<str>>) {
        if self.context != new {
            self.flush_partial(0);
            self.flush_partial(1);
        }
        self.flush_dropped();
        self.context = new;
    }

    pub(super) fn begin(&mut self, id: Arc<str>) {
        self.drain();
        let sole = self.inflight.keys().all(|k| *k == id);
        self.set_context(sole.then(|| id.clone()));
        let mut tail = Tail::default();
        self.control(&id, format!("START RequestId: {id}"), &mut tail);
        self.inflight.insert(id, tail);
    }

    pub(super) fn end(&mut self, id: Arc<str>, report: &Report) -> String {
        self.drain();
        let mut others = self.inflight.keys().filter(|k| **k != id);
        let new = match (others.next(), others.next()) {
            (Some(k), None) => Some(k.clone()),
            _ => None,
        };
        self.set_context(new);
        let mut tail = self.inflight.remove(&id).unwrap_or_default();
        self.control(&id, format!("END RequestId: {id}"), &mut tail);
        self.control(&id, report_line(&id, report), &mut tail);
        tail.finish()
    }
}
