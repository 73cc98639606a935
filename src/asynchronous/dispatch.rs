//! The dispatcher of one event function: takes the function's due events from the
//! store one at a time, gets each a spare slot on the function's instances (never a
//! place in the synchronous queue: synchronous callers are served first), and runs
//! the attempt on the current gateway, then records how it ended.
//!
//! At most one claimed event waits for a slot, so the events in flight never outrun
//! the slots the function has; the rest wait in the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::store::{Attempt, Claimed, FunctionKey, Status, Store};
use super::Service;
use crate::error::GatewayError;
use crate::invoke::{EventOutcome, Gateway};

/// How long an attempt may go silent before another replica runs it again: the
/// function's timeout plus this.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// The store is asked again this often when nothing woke the dispatcher: retries that
/// came due, events another replica accepted.
const POLL: Duration = Duration::from_millis(250);
/// The wait after the store failed, before it is asked again.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Runs until the function leaves the config (or the task is aborted).
pub(super) async fn run(service: Arc<Service>, store: Store, key: FunctionKey, wake: Arc<Notify>) {
    let mut failing = false;
    loop {
        let Some(gateway) = service.gateway() else {
            return;
        };
        let Some(function) = gateway.function(&key).cloned() else {
            return;
        };
        let lease = function.timeout() + LEASE_MARGIN;
        match store.claim(&key, lease).await {
            Ok(Some(claimed)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(function = %key, "the asynchronous event store answers again");
                }
                let slot = function.pool().acquire_spare().await;
                service.attempt_began();
                tokio::spawn(attempt(
                    service.clone(),
                    store.clone(),
                    gateway,
                    function,
                    claimed,
                    slot,
                    lease,
                ));
            }
            Ok(None) => {
                drop((gateway, function));
                let _ = tokio::time::timeout(POLL, wake.notified()).await;
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(function = %key, "cannot take asynchronous events: {e}");
                }
                drop((gateway, function));
                tokio::time::sleep(STORE_BACKOFF).await;
            }
        }
    }
}

/// One attempt, from its slot to its record in the store.
async fn attempt(
    service: Arc<Service>,
    store: Store,
    gateway: Arc<Gateway>,
    function: Arc<crate::function::Function>,
    claimed: Claimed,
    slot: Result<crate::pool::Slot, crate::error::AdmitError>,
    lease: Duration,
) {
    let request_id = crate::headers::request_id_value(claimed.id);
    let outcome = match slot {
        Ok(slot) => {
            if let Err(e) = store.started(&claimed, lease).await {
                tracing::debug!(request_id = %claimed.id, "cannot mark the attempt started: {e}");
            }
            gateway.run_event(&function, slot, &claimed).await
        }
        Err(e) => EventOutcome::error(GatewayError::from(e), &request_id),
    };
    let attempt = match outcome {
        EventOutcome::Answered { status, body } if status < 500 => Attempt::Succeeded {
            status_code: status,
            result: body,
        },
        EventOutcome::Answered { status, body } => Attempt::Failed {
            status_code: status,
            result: Some(body),
            error: None,
        },
        EventOutcome::Failed { status, body } => Attempt::Failed {
            status_code: status,
            result: None,
            error: Some(body),
        },
    };
    let succeeded = matches!(attempt, Attempt::Succeeded { .. });
    let status_code = match &attempt {
        Attempt::Succeeded { status_code, .. } | Attempt::Failed { status_code, .. } => {
            *status_code
        }
    };
    gateway
        .registry()
        .async_attempt(&claimed.function.name, succeeded);
    match store.finish(&claimed, attempt).await {
        Ok(status) => tracing::info!(
            request_id = %claimed.id,
            function = %claimed.function,
            attempt = claimed.attempt,
            status_code,
            status = status.as_str(),
            retry = status == Status::Queued,
            "async attempt"
        ),
        // The event stays running in the store, and is run again once its lease
        // passes (Redis) or at the next start (embedded).
        Err(e) => tracing::warn!(
            request_id = %claimed.id,
            function = %claimed.function,
            attempt = claimed.attempt,
            "cannot record the attempt: {e}"
        ),
    }
    service.attempt_ended();
}
