//! One network namespace per isolated instance, reached from the host over a veth link,
//! so that every instance can listen on the same port (9000) without sharing the host's.
//!
//! **Slots.** Each namespace takes a host-wide slot `n` in `0..8192` (less the
//! [`RESERVED`] ones, whose addresses clouds use for their own services). A slot is
//! owned by holding an exclusive `flock` on `/run/scf-gateway/slots/<n>` for the
//! namespace's life: several gateways on one host never share a slot, and a gateway
//! that dies (even by SIGKILL) releases its slots with its descriptors. A free lock
//! therefore proves that a namespace or link of that slot still on the host is a
//! leftover nobody uses: the next owner of the slot removes it before building its own,
//! and [`sweep_stale`] removes all of them at gateway start. The lock files themselves
//! stay (removing a lock file races with another process locking it); they are empty.
//!
//! **Names and addresses.** Slot `n` is the namespace `scfgw-<n>` (`/run/netns/scfgw-<n>`),
//! the host-side link `scfgw<n>` and, inside the namespace, `eth0`, with addresses from
//! 169.254.128.0/17 (link-local, never routed): the host end is `169.254.128.0 + 4n + 1`,
//! the instance end `+ 2`, on a /30 of their own. `lo` is up inside.
//!
//! **Reach.** The namespace has no default route: an isolated instance reaches its own
//! addresses and the host end of its link, nothing else. Forwarding is off for packets
//! arriving on the host-side link and IPv6 is disabled on it, so the host never routes
//! for an instance. The host end is an address of the host, so a host service that
//! listens on every address (`0.0.0.0`) answers an instance that connects to it. The
//! gateway reaches the instance at [`Netns::instance_addr`].
//!
//! **Cost.** Building a namespace with its link is two runs of `ip` in batch mode (one on
//! the host, one inside the namespace), about 10 ms; removing it is one run, about 25 ms
//! (deleting the link waits for the kernel to retire it, so that the slot's names are
//! free again when [`Netns::remove`] returns). The commands run on Tokio's blocking pool;
//! a build whose future is dropped still completes there and is then removed.
//!
//! Everything here needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and iproute2.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The slot numbers: 169.254.128.0/17 in /30s. [`RESERVED`] ones are never taken.
pub const SLOTS: u32 = 8192;

/// The slots never taken: their addresses are in 169.254.169.0/24 and 169.254.170.0/24,
/// where clouds put their metadata, DNS, time and credential services (169.254.169.254,
/// .169.253, .169.123, .170.2). A link there would route the host's own requests for one
/// of them to an instance.
pub const RESERVED: std::ops::RangeInclusive<u32> = 2624..=2751;

/// The directory of the slot lock files, one per slot, named by its number.
pub const SLOTS_DIR: &str = "/run/scf-gateway/slots";

/// Where iproute2 keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The host's network interfaces.
const SYS_NET: &str = "/sys/class/net";

/// The first address of the range the links take their addresses from.
const BASE: Ipv4Addr = Ipv4Addr::new(169, 254, 128, 0);

/// The interface of the instance's end of the link, inside its namespace.
const INSTANCE_IF: &str = "eth0";

/// Why a namespace could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("no free network slot: every slot under {SLOTS_DIR} is taken")]
    NoFreeSlot,
    #[error("`ip` was not found: isolated instances need iproute2")]
    IpMissing,
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    fn io(what: impl Into<String>, source: io::Error) -> NetnsError {
        NetnsError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The names and addresses of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    n: u32,
    netns: String,
    link: String,
    host: Ipv4Addr,
    instance: Ipv4Addr,
}

