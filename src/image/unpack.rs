//! Applying one layer (a tar, plain, gzip or zstd) to an image's root directory,
//! safely against hostile layers.
//!
//! Unpacking runs as root on untrusted input, so no entry may land outside the root:
//! every path is walked one component at a time from an open directory of the root,
//! each directory opened with `O_NOFOLLOW`, so a symlink in the tree (planted by this
//! layer or an earlier one) is never followed while writing. A name with `..` is
//! refused, and an absolute name is taken relative to the root, as tar does. Hard
//! links are resolved the same way, so their target is inside the tree. Device nodes
//! and FIFOs are skipped: an image function has no use for them and they are the
//! usual way out of a container. The decompressed stream is counted, and a layer that
//! passes the bound is refused; it is also hashed and checked against the config's
//! `diff_id`.
//!
//! Whiteouts follow the OCI layer rules: `.wh.NAME` removes `NAME` from the layers
//! below, `.wh..wh..opq` empties its directory of everything the layers below put
//! there.
//!
//! Modes, owners (as root) and modification times come from the tar headers; extended
//! attributes are not applied. [`ensure_dirs`] makes the directories a container mounts
//! over (`/proc`, `/tmp`, ...) with the same care, so a shared read-only root never
//! needs the runtime to create them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use sha2::Digest as _;

use super::hex_digest;

/// Prefix of a whiteout entry's name.
const WHITEOUT: &[u8] = b".wh.";
/// Name of the opaque-directory whiteout.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Why a layer could not be applied (the caller adds the image and layer names).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("entry {entry:?} {reason}")]
    Hostile { entry: String, reason: &'static str },
    #[error("the layer unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("the layer's content has digest {found}, the config says {expected}")]
    DiffId { expected: String, found: String },
    #[error("{entry} is {found}, not a directory")]
    NotADirectory { entry: String, found: &'static str },
}

/// What applying a layer did and skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// Device nodes and FIFOs, which are not created.
    pub skipped_special: usize,
    /// Bytes of the decompressed tar stream.
    pub unpacked_bytes: u64,
}

/// Applies the layer read from `blob` (compressed or not: the format is recognised
/// from its first bytes) to `root`. `diff_id`, if given, must be the sha256 of the
/// uncompressed tar. At most `max_unpacked` bytes are decompressed.
pub fn apply_layer(
    root: &Path,
    blob: impl Read,
    diff_id: Option<&str>,
    max_unpacked: u64,
) -> Result<LayerReport, UnpackError> {
    let mut blob = BufReader::new(blob);
    let head = blob.fill_buf()?;
    let decompressed: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(blob))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(blob)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        )
    } else {
        Box::new(blob)
    };
    let mut counted = Counted {
        inner: decompressed,
        count: 0,
        limit: max_unpacked,
        hash: sha2::Sha256::new(),
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let result = apply_entries(root_fd.as_fd(), &mut counted);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => return Err(counted.explain(e)),
    };
    // The hash covers the whole stream, the tar's end blocks included.
    if let Err(e) = io::copy(&mut counted, &mut io::sink()) {
        return Err(counted.explain(e.into()));
    }
    if let Some(expected) = diff_id {
        let found = hex_digest(&counted.hash.finalize());
        if found != expected {
            return Err(UnpackError::DiffId {
                expected: expected.to_owned(),
                found,
            });
        }
    }
    report.unpacked_bytes = counted.count;
    Ok(report)
}

/// The decompressed stream: counted against the bound and hashed.
struct Counted<R> {
    inner: R,
    count: u64,
    limit: u64,
    hash: sha2::Sha256,
}

