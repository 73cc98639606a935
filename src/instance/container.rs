//! Image functions' instances: containers run by the OCI runtime (`runc`), one per
//! instance, each in a network namespace of its own.
//!
//! A start is: the image unpacked in the store (once per digest, shared by every
//! instance of every function that uses it), a memory cgroup of the gateway's own, a
//! namespace with its link ([`Netns`](super::netns::Netns)), a runtime bundle holding nothing but
//! `config.json` (the root filesystem is the store's, mounted read-only), then
//! `runc run --detach`. The container's first process is a session leader and, once
//! `runc` has exited, a child of the gateway (which is a child subreaper): from there on
//! it is supervised exactly like a process instance ([`Process::adopt`]), so stopping,
//! crash handling, out-of-memory kills, peak memory and logs work the same way.
//!
//! `runc` is told to put the container in the instance's memory cgroup
//! (`linux.cgroupsPath`), so the limit, the `oom_kill` counter and the peak are read
//! where they are for processes; the cgroup stays until `runc delete`, which the
//! supervisor runs after it has read them.
//!
//! What a container gets: new pid, mount, ipc, uts and network namespaces; the image's
//! root filesystem read-only; a `/tmp` tmpfs of `tmp_mb`; runc's default capabilities,
//! masked paths and devices; `no_new_privileges`; the image's Entrypoint/Cmd (or
//! `command`/`args`), Env, WorkingDir and User, with the SCF environment on top.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};
use parking_lot::Mutex;

use super::cgroup::{self, Cgroup};
use super::process::{Held, Process, Spec as InstanceSpec, StartError};
use crate::config::ImageLaunch;
use crate::image::{ImageError, Limits, PreparedImage, Store};

/// Where bundles live: one directory per container, holding its `config.json`.
const BUNDLES: &str = "/run/scf-gateway/bundles";

/// What `USER_CODE_ROOT` is inside a container, as on the platform.
const USER_CODE_ROOT: &str = "/var/user/";

/// `PATH` for an image whose Env sets none (runc's and Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The store at `dir`, shared by every function whose images it holds, so that
/// concurrent cold starts of one image wait for one unpack.
pub fn shared_store(dir: &Path, limits: Limits) -> Arc<Store> {
    static STORES: OnceLock<Mutex<HashMap<PathBuf, Arc<Store>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    stores
        .lock()
        .entry(dir.to_path_buf())
        .or_insert_with(|| Arc::new(Store::new(dir, limits)))
        .clone()
}