impl Slot {
    /// `n` must be below [`SLOTS`].
    fn new(n: u32) -> Slot {
        debug_assert!(n < SLOTS);
        let first = u32::from(BASE) + 4 * n;
        Slot {
            n,
            netns: format!("scfgw-{n}"),
            link: format!("scfgw{n}"),
            host: Ipv4Addr::from(first + 1),
            instance: Ipv4Addr::from(first + 2),
        }
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    fn lock_path(&self) -> PathBuf {
        Path::new(SLOTS_DIR).join(self.n.to_string())
    }

    /// Commands for `ip -batch -` on the host: the namespace, the link with its instance
    /// end moved into it, the host end's address.
    fn host_batch(&self) -> String {
        let Slot {
            netns, link, host, ..
        } = self;
        format!(
            "netns add {netns}\n\
             link add {link} type veth peer name {INSTANCE_IF} netns {netns}\n\
             addr add {host}/30 dev {link}\n\
             link set {link} up\n"
        )
    }

    /// Commands for `ip -n scfgw-<n> -batch -`: the instance end's address, and both
    /// interfaces of the namespace up.
    fn instance_batch(&self) -> String {
        let instance = self.instance;
        format!(
            "addr add {instance}/30 dev {INSTANCE_IF}\n\
             link set {INSTANCE_IF} up\n\
             link set lo up\n"
        )
    }

    /// Commands for `ip -force -batch -` that remove the slot's link and namespace. The
    /// link goes first and explicitly: with the namespace alone, the kernel retires the
    /// link later, on its own schedule, or never while a process is still inside.
    fn remove_batch(&self) -> String {
        let Slot { netns, link, .. } = self;
        format!("link del {link}\nnetns del {netns}\n")
    }

    fn netns_exists(&self) -> bool {
        self.path().symlink_metadata().is_ok()
    }

    fn link_exists(&self) -> bool {
        Path::new(SYS_NET)
            .join(&self.link)
            .symlink_metadata()
            .is_ok()
    }

    /// Locks the slot if it is free: `Ok(None)` when someone holds it.
    fn try_lock(&self) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }

    /// Removes what is left of the slot, which the caller holds; whether nothing is left.
    fn remove_leftovers(&self) -> Result<(), NetnsError> {
        if !self.netns_exists() && !self.link_exists() {
            return Ok(());
        }
        // `-force`: go on after a command that fails (the link may be gone already);
        // success is judged by what is left, not by the exit status.
        let result = run_ip(&["-force", "-batch", "-"], &self.remove_batch());
        let left: Vec<&str> = [
            (self.netns_exists(), self.netns.as_str()),
            (self.link_exists(), self.link.as_str()),
        ]
        .into_iter()
        .filter_map(|(exists, name)| exists.then_some(name))
        .collect();
        match (left.is_empty(), result) {
            (true, _) => Ok(()),
            (false, Err(e)) => Err(e),
            (false, Ok(())) => Err(NetnsError::Command {
                command: "ip -force -batch -".into(),
                status: "exit status: 0".into(),
                stderr: format!("{} still present", left.join(" and ")),
            }),
        }
    }

    /// Keeps the host out of the instance's traffic: no forwarding of what arrives on the
    /// host end, no IPv6 on it (so no link-local address for the instance to reach).
    fn harden_host_end(&self) -> Result<(), NetnsError> {
        let forwarding = format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.link);
        fs::write(&forwarding, "0")
            .map_err(|e| NetnsError::io(format!("write {forwarding}"), e))?;
        let ipv6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.link);
        match fs::write(&ipv6, "1") {
            // No IPv6 in this kernel: nothing to disable.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map_err(|e| NetnsError::io(format!("write {ipv6}"), e)),
        }
    }

    /// The slot a namespace name belongs to: `scfgw-<n>`, `n` in canonical form.
    fn of_netns(name: &str) -> Option<u32> {
        name.strip_prefix("scfgw-").and_then(canonical_slot)
    }

    /// The slot a host link name belongs to: `scfgw<n>`.
    fn of_link(name: &str) -> Option<u32> {
        name.strip_prefix("scfgw").and_then(canonical_slot)
    }

    /// The slot a container id belongs to: `scfgw-<n>-<anything>`.
    fn of_container(id: &str) -> Option<u32> {
        let (n, _) = id.strip_prefix("scfgw-")?.split_once('-')?;
        canonical_slot(n)
    }
}

