//! One launched instance process: spawned with the SCF environment in its own process
//! group (and memory cgroup), watched until it exits, stopped as a whole tree.
//!
//! **Supervision.** Each [`Process`] has one supervisor task. It waits for the leader
//! to exit *without reaping it* (a pidfd, or `waitid(WNOWAIT)` where pidfds are
//! missing), so that the leader's zombie still holds the process-group id when the
//! supervisor sends SIGKILL to whatever is left of the group; only then is the leader
//! reaped. Signals to the group are sent only while the leader is unreaped, so they can
//! never reach a process group that reused the id. After the exit is published the
//! supervisor kills what is left in the cgroup (processes that left the group), reaps
//! the orphans that were reparented to the gateway, removes `TMPDIR` and the cgroup.
//!
//! **Orphans.** The first spawn makes the gateway a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): a process whose parent dies inside an instance is
//! reparented to the gateway instead of to PID 1 (which, in a container, may never reap
//! it), and the supervisor reaps it. Only processes of the instance's group or cgroup
//! are reaped, never other children of the gateway. (One gap: a process that left both
//! the group and, by dying, the cgroup before the instance exited cannot be told from
//! other children of the gateway; its zombie stays until the gateway exits. Only code
//! that calls `setsid`/`setpgid` and then dies early makes one.)

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cgroup::Cgroup;
use super::container::Container;
use super::netns::Netns;
use crate::config::{FunctionConfig, InstanceSource, LaunchConfig, PlatformConfig};
use crate::sys::{self, Signal};

/// Everything needed to start instances of one function.
#[derive(Debug, Clone)]
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

impl Spec {
    /// The spec of a function with `[functions.launch]`; `None` for a static pool.
    pub fn new(function: &FunctionConfig, platform: &PlatformConfig) -> Option<Spec> {
        let InstanceSource::Launch(launch) = &function.source else {
            return None;
        };
        Some(Spec {
            function: function.name.clone(),
            namespace: function.namespace.clone(),
            version: function.version.clone(),
            region: platform.region.clone(),
            appid: platform.appid.clone(),
            uin: platform.uin.clone(),
            memory_mb: function.memory_mb,
            launch: launch.clone(),
        })
    }

    /// The environment an instance gets on top of `INHERITED_ENV`, in order (later
    /// entries win): the SCF variables, `PORT`, `TMPDIR`, then the function's `env`.
    pub fn env(&self, port: u16, tmpdir: &Path) -> Vec<(String, OsString)> {
        let mut env = self.scf_env(port, self.launch.workdir.clone().into_os_string());
        env.push(("TMPDIR".into(), tmpdir.as_os_str().to_owned()));
        for (key, value) in &self.launch.env {
            env.push((key.clone(), value.expose().into()));
        }
        env
    }

    /// The platform's variables (section 4 of the contract) and `PORT`.
    pub fn scf_env(&self, port: u16, user_code_root: OsString) -> Vec<(String, OsString)> {
        vec![
            ("TENCENTCLOUD_RUNENV".into(), "SCF".into()),
            ("USER_CODE_ROOT".into(), user_code_root),
            ("USER".into(), "qcloud".into()),
            ("SCF_FUNCTIONNAME".into(), self.function.clone().into()),
            ("SCF_FUNCTIONVERSION".into(), self.version.clone().into()),
            ("TENCENTCLOUD_REGION".into(), self.region.clone().into()),
            ("TENCENTCLOUD_APPID".into(), self.appid.clone().into()),
            ("TENCENTCLOUD_UIN".into(), self.uin.clone().into()),
            ("PORT".into(), port.to_string().into()),
        ]
    }
}

/// How an instance process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Killed by the kernel for exceeding its memory cgroup's limit.
    pub oom_killed: bool,
    /// The instance's memory limit (`memory_mb`), named when `oom_killed`.
    pub memory_mb: u32,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oom_killed {
            write!(
                f,
                "was killed for exceeding its memory limit of {} MB",
                self.memory_mb
            )
        } else if let Some(signal) = self.signal {
            match signal_name(signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            }
        } else {
            write!(f, "exited with status {}", self.code.unwrap_or(-1))
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Why an instance did not become ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Its port did not accept connections within `ready_timeout` (503/405).
    #[error("The request timed out in {waited_ms}ms.Please confirm your http server have enabled listening on port {port}.")]
    NeverListened { waited_ms: u128, port: u16 },
    /// It exited before listening (502/405).
    #[error("The instance exited during start-up: it {0}")]
    Exited(Exit),
    /// It could not be started at all (e.g. command not found).
    #[error("The instance could not be started: {0}")]
    Spawn(String),
}

