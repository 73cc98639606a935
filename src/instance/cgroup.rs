//! Per-instance memory cgroups: the `memory_mb` limit, out-of-memory kills and the peak
//! memory of each invocation.
//!
//! Every launched instance gets a cgroup of its own, `scf-gateway/<name>.<gateway pid>.<n>`
//! under the root of the memory hierarchy:
//!
//! - **cgroup v2** when a mounted cgroup2 hierarchy lists `memory` in its
//!   `cgroup.controllers` (normally `/sys/fs/cgroup`). `+memory` is enabled in the
//!   `cgroup.subtree_control` of the root and of `scf-gateway`, the limit goes to
//!   `memory.max`, `memory.swap.max = 0` (so swap cannot hide the limit) and
//!   `memory.oom.group = 1` (an out-of-memory kill takes the whole instance, not one of
//!   its processes).
//! - **cgroup v1** otherwise, in the hierarchy mounted with the `memory` controller
//!   (normally `/sys/fs/cgroup/memory`; hybrid machines mount cgroup2 *without* the memory
//!   controller beside it): `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` to
//!   the same value where swap accounting exists.
//!
//! The process joins its cgroup before `exec` (see [`Cgroup::procs_file`]), so everything
//! it starts is inside too. When no memory cgroup can be used (not root, no memory
//! controller, read-only cgroupfs), [`Cgroup::create`] returns `None`, the gateway warns
//! once (`memory limits disabled: ...`) and runs instances without the limit.
//!
//! Out-of-memory kills are read from the `oom_kill` counter (v2 `memory.events`, v1
//! `memory.oom_control`). The peak of one invocation is [`Cgroup::reset_peak`] before it
//! and [`Cgroup::peak_bytes`] after it: v1 resets `memory.max_usage_in_bytes`; v2 resets
//! `memory.peak` through a file descriptor of its own (kernels 6.12 and later); older v2
//! kernels cannot reset, and the peak is then the instance's lifetime `memory.peak` (or
//! `memory.current` where even that is missing).

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::sys;

/// The directory under the hierarchy's root that holds the gateway's cgroups.
const BASE_DIR: &str = "scf-gateway";

/// Which cgroup interface an instance's cgroup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where the gateway's cgroups live on this machine, found (and prepared) once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: Version,
    /// The mount point of the hierarchy with the memory controller.
    pub mount: PathBuf,
    /// `<mount>/scf-gateway`: the parent of every instance's cgroup.
    pub base: PathBuf,
}

static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();

/// The layout in use, or why memory limits are disabled. The first call finds the
/// memory hierarchy and creates `scf-gateway` in it; if that fails, it warns once
/// (`memory limits disabled: ...`) and every later call returns the same reason.
/// The gateway calls this at start so that the warning comes at start.
pub fn layout() -> Result<&'static Layout, &'static str> {
    LAYOUT
        .get_or_init(|| {
            let found = fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))
                .and_then(|mountinfo| {
                    find_memory_hierarchy(&mountinfo, |mount| {
                        fs::read_to_string(mount.join("cgroup.controllers")).ok()
                    })
                })
                .and_then(|(version, mount)| prepare(version, mount));
            match &found {
                Ok(layout) => tracing::debug!(
                    version = ?layout.version,
                    base = %layout.base.display(),
                    "memory limits use cgroups"
                ),
                Err(reason) => tracing::warn!(
                    "memory limits disabled: {reason}; instances run without their memory_mb limit"
                ),
            }
            found
        })
        .as_ref()
        .map_err(|reason| reason.as_str())
}