/// At gateway start, after the namespaces and containers of killed gateways were swept:
/// removes bundles whose namespace slot nobody holds (left by such a gateway).
pub async fn sweep_bundles() {
    let swept = tokio::task::spawn_blocking(|| {
        let Ok(entries) = std::fs::read_dir(BUNDLES) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let slot = name
                .to_str()
                .and_then(|n| n.strip_prefix("scfgw-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|n| n.parse::<u32>().ok());
            if slot.is_some_and(super::netns::slot_is_free) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let _ = swept.await;
}

/// A container the runtime knows about: deleted (with its bundle) once its processes
/// are gone.
#[derive(Debug)]
pub struct Container {
    runtime: String,
    id: String,
    bundle: PathBuf,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `runc delete --force` (the runtime's state and its cgroups), then the bundle.
    pub async fn delete(&self) {
        let deleted = tokio::process::Command::new(&self.runtime)
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await;
        match deleted {
            Ok(out) if !out.status.success() => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // Already gone is what we wanted.
                if !stderr.contains("does not exist") {
                    tracing::warn!(
                        container = %self.id,
                        "cannot delete container {}: {}",
                        self.id,
                        runtime_message(&stderr)
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                container = %self.id,
                "cannot run `{} delete` for container {}: {e}",
                self.runtime,
                self.id
            ),
        }
        let bundle = self.bundle.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(bundle)).await;
    }
}

/// Starts one container of `image` for instance `name` and returns it supervised.
/// The instance is not ready yet: the caller waits for its port, as for processes.
pub async fn start(
    runtime: &str,
    store: &Store,
    spec: &InstanceSpec,
    image: &ImageLaunch,
    name: &str,
) -> Result<Process, StartError> {
    let prepared = store
        .prepare(&image.reference)
        .await
        .map_err(|e| StartError::Spawn(image_error(&e)))?;
    let port = spec.launch.port.unwrap_or(crate::config::ISOLATED_PORT);
    let netns = super::netns::take()
        .await
        .map_err(|e| StartError::Spawn(format!("cannot make its network namespace: {e}")))?;
    let id = format!("scfgw-{}-{}", netns.slot(), cgroup::sanitize(name));
    let cgroup = Cgroup::create(name, spec.memory_mb);
    let cgroups_path = cgroup.as_ref().and_then(|c| relative_cgroup_path(c.path()));
    let bundle = Path::new(BUNDLES).join(&id);
    let addr = SocketAddr::V4(SocketAddrV4::new(netns.instance_addr(), port));

    let config = bundle_spec(
        spec,
        image,
        &prepared,
        name,
        port,
        netns.path(),
        cgroups_path,
    )
    .map_err(StartError::Spawn)?;
    write_bundle(&bundle, &config)
        .await
        .map_err(|e| StartError::Spawn(format!("cannot write its bundle: {e}")))?;
    let held = Held {
        netns: Some(netns),
        container: Some(Container {
            runtime: runtime.to_string(),
            id: id.clone(),
            bundle: bundle.clone(),
        }),
    };

    // The container's first process is reparented to the gateway when runc exits:
    // only then can the gateway reap it and read how it ended.
    super::process::become_subreaper();
    match run_detached(runtime, &bundle, &id).await {
        Ok((pid, output)) => Ok(Process::adopt(
            name,
            pid,
            addr,
            spec.memory_mb,
            cgroup,
            Some(output),
            held,
        )),
        Err(message) => {
            held.release(cgroup.as_ref()).await;
            Err(StartError::Spawn(message))
        }
    }
}

/// `runc run --detach`: returns the container's first process and the read ends of its
/// stdout and stderr. The runtime's own messages go to a log file in the bundle, so
/// that they never mix with the function's output.
async fn run_detached(
    runtime: &str,
    bundle: &Path,
    id: &str,
) -> Result<(u32, (OwnedFd, OwnedFd)), String> {
    let pid_file = bundle.join("pid");
    let log_file = bundle.join("runtime.log");
    let mut command = std::process::Command::new(runtime);
    command
        .arg("--log")
        .arg(&log_file)
        .args(["--log-format", "json", "run", "--detach", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run the OCI runtime `{runtime}`: {e}"))?;
    let output = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => (OwnedFd::from(out), OwnedFd::from(err)),
        _ => return Err("the OCI runtime's output could not be captured".into()),
    };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| format!("waiting for the OCI runtime: {e}"))?
        .map_err(|e| format!("waiting for the OCI runtime: {e}"))?;
    if !status.success() {
        let log = tokio::fs::read_to_string(&log_file)
            .await
            .unwrap_or_default();
        return Err(format!(
            "the OCI runtime could not start the container ({status}): {}",
            runtime_message(&log)
        ));
    }
    let pid = tokio::fs::read_to_string(&pid_file)
        .await
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| "the OCI runtime wrote no pid file".to_string())?;
    Ok((pid, output))
}

/// The last error message of the runtime's JSON log (or its text), trimmed.
fn runtime_message(log: &str) -> String {
    let from_json = log.lines().rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(value.get("msg")?.as_str()?.to_string())
    });
    let message = from_json.unwrap_or_else(|| log.trim().to_string());
    if message.is_empty() {
        "no message".into()
    } else {
        message.chars().take(600).collect()
    }
}

fn image_error(e: &ImageError) -> String {
    format!("the image could not be prepared: {e}")
}

/// The instance cgroup's path as runc takes it: from the hierarchy's root.
fn relative_cgroup_path(path: &Path) -> Option<PathBuf> {
    let layout = cgroup::layout().ok()?;
    let relative = path.strip_prefix(&layout.mount).ok()?;
    Some(Path::new("/").join(relative))
}

async fn write_bundle(bundle: &Path, config: &Spec) -> io::Result<()> {
    let text = serde_json::to_vec(config).map_err(io::Error::other)?;
    let bundle = bundle.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&bundle)?;
        std::fs::write(bundle.join("config.json"), text)
    })
    .await
    .map_err(io::Error::other)?
}

