//! Instance output as log records, attributed to invocations (issue 3 point 7, contract §5).
//!
//! Every launched instance gets an [`InstanceLog`]. Its state (line buffers, the
//! invocations in flight and their tails) sits behind one lock; one tokio task per
//! instance waits for either pipe to become readable and reads it under the lock, one
//! 64 KiB chunk at a time, and [`begin`] / [`end`] take the same lock and first read
//! whatever is in both pipes at that moment. So pipe data, `begin` and `end` are
//! processed in exactly one order, the order in which they happened. Complete lines go
//! as records to a single emitter thread (shared by all instances, fed by an unbounded
//! `std::sync::mpsc` channel whose function lines are budgeted, see *Bounds*), which calls
//! `tracing` within the dispatcher that was the default when the instance was started;
//! with the gateway's JSON formatter each record is one line on stdout.
//!
//! (Why a lock and not a command channel to the task: a command is processed whenever
//! the task gets to it, and by then the instance may already have printed the
//! invocation's first lines, which a drain at that point would attribute to the previous
//! context. Under the lock, "what is in the pipe" is exactly "what was written before
//! the call". The lock is never held across an `.await`; the task holds it for one
//! chunk, a `begin`/`end` for one drain: ~1 ms at most in release builds under a
//! 170 MB/s flood, microseconds normally.)
//!
//! # Records
//! - **Function lines**: `INFO`, target `function`, fields `function`, `namespace`,
//!   `instance`, `stream` (`"stdout"` / `"stderr"`), `request_id` and the line as the
//!   message. `request_id` is present only when the line is attributable, i.e. exactly one
//!   invocation is in flight on the instance (always so with `instance_concurrency = 1`);
//!   otherwise the field is **omitted** (not empty). Invalid UTF-8 is replaced by U+FFFD; a
//!   trailing `\r` (CRLF output) is removed.
//! - **`START RequestId: <id>`**, **`END RequestId: <id>`** and **`Report RequestId: ...`**:
//!   `INFO`, target `function`, the same labels and the invocation's `request_id` (always
//!   present), no `stream`. They are never dropped.
//! - **`<N> lines of output dropped`**: `WARN`, target `function`, the labels and the
//!   `request_id` of the context the lines were dropped in (omitted when none), no
//!   `stream`. See *Bounds*.
//!
//! # The Report line
//! `Report RequestId: <id> Duration:<ms>ms BilledDuration:<ms>ms Memory:<MB>MB MemUsage:<MB>MB`
//! (see [`report_line`]):
//! - `Duration` in milliseconds with exactly 2 decimals, rounded half up (`Duration:12.35ms`);
//! - `BilledDuration` is the exact duration rounded **up** to the next whole millisecond
//!   (12.01 ms -> 13, exactly 12 ms -> 12, 0 -> 0), see [`billed_millis`];
//! - `Memory` is the configured `memory_mb`, an integer;
//! - `MemUsage` is the invocation's peak memory in MiB (1 MB = 1,048,576 bytes, as
//!   `memory_mb`) with exactly 2 decimals, rounded half up; `MemUsage:0.00MB` when unknown.
//!
//! # Attribution and ordering
//! [`begin`] and [`end`] first read everything in both pipes at the moment of the call,
//! reading the descriptors directly (a short read means the pipe was empty) instead of
//! trusting the reactor's possibly stale readiness. So output written before `begin` is
//! not attributed to the new invocation (call `begin` before sending the request), and
//! output written before the response ended is attributed to it and lands before its
//! `END`. Whenever the attribution context changes (begin/end), a partial last line (no
//! newline yet) is emitted under the old context, so no record mixes two contexts (a line
//! being written across the change becomes two records); while several invocations are in
//! flight the context stays "none" and partial lines keep waiting for their newline. At
//! EOF of a stream its partial line is emitted too. Relative order across stdout and
//! stderr is only as good as reading two pipes allows (stdout is read first at a drain).
//!
//! # Bounds
//! - A line longer than [`MAX_LINE`] (16 KiB) is cut into pieces of at most 16 KiB, each
//!   its own record; a cut never splits a UTF-8 character of valid UTF-8 (it backs off by
//!   up to 3 bytes), so pieces are 16,381..=16,384 bytes except the last.
//! - The reader never waits for the emitter: it keeps reading the pipes as fast as they
//!   fill. Function lines are admitted to the emitter queue only while this instance has
//!   fewer than [`QUEUE_LINES`] lines and [`QUEUE_BYTES`] bytes queued; beyond that they
//!   are dropped and counted, and one `<N> lines of output dropped` record is emitted
//!   before the next admitted line, at every begin/end and at EOF. START/END/Report are
//!   never dropped: they bypass the line budget (they are small and proportional to
//!   invocations). So a flooding instance costs at most ~512 KiB of queued records plus
//!   two 16 KiB partial-line buffers, a 64 KiB read buffer and its 8 KiB tails.
//! - The invocation tail (returned by [`end`]) keeps the last 4 KiB of the invocation's
//!   log: START, the lines attributed to it (including lines whose records were dropped
//!   by the emitter budget, but not the drop notice), END and Report, each followed by
//!   `\n`, cut at the front on a UTF-8 boundary to at most [`TAIL_BYTES`] bytes.
//!
//! [`begin`]: InstanceLog::begin
//! [`end`]: InstanceLog::end

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::unix::pipe;
use tracing::Dispatch;

