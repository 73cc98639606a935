//! The operating-system calls the gateway makes outside the standard library and
//! Tokio, behind safe functions: signals, waiting for and reaping children, pidfds, the
//! subreaper flag, cgroup and network-namespace membership at exec, the open-file limit,
//! and the heap trim.
//!
//! It exists so that `unsafe` lives in one module a reviewer can read whole: the rest
//! of the crate is `#![deny(unsafe_code)]`. Most calls go through `rustix`, which makes
//! them safe; what remains `unsafe` here (the `pre_exec` hooks, `setns` in one of them,
//! registering a descriptor with the reactor, `malloc_trim`) carries its reason beside
//! it.
//!
//! Process ids are the kernel's (`i32`); an id that is not positive names no single
//! process and is refused, so no call here can signal or wait for a whole group or
//! every child by accident.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use rustix::process::{Pid, WaitIdOptions, WaitOptions, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A process id as the kernel gives it.
pub type RawPid = i32;

/// The signals the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: asks the process to stop.
    Term,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        match self {
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Kill => rustix::process::Signal::KILL,
        }
    }
}

fn pid(raw: RawPid) -> io::Result<Pid> {
    if raw <= 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    Pid::from_raw(raw).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

fn os(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `kill(pid, signal)`.
pub fn kill(target: RawPid, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process(pid(target)?, signal.raw()).map_err(os)
}

/// `killpg(pgid, signal)`.
pub fn kill_group(pgid: RawPid, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process_group(pid(pgid)?, signal.raw()).map_err(os)
}

/// Makes the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans of
/// its descendants are reparented to it.
pub fn become_child_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(rustix::process::getpid().into()).map_err(os)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `access(path, W_OK)`: whether the real user may write in `path`.
pub fn check_writable(path: &Path) -> io::Result<()> {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(os)
}

/// A pidfd for `child`, readable once it has exited; `Err` where pidfds are missing
/// (old kernel, seccomp). Must be called within a Tokio runtime.
pub fn pidfd(child: RawPid) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = rustix::process::pidfd_open(pid(child)?, rustix::process::PidfdFlags::empty())
        .map_err(os)?;
    // SAFETY: `register_with_interest` needs the descriptor to stay open and the same
    // while the AsyncFd owns it; an OwnedFd is closed only when dropped, and nothing
    // can swap the descriptor it holds.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
}

/// Blocks until `child` has exited, leaving it unreaped (`waitid(WEXITED | WNOWAIT)`).
pub fn wait_exited_unreaped(child: RawPid) -> io::Result<()> {
    let child = pid(child)?;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::Pid(child),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(os(e)),
        }
    }
}

/// Reaps `child`, which has exited (`waitpid(pid, 0)`); its wait status.
pub fn reap(child: RawPid) -> io::Result<WaitStatus> {
    let child = pid(child)?;
    loop {
        match rustix::process::waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(status),
            Ok(None) => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(os(e)),
        }
    }
}

/// Reaps `child` if it has exited (`waitpid(pid, WNOHANG)`); `Ok(false)` while it runs.
pub fn try_reap(child: RawPid) -> io::Result<bool> {
    match rustix::process::waitpid(Some(pid(child)?), WaitOptions::NOHANG) {
        Ok(reaped) => Ok(reaped.is_some()),
        Err(e) => Err(os(e)),
    }
}

/// Makes the child that `command` spawns join a cgroup between fork and exec, by
/// writing its pid to `procs` (an open `cgroup.procs`). The descriptor belongs to
/// `command` from now on and is closed when `command` is dropped.
pub fn join_cgroup_at_exec(command: &mut Command, procs: File) {
    let procs = OwnedFd::from(procs);
    let hook = move || -> io::Result<()> {
        let mut buf = [0u8; 24];
        let mut pid = rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        let mut at = buf.len();
        loop {
            at -= 1;
            buf[at] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let digits = &buf[at..];
        loop {
            match rustix::io::write(&procs, digits) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(os(e)),
            }
        }
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: it makes two system calls (getpid, write) on
    // a descriptor it owns, formats into a stack buffer, and neither allocates nor
    // takes a lock (an error is built from the raw errno, without allocating).
    unsafe {
        command.pre_exec(hook);
    }
}

/// Makes the child that `command` spawns enter a network namespace between fork and
/// exec (`setns(netns, CLONE_NEWNET)`), so that it starts inside it: `netns` is the open
/// namespace file (`/run/netns/NAME`). The descriptor belongs to `command` from now on
/// and is closed when `command` is dropped; the child does not inherit it (it is
/// close-on-exec).
pub fn join_netns_at_exec(command: &mut Command, netns: OwnedFd) {
    let hook = move || -> io::Result<()> {
        // SAFETY: setns only reads its arguments; `netns` is a descriptor the hook owns,
        // open for as long as the hook exists.
        let done = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: one system call (setns) on a descriptor it
    // owns; it neither allocates nor takes a lock (an error is built from the raw
    // errno, without allocating).
    unsafe {
        command.pre_exec(hook);
    }
}

/// The open-file limit (`RLIMIT_NOFILE`) after raising its soft value to `wanted`, or
/// as far as the hard limit allows; never lowers it. Returns `(soft, hard)`, `None`
/// meaning unlimited.
pub fn raise_open_files(wanted: u64) -> io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let target = match limit.maximum {
        Some(hard) => wanted.min(hard),
        None => wanted,
    };
    if limit.current.is_some_and(|soft| soft < target) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .map_err(os)?;
        return Ok((Some(target), limit.maximum));
    }
    Ok((limit.current, limit.maximum))
}

/// Gives free heap pages back to the system (`malloc_trim(0)`, glibc's malloc only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn malloc_trim() {
    // SAFETY: malloc_trim has no preconditions; it only takes the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_name_no_single_process_are_refused() {
        for raw in [0, -1] {
            let refused = |r: io::Result<()>| r.unwrap_err().kind() == io::ErrorKind::InvalidInput;
            assert!(refused(kill(raw, Signal::Kill)));
            assert!(refused(kill_group(raw, Signal::Kill)));
            assert!(reap(raw).is_err());
        }
    }

    #[test]
    fn the_open_file_limit_is_raised_never_lowered() {
        let (soft, hard) = raise_open_files(0).unwrap();
        let (again, _) = raise_open_files(64).unwrap();
        assert_eq!(soft, again, "already above: unchanged");
        if let (Some(soft), Some(hard)) = (soft, hard) {
            assert!(soft <= hard);
            let (raised, _) = raise_open_files(hard).unwrap();
            assert_eq!(raised, Some(hard));
        }
    }
}