/// The process's arguments: `command` replaces the Entrypoint and, unless `args` are
/// given too, drops the image's Cmd (as Kubernetes and SCF's Command/Args do); `args`
/// alone replace the Cmd.
pub fn process_args(image: &ImageLaunch, config: &crate::image::ImageConfig) -> Vec<String> {
    let (entrypoint, cmd) = match (&image.command, &image.args) {
        (Some(command), Some(args)) => (vec![command.clone()], args.clone()),
        (Some(command), None) => (vec![command.clone()], Vec::new()),
        (None, Some(args)) => (config.entrypoint.clone(), args.clone()),
        (None, None) => (config.entrypoint.clone(), config.cmd.clone()),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The container's environment: the image's Env, then the SCF variables, then the
/// function's `env` (later entries win; a name appears once).
pub fn container_env(
    spec: &InstanceSpec,
    config: &crate::image::ImageConfig,
    port: u16,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: String| match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_string(), value)),
    };
    set("PATH", DEFAULT_PATH.to_string());
    for pair in &config.env {
        if let Some((key, value)) = pair.split_once('=') {
            set(key, value.to_string());
        }
    }
    for (key, value) in spec.scf_env(port, USER_CODE_ROOT.into()) {
        set(&key, value.to_string_lossy().into_owned());
    }
    set("TMPDIR", "/tmp".to_string());
    for (key, value) in &spec.launch.env {
        set(key, value.expose().to_string());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `config.json` for one container.
fn bundle_spec(
    spec: &InstanceSpec,
    image: &ImageLaunch,
    prepared: &PreparedImage,
    name: &str,
    port: u16,
    netns: PathBuf,
    cgroups_path: Option<PathBuf>,
) -> Result<Spec, String> {
    let args = process_args(image, &prepared.config);
    if args.is_empty() {
        return Err(format!(
            "the image {} has no Entrypoint or Cmd, and the function sets no `command`",
            prepared.image
        ));
    }
    let user = prepared.user().map_err(|e| e.to_string())?;
    let invalid = |e: oci_spec::OciSpecError| format!("cannot build the container's config: {e}");
    let user = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .additional_gids(user.additional_gids)
        .build()
        .map_err(invalid)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(args)
        .env(container_env(spec, &prepared.config, port))
        .cwd(
            prepared
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".into()),
        )
        .no_new_privileges(true)
        // None: the container keeps the gateway's limits (its open-file limit is raised
        // at start), which runc can set without privileges it has dropped.
        .rlimits(Vec::new())
        .build()
        .map_err(invalid)?;
    let root = RootBuilder::default()
        .path(prepared.rootfs.clone())
        .readonly(true)
        .build()
        .map_err(invalid)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    let tmp = MountBuilder::default()
        .destination("/tmp")
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            "mode=1777".to_string(),
            format!("size={}m", image.tmp_mb),
        ])
        .build()
        .map_err(invalid)?;
    mounts.push(tmp);

    let bytes = i64::from(spec.memory_mb) * 1024 * 1024;
    let memory = LinuxMemoryBuilder::default()
        .limit(bytes)
        .build()
        .map_err(invalid)?;
    let resources = LinuxResourcesBuilder::default()
        .memory(memory)
        .build()
        .map_err(invalid)?;
    let mut namespaces = oci_spec::runtime::get_default_namespaces();
    for namespace in &mut namespaces {
        if namespace.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
            namespace.set_path(Some(netns.clone()));
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths());
    if let Some(path) = cgroups_path {
        linux = linux.cgroups_path(path);
    }
    let linux = linux.build().map_err(invalid)?;

    let mut config = Spec::default();
    config.set_process(Some(process));
    config.set_root(Some(root));
    config.set_hostname(Some(cgroup::sanitize(name)));
    config.set_mounts(Some(mounts));
    config.set_linux(Some(linux));
    Ok(config)
}
