//! Starting one instance of a launched function: a port, the process with the SCF
//! environment, its output turned into log records, and the wait until it listens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::logs::{InstanceLog, Labels};
use super::process::{free_port, Process, Spec, StartError};
use crate::config::{Config, FunctionConfig, LaunchConfig};

/// Starts instances of one function.
pub struct Launcher {
    spec: Spec,
    next: AtomicU64,
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
        Launcher {
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

    /// Spawns an instance and waits until it listens (at most `ready_timeout`). On
    /// failure nothing of it is left running.
    pub async fn launch(&self) -> Result<Launched, StartError> {
        let name = format!(
            "{}-{}",
            self.spec.function,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let port = match self.spec.launch.port {
            Some(port) => port,
            None => free_port().map_err(|e| StartError::Spawn(format!("no free port: {e}")))?,
        };
        let mut process = Process::spawn(&self.spec, &name, port)
            .map_err(|e| StartError::Spawn(format!("`{}`: {e}", self.spec.launch.command)))?;
        let log = process.take_output().and_then(|(stdout, stderr)| {
            let labels = Labels {
                function: self.spec.function.clone(),
                namespace: self.spec.namespace.clone(),
                instance: name.clone(),
            };
            InstanceLog::start(stdout, stderr, labels).ok()
        });
        if let Err(e) = process.wait_ready(self.spec.launch.ready_timeout).await {
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
