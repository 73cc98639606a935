//! Which worker thread the calling code runs on (thread-per-core, see [`crate::server`]).
//!
//! Each worker's `current_thread` runtime sets its index once when it starts; code that
//! keeps per-worker state (the upstream connections, see [`crate::pool::connection`])
//! reads it with one thread-local load. Threads no worker claimed (the first worker's,
//! tests' runtimes) read 0.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's worker index (0 unless a worker set another).
#[inline]
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as worker `index`.
pub fn set(index: usize) {
    INDEX.with(|i| i.set(index));
}