/// Finds the hierarchy to use from `/proc/self/mountinfo`: a cgroup2 mount whose
/// `cgroup.controllers` (read by `controllers`) lists `memory`, `/sys/fs/cgroup` first;
/// else a cgroup v1 mount with the `memory` controller.
pub fn find_memory_hierarchy(
    mountinfo: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Result<(Version, PathBuf), String> {
    let mut v2 = Vec::new();
    let mut v1 = None;
    for line in mountinfo.lines() {
        // `36 35 98:0 /root /mnt opts optional... - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let superopts = right.nth(1).unwrap_or("");
        let mount = PathBuf::from(unescape_mount(mount));
        match fstype {
            "cgroup2" => v2.push(mount),
            "cgroup" if v1.is_none() && superopts.split(',').any(|o| o == "memory") => {
                v1 = Some(mount)
            }
            _ => {}
        }
    }
    v2.sort_by_key(|m| m != Path::new("/sys/fs/cgroup"));
    for mount in v2 {
        if let Some(list) = controllers(&mount) {
            if list.split_whitespace().any(|c| c == "memory") {
                return Ok((Version::V2, mount));
            }
        }
    }
    v1.map(|mount| (Version::V1, mount)).ok_or_else(|| {
        "no cgroup memory controller is available (no cgroup2 hierarchy lists `memory` in \
         cgroup.controllers and no cgroup v1 memory hierarchy is mounted)"
            .to_string()
    })
}

/// `\040` and friends, as mountinfo escapes spaces, tabs, newlines and backslashes.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let value = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok());
            if let Some(v) = value {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates `<mount>/scf-gateway` and, on v2, enables the memory controller for it and
/// its children.
fn prepare(version: Version, mount: PathBuf) -> Result<Layout, String> {
    let base = mount.join(BASE_DIR);
    if version == Version::V2 {
        enable_memory_controller(&mount)?;
    }
    match fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {}", base.display(), explain(&e))),
    }
    if version == Version::V2 {
        enable_memory_controller(&base)?;
    }
    // It may exist already (made by root earlier) without being ours to write in.
    if let Err(e) = sys::check_writable(&base) {
        return Err(format!(
            "cannot create cgroups in {}: {}",
            base.display(),
            explain(&e)
        ));
    }
    Ok(Layout {
        version,
        mount,
        base,
    })
}

/// Writes `+memory` to `dir/cgroup.subtree_control` unless it is there already.
fn enable_memory_controller(dir: &Path) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {}", file.display(), explain(&e)))?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    write_file(&file, "+memory").map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EBUSY) {
            " (that cgroup has processes of its own; cgroup v2 allows controllers only \
             for cgroups without processes, so run the gateway in a cgroup whose parent \
             it may manage)"
        } else {
            ""
        };
        format!(
            "cannot enable the memory controller in {}: {}{hint}",
            file.display(),
            explain(&e)
        )
    })
}

fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) if !sys::is_root() => {
            format!("{e} (not running as root)")
        }
        Some(libc::EROFS) => format!("{e} (the cgroup filesystem is mounted read-only)"),
        _ => e.to_string(),
    }
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("{}: {text:?}", path.display()),
        )
    })
}

/// The value of `key` in a flat-keyed file (`memory.events`, `memory.oom_control`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A name safe as one path component (also used for instance temp directories).
pub(crate) fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("instance");
    }
    out
}

/// Whether `reset_peak` can reset the v2 `memory.peak` on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeakReset {
    Unknown,
    Yes,
    No,
}

/// One instance's memory cgroup. Removed by [`Cgroup::remove`] once its processes are
/// gone (and, best effort, on drop).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    version: Version,
    limit_mb: u32,
    /// The `oom_kill` counter when the cgroup was created (0, unless reused).
    oom_kills_at_start: u64,
    /// v2: the `memory.peak` descriptor that was reset (the reset is per descriptor).
    peak_fd: Mutex<(Option<File>, PeakReset)>,
    /// The last peak read, answered once the cgroup is gone.
    last_peak: AtomicU64,
    /// The last `oom_kill` count read, answered once the cgroup is gone.
    last_oom_kills: AtomicU64,
    removed: AtomicBool,
}

