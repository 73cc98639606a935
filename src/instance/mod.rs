//! Launched function instances: the processes the gateway starts for a function with
//! `[functions.launch]`, as the platform does for an image function.
//!
//! - [`launcher`]: one start: port, process, logs, readiness.
//! - [`process`]: spawn with the SCF environment in its own process group, readiness,
//!   stop (SIGTERM, then SIGKILL), exit status.
//! - [`cgroup`]: the per-instance memory limit and per-invocation peak memory.
//! - [`netns`]: a network namespace per isolated instance, reached over a veth link, so
//!   that every instance can listen on the same port.
//! - [`logs`]: stdout/stderr lines as JSON records attributed to invocations, with the
//!   START / END / Report lines and the log tail.

pub mod cgroup;
pub mod container;
pub mod launcher;
pub mod logs;
pub mod netns;
pub mod process;

pub use launcher::{Launched, Launcher};
pub use process::{Exit, StartError};