/// Longest record a function line becomes; longer lines are cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;
/// Size of the log tail [`InstanceLog::end`] returns.
pub const TAIL_BYTES: usize = 4096;
/// Per instance: most function-line records waiting for the emitter thread.
pub const QUEUE_LINES: usize = 2048;
/// Per instance: most bytes of function-line text waiting for the emitter thread.
pub const QUEUE_BYTES: usize = 512 * 1024;

/// One read from a pipe.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes the task reads from one pipe per readiness event before it yields.
const READ_TURN: usize = 256 * 1024;
/// Most bytes a begin/end reads from one pipe "right now": a pipe holds 64 KiB by
/// default and at most 1 MiB unless root raised `fs.pipe-max-size`; a writer refilling
/// it as fast as it is read must not keep begin/end reading forever.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Who an instance's records belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub function: String,
    pub namespace: String,
    pub instance: String,
}

/// What the Report line of an invocation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// From handing the invocation to the instance to the end of its response.
    pub duration: Duration,
    /// The function's configured memory.
    pub memory_mb: u32,
    /// Peak memory of the invocation, when measured.
    pub mem_usage_bytes: Option<u64>,
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
    /// 64 KiB read at a time (see the module docs).
    pub fn begin(&self, request_id: &str) {
        self.lock().begin(request_id.into());
    }

    /// The invocation's response has ended: reads what the instance wrote so far and
    /// emits it (still attributed), then `END RequestId: <id>` and the Report line, and
    /// returns the invocation's log tail (see the module docs). Never waits for the
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

/// `Report RequestId: <id> Duration:<ms>ms BilledDuration:<ms>ms Memory:<MB>MB MemUsage:<MB>MB`
/// with the formats described in the module docs.
pub fn report_line(request_id: &str, report: &Report) -> String {
    let nanos = report.duration.as_nanos();
    let duration = hundredths((nanos + 5_000) / 10_000);
    let usage = report.mem_usage_bytes.unwrap_or(0) as u128;
    let usage = hundredths((usage * 100 + (1 << 19)) >> 20);
    format!(
        "Report RequestId: {request_id} Duration:{duration}ms BilledDuration:{}ms Memory:{}MB MemUsage:{usage}MB",
        billed_millis(report.duration),
        report.memory_mb
    )
}

/// The billed duration: the duration rounded up to the next whole millisecond.
pub fn billed_millis(duration: Duration) -> u64 {
    duration.as_nanos().div_ceil(1_000_000) as u64
}

/// `1234` -> `"12.34"`.
fn hundredths(v: u128) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

