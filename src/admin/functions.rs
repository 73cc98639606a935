//! `GET /admin/functions`: every function with its settings, instances, queue and
//! invocation counts, as JSON in the contract's shape. The status page renders the same
//! listing, so the two never disagree.
//!
//! Built from the function's settings, its pool (instances and waiting invocations, read
//! together under the pool's lock) and its metric cells. Nothing of `launch.env` or
//! `[credentials]` is read here, so none of it can be shown.

use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::FunctionKind;
use crate::function::{Function, Source};
use crate::image::{layout, ImageRef, Limits};
use crate::invoke::Gateway;
use crate::metrics::Outcome;

/// `{"functions": [...]}`, in the config's order.
#[derive(serde::Serialize)]
pub(super) struct Listing {
    pub functions: Vec<FunctionView>,
}

/// One function.
#[derive(serde::Serialize)]
pub(super) struct FunctionView {
    pub name: String,
    pub namespace: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub instance_concurrency: u32,
    pub queue_depth: usize,
    /// Invocations waiting for a slot.
    pub queued: usize,
    /// Invocations routed to the function and not yet ended (waiting ones included),
    /// as `scf_gateway_inflight`.
    pub inflight: i64,
    pub source: &'static str,
    pub image: Option<ImageView>,
    pub instances: Vec<InstanceView>,
    pub invocations: Invocations,
    /// The function itself, for what only the status page shows (recent cold starts
    /// and errors).
    #[serde(skip)]
    pub function: Arc<Function>,
}

/// An image function's image.
#[derive(serde::Serialize)]
pub(super) struct ImageView {
    /// As configured (`oci:DIR[:TAG]`, `docker-archive:FILE`), paths made absolute.
    pub reference: String,
    /// `sha256:<hex>` of the image's config (its identity in the image store), as the
    /// image reads now; null when it cannot be read.
    pub digest: Option<String>,
}

/// One instance; one whose start is under way has no name or address yet.
#[derive(serde::Serialize)]
pub(super) struct InstanceView {
    pub name: Option<String>,
    pub address: Option<String>,
    /// `starting`, `ready` or `down` (out of rotation: it refused connections, and is
    /// probed back in), as `scf_gateway_instances{state}`.
    pub state: &'static str,
    /// This function's invocations on it.
    pub inflight: u32,
}

/// Invocations by outcome, every outcome present, in the metrics' order.
pub(super) struct Invocations(pub Vec<(Outcome, u64)>);

impl Invocations {
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Every invocation that did not succeed.
    pub fn failed(&self) -> u64 {
        self.0
            .iter()
            .filter(|(o, _)| *o != Outcome::Success)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Serialize for Invocations {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (outcome, n) in &self.0 {
            map.serialize_entry(outcome.as_str(), n)?;
        }
        map.end()
    }
}

impl Listing {
    /// The gateway's functions as they are now. Image digests are read from disk, off
    /// the runtime's thread.
    pub async fn of(gateway: &Gateway) -> Listing {
        let mut functions: Vec<FunctionView> = gateway.functions().iter().map(view).collect();
        let images: Vec<(usize, ImageRef)> = gateway
            .functions()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.source() {
                Source::Image(r) => Some((i, r.clone())),
                _ => None,
            })
            .collect();
        if !images.is_empty() {
            let digests = tokio::task::spawn_blocking(move || {
                images
                    .into_iter()
                    .map(|(i, r)| (i, config_digest(&r)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (i, digest) in digests {
                if let Some(image) = functions.get_mut(i).and_then(|f| f.image.as_mut()) {
                    image.digest = digest;
                }
            }
        }
        Listing { functions }
    }
}

fn view(f: &Arc<Function>) -> FunctionView {
    let pool = f.pool();
    let status = pool.status();
    let metrics = f.metrics();
    let mut instances: Vec<InstanceView> = status
        .instances
        .iter()
        .map(|i| InstanceView {
            name: Some(i.instance.name().to_owned()),
            address: Some(i.instance.addr().to_string()),
            state: if i.up { "ready" } else { "down" },
            inflight: i.inflight,
        })
        .collect();
    instances.extend((0..status.starting).map(|_| InstanceView {
        name: None,
        address: None,
        state: "starting",
        inflight: 0,
    }));
    FunctionView {
        name: f.name.clone(),
        namespace: f.namespace.clone(),
        kind: match f.kind {
            FunctionKind::Event => "event",
            FunctionKind::Http => "http",
        },
        memory_mb: f.memory_mb(),
        timeout_ms: u64::try_from(f.timeout().as_millis()).unwrap_or(u64::MAX),
        instance_concurrency: pool.per_instance(),
        queue_depth: pool.queue_depth(),
        queued: status.queued,
        inflight: metrics.inflight(),
        source: f.source().as_str(),
        image: match f.source() {
            Source::Image(r) => Some(ImageView {
                reference: r.to_string(),
                digest: None,
            }),
            _ => None,
        },
        instances,
        invocations: Invocations(
            Outcome::ALL
                .iter()
                .map(|&o| (o, metrics.invocations(o)))
                .collect(),
        ),
        function: f.clone(),
    }
}

/// The image's config digest, read as a start would read it. The size limit is not the
/// point here (the config check and every start apply it), so none is set.
fn config_digest(r: &ImageRef) -> Option<String> {
    let limits = Limits {
        max_image_bytes: u64::MAX,
        ..Limits::default()
    };
    layout::read(r, &limits)
        .ok()
        .map(|image| image.config_digest)
}