impl From<io::Error> for StartError {
    /// For the error of [`Process::spawn`].
    fn from(e: io::Error) -> Self {
        StartError::Spawn(e.to_string())
    }
}

/// The first pause of the readiness poll. A refused connect costs a few microseconds,
/// and containers and small binaries listen within tens of milliseconds.
const READY_POLL_MIN: Duration = Duration::from_micros(500);

/// What an instance inherits from the gateway's environment: enough to find programs
/// and keep the locale, nothing else.
const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// A free TCP port on 127.0.0.1, chosen by binding port 0 and releasing it. The last
/// 256 ports handed out are not handed out again (a starting instance may not have
/// bound its port yet), so two instances started one after the other never share one.
pub fn free_port() -> io::Result<u16> {
    static RECENT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut recent = RECENT.lock();
    let mut port = 0;
    for _ in 0..32 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        port = listener.local_addr()?.port();
        if !recent.contains(&port) {
            break;
        }
    }
    if recent.len() >= 256 {
        recent.remove(0);
    }
    recent.push(port);
    Ok(port)
}

/// One running (or exited) instance process.
#[derive(Debug)]
pub struct Process {
    inner: Arc<Inner>,
    output: Option<(OwnedFd, OwnedFd)>,
}

/// What an instance holds besides its processes and cgroup, released once they are
/// gone: its container (deleted from the runtime first), then its network namespace.
#[derive(Debug, Default)]
pub struct Held {
    pub netns: Option<Netns>,
    pub container: Option<Container>,
}