/// `text` as a slot number if it is one written the way this module writes it.
fn canonical_slot(text: &str) -> Option<u32> {
    let n: u32 = text.parse().ok()?;
    (n < SLOTS && n.to_string() == text).then_some(n)
}

/// Creates the lock directory (0700) if missing.
fn slots_dir() -> Result<(), NetnsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(SLOTS_DIR)
        .map_err(|e| NetnsError::io(format!("create {SLOTS_DIR}"), e))
}

/// Takes a free slot, searching from a random one.
fn take_slot() -> Result<(Slot, File), NetnsError> {
    slots_dir()?;
    let start = fastrand::u32(..SLOTS);
    for i in 0..SLOTS {
        let n = (start + i) % SLOTS;
        if RESERVED.contains(&n) {
            continue;
        }
        let slot = Slot::new(n);
        match slot.try_lock() {
            Ok(Some(lock)) => return Ok((slot, lock)),
            Ok(None) => continue,
            Err(e) => {
                return Err(NetnsError::io(
                    format!("lock {}", slot.lock_path().display()),
                    e,
                ))
            }
        }
    }
    Err(NetnsError::NoFreeSlot)
}

/// Runs `ip ARGS` with `batch` on its standard input.
fn run_ip(args: &[&str], batch: &str) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => NetnsError::IpMissing,
            _ => NetnsError::io(format!("run `{command}`"), e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means `ip` stopped reading, which its status and stderr explain.
        let _ = stdin.write_all(batch.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetnsError::io(format!("wait for `{command}`"), e))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(NetnsError::Command {
        command: failed_line(&stderr, batch)
            .map(|line| format!("{command}: {line}"))
            .unwrap_or(command),
        status: output.status.to_string(),
        stderr: stderr.trim().replace('\n', "; "),
    })
}

/// The batch line that `ip` names in `Command failed -:<line>`.
fn failed_line<'a>(stderr: &str, batch: &'a str) -> Option<&'a str> {
    let at = stderr.find("Command failed -:")? + "Command failed -:".len();
    let digits: String = stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let line: usize = digits.parse().ok()?;
    batch.lines().nth(line.checked_sub(1)?)
}

/// Runs `f` on Tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(NetnsError::io(
            "network namespace task",
            io::Error::other(e),
        ))
    })
}

/// A network namespace with its link to the host, owned through its slot's lock.
#[derive(Debug)]
pub struct Netns {
    slot: Slot,
    /// The slot's lock; `None` once removed.
    lock: Option<File>,
}

// === impl Netns ===

impl Netns {
    /// Takes a free slot and builds the namespace with its link.
    pub async fn create() -> Result<Netns, NetnsError> {
        blocking(Netns::create_blocking).await
    }

    fn create_blocking() -> Result<Netns, NetnsError> {
        let (slot, lock) = take_slot()?;
        // From here on, dropping `netns` removes whatever was built.
        let netns = Netns {
            slot,
            lock: Some(lock),
        };
        let slot = &netns.slot;
        slot.remove_leftovers()?;
        run_ip(&["-batch", "-"], &slot.host_batch())?;
        slot.harden_host_end()?;
        run_ip(&["-n", &slot.netns, "-batch", "-"], &slot.instance_batch())?;
        Ok(netns)
    }

    /// The slot number.
    pub fn slot(&self) -> u32 {
        self.slot.n
    }

    /// `scfgw-<slot>`.
    pub fn name(&self) -> &str {
        &self.slot.netns
    }

    /// `/run/netns/scfgw-<slot>`.
    pub fn path(&self) -> PathBuf {
        self.slot.path()
    }

