//! Placeholder with the agreed API; replaced by the process work.
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::config::LaunchConfig;

pub struct Spec {
    pub function: String,
    pub namespace: String,
    pub version: String,
    pub region: String,
    pub appid: String,
    pub uin: String,
    pub memory_mb: u32,
    pub launch: LaunchConfig,
}

#[derive(Debug, Clone)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exited")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("The request timed out in {waited_ms}ms.Please confirm your http server have enabled listening on port {port}.")]
    NeverListened { waited_ms: u128, port: u16 },
    #[error("The instance exited during start-up: it {0}")]
    Exited(Exit),
    #[error("The instance could not be started: {0}")]
    Spawn(String),
}

pub struct Process;

impl Process {
    pub fn spawn(_spec: &Spec, _name: &str, _port: u16) -> io::Result<Process> {
        Err(io::Error::other("not built"))
    }
    pub fn take_output(&mut self) -> Option<(OwnedFd, OwnedFd)> {
        None
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    pub async fn exited(&self) -> Exit {
        std::future::pending().await
    }
    pub fn exit_now(&self) -> Option<Exit> {
        None
    }
    pub async fn wait_ready(&self, _t: Duration) -> Result<(), StartError> {
        Ok(())
    }
    pub async fn stop(&self, _grace: Duration) {}
    pub fn kill(&self) {}
    pub fn cgroup(&self) -> Option<&super::cgroup::Cgroup> {
        None
    }
}

pub fn free_port() -> io::Result<u16> {
    Ok(0)
}