impl<R> Counted<R> {
    fn explain(&self, e: UnpackError) -> UnpackError {
        if self.count > self.limit {
            UnpackError::TooLarge(self.limit)
        } else {
            e
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count > self.limit {
            return Err(io::Error::other("layer too large"));
        }
        // Read at most one byte past the bound, enough to know it was passed.
        let room = (self.limit - self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other("layer too large"));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn apply_entries(root: BorrowedFd<'_>, stream: impl Read) -> Result<LayerReport, UnpackError> {
    let mut archive = tar::Archive::new(stream);
    let mut report = LayerReport::default();
    // Paths this layer wrote: an opaque whiteout hides only what lower layers put there.
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    // Directory times are set once the layer is written: entries created inside a
    // directory change its time.
    let mut dir_times: Vec<(Vec<Vec<u8>>, Timestamps)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let parts = split_path(&raw).ok_or_else(|| UnpackError::Hostile {
            entry: shown(),
            reason: "has a `..` component",
        })?;
        let Some((name, parents)) = parts.split_last() else {
            continue; // the root itself
        };
        let kind = entry.header().entry_type();
        let create_parents = !name.starts_with(WHITEOUT);
        let dir = match open_parent(root, parents, create_parents) {
            Ok(Some(dir)) => dir,
            Ok(None) => continue, // a whiteout under a directory that does not exist
            Err(Walk::Symlink) => {
                return Err(UnpackError::Hostile {
                    entry: shown(),
                    reason: "passes through a symlink or a non-directory",
                })
            }
            Err(Walk::Io(e)) => return Err(e.into()),
        };
        let dir = dir.as_fd();
        let name = OsStr::from_bytes(name);

        if name.as_bytes() == OPAQUE {
            let parent_path = parents.join(&b'/');
            clear_dir(dir, &parent_path, &written)?;
            continue;
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT) {
            // `.wh..` would name the directory itself, `.wh...` its parent: at the
            // top of the tree that is outside the root.
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(UnpackError::Hostile {
                    entry: shown(),
                    reason: "is a whiteout of no file",
                });
            }
            remove_all_at(dir, OsStr::from_bytes(hidden))?;
            continue;
        }
        written.insert(parts.join(&b'/'));

        let header = entry.header();
        let mode = Mode::from_raw_mode(header.mode().unwrap_or(0o644) & 0o7777);
        let owner = (header.uid().ok(), header.gid().ok());
        let times = header.mtime().ok().map(timestamps);
        match kind {
            tar::EntryType::Directory => {
                let existing = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW);
                match existing {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        remove_all_at(dir, name)?;
                        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                            .map_err(io::Error::from)?;
                    }
                    Err(_) => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                        .map_err(io::Error::from)?,
                }
                let fd = open_dir(dir, name).map_err(|_| UnpackError::Hostile {
                    entry: shown(),
                    reason: "is not a directory after creation",
                })?;
                finish(fd.as_fd(), mode, owner)?;
                if let Some(t) = times {
                    dir_times.push((parts.iter().map(|p| p.to_vec()).collect(), t));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_all_at(dir, name)?;
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io::Error::from)?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file)?;
                finish(file.as_fd(), mode, owner)?;
                if let Some(t) = times {
                    // Times are informative: a refused value leaves the unpack time.
                    let _ = rustix::fs::futimens(&file, &t);
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Hostile {
                        entry: shown(),
                        reason: "is a symlink without a target",
                    })?
                    .into_owned();
                remove_all_at(dir, name)?;
                // The link itself is harmless: nothing here follows it, and inside the
                // container it resolves within the container's root.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, name)
                    .map_err(io::Error::from)?;
                if let (Some(uid), Some(gid)) = owner {
                    chown_at(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
                }
                if let Some(t) = times {
                    let _ = rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW);
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Hostile {
                        entry: shown(),
                        reason: "is a hard link without a target",
                    })?
                    .into_owned();
                let hostile = |reason| UnpackError::Hostile {
                    entry: shown(),
                    reason,
                };
                let target_parts =
                    split_path(&target).ok_or_else(|| hostile("links to a path with `..`"))?;
                let Some((target_name, target_parents)) = target_parts.split_last() else {
                    return Err(hostile("links to the image root"));
                };
                let target_dir = match open_parent(root, target_parents, false) {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err(hostile("links to a file that does not exist")),
                    Err(Walk::Symlink) => {
                        return Err(hostile("links through a symlink or a non-directory"))
                    }
                    Err(Walk::Io(e)) => return Err(e.into()),
                };
                remove_all_at(dir, name)?;
                // Without AT_SYMLINK_FOLLOW a symlink target is linked as the symlink
                // itself, never what it points to.
                rustix::fs::linkat(
                    target_dir.as_fd(),
                    OsStr::from_bytes(target_name),
                    dir,
                    name,
                    AtFlags::empty(),
                )
                .map_err(io::Error::from)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                report.skipped_special += 1;
            }
            // Metadata records (pax, GNU long names) are consumed by the tar reader;
            // anything else carries nothing a root filesystem needs.
            _ => {}
        }
    }
    for (parts, t) in dir_times {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        // A directory replaced later in the layer (by a symlink, say) keeps no time.
        if let Ok(Some(fd)) = open_parent(root, &parts, false) {
            let _ = rustix::fs::futimens(&fd, &t);
        }
    }
    Ok(report)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Makes each of `paths` (relative to `root`, `/`-separated) a directory, creating