    /// The host-side link, `scfgw<slot>`.
    pub fn link(&self) -> &str {
        &self.slot.link
    }

    /// The instance's address (on `eth0` in the namespace): where the gateway connects.
    pub fn instance_addr(&self) -> Ipv4Addr {
        self.slot.instance
    }

    /// The host's address on the link.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.slot.host
    }

    /// The namespace file opened `O_RDONLY | O_CLOEXEC`, for `setns` in a child (see
    /// [`crate::sys::join_netns_at_exec`]).
    pub fn open(&self) -> io::Result<OwnedFd> {
        File::open(self.path()).map(OwnedFd::from)
    }

    /// Deletes the namespace (its link goes with it) and releases the slot. Idempotent.
    /// A process still inside keeps the namespace alive, without its link, until it
    /// exits: stop the instance first.
    pub async fn remove(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let removal = Removal {
            slot: self.slot.clone(),
            lock: Some(lock),
        };
        // Done on the blocking pool even if this future is dropped; and if the task never
        // runs (the runtime shutting down), where it is dropped.
        let _ = blocking(move || {
            drop(removal);
            Ok(())
        })
        .await;
    }
}

impl Drop for Netns {
    /// Removes the namespace if [`Netns::remove`] was not called: blocking, best effort.
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            drop(Removal {
                slot: self.slot.clone(),
                lock: Some(lock),
            });
        }
    }
}

/// Removes a slot's namespace and link, then releases its lock, when dropped.
struct Removal {
    slot: Slot,
    lock: Option<File>,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if let Err(e) = self.slot.remove_leftovers() {
            tracing::warn!(
                netns = %self.slot.netns,
                "cannot remove network namespace: {e}; the next owner of the slot or a gateway start removes it"
            );
        }
        drop(self.lock.take());
    }
}

/// Whether nobody holds slot `n`: then whatever bears its number is a leftover. (The
/// lock is taken and released at once.)
pub fn slot_is_free(n: u32) -> bool {
    n < SLOTS && matches!(Slot::new(n).try_lock(), Ok(Some(_)))
}

/// Namespaces built ahead of need, so that a cold start does not wait for one.
///
/// Once [`keep_spare`] was called (at start, by a gateway with isolated functions, and
/// after each isolated instance's start), one namespace is kept ready for [`take`]. [`close_spares`] removes what is kept at shutdown; a build that ends
/// after that removes its namespace instead of keeping it.
struct Spares {
    ready: parking_lot::Mutex<Vec<Netns>>,
    building: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
}

/// How many namespaces are kept ready.
const SPARES: usize = 1;

static SPARE: Spares = Spares {
    ready: parking_lot::Mutex::new(Vec::new()),
    building: std::sync::atomic::AtomicUsize::new(0),
    closed: std::sync::atomic::AtomicBool::new(false),
};

/// A namespace for a new instance: a spare one if there is one, else built now. The
/// caller calls [`keep_spare`] once its instance has started: building the next one
/// meanwhile would compete with the start for the kernel's network locks.
pub async fn take() -> Result<Netns, NetnsError> {
    let spare = SPARE.ready.lock().pop();
    match spare {
        Some(netns) => Ok(netns),
        None => Netns::create().await,
    }
}