impl Cgroup {
    /// A new memory cgroup limited to `memory_mb`, or `None` where cgroups cannot be used.
    /// Warns once per gateway (`memory limits disabled: ...`, from [`layout`] or from the
    /// first failure here); a permission or read-only failure disables cgroups for good.
    pub fn create(name: &str, memory_mb: u32) -> Option<Cgroup> {
        // Set once creating a cgroup failed in a way that will not get better.
        static DISABLED: AtomicBool = AtomicBool::new(false);
        // The first failure of an instance's cgroup is a warning, later ones are debug.
        static WARNED: AtomicBool = AtomicBool::new(false);
        let layout = layout().ok()?;
        if DISABLED.load(Ordering::Relaxed) {
            return None;
        }
        match Self::create_in(layout.version, &layout.base, name, memory_mb) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                let permanent = matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                );
                if permanent {
                    DISABLED.store(true, Ordering::Relaxed);
                }
                if !WARNED.swap(true, Ordering::Relaxed) {
                    if permanent {
                        tracing::warn!(
                            "memory limits disabled: {e}; instances run without their \
                             memory_mb limit"
                        );
                    } else {
                        tracing::warn!(
                            instance = name,
                            "cannot create the memory cgroup of instance {name}: {e}; it runs \
                             without its memory limit (further failures are logged at debug level)"
                        );
                    }
                } else {
                    tracing::debug!(
                        instance = name,
                        "cannot create the memory cgroup of instance {name}: {e}"
                    );
                }
                None
            }
        }
    }

    fn create_in(version: Version, base: &Path, name: &str, memory_mb: u32) -> io::Result<Cgroup> {
        // Unique within this gateway by the sequence number, across gateways by the pid.
        // A directory of that name can only be a leftover of an earlier gateway that had
        // our pid: removed if empty, else skipped.
        static SEQ: AtomicU64 = AtomicU64::new(1);
        let mut attempts = 0;
        let path = loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{}.{}.{seq}", sanitize(name), std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if fs::remove_dir(&path).is_ok() && fs::create_dir(&path).is_ok() {
                        break path;
                    }
                    attempts += 1;
                    if attempts >= 100 {
                        return Err(e);
                    }
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {}", path.display(), explain(&e)),
                    ))
                }
            }
        };
        let mut cgroup = Cgroup {
            path,
            version,
            limit_mb: memory_mb,
            oom_kills_at_start: 0,
            peak_fd: Mutex::new((None, PeakReset::Unknown)),
            last_peak: AtomicU64::new(0),
            last_oom_kills: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        };
        // On error the half-made cgroup is removed by Drop.
        cgroup.configure()?;
        cgroup.oom_kills_at_start = cgroup.read_oom_kills().unwrap_or(0);
        Ok(cgroup)
    }

    fn configure(&self) -> io::Result<()> {
        let bytes = u64::from(self.limit_mb) * 1024 * 1024;
        let set = |file: &str, value: &str| {
            write_file(&self.path.join(file), value).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot write {value} to {file}: {e}"))
            })
        };
        let has = |file: &str| self.path.join(file).exists();
        match self.version {
            Version::V2 => {
                set("memory.max", &bytes.to_string())?;
                if has("memory.swap.max") {
                    set("memory.swap.max", "0")?;
                }
                if has("memory.oom.group") {
                    set("memory.oom.group", "1")?;
                }
            }
            Version::V1 => {
                set("memory.limit_in_bytes", &bytes.to_string())?;
                if has("memory.memsw.limit_in_bytes") {
                    // Memory + swap: must be >= the memory limit, so set after it.
                    set("memory.memsw.limit_in_bytes", &bytes.to_string())?;
                } else if has("memory.swappiness") {
                    // No swap accounting: at least keep this cgroup's pages out of swap.
                    let _ = set("memory.swappiness", "0");
                }
            }
        }
        Ok(())
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The limit, in MB (as configured: `memory_mb`).
    pub fn limit_mb(&self) -> u32 {
        self.limit_mb
    }

    /// `cgroup.procs`, opened for writing. Open it before `fork` and let the child write
    /// its pid to it before `exec` ([`sys::join_cgroup_at_exec`]): then the instance and all it
    /// starts are inside from the first instruction.
    pub fn procs_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn read_oom_kills(&self) -> io::Result<u64> {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let text = fs::read_to_string(self.path.join(file))?;
        Ok(keyed_value(&text, "oom_kill").unwrap_or(0))
    }

    /// How many processes of this cgroup the kernel has killed for exceeding the limit
    /// since it was created.
    pub fn oom_kills(&self) -> u64 {
        if !self.removed.load(Ordering::Acquire) {
            if let Ok(n) = self.read_oom_kills() {
                let n = n.saturating_sub(self.oom_kills_at_start);
                self.last_oom_kills.store(n, Ordering::Release);
                return n;
            }
        }
        self.last_oom_kills.load(Ordering::Acquire)
    }

    /// Starts a new peak measurement (call before each invocation). v1 resets
    /// `memory.max_usage_in_bytes`; v2 resets `memory.peak` through a descriptor kept for
    /// [`Cgroup::peak_bytes`] (kernels >= 6.12). Returns false where the peak cannot be
    /// reset (older v2 kernels keep the lifetime peak): the caller then samples.
    pub fn reset_peak(&self) -> bool {
        if self.removed.load(Ordering::Acquire) {
            return false;
        }
        match self.version {
            Version::V1 => write_file(&self.path.join("memory.max_usage_in_bytes"), "0").is_ok(),
            Version::V2 => {
                let mut peak = self.peak_fd.lock();
                if peak.1 == PeakReset::No {
                    return false;
                }
                if peak.0.is_none() {
                    match OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(self.path.join("memory.peak"))
                    {
                        Ok(file) => peak.0 = Some(file),
                        Err(_) => {
                            peak.1 = PeakReset::No;
                            return false;
                        }
                    }
                }
                let reset = peak.0.as_ref().map(|f| f.write_at(b"reset\n", 0));
                match reset {
                    Some(Ok(_)) => {
                        peak.1 = PeakReset::Yes;
                        true
                    }
                    _ => {
                        *peak = (None, PeakReset::No);
                        false
                    }
                }
            }
        }
    }

    /// The peak memory since the last [`Cgroup::reset_peak`], in bytes (see the module
    /// doc for kernels that cannot reset). After the cgroup is removed: the last value
    /// read (the supervisor reads it once more when the instance exits).
    pub fn peak_bytes(&self) -> Option<u64> {
        if self.removed.load(Ordering::Acquire) {
            return Some(self.last_peak.load(Ordering::Acquire)).filter(|&b| b > 0);
        }
        let value = match self.version {
            Version::V1 => read_u64(&self.path.join("memory.max_usage_in_bytes")).ok(),
            Version::V2 => {
                let peak = self.peak_fd.lock();
                match &peak.0 {
                    Some(file) => read_u64_at(file).ok(),
                    None => read_u64(&self.path.join("memory.peak"))
                        .or_else(|_| read_u64(&self.path.join("memory.current")))
                        .ok(),
                }
            }
        };
        if let Some(v) = value {
            self.last_peak.store(v, Ordering::Release);
        }
        value
    }

    /// The memory in use now, in bytes.
    pub fn current_bytes(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        read_u64(&self.path.join(file)).ok()
    }

    /// SIGKILL to every process in the cgroup, including those that left the instance's
    /// process group (v2 also writes `cgroup.kill`). Lists, kills, and lists again while
    /// new processes appear. Does not wait for them to die. Returns every pid it listed
    /// (read *before* killing: a process that has died is no longer listed, and its
    /// zombie may be the gateway's to reap).
    pub fn kill_all(&self) -> Vec<i32> {
        let mut seen = Vec::new();
        if self.removed.load(Ordering::Acquire) {
            return seen;
        }
        for _ in 0..10 {
            let pids: Vec<i32> = self
                .pids()
                .into_iter()
                .filter(|p| !seen.contains(p))
                .collect();
            if pids.is_empty() {
                break;
            }
            if self.version == Version::V2 {
                let _ = write_file(&self.path.join("cgroup.kill"), "1");
            }
            for &pid in &pids {
                // The pid was in our cgroup a moment ago.
                let _ = sys::kill(pid, sys::Signal::Kill);
            }
            seen.extend(pids);
        }
        seen
    }

    /// Removes the cgroup once its processes are gone: kills what is left, then retries
    /// `rmdir` for up to two seconds (exiting tasks can keep it busy briefly).
    pub async fn remove(&self) {
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        let _ = self.peak_bytes();
        let _ = self.oom_kills();
        self.kill_all();
        // Release our own `memory.peak` descriptor first.
        *self.peak_fd.lock() = (None, PeakReset::No);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_millis(1);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(
                            "cannot remove the memory cgroup {}: {e}",
                            self.path.display()
                        );
                        return;
                    }
                    self.kill_all();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        self.removed.store(true, Ordering::Release);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed.load(Ordering::Acquire) {
            // Best effort: succeeds when no process is left in it.
            *self.peak_fd.get_mut() = (None, PeakReset::No);
            let _ = fs::remove_dir(&self.path);
        }
    }
}