/// Standard base64 (RFC 4648 alphabet) with `=` padding.
pub fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What the reader and the emitter thread share for one instance.
struct Shared {
    labels: Labels,
    dispatch: Dispatch,
    /// Function-line records queued for the emitter (the line budget).
    queued_lines: AtomicUsize,
    queued_bytes: AtomicUsize,
    #[cfg(test)]
    peak_queued_bytes: AtomicUsize,
}

enum Kind {
    Line(Stream),
    /// START / END / Report.
    Control,
    Dropped(u64),
}

/// One record on its way to the emitter thread.
struct Record {
    shared: Arc<Shared>,
    kind: Kind,
    request_id: Option<Arc<str>>,
    text: String,
}

impl Record {
    fn emit(&self) {
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
fn emitter() -> io::Result<mpsc::Sender<Record>> {
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

/// The last [`TAIL_BYTES`] of an invocation's log, each line followed by `\n`.
#[derive(Default)]
struct Tail {
    buf: String,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.buf.push_str(line);
        self.buf.push('\n');
        // Trim now and then, keeping at most 2x the tail: amortised O(1) per byte.
        if self.buf.len() > 2 * TAIL_BYTES {
            self.keep_last(TAIL_BYTES);
        }
    }

    fn keep_last(&mut self, n: usize) {
        if self.buf.len() > n {
            let mut start = self.buf.len() - n;
            while !self.buf.is_char_boundary(start) {
                start += 1;
            }
            self.buf.drain(..start);
        }
    }

    fn finish(mut self) -> String {
        self.keep_last(TAIL_BYTES);
        self.buf
    }
}

/// One of the two pipes, as the state sees it. `file` is a duplicate of the descriptor
/// the reading task polls, for reading "everything in the pipe right now" at begin/end,
/// which `Receiver::try_read` cannot promise (it returns `WouldBlock` without a syscall
/// while the reactor has not yet seen the readiness event).
struct Pipe {
    stream: Stream,
    /// `None` once the stream hit EOF.
    file: Option<File>,
    /// The current line so far (no newline yet); at most [`MAX_LINE`] bytes.
    pending: Vec<u8>,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: Stream) -> io::Result<(pipe::Receiver, Pipe)> {
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

enum Outcome {
    Data(usize),
    WouldBlock,
    Closed,
}

/// The reading task: waits for either pipe to become readable and reads it under the
/// lock, one chunk at a time, until both hit EOF.
async fn read_pipes(mut rx: [Option<pipe::Receiver>; 2], state: Arc<Mutex<State>>) {
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

/// An instance's output state: behind its lock, shared by the reading task and the
/// handles.
struct State {
    pipes: [Pipe; 2],
    /// Invocations in flight, with their tails.
    inflight: HashMap<Arc<str>, Tail>,
    /// The invocation lines are attributed to: the only one in flight, if any.
    context: Option<Arc<str>>,
    emitter: mpsc::Sender<Record>,
    shared: Arc<Shared>,
    /// Function lines dropped since the last drop notice.
    dropped: u64,
    buf: Vec<u8>,
}

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
    fn drain(&mut self) {
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
    fn close(&mut self, i: usize) {
        self.pipes[i].file = None;
        self.flush_partial(i);
        if self.pipes.iter().all(|p| p.file.is_none()) {
            self.flush_dropped();
        }
    }

    /// Splits bytes read from pipe `i` into lines of at most [`MAX_LINE`] bytes.
    fn feed(&mut self, i: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let pending = self.pipes[i].pending.len();
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) if pending + pos <= MAX_LINE => {
                    if pending == 0 {
                        self.line(i, strip_cr(&data[..pos]));
                    } else {
                        let mut line = std::mem::take(&mut self.pipes[i].pending);
                        line.extend_from_slice(&data[..pos]);
                        self.line(i, strip_cr(&line));
                        line.clear();
                        self.pipes[i].pending = line;
                    }
                    data = &data[pos + 1..];
                }
                _ => {
                    // No newline within MAX_LINE: keep the bytes, or cut a piece.
                    let room = MAX_LINE - pending;
                    if data.len() <= room {
                        self.pipes[i].pending.extend_from_slice(data);
                        return;
                    }
                    let mut piece = std::mem::take(&mut self.pipes[i].pending);
                    piece.extend_from_slice(&data[..room]);
                    data = &data[room..];
                    // Do not split a UTF-8 character: the next piece must not start
                    // with a continuation byte (back off up to 3 bytes).
                    let is_cont = |b: u8| b & 0xC0 == 0x80;
                    let mut cut = MAX_LINE;
                    if is_cont(data[0]) {
                        // The character's lead byte is one of the last 3; it starts the
                        // next piece. No lead byte there: not UTF-8, cut anywhere.
                        let mut lead = MAX_LINE - 1;
                        while lead > MAX_LINE - 3 && is_cont(piece[lead]) {
                            lead -= 1;
                        }
                        if !is_cont(piece[lead]) {
                            cut = lead;
                        }
                    }
                    let rest = piece.split_off(cut);
                    self.line(i, &piece);
                    piece.clear();
                    piece.extend_from_slice(&rest);
                    self.pipes[i].pending = piece;
                }
            }
        }
    }

    /// Emits the partial line of pipe `i`, if any, under the current context.
    fn flush_partial(&mut self, i: usize) {
        if !self.pipes[i].pending.is_empty() {
            let mut line = std::mem::take(&mut self.pipes[i].pending);
            self.line(i, &line);
            line.clear();
            self.pipes[i].pending = line;
        }
    }

    /// One function line (or piece): into the tail of its invocation and, within the
    /// budget, to the emitter.
    fn line(&mut self, i: usize, bytes: &[u8]) {
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

    fn flush_dropped(&mut self) {
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

    fn begin(&mut self, id: Arc<str>) {
        self.drain();
        let sole = self.inflight.keys().all(|k| *k == id);
        self.set_context(sole.then(|| id.clone()));
        let mut tail = Tail::default();
        self.control(&id, format!("START RequestId: {id}"), &mut tail);
        self.inflight.insert(id, tail);
    }

    fn end(&mut self, id: Arc<str>, report: &Report) -> String {
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

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Child, ChildStdin, Command as Cmd, Stdio};
    use std::sync::atomic::AtomicU64;
    use tokio::time::Instant;
    use tracing_subscriber::fmt::MakeWriter;

    // ---- pure functions ----

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    fn unbase64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        assert_eq!(s.len() % 4, 0);
        let mut out = Vec::new();
        for q in s.as_bytes().chunks(4) {
            let pad = q.iter().filter(|&&c| c == b'=').count();
            let n = q[..4 - pad]
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &c)| n | u32::from(val(c)) << (18 - 6 * i));
            out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
        }
        out
    }