/// Starts building spare namespaces, up to the one kept, in the background.
pub fn keep_spare() {
    use std::sync::atomic::Ordering;
    if SPARE.closed.load(Ordering::Acquire) {
        return;
    }
    let ready = SPARE.ready.lock().len();
    let building = SPARE.building.load(Ordering::Acquire);
    if ready + building >= SPARES {
        return;
    }
    SPARE.building.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async {
        let built = Netns::create().await;
        match built {
            Ok(mut netns) => {
                if SPARE.closed.load(Ordering::Acquire) {
                    netns.remove().await;
                } else {
                    SPARE.ready.lock().push(netns);
                }
            }
            Err(e) => tracing::debug!("cannot build a spare network namespace: {e}"),
        }
        SPARE.building.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Removes the spare namespaces and builds no more (gateway shutdown). Waits, briefly,
/// for builds under way, so that none is left behind.
pub async fn close_spares() {
    use std::sync::atomic::Ordering;
    SPARE.closed.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while SPARE.building.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let spares: Vec<Netns> = std::mem::take(&mut *SPARE.ready.lock());
    for mut netns in spares {
        netns.remove().await;
    }
}

/// At gateway start: removes namespaces `scfgw-<n>` and host links `scfgw<n>` whose slot
/// lock is free (left by a gateway that was killed), and the containers of the OCI
/// runtime `runtime` (`runc`) whose id starts with `scfgw-<n>-` for such a slot (before
/// the namespace, which their processes hold). Without the runtime installed, containers
/// are skipped quietly. Returns how many slots had leftovers removed.
pub async fn sweep_stale(runtime: &str) -> usize {
    let runtime = runtime.to_owned();
    blocking(move || Ok(sweep_blocking(&runtime)))
        .await
        .unwrap_or(0)
}

fn sweep_blocking(runtime: &str) -> usize {
    // Slot → its containers.
    let mut found: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (dir, of) in [
        (NETNS_DIR, Slot::of_netns as fn(&str) -> Option<u32>),
        (SYS_NET, Slot::of_link),
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Some(n) = entry.file_name().to_str().and_then(of) {
                found.entry(n).or_default();
            }
        }
    }
    for id in containers(runtime) {
        if let Some(n) = Slot::of_container(&id) {
            found.entry(n).or_default().push(id);
        }
    }
    if found.is_empty() {
        return 0;
    }
    if let Err(e) = slots_dir() {
        tracing::warn!("cannot sweep leftover network namespaces: {e}");
        return 0;
    }

    let mut swept = 0;
    for (n, ids) in found {
        let slot = Slot::new(n);
        let lock = match slot.try_lock() {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(netns = %slot.netns, "cannot lock slot: {e}");
                continue;
            }
        };
        for id in &ids {
            delete_container(runtime, id);
        }
        let had = slot.netns_exists() || slot.link_exists();
        match slot.remove_leftovers() {
            Ok(()) if had || !ids.is_empty() => swept += 1,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(netns = %slot.netns, "cannot remove leftover network namespace: {e}")
            }
        }
        drop(lock);
    }
    swept
}

