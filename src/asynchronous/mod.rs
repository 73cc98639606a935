//! Asynchronous invocations: `Event` invocations and timer ticks are kept durably in a
//! store, run later on the function's instances through the same invocation life
//! cycle as synchronous ones, retried on failure, and kept for inspection.

pub mod cron;
pub mod embedded;
pub mod redis_streams;
pub mod store;
pub mod timers;

pub use store::{FunctionKey, NewEvent, Status, Store, StoreError, Trigger};

/// The asynchronous side of a running gateway: its store, and the dispatchers that run
/// what waits there.
pub struct Service {
    store: Store,
}

impl Service {
    pub fn new(store: Store) -> Service {
        Service { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps `event` durably, then wakes its function's dispatcher.
    pub async fn submit(&self, event: NewEvent) -> Result<(), StoreError> {
        self.store.enqueue(event).await
    }
}