    #[test]
    fn base64_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for n in 0..all.len() {
            assert_eq!(unbase64(&base64(&all[..n])), &all[..n]);
        }
        assert_eq!(unbase64("aGVsbG8="), b"hello");
    }

    #[test]
    fn report_formatting() {
        let r = |us: u64, mem: Option<u64>| Report {
            duration: Duration::from_micros(us),
            memory_mb: 128,
            mem_usage_bytes: mem,
        };
        assert_eq!(
            report_line("abc", &r(12_010, Some(30 * 1024 * 1024 + 256 * 1024))),
            "Report RequestId: abc Duration:12.01ms BilledDuration:13ms Memory:128MB MemUsage:30.25MB"
        );
        assert_eq!(
            report_line("abc", &r(12_000, None)),
            "Report RequestId: abc Duration:12.00ms BilledDuration:12ms Memory:128MB MemUsage:0.00MB"
        );
        assert_eq!(billed_millis(Duration::from_nanos(12_000_001)), 13);
        assert_eq!(billed_millis(Duration::from_millis(12)), 12);
        assert_eq!(billed_millis(Duration::ZERO), 0);
        assert_eq!(billed_millis(Duration::from_nanos(1)), 1);
        // 2 decimals, rounded half up.
        assert!(report_line("x", &r(12_345, None)).contains("Duration:12.35ms"));
        assert!(report_line("x", &r(999_999_996, None)).contains("Duration:1000000.00ms"));
        assert!(report_line("x", &r(1, Some(5243))).contains("MemUsage:0.01MB"));
        assert!(report_line("x", &r(1, Some(5242))).contains("MemUsage:0.00MB"));
    }

    #[test]
    fn tail_keeps_last_4k_on_char_boundary() {
        let mut t = Tail::default();
        for _ in 0..5000 {
            t.push("€€€");
        }
        let s = t.finish();
        assert!(s.len() <= TAIL_BYTES && s.len() > TAIL_BYTES - 4);
        assert!(s.ends_with("€€€\n"));
    }

    // ---- harness ----

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn records(&self) -> Vec<Value> {
            let b = self.0.lock();
            String::from_utf8_lossy(&b)
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON record"))
                .collect()
        }

        /// Waits until a record with this message was emitted (records are emitted in
        /// order by one thread, so everything before it is there too).
        async fn wait_for(&self, message: &str) -> Vec<Value> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let recs = self.records();
                if recs.iter().any(|r| r["message"] == message) {
                    return recs;
                }
                assert!(Instant::now() < deadline, "no record {message:?}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    fn json_subscriber<W>(w: W) -> impl tracing::Subscriber + Send + Sync
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(w)
            .finish()
    }

    fn labels(instance: &str) -> Labels {
        Labels {
            function: "hello".into(),
            namespace: "default".into(),
            instance: instance.into(),
        }
    }

    fn report() -> Report {
        Report {
            duration: Duration::from_micros(12_010),
            memory_mb: 128,
            mem_usage_bytes: Some(10 * 1024 * 1024),
        }
    }

    /// A child that obeys commands on stdin, one per line: `o:TEXT` prints TEXT on stdout,
    /// `e:TEXT` on stderr, `p:TEXT` prints TEXT without newline, `big:N:C` prints C*N and a
    /// newline, `a:PATH` creates PATH (an acknowledgement: everything before was written).
    const SCRIPT: &str = r#"