/// The ids of `runtime list -q`; none if the runtime is missing or fails.
fn containers(runtime: &str) -> Vec<String> {
    let output = match Command::new(runtime)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("cannot run `{runtime} list`: {e}");
            return Vec::new();
        }
    };
    if !output.status.success() {
        tracing::warn!(
            "`{runtime} list` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

fn delete_container(runtime: &str, id: &str) {
    match Command::new(runtime)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => {
            tracing::debug!(container = id, "removed leftover container")
        }
        Ok(output) => tracing::warn!(
            container = id,
            "cannot remove leftover container ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => tracing::warn!(container = id, "cannot run `{runtime} delete`: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_names_its_namespace_link_and_addresses() {
        let first = Slot::new(0);
        assert_eq!(first.netns, "scfgw-0");
        assert_eq!(first.link, "scfgw0");
        assert_eq!(first.host, Ipv4Addr::new(169, 254, 128, 1));
        assert_eq!(first.instance, Ipv4Addr::new(169, 254, 128, 2));
        assert_eq!(first.path(), Path::new("/run/netns/scfgw-0"));
        assert_eq!(first.lock_path(), Path::new("/run/scf-gateway/slots/0"));

        let s = Slot::new(70);
        assert_eq!(s.host, Ipv4Addr::new(169, 254, 129, 25));
        assert_eq!(s.instance, Ipv4Addr::new(169, 254, 129, 26));

        let last = Slot::new(SLOTS - 1);
        assert_eq!(last.netns, "scfgw-8191");
        assert_eq!(last.host, Ipv4Addr::new(169, 254, 255, 253));
        assert_eq!(last.instance, Ipv4Addr::new(169, 254, 255, 254));
        assert!(
            last.link.len() <= 15,
            "an interface name has at most 15 bytes"
        );
    }

    #[test]
    fn every_slot_has_its_own_30_inside_the_range() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..SLOTS {
            let s = Slot::new(n);
            let host = u32::from(s.host);
            assert_eq!(host & !3, u32::from(s.instance) & !3, "one /30");
            assert_eq!(host & 3, 1);
            assert_eq!(
                host & 0xffff_8000,
                u32::from(BASE),
                "inside 169.254.128.0/17"
            );
            assert!(seen.insert(host & !3));
        }
    }

    #[test]
    fn the_reserved_slots_are_the_cloud_service_addresses() {
        // 169.254.169.0/24 and 169.254.170.0/24.
        let cloud = |a: Ipv4Addr| matches!(a.octets(), [169, 254, 169 | 170, _]);
        for n in 0..SLOTS {
            let s = Slot::new(n);
            assert_eq!(
                cloud(s.host) || cloud(s.instance),
                RESERVED.contains(&n),
                "{n}"
            );
        }
        for service in [
            [169, 254, 169, 254],
            [169, 254, 169, 253],
            [169, 254, 169, 123],
            [169, 254, 170, 2],
        ] {
            let slot = (u32::from(Ipv4Addr::from(service)) - u32::from(BASE)) / 4;
            assert!(RESERVED.contains(&slot));
        }
    }

    #[test]
    fn the_batches_are_iproute2_commands() {
        let s = Slot::new(5);
        assert_eq!(
            s.host_batch(),
            "netns add scfgw-5\n\
             link add scfgw5 type veth peer name eth0 netns scfgw-5\n\
             addr add 169.254.128.21/30 dev scfgw5\n\
             link set scfgw5 up\n"
        );
        assert_eq!(
            s.instance_batch(),
            "addr add 169.254.128.22/30 dev eth0\nlink set eth0 up\nlink set lo up\n"
        );
        assert_eq!(s.remove_batch(), "link del scfgw5\nnetns del scfgw-5\n");
    }

    #[test]
    fn names_are_read_back_only_in_the_form_written() {
        assert_eq!(Slot::of_netns("scfgw-12"), Some(12));
        assert_eq!(Slot::of_netns("scfgw-0"), Some(0));
        assert_eq!(Slot::of_link("scfgw8191"), Some(8191));
        assert_eq!(Slot::of_container("scfgw-7-hello.3"), Some(7));
        for other in [
            "scfgw-012",
            "scfgw-8192",
            "scfgw-",
            "scfgw-1x",
            "scfgw-+1",
            "scftest",
        ] {
            assert_eq!(Slot::of_netns(other), None, "{other}");
        }
        assert_eq!(Slot::of_link("scfgw-1"), None);
        assert_eq!(Slot::of_link("scfgw01"), None);
        assert_eq!(Slot::of_container("scfgw-7"), None);
        assert_eq!(Slot::of_container("scfgw-x-1"), None);
        assert_eq!(Slot::of_container("other-7-1"), None);
    }

    #[test]
    fn a_failed_batch_command_is_named() {
        let batch = Slot::new(3).host_batch();
        let stderr = "RTNETLINK answers: File exists\nCommand failed -:2\n";
        assert_eq!(
            failed_line(stderr, &batch),
            Some("link add scfgw3 type veth peer name eth0 netns scfgw-3")
        );
        assert_eq!(failed_line("Command failed -:9\n", &batch), None);
        assert_eq!(failed_line("Command failed -:0\n", &batch), None);
        assert_eq!(failed_line("Cannot find device\n", &batch), None);
    }
}