fn read_u64_at(file: &File) -> io::Result<u64> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0)?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "not a number"))
}

/// How one invocation's peak memory is measured.
pub enum MemoryProbe {
    /// Not measured: a static instance, or an instance without a cgroup.
    None,
    /// The cgroup's peak was reset at hand-over: read it at the end.
    Peak,
    /// The peak could not be reset, or invocations overlap on the instance: the
    /// cgroup's usage is sampled while the invocation runs.
    Sampled(Sampler),
}

/// Samples a cgroup's memory usage every few milliseconds, keeping the highest.
pub struct Sampler {
    max: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

/// How often a [`Sampler`] reads the usage: often enough for a useful peak, rarely
/// enough to cost nothing measurable.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

impl Cgroup {
    /// Starts measuring one invocation: a reset peak where `exclusive` (no other
    /// invocation overlaps) and the kernel allows it, else a sampler.
    pub fn probe(&self, exclusive: bool) -> MemoryProbe {
        if exclusive && self.reset_peak() {
            return MemoryProbe::Peak;
        }
        let file = self.path.join(match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        });
        let max = Arc::new(AtomicU64::new(read_u64(&file).unwrap_or(0)));
        let seen = max.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                match read_u64(&file) {
                    Ok(v) => {
                        seen.fetch_max(v, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        });
        MemoryProbe::Sampled(Sampler {
            max,
            task: task.abort_handle(),
        })
    }
}

impl MemoryProbe {
    /// The invocation's peak in bytes, if measured.
    pub fn finish(self, cgroup: Option<&Cgroup>) -> Option<u64> {
        let cgroup = cgroup?;
        match self {
            MemoryProbe::None => None,
            MemoryProbe::Peak => cgroup.peak_bytes(),
            MemoryProbe::Sampled(sampler) => {
                let last = cgroup.current_bytes().unwrap_or(0);
                Some(sampler.max.load(Ordering::Relaxed).max(last))
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED: &str = "\
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_layout_uses_the_v1_memory_hierarchy() {
        // The unified hierarchy exists but without the memory controller.
        let found = find_memory_hierarchy(HYBRID, |m| {
            assert_eq!(m, Path::new("/sys/fs/cgroup/unified"));
            Some("hugetlb\n".into())
        });
        assert_eq!(
            found,
            Ok((Version::V1, PathBuf::from("/sys/fs/cgroup/memory")))
        );
    }

    #[test]
    fn unified_layout_with_memory_uses_v2() {
        let found = find_memory_hierarchy(UNIFIED, |_| Some("cpuset cpu io memory pids\n".into()));
        assert_eq!(found, Ok((Version::V2, PathBuf::from("/sys/fs/cgroup"))));
    }

    #[test]
    fn v2_without_memory_and_no_v1_is_disabled() {
        let found = find_memory_hierarchy(UNIFIED, |_| Some("cpu pids\n".into()));
        assert!(found.unwrap_err().contains("no cgroup memory controller"));
        assert!(find_memory_hierarchy("", |_| None).is_err());
    }

    #[test]
    fn v2_is_preferred_to_v1_when_it_has_memory() {
        let both = format!("{HYBRID}{UNIFIED}");
        let found = find_memory_hierarchy(&both, |m| {
            (m == Path::new("/sys/fs/cgroup")).then(|| "memory".to_string())
        });
        assert_eq!(found, Ok((Version::V2, PathBuf::from("/sys/fs/cgroup"))));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
        assert_eq!(unescape_mount(r"/x\"), r"/x\");
    }

    #[test]
    fn oom_kill_counters_are_parsed() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(keyed_value(v2, "oom"), Some(1));
        assert_eq!(keyed_value("oom 3\n", "oom_kill"), None);
    }

    #[test]
    fn names_are_safe_path_components() {
        assert_eq!(sanitize("hello-3"), "hello-3");
        assert_eq!(sanitize("../x y"), "___x_y");
        assert_eq!(sanitize(""), "instance");
    }
}