import sys
for l in sys.stdin:
    c, _, arg = l.rstrip("\n").partition(":")
    if c == "o": sys.stdout.write(arg + "\n"); sys.stdout.flush()
    elif c == "e": sys.stderr.write(arg + "\n"); sys.stderr.flush()
    elif c == "p": sys.stdout.write(arg); sys.stdout.flush()
    elif c == "big":
        n, _, ch = arg.partition(":")
        sys.stdout.write(ch * int(n) + "\n"); sys.stdout.flush()
    elif c == "a": open(arg, "w").close()
"#;

    struct Puppet {
        child: Child,
        stdin: Option<ChildStdin>,
        acks: u32,
        dir: PathBuf,
    }

    impl Puppet {
        fn spawn() -> (Puppet, OwnedFd, OwnedFd) {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "scf-logs-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Cmd::new("python3")
                .args(["-c", SCRIPT])
                .env("PYTHONIOENCODING", "utf-8")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3");
            let out = OwnedFd::from(child.stdout.take().unwrap());
            let err = OwnedFd::from(child.stderr.take().unwrap());
            let stdin = child.stdin.take();
            let p = Puppet {
                child,
                stdin,
                acks: 0,
                dir,
            };
            (p, out, err)
        }

        /// Sends commands and waits until the child has carried them out.
        async fn run(&mut self, cmds: &[&str]) {
            self.acks += 1;
            let ack = self.dir.join(self.acks.to_string());
            let stdin = self.stdin.as_mut().unwrap();
            for c in cmds {
                writeln!(stdin, "{c}").unwrap();
            }
            writeln!(stdin, "a:{}", ack.display()).unwrap();
            stdin.flush().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ack.exists() {
                assert!(Instant::now() < deadline, "child did not acknowledge");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    impl Drop for Puppet {
        fn drop(&mut self) {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn messages(recs: &[Value]) -> Vec<&str> {
        recs.iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect()
    }

    fn find<'a>(recs: &'a [Value], message: &str) -> &'a Value {
        recs.iter()
            .find(|r| r["message"] == message)
            .unwrap_or_else(|| panic!("no record {message:?} in {:?}", messages(recs)))
    }

    fn pos(recs: &[Value], message: &str) -> usize {
        recs.iter()
            .position(|r| r["message"] == message)
            .unwrap_or_else(|| panic!("no record {message:?}"))
    }

    // ---- behaviour ----

    #[tokio::test]
    async fn lines_are_attributed_and_precede_end() {
        let buf = Buf::default();
        let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
        let (mut child, out, err) = Puppet::spawn();
        let log = InstanceLog::start(out, err, labels("i-1")).unwrap();

        child.run(&["o:before"]).await;
        log.begin("req-1");
        child
            .run(&["o:hello from req-1", "e:oops", "p:partial"])
            .await;
        let tail = log.end("req-1", report());
        child.run(&["o:after"]).await;
        log.begin("req-2");
        child.run(&["o:second"]).await;
        let tail2 = log.end("req-2", report());

        let recs = buf.wait_for("END RequestId: req-2").await;
        let hello = find(&recs, "hello from req-1");
        assert_eq!(hello["request_id"], "req-1");
        assert_eq!(hello["stream"], "stdout");
        assert_eq!(hello["target"], "function");
        assert_eq!(hello["level"], "INFO");
        assert_eq!(hello["function"], "hello");
        assert_eq!(hello["namespace"], "default");
        assert_eq!(hello["instance"], "i-1");
        let oops = find(&recs, "oops");
        assert_eq!(oops["request_id"], "req-1");
        assert_eq!(oops["stream"], "stderr");
        assert_eq!(find(&recs, "partial")["request_id"], "req-1");
        for unattributed in ["before", "after"] {
            let r = find(&recs, unattributed);
            assert!(r.get("request_id").is_none(), "{r}");
        }
        assert_eq!(find(&recs, "second")["request_id"], "req-2");

        let start = find(&recs, "START RequestId: req-1");
        assert_eq!(start["request_id"], "req-1");
        assert!(start.get("stream").is_none());
        let order = [
            "before",
            "START RequestId: req-1",
            "hello from req-1",
            "END RequestId: req-1",
            "after",
            "START RequestId: req-2",
            "second",
            "END RequestId: req-2",
        ];
        let p: Vec<usize> = order.iter().map(|m| pos(&recs, m)).collect();
        assert!(p.windows(2).all(|w| w[0] < w[1]), "order {p:?}");
        assert!(pos(&recs, "oops") < pos(&recs, "END RequestId: req-1"));
        assert!(pos(&recs, "partial") < pos(&recs, "END RequestId: req-1"));

        let report_msg = report_line("req-1", &report());
        let rep = buf.wait_for(&report_msg).await;
        assert_eq!(find(&rep, &report_msg)["request_id"], "req-1");
        assert!(pos(&rep, &report_msg) > pos(&rep, "END RequestId: req-1"));

        assert!(tail.len() <= TAIL_BYTES);
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines[0], "START RequestId: req-1");
        assert!(lines.contains(&"hello from req-1"));
        assert!(lines.contains(&"oops"));
        assert!(lines.contains(&"partial"));
        assert_eq!(lines[lines.len() - 2], "END RequestId: req-1");
        assert_eq!(lines[lines.len() - 1], report_msg);
        assert!(!tail.contains("before") && !tail.contains("after"));
        assert!(tail.ends_with('\n'));
        assert_eq!(
            tail2,
            format!(
                "START RequestId: req-2\nsecond\nEND RequestId: req-2\n{}\n",
                report_line("req-2", &report())
            )
        );
        assert_eq!(unbase64(&base64(tail.as_bytes())), tail.as_bytes());
    }

    #[tokio::test]
    async fn tail_is_bounded_to_4k() {
        let buf = Buf::default();
        let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
        let (mut child, out, err) = Puppet::spawn();
        let log = InstanceLog::start(out, err, labels("i-tail")).unwrap();
        log.begin("r");
        let many: Vec<String> = (0..600).map(|i| format!("o:line €{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        child.run(&many).await;
        let tail = log.end("r", report());
        assert!(tail.len() <= TAIL_BYTES, "{}", tail.len());
        assert!(tail.len() > TAIL_BYTES - 100);
        assert!(tail.contains("line €599\nEND RequestId: r\nReport RequestId: r "));
        assert!(!tail.contains("START"));
    }

    #[tokio::test]
    async fn concurrent_invocations_are_not_attributed() {
        let buf = Buf::default();
        let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
        let (mut child, out, err) = Puppet::spawn();
        let log = InstanceLog::start(out, err, labels("i-conc")).unwrap();
        log.begin("a");
        child.run(&["o:only a"]).await;
        log.begin("b");
        child.run(&["o:both", "p:half-"]).await;
        let tail_a = log.end("a", report());
        child.run(&["o:line"]).await;
        let tail_b = log.end("b", report());

        let recs = buf.wait_for("END RequestId: b").await;
        assert_eq!(find(&recs, "only a")["request_id"], "a");
        assert!(find(&recs, "both").get("request_id").is_none());
        // The context changed from "none" to b at END a: the partial line written while
        // both ran is emitted unattributed, the rest of it is b's.
        assert!(find(&recs, "half-").get("request_id").is_none());
        assert_eq!(find(&recs, "line")["request_id"], "b");
        assert_eq!(find(&recs, "START RequestId: b")["request_id"], "b");
        assert_eq!(find(&recs, "END RequestId: a")["request_id"], "a");
        assert!(tail_a.contains("only a\n"));
        assert!(!tail_a.contains("both") && !tail_b.contains("both"));
        assert!(tail_b.starts_with("START RequestId: b\n"));
        assert!(tail_b.contains("END RequestId: b\n"));
    }

    #[tokio::test]
    async fn long_lines_are_cut_into_16k_records() {
        let buf = Buf::default();
        let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
        let (mut child, out, err) = Puppet::spawn();
        let log = InstanceLog::start(out, err, labels("i-long")).unwrap();
        log.begin("r");
        // 100 KiB of ASCII, then 102,402 bytes of a 3-byte character.
        child.run(&["big:102400:x", "big:34134:€", "o:short"]).await;
        log.end("r", report());
        let recs = buf.wait_for("END RequestId: r").await;
        let lines: Vec<&str> = recs
            .iter()
            .filter(|r| r["stream"] == "stdout")
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        let xs: Vec<usize> = lines
            .iter()
            .filter(|l| l.starts_with('x'))
            .map(|l| l.len())
            .collect();
        assert_eq!(xs, [16384, 16384, 16384, 16384, 16384, 16384, 4096]);
        let euros: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('€'))
            .collect();
        assert_eq!(euros.len(), 7);
        assert!(euros
            .iter()
            .all(|l| l.len() <= MAX_LINE && !l.contains('\u{fffd}')));
        assert_eq!(euros.concat(), "€".repeat(34134));
        assert_eq!(lines.last(), Some(&"short"));
        assert!(recs
            .iter()
            .filter(|r| r["stream"] == "stdout")
            .all(|r| r["request_id"] == "r"));
    }

    #[tokio::test]
    async fn end_is_answered_after_the_instance_is_gone() {
        let buf = Buf::default();
        let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
        let mut child = Cmd::new("sh")
            .args(["-c", "read x; echo \"got $x\"; printf 'no newline' >&2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = OwnedFd::from(child.stdout.take().unwrap());
        let err = OwnedFd::from(child.stderr.take().unwrap());
        let log = InstanceLog::start(out, err, labels("i-gone")).unwrap();
        log.begin("r");
        writeln!(child.stdin.take().unwrap(), "it").unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        let tail = log.end("r", report());
        assert!(
            tail.contains("got it\n") && tail.contains("no newline\n"),
            "{tail}"
        );
        let tail = log.end("late", report());
        assert!(tail.starts_with("END RequestId: late\n"));
        let recs = buf.wait_for("END RequestId: late").await;
        assert_eq!(find(&recs, "no newline")["stream"], "stderr");
    }

    /// A writer that is slow (like a congested stdout) and keeps nothing but counts.
    #[derive(Clone, Default)]
    struct SlowCounter(Arc<Counts>);

    #[derive(Default)]
    struct Counts {
        lines: AtomicU64,
        dropped: AtomicU64,
        reports: AtomicU64,
    }

    impl io::Write for SlowCounter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let v: Value = serde_json::from_slice(b).expect("one record per write");
            let m = v["message"].as_str().unwrap();
            if v["stream"] == "stdout" {
                self.0.lines.fetch_add(1, Ordering::Relaxed);
            } else if let Some(n) = m.strip_suffix(" lines of output dropped") {
                self.0
                    .dropped
                    .fetch_add(n.parse().unwrap(), Ordering::Relaxed);
            } else if m.starts_with("Report RequestId: flood ") {
                self.0.reports.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_micros(100));
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for SlowCounter {
        type Writer = SlowCounter;
        fn make_writer(&'a self) -> SlowCounter {
            self.clone()
        }
    }

    fn vm_hwm_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flood_neither_blocks_nor_grows_memory() {
        let counts = SlowCounter::default();
        let _g = tracing::subscriber::set_default(json_subscriber(counts.clone()));
        let hwm_before = vm_hwm_kb();
        // 500,000 lines of 100 bytes = 50 MB, as fast as the child can write them.
        let line = "x".repeat(99);
        let mut child = Cmd::new("sh")
            .args(["-c", &format!("yes {line} | head -c 50000000")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = OwnedFd::from(child.stdout.take().unwrap());
        let err = OwnedFd::from(child.stderr.take().unwrap());
        let started = Instant::now();
        let log = InstanceLog::start(out, err, labels("i-flood")).unwrap();
        log.begin("mid-0");
        let waiter = tokio::task::spawn_blocking(move || child.wait());
        // Invocations keep beginning and ending during the flood, without long waits.
        let mut slowest = Duration::ZERO;
        let mut k = 0;
        while !waiter.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = Instant::now();
            let tail = log.end(&format!("mid-{k}"), report());
            k += 1;
            log.begin(&format!("mid-{k}"));
            slowest = slowest.max(t.elapsed());
            assert!(tail.len() <= TAIL_BYTES);
        }
        let status = waiter.await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(status.success());
        // Emitting 500,000 records at >= 100 us each would take >= 50 s.
        assert!(took < Duration::from_secs(10), "child took {took:?}");
        log.end(&format!("mid-{k}"), report());
        log.begin("flood");
        let tail = log.end("flood", report());
        assert!(tail.starts_with("START RequestId: flood\nEND RequestId: flood\n"));
        // ~1 ms in release builds; unoptimised line splitting is far slower.
        let limit = Duration::from_millis(if cfg!(debug_assertions) { 1000 } else { 50 });
        assert!(slowest < limit, "begin/end took {slowest:?}");

        let deadline = Instant::now() + Duration::from_secs(30);
        while counts.0.reports.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no Report");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines = counts.0.lines.load(Ordering::Relaxed);
        let dropped = counts.0.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing dropped");
        // Each begin/end flushes a partial line, so a line may have become two records.
        let records = lines + dropped;
        assert!(
            (500_000..=500_000 + 2 * (k as u64 + 1)).contains(&records),
            "lines {lines} dropped {dropped}"
        );
        assert!(log.peak_queued_bytes() <= QUEUE_BYTES + MAX_LINE);
        let grown_kb = vm_hwm_kb().saturating_sub(hwm_before);
        eprintln!(
            "flood: child {took:?}, {lines} emitted, {dropped} dropped, VmHWM +{grown_kb} kB, \
             {k} begin/end pairs, slowest {slowest:?}"
        );
        assert!(grown_kb < 16 * 1024, "VmHWM grew by {grown_kb} kB");
    }
}