/// what is missing one component at a time without following any symlink, as entries
/// are written. An existing component that is not a directory (a symlink or a file
/// the image put there) is an error naming it: it is not replaced, since the image
/// may rely on it.
pub fn ensure_dirs(root: &Path, paths: &[&str]) -> Result<(), UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    for path in paths {
        let parts = split_path(path.as_bytes()).ok_or_else(|| UnpackError::Hostile {
            entry: (*path).to_owned(),
            reason: "has a `..` component",
        })?;
        let mut dir = rustix::io::fcntl_dupfd_cloexec(&root_fd, 0).map_err(io::Error::from)?;
        for (i, part) in parts.iter().enumerate() {
            let name = OsStr::from_bytes(part);
            let shown = || format!("/{}", String::from_utf8_lossy(&parts[..=i].join(&b'/')));
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {}
                    FileType::Symlink => {
                        return Err(UnpackError::NotADirectory {
                            entry: shown(),
                            found: "a symlink",
                        })
                    }
                    FileType::RegularFile => {
                        return Err(UnpackError::NotADirectory {
                            entry: shown(),
                            found: "a file",
                        })
                    }
                    _ => {
                        return Err(UnpackError::NotADirectory {
                            entry: shown(),
                            found: "a special file",
                        })
                    }
                },
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io::Error::from(e).into()),
                    }
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
            // O_NOFOLLOW again: what was checked cannot have become a symlink since.
            dir = open_dir(dir.as_fd(), name).map_err(|_| UnpackError::NotADirectory {
                entry: shown(),
                found: "not a directory",
            })?;
        }
    }
    Ok(())
}

/// The components of an entry's name: empty and `.` parts dropped, a leading `/`
/// ignored. `None` if any part is `..`.
fn split_path(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    for p in raw.split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts)
}

enum Walk {
    /// A component exists and is not a directory (a symlink, most often).
    Symlink,
    Io(io::Error),
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory `parents` under `root` without following any symlink,
/// creating missing directories when `create` (else `Ok(None)` for a missing one).
fn open_parent(
    root: BorrowedFd<'_>,
    parents: &[&[u8]],
    create: bool,
) -> Result<Option<OwnedFd>, Walk> {
    let mut dir = rustix::io::fcntl_dupfd_cloexec(root, 0).map_err(|e| Walk::Io(e.into()))?;
    for part in parents {
        let name = OsStr::from_bytes(part);
        let next = match open_dir(dir.as_fd(), name) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(Walk::Io(e.into())),
                }
                open_dir(dir.as_fd(), name).map_err(|_| Walk::Symlink)?
            }
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on a file, ENOTDIR.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => return Err(Walk::Symlink),
            Err(e) => return Err(Walk::Io(e.into())),
        };
        dir = next;
    }
    Ok(Some(dir))
}

/// Mode and (when running as root) owner of a file just written.
fn finish(fd: BorrowedFd<'_>, mode: Mode, owner: (Option<u64>, Option<u64>)) -> io::Result<()> {
    if let (Some(uid), Some(gid)) = owner {
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = ids(uid, gid);
            rustix::fs::fchown(fd, Some(uid), Some(gid))?;
        }
    }
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(fd, mode)?;
    Ok(())
}

fn ids(uid: u64, gid: u64) -> (rustix::fs::Uid, rustix::fs::Gid) {
    let uid = u32::try_from(uid).unwrap_or(u32::MAX - 1);
    let gid = u32::try_from(gid).unwrap_or(u32::MAX - 1);
    (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    )
}

fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u64, gid: u64, flags: AtFlags) {
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = ids(uid, gid);
        // Ownership of a symlink matters little; a failure leaves it root's.
        let _ = rustix::fs::chownat(dir, name, Some(uid), Some(gid), flags);
    }
}

/// Removes `name` in `dir`, a whole tree if it is a directory, never following a
/// symlink. Nothing there is fine.
fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = open_dir(dir, name)?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), OsStr::from_bytes(&child))?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// An opaque whiteout: everything in the directory that this layer did not write goes.
fn clear_dir(dir: BorrowedFd<'_>, dir_path: &[u8], written: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in list_dir(dir)? {
        let mut path = dir_path.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&child);
        if !written.contains(&path) {
            remove_all_at(dir, OsStr::from_bytes(&child))?;
        }
    }
    Ok(())
}