impl Held {
    /// Deletes the container, removes the cgroup (after the container: the runtime
    /// removes its own cgroups on delete) and then the namespace.
    pub async fn release(mut self, cgroup: Option<&Cgroup>) {
        if let Some(container) = self.container.take() {
            container.delete().await;
        }
        if let Some(cgroup) = cgroup {
            cgroup.remove().await;
        }
        if let Some(mut netns) = self.netns.take() {
            netns.remove().await;
        }
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    pid: u32,
    port: u16,
    /// Where the instance listens: host loopback, or its address in its namespace.
    addr: SocketAddr,
    memory_mb: u32,
    /// A process's private `TMPDIR` (containers have their own `/tmp`).
    tmpdir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    held: Mutex<Option<Held>>,
    /// True once the leader was reaped: from then on its pid (= the group id) may be
    /// reused, so no signal is sent to the group any more. Held while signalling.
    reaped: Mutex<bool>,
    /// The gateway sent SIGKILL or SIGTERM (stop, kill, readiness timeout, drop).
    signalled: AtomicBool,
    exit: watch::Sender<Option<Exit>>,
    /// True once the process tree is reaped and `TMPDIR` and the cgroup are removed.
    cleaned: watch::Sender<bool>,
}

impl Inner {
    /// Sends `signal` to the whole process group, unless the leader was reaped already.
    fn signal_group(&self, signal: Signal) {
        let reaped = self.reaped.lock();
        if !*reaped {
            self.signalled.store(true, Ordering::Release);
            // The group id is the leader's pid, which cannot be reused while the leader
            // is unreaped (checked under the lock above).
            let _ = sys::kill_group(self.pid as sys::RawPid, signal);
        }
    }
}

impl Process {
    /// Spawns `command args` in its own process group and memory cgroup, cwd =
    /// `launch.workdir`, stdin `/dev/null`, stdout and stderr piped (see
    /// [`Process::take_output`]), with `INHERITED_ENV` of the gateway's environment,
    /// then [`Spec::env`], and a
    /// private `TMPDIR` (0700, removed when the instance is gone).
    ///
    /// `name` identifies the instance in logs, its cgroup and its `TMPDIR` (`hello-3`).
    /// With a `netns` the process starts inside that namespace and listens on `port`
    /// there. Must be called within a Tokio runtime (the supervisor is a task).
    pub fn spawn(spec: &Spec, name: &str, port: u16, netns: Option<Netns>) -> io::Result<Process> {
        become_subreaper();
        let netns_file = match netns.as_ref().map(Netns::open) {
            Some(Ok(file)) => Some(file),
            Some(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot open the network namespace of instance {name}: {e}"),
                ))
            }
            None => None,
        };
        let launch = &spec.launch;
        if !launch.workdir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the workdir {} is not a directory",
                    launch.workdir.display()
                ),
            ));
        }
        let tmpdir = make_tmpdir(name)?;
        let cgroup = Cgroup::create(name, spec.memory_mb);
        let procs = match cgroup.as_ref().map(Cgroup::procs_file) {
            Some(Ok(file)) => Some(file),
            Some(Err(e)) => {
                let _ = std::fs::remove_dir_all(&tmpdir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot open the cgroup of instance {name}: {e}"),
                ));
            }
            None => None,
        };

        let mut command = Command::new(&launch.command);
        command
            .args(&launch.args)
            .current_dir(&launch.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // An instance sees the platform's environment, not the gateway's: variables
            // set for `${VAR}` references (credentials) must not leak into user code.
            .env_clear();
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        for (key, value) in spec.env(port, &tmpdir) {
            command.env(key, value);
        }
        if let Some(procs) = procs {
            sys::join_cgroup_at_exec(&mut command, procs);
        }
        if let Some(netns) = netns_file {
            sys::join_netns_at_exec(&mut command, netns);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmpdir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot run `{}`: {e}", launch.command),
                ));
            }
        };
        // Closes the parent's `cgroup.procs`, which the command held for the child.
        drop(command);
        let pid = child.id();
        let output = match (child.stdout.take(), child.stderr.take()) {
            (Some(out), Some(err)) => Some((OwnedFd::from(out), OwnedFd::from(err))),
            _ => None,
        };
        // Not waited for through `child`: the supervisor reaps the pid itself.
        drop(child);

        let ip = netns
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, Netns::instance_addr);
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let held = Held {
            netns,
            container: None,
        };
        Ok(Self::supervised(
            name,
            pid,
            addr,
            spec.memory_mb,
            Some(tmpdir),
            cgroup,
            output,
            held,
        ))
    }

    /// Supervises `pid`, the first process of a container that the runtime started:
    /// a session leader and, the runtime having exited, a child of the gateway. It is
    /// then stopped, reaped and cleaned up like a spawned process, and `held` (its
    /// container and namespace) is released after it.
    pub fn adopt(
        name: &str,
        pid: u32,
        addr: SocketAddr,
        memory_mb: u32,
        cgroup: Option<Cgroup>,
        output: Option<(OwnedFd, OwnedFd)>,
        held: Held,
    ) -> Process {
        become_subreaper();
        Self::supervised(name, pid, addr, memory_mb, None, cgroup, output, held)
    }

    #[allow(clippy::too_many_arguments)]
    fn supervised(
        name: &str,
        pid: u32,
        addr: SocketAddr,
        memory_mb: u32,
        tmpdir: Option<PathBuf>,
        cgroup: Option<Cgroup>,
        output: Option<(OwnedFd, OwnedFd)>,
        held: Held,
    ) -> Process {
        let (exit, _) = watch::channel(None);
        let (cleaned, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: name.to_string(),
            pid,
            port: addr.port(),
            addr,
            memory_mb,
            tmpdir,
            cgroup,
            held: Mutex::new(Some(held)),
            reaped: Mutex::new(false),
            signalled: AtomicBool::new(false),
            exit,
            cleaned,
        });
        tokio::spawn(supervise(inner.clone()));
        Process { inner, output }
    }

    /// The read ends of the instance's stdout and stderr pipes (blocking, close-on-exec),
    /// once. Whoever takes them must keep reading: a full pipe blocks the instance.
    pub fn take_output(&mut self) -> Option<(OwnedFd, OwnedFd)> {
        self.output.take()
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The leader's pid, which is also the process-group id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `127.0.0.1:port`, or `port` at the instance's address in its namespace.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A process's private `TMPDIR` (gone once [`Process::stop`] returned, or shortly
    /// after the process exited by itself); `None` for a container.
    pub fn tmpdir(&self) -> Option<&Path> {
        self.inner.tmpdir.as_deref()
    }

    /// The instance's memory cgroup, where memory limits are enabled.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.inner.cgroup.as_ref()
    }

    /// Resolves with the exit once the process has exited (and was reaped). Cheap; any
    /// number of tasks may wait. `oom_killed` is already decided when it resolves.
    pub fn exited(&self) -> impl Future<Output = Exit> + Send + 'static {
        let mut rx = self.inner.exit.subscribe();
        async move {
            let exit = match rx.wait_for(Option::is_some).await {
                Ok(exit) => *exit,
                Err(_) => None,
            };
            match exit {
                Some(exit) => exit,
                // The supervisor is gone without an exit (runtime shutting down).
                None => std::future::pending().await,
            }
        }
    }

    /// The exit, if the process has exited.
    pub fn exit_now(&self) -> Option<Exit> {
        *self.inner.exit.borrow()
    }

    /// A receiver of the exit (`None` while running), for `select!` loops.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<Exit>> {
        self.inner.exit.subscribe()
    }

    /// Waits until the port accepts TCP connections, polling from 0.5 ms apart with
    /// backoff (doubling, but never more than a twentieth of the time waited so far, and
    /// at most 100 ms: the delay between `listen` and readiness stays within ~5 % of the
    /// start-up time). Returns at once with [`StartError::Exited`] if the process exits
    /// first. After `ready_timeout` it kills the process group, waits (up to 1 s, in
    /// practice a few ms) until the tree is reaped and `TMPDIR` and the cgroup are gone,
    /// and returns [`StartError::NeverListened`].
    pub async fn wait_ready(&self, ready_timeout: Duration) -> Result<(), StartError> {
        let start = Instant::now();
        let deadline = start + ready_timeout;
        let addr = self.addr();
        let mut exit = self.exit_receiver();
        let mut interval = READY_POLL_MIN;
        loop {
            if let Some(exit) = *exit.borrow_and_update() {
                return Err(StartError::Exited(exit));
            }
            if let Ok(Ok(stream)) =
                tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await
            {
                // A connect to a port nobody listens on can succeed by connecting to
                // itself (the ephemeral port chosen was the target port).
                if stream.local_addr().ok() != Some(addr) {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wake = (now + interval).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                changed = exit.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(wake).await;
                    }
                }
            }
            let waited = Instant::now() - start;
            interval = (interval * 2)
                .min((waited / 20).max(READY_POLL_MIN))
                .min(Duration::from_millis(100));
        }
        if let Some(exit) = self.exit_now() {
            return Err(StartError::Exited(exit));
        }
        tracing::warn!(
            instance = %self.inner.name,
            "instance {} did not listen on port {} within {}ms: killing it",
            self.inner.name,
            self.inner.port,
            ready_timeout.as_millis()
        );
        self.kill();
        // Gone (tree reaped, TMPDIR and cgroup removed) before the error is reported;
        // that takes a few milliseconds.
        let mut cleaned = self.inner.cleaned.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(1), cleaned.wait_for(|done| *done)).await;
        Err(StartError::NeverListened {
            waited_ms: ready_timeout.as_millis(),
            port: self.inner.port,
        })
    }

    /// SIGTERM to the whole process group; SIGKILL to the group (and to anything left in
    /// the cgroup) after `grace`; returns once the process tree is reaped and `TMPDIR`
    /// and the cgroup are removed. Idempotent; safe to call from several tasks.
    pub async fn stop(&self, grace: Duration) {
        if self.exit_now().is_none() {
            self.inner.signal_group(Signal::Term);
            if tokio::time::timeout(grace, self.exited()).await.is_err() {
                self.kill();
                self.exited().await;
            }
        }
        let mut cleaned = self.inner.cleaned.subscribe();
        let _ = cleaned.wait_for(|done| *done).await;
    }

    /// SIGKILL to the process group now; does not wait. (Processes that left the group
    /// are killed through the cgroup by the supervisor once the leader has exited.)
    pub fn kill(&self) {
        self.inner.signal_group(Signal::Kill);
    }
}

