//! Starting one instance of a launched function: a process on the host's network, a
//! process in a network namespace of its own, or a container of an image; then its
//! output turned into log records, and the wait until it listens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::container;
use super::logs::{InstanceLog, Labels};
use super::netns;
use super::process::{free_port, Process, Spec, StartError};
use crate::config::{Config, FunctionConfig, ImageLaunch, LaunchConfig, Network, ISOLATED_PORT};
use crate::image::{Limits, Store};

/// Starts instances of one function.
pub struct Launcher {
    spec: Spec,
    kind: Kind,
    next: AtomicU64,
}

/// What an instance of the function is.
enum Kind {
    /// A process listening on a host port.
    Host,
    /// A process in a network namespace of its own.
    Isolated,
    /// A container of an image, run by `runtime`.
    Image {
        runtime: String,
        store: Arc<Store>,
        image: Box<ImageLaunch>,
    },
}

/// A started, listening instance.
pub struct Launched {
    pub name: String,
    pub process: Process,
    pub log: Option<InstanceLog>,
    pub memory_mb: u32,
}

impl Launcher {
    pub fn new(config: &Config, function: &FunctionConfig, launch: &LaunchConfig) -> Launcher {
        let kind = match (&launch.image, launch.network) {
            (Some(image), _) => Kind::Image {
                runtime: config.images.runtime.clone(),
                store: container::shared_store(
                    &config.images.store,
                    Limits {
                        max_image_bytes: config.images.max_image_bytes,
                        ..Limits::default()
                    },
                ),
                image: image.clone(),
            },
            (None, Network::Isolated) => Kind::Isolated,
            (None, Network::Host) => Kind::Host,
        };
        Launcher {
            kind,
            spec: Spec {
                function: function.name.clone(),
                namespace: function.namespace.clone(),
                version: function.version.clone(),
                region: config.platform.region.clone(),
                appid: config.platform.appid.clone(),
                uin: config.platform.uin.clone(),
                memory_mb: function.memory_mb,
                launch: launch.clone(),
            },
            next: AtomicU64::new(1),
        }
    }

    /// `min_instances`, `max_instances`, timeouts, port.
    pub fn policy(&self) -> &LaunchConfig {
        &self.spec.launch
    }

    fn spawn_error(&self, e: std::io::Error) -> StartError {
        StartError::Spawn(format!("`{}`: {e}", self.spec.launch.command))
    }

    /// Spawns an instance and waits until it listens (at most `ready_timeout`). On
    /// failure nothing of it is left running.
    pub async fn launch(&self) -> Result<Launched, StartError> {
        let name = format!(
            "{}-{}",
            self.spec.function,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut process = match &self.kind {
            Kind::Host => {
                let port = match self.spec.launch.port {
                    Some(port) => port,
                    None => {
                        free_port().map_err(|e| StartError::Spawn(format!("no free port: {e}")))?
                    }
                };
                Process::spawn(&self.spec, &name, port, None).map_err(|e| self.spawn_error(e))?
            }
            Kind::Isolated => {
                let netns = netns::take().await.map_err(|e| {
                    StartError::Spawn(format!("cannot make its network namespace: {e}"))
                })?;
                let port = self.spec.launch.port.unwrap_or(ISOLATED_PORT);
                Process::spawn(&self.spec, &name, port, Some(netns))
                    .map_err(|e| self.spawn_error(e))?
            }
            Kind::Image {
                runtime,
                store,
                image,
            } => container::start(runtime, store, &self.spec, image, &name).await?,
        };
        let log = process.take_output().and_then(|(stdout, stderr)| {
            let labels = Labels {
                function: self.spec.function.clone(),
                namespace: self.spec.namespace.clone(),
                instance: name.clone(),
            };
            InstanceLog::start(stdout, stderr, labels).ok()
        });
        let ready = process.wait_ready(self.spec.launch.ready_timeout).await;
        if !matches!(self.kind, Kind::Host) {
            netns::keep_spare();
        }
        if let Err(e) = ready {
            process.stop(Duration::ZERO).await;
            return Err(e);
        }
        Ok(Launched {
            name,
            process,
            log,
            memory_mb: self.spec.memory_mb,
        })
    }
}