impl Drop for Process {
    /// Last resort: SIGKILL to the group if it is still running; the supervisor task
    /// reaps it and cleans up.
    fn drop(&mut self) {
        if self.exit_now().is_none() {
            self.inner.signal_group(Signal::Kill);
        }
    }
}

/// Makes the gateway a child subreaper, once (see the module doc).
pub(crate) fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Err(e) = sys::become_child_subreaper() {
            tracing::debug!("cannot become a child subreaper: {e}");
        }
    });
}

/// A new private directory under the gateway's temp dir.
fn make_tmpdir(name: &str) -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let safe = super::cgroup::sanitize(name);
    let mut last = None;
    for _ in 0..16 {
        let dir = base.join(format!(
            "scf-{safe}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // Whatever the umask: private.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create a TMPDIR under {}: {e}", base.display()),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a TMPDIR")))
}

/// The supervisor: waits for the exit, reaps, publishes the exit, cleans up.
async fn supervise(inner: Arc<Inner>) {
    let pid = inner.pid as libc::pid_t;
    wait_for_exit_unreaped(pid).await;

    // The leader is a zombie: its pid still names the group. Kill what is left of the
    // group, then reap the leader, under the lock that guards every group signal.
    let (status, members) = {
        let mut reaped = inner.reaped.lock();
        let _ = sys::kill_group(pid, Signal::Kill);
        // Listed before the leader is reaped, while the group id cannot name another group.
        let members = processes_in_group(pid);
        let status = sys::reap(pid).ok();
        *reaped = true;
        (status, members)
    };

    let (code, signal) = match status {
        Some(s) => (s.exit_status(), s.terminating_signal()),
        None => (None, None),
    };
    let mut oom_killed = false;
    if let (Some(cgroup), Some(libc::SIGKILL)) = (&inner.cgroup, signal) {
        // The kernel counts the kill right after sending SIGKILL: if the gateway did
        // not send one itself, give the counter a moment to catch up.
        let tries = if inner.signalled.load(Ordering::Acquire) {
            1
        } else {
            5
        };
        for attempt in 0..tries {
            if cgroup.oom_kills() > 0 {
                oom_killed = true;
                break;
            }
            if attempt + 1 < tries {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let exit = Exit {
        code,
        signal,
        oom_killed,
        memory_mb: inner.memory_mb,
    };
    tracing::debug!(instance = %inner.name, pid, "instance {} {exit}", inner.name);
    if let Some(cgroup) = &inner.cgroup {
        // Keep the last peak for a Report line written after the exit.
        let _ = cgroup.peak_bytes();
    }
    inner.exit.send_replace(Some(exit));

    // Clean up: what left the group but not the cgroup, the orphans, TMPDIR, the cgroup.
    // The cgroup is listed before each kill: a process that died is no longer listed,
    // and its zombie may be ours to reap.
    let mut orphans = members;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(cgroup) = &inner.cgroup {
            for p in cgroup.kill_all() {
                if !orphans.contains(&p) {
                    orphans.push(p);
                }
            }
        }
        reap_pass(&mut orphans);
        let cgroup_empty = inner.cgroup.as_ref().is_none_or(|c| c.pids().is_empty());
        if orphans.is_empty() && cgroup_empty {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "processes {orphans:?} of instance {} did not exit in time",
                inner.name
            );
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    if let Some(tmpdir) = inner.tmpdir.clone() {
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&tmpdir)).await;
        if let Ok(Err(e)) = removed {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove the TMPDIR of instance {}: {e}", inner.name);
            }
        }
    }
    let held = inner.held.lock().take().unwrap_or_default();
    held.release(inner.cgroup.as_ref()).await;
    inner.cleaned.send_replace(true);
}

/// Waits until `pid` (our child) has exited, leaving it unreaped.
async fn wait_for_exit_unreaped(pid: libc::pid_t) {
    if let Ok(fd) = sys::pidfd(pid) {
        // A pidfd becomes readable when the process exits.
        let _ = fd.readable().await;
        return;
    }
    // No pidfds (old kernel, seccomp).
    wait_blocking_unreaped(pid).await;
}

/// The fallback of [`wait_for_exit_unreaped`]: a blocking `waitid(WNOWAIT)` on the
/// blocking pool (one thread per running instance).
async fn wait_blocking_unreaped(pid: libc::pid_t) {
    let _ = tokio::task::spawn_blocking(move || sys::wait_exited_unreaped(pid)).await;
}

/// `(state, ppid, pgrp)` from `/proc/<pid>/stat`.
fn proc_stat(pid: libc::pid_t) -> Option<(char, libc::pid_t, libc::pid_t)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ppid pgrp ...`; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process (zombies included) whose process group is `pgid`, but the leader.
fn processes_in_group(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid: &libc::pid_t| pid != pgid)
        .filter(|&pid| matches!(proc_stat(pid), Some((_, _, pgrp)) if pgrp == pgid))
        .collect()
}

/// One pass over killed processes of an instance: reaps those that died and were
/// reparented to the gateway, drops those that are gone or are someone else's zombie,
/// keeps those still alive.
fn reap_pass(pids: &mut Vec<libc::pid_t>) {
    let me = std::process::id() as libc::pid_t;
    pids.retain(|&pid| match proc_stat(pid) {
        None => false,
        // Our child (ppid checked; only we can reap it now): kept while it runs.
        Some((_, ppid, _)) if ppid == me => matches!(sys::try_reap(pid), Ok(false)),
        Some((state, _, _)) => state != 'Z',
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        let exit = |code, signal, oom_killed| Exit {
            code,
            signal,
            oom_killed,
            memory_mb: 64,
        };
        assert_eq!(
            exit(Some(1), None, false).to_string(),
            "exited with status 1"
        );
        assert_eq!(
            exit(None, Some(9), false).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            exit(None, Some(9), true).to_string(),
            "was killed for exceeding its memory limit of 64 MB"
        );
        assert_eq!(
            exit(None, Some(63), false).to_string(),
            "was killed by signal 63"
        );
        assert_eq!(
            StartError::Exited(exit(Some(3), None, false)).to_string(),
            "The instance exited during start-up: it exited with status 3"
        );
        assert_eq!(
            StartError::NeverListened {
                waited_ms: 1000,
                port: 9000
            }
            .to_string(),
            "The request timed out in 1000ms.Please confirm your http server have enabled \
             listening on port 9000."
        );
    }

    #[test]
    fn the_spec_comes_from_the_config_and_the_functions_env_wins() {
        use crate::config::{FunctionKind, Network, Secret, StaticInstance};
        let launch = LaunchConfig {
            command: "python3".into(),
            args: vec!["app.py".into()],
            image: None,
            network: Network::Host,
            env: vec![
                ("GREETING".into(), Secret::new("hi".into())),
                ("USER".into(), Secret::new("me".into())),
            ],
            workdir: "/srv/fn".into(),
            port: Some(9000),
            min_instances: 0,
            max_instances: 1,
            ready_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        };
        let mut function = FunctionConfig {
            name: "thumbnail".into(),
            namespace: "default".into(),
            version: "2".into(),
            kind: FunctionKind::Event,
            memory_mb: 256,
            timeout: Duration::from_secs(3),
            instance_concurrency: 1,
            queue_depth: 100,
            queue_timeout: Duration::from_secs(1),
            source: InstanceSource::Launch(launch),
            timers: Vec::new(),
        };
        let platform = PlatformConfig {
            region: "ap-guangzhou".into(),
            appid: "1250000000".into(),
            uin: "100000000001".into(),
        };
        let spec = Spec::new(&function, &platform).unwrap();
        assert_eq!(spec.memory_mb, 256);
        let env = spec.env(9000, Path::new("/tmp/x"));
        let get = |key: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("SCF_FUNCTIONNAME").as_deref(), Some("thumbnail"));
        assert_eq!(get("SCF_FUNCTIONVERSION").as_deref(), Some("2"));
        assert_eq!(get("USER_CODE_ROOT").as_deref(), Some("/srv/fn"));
        assert_eq!(get("PORT").as_deref(), Some("9000"));
        assert_eq!(get("TMPDIR").as_deref(), Some("/tmp/x"));
        assert_eq!(get("GREETING").as_deref(), Some("hi"));
        // Later entries win, as with Command::env: the function's env is on top.
        assert_eq!(get("USER").as_deref(), Some("me"));

        function.source = InstanceSource::Static(vec![StaticInstance::Fixed {
            authority: "127.0.0.1:9001".into(),
            addr: "127.0.0.1:9001".parse().unwrap(),
        }]);
        assert!(Spec::new(&function, &platform).is_none());
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    /// Both ways of waiting leave the exited child a zombie for `reap`.
    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped by `reap`, not through `Child`
    async fn exits_are_seen_without_reaping() {
        for pidfd in [true, false] {
            let child = Command::new("sleep").arg("0.05").spawn().unwrap();
            let pid = child.id() as libc::pid_t;
            if pidfd {
                wait_for_exit_unreaped(pid).await;
            } else {
                wait_blocking_unreaped(pid).await;
            }
            assert_eq!(proc_stat(pid).map(|s| s.0), Some('Z'));
            let status = sys::reap(pid).unwrap();
            assert_eq!(status.exit_status(), Some(0));
            assert!(proc_stat(pid).is_none());
        }
    }

    #[test]
    fn proc_stat_reads_our_own_process() {
        let me = std::process::id() as libc::pid_t;
        let (state, ppid, pgrp) = proc_stat(me).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert_eq!(ppid as u32, std::os::unix::process::parent_id());
        assert_eq!(pgrp, rustix::process::getpgrp().as_raw_nonzero().get());
    }
}
