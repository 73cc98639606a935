//! The image store: unpacked images by digest, each unpacked once.
//!
//! Layout under the store directory (`images.store`):
//!
//! ```text
//! STORE/sha256/<config hex>/rootfs/        the image's root filesystem
//! STORE/sha256/<config hex>/config.json    the image config, as stored
//! STORE/sha256/.tmp-<config hex>-<pid>-<n>/   an unpack in progress
//! ```
//!
//! An image is keyed by its config digest, which names its layers' content (the
//! config lists their `diff_id`s), so a layout, an archive and a registry pull of the
//! same image share one entry. An unpack writes into a temporary sibling that is
//! renamed into place when complete: a directory under its final name is always whole.
//! Callers in this process wanting the same digest wait on one lock and the second
//! finds the work done; another process racing on the same store loses the rename
//! and uses the winner's copy.
//!
//! An unpack holds an exclusive `flock` on its temporary directory for as long as it
//! runs; the kernel drops it when the process dies. A temporary directory whose lock
//! can be taken was left by an unpack that was interrupted, and is removed the first
//! time a [`Store`] is used; one whose lock is held belongs to an unpack in progress,
//! in this process or another, and is left alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fd::OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use sha2::Digest as _;

use super::layout::{self, Layer, ResolvedImage};
use super::unpack::{self, UnpackError};
use super::user::{resolve_user, User};
use super::{hex_digest, ImageConfig, ImageError, ImageRef, Limits};

/// Directories every unpacked root filesystem has, so the runtime can mount `proc`,
/// `sysfs`, a `/dev` and the `/tmp` tmpfs on a read-only root shared by containers
/// without writing to it.
pub const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp"];

/// Prefix of an unpack's temporary directory in `STORE/sha256/`.
const TMP_PREFIX: &str = ".tmp-";

/// An image ready to run: its root filesystem in the store and its config.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    /// The reference, as errors name the image.
    pub image: String,
    /// `sha256:<hex>` of the image config.
    pub digest: String,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

impl PreparedImage {
    /// The uid, gid and additional gids the image's `User` names (root without one),
    /// looked up in the image's own `/etc/passwd` and `/etc/group`.
    pub fn user(&self) -> Result<User, ImageError> {
        resolve_user(
            &self.image,
            &self.rootfs,
            self.config.user.as_deref().unwrap_or("0"),
        )
    }
}

/// The on-disk store of unpacked images. A process keeps one `Store` per store
/// directory: the per-digest locks that make concurrent callers share an unpack live
/// in it (one small entry per image digest seen).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    limits: Limits,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    unpacks: AtomicUsize,
    swept: AtomicBool,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    pub fn new(dir: impl Into<PathBuf>, limits: Limits) -> Self {
        Store {
            dir: dir.into(),
            limits,
            locks: Mutex::new(HashMap::new()),
            unpacks: AtomicUsize::new(0),
            swept: AtomicBool::new(false),
        }
    }

    /// Removes the temporary directories of interrupted unpacks (see the module
    /// documentation) and returns how many there were. [`Store::prepare`] does this
    /// once per `Store`, before its first unpack.
    pub async fn remove_stale(&self) -> Result<usize, ImageError> {
        self.swept.store(true, Ordering::Relaxed);
        let base = self.dir.join("sha256");
        let image = format!("store {}", self.dir.display());
        blocking(&image.clone(), move || {
            remove_stale(&base).map_err(|source| ImageError::Io {
                image,
                path: base.clone(),
                source,
            })
        })
        .await
    }

    /// How many images this store has unpacked (not found already unpacked).
    pub fn unpack_count(&self) -> usize {
        self.unpacks.load(Ordering::Relaxed)
    }

    /// Reads the image `r` names and checks it, without unpacking (`check`).
    pub async fn inspect(&self, r: &ImageRef) -> Result<ResolvedImage, ImageError> {
        let r = r.clone();
        let limits = self.limits;
        blocking(&r.to_string(), move || layout::read(&r, &limits)).await
    }

    /// Reads the image `r` names and unpacks it into the store unless it is there.
    pub async fn prepare(&self, r: &ImageRef) -> Result<PreparedImage, ImageError> {
        let resolved = self.inspect(r).await?;
        let hex = resolved
            .config_digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::Invalid {
                image: resolved.image.clone(),
                what: format!("config digest {:?}", resolved.config_digest),
                reason: "only sha256 is supported".into(),
            })?
            .to_owned();
        let base = self.dir.join("sha256");
        let final_dir = base.join(&hex);
        let prepared = PreparedImage {
            image: resolved.image.clone(),
            digest: resolved.config_digest.clone(),
            rootfs: final_dir.join("rootfs"),
            config: resolved.config.clone(),
        };

        if !self.swept.load(Ordering::Relaxed) {
            // A store that cannot be swept still serves images; the leftovers only
            // take space.
            if let Err(e) = self.remove_stale().await {
                tracing::warn!(error = %e, "interrupted unpacks could not be removed");
            }
        }

        let lock = self.locks.lock().entry(hex.clone()).or_default().clone();
        let _held = lock.lock().await;
        let limits = self.limits;
        let image = resolved.image.clone();
        let unpacked = blocking(&image, move || {
            if final_dir.exists() {
                return Ok(false);
            }
            let (tmp, _claim) = claim_tmp(&base, &hex).map_err(|source| ImageError::Io {
                image: resolved.image.clone(),
                path: base.clone(),
                source,
            })?;
            let result = unpack_all(&resolved, &tmp, &limits).and_then(|()| {
                match std::fs::rename(&tmp, &final_dir) {
                    Ok(()) => Ok(true),
                    // Another process unpacked the same image first: its copy is as good.
                    Err(_) if final_dir.exists() => Ok(false),
                    Err(source) => Err(ImageError::Io {
                        image: resolved.image.clone(),
                        path: final_dir.clone(),
                        source,
                    }),
                }
            });
            if !matches!(result, Ok(true)) {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result
        })
        .await?;
        if unpacked {
            self.unpacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(prepared)
    }
}

/// Creates a temporary directory for an unpack and takes its lock. The lock is taken
/// after the directory exists, so a sweep in another process may take it first (and
/// remove the directory): then a fresh name is tried.
fn claim_tmp(base: &Path, hex: &str) -> std::io::Result<(PathBuf, OwnedFd)> {
    std::fs::create_dir_all(base)?;
    for _ in 0..16 {
        let tmp = base.join(format!(
            "{TMP_PREFIX}{hex}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&tmp) {
            Ok(()) => {}
            // Left by an earlier process with the same pid: another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let fd = match open_dir(&tmp) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(e.into()),
        }
        // A sweep may have removed the directory between its creation and the lock.
        let same = match (rustix::fs::fstat(&fd), rustix::fs::stat(&tmp)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if same {
            return Ok((tmp, fd));
        }
    }
    Err(std::io::Error::other(
        "no temporary directory could be claimed for the unpack",
    ))
}

fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

/// Removes every temporary directory under `base` whose lock is free.
fn remove_stale(base: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TMP_PREFIX.as_bytes())
        {
            continue;
        }
        let path = entry.path();
        let Ok(fd) = open_dir(&path) else {
            continue;
        };
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            // An unpack in progress.
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(e.into()),
        }
        // Names are never reused, so the path is still the locked directory, or gone
        // (renamed into place by an unpack that finished meanwhile). remove_dir_all
        // does not follow the symlinks a layer left inside.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

async fn blocking<T: Send + 'static>(
    image: &str,
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ImageError::Invalid {
            image: image.to_owned(),
            what: "unpack".into(),
            reason: e.to_string(),
        })
    })
}

/// Writes the whole image into `tmp` (`rootfs/` and `config.json`).
fn unpack_all(img: &ResolvedImage, tmp: &Path, limits: &Limits) -> Result<(), ImageError> {
    let io_err = |path: &Path| {
        let image = img.image.clone();
        let path = path.to_owned();
        move |source| ImageError::Io {
            image,
            path,
            source,
        }
    };
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io_err(&rootfs))?;
    let config = tmp.join("config.json");
    std::fs::write(&config, &img.config_bytes).map_err(io_err(&config))?;
    let mut unpacked = 0u64;
    for layer in &img.layers {
        if let Some(expected) = &layer.digest {
            verify_blob(img, layer, expected)?;
        }
        let blob = layer.source.open().map_err(io_err(&layer.source.file))?;
        let left = limits.max_unpacked_bytes.saturating_sub(unpacked);
        let bound = limits.max_layer_unpacked_bytes.min(left);
        let report = unpack::apply_layer(&rootfs, blob, Some(&layer.diff_id), bound).map_err(
            |e| match e {
                UnpackError::TooLarge(_) if bound < limits.max_layer_unpacked_bytes => {
                    ImageError::UnpackedTooLarge {
                        image: img.image.clone(),
                        limit: limits.max_unpacked_bytes,
                    }
                }
                e => layer_error(img, layer, e),
            },
        )?;
        unpacked += report.unpacked_bytes;
        if report.skipped_special > 0 {
            tracing::debug!(
                image = %img.image,
                layer = %layer.name,
                skipped = report.skipped_special,
                "device nodes and FIFOs not created"
            );
        }
    }
    unpack::ensure_dirs(&rootfs, MOUNT_POINTS).map_err(|e| match e {
        UnpackError::NotADirectory { entry, found } => ImageError::MountPoint {
            image: img.image.clone(),
            entry,
            found,
        },
        e => ImageError::Invalid {
            image: img.image.clone(),
            what: "the root filesystem".into(),
            reason: e.to_string(),
        },
    })?;
    Ok(())
}

fn verify_blob(img: &ResolvedImage, layer: &Layer, expected: &str) -> Result<(), ImageError> {
    let mut r = layer.source.open().map_err(|source| ImageError::Io {
        image: img.image.clone(),
        path: layer.source.file.clone(),
        source,
    })?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut r, &mut buf).map_err(|source| ImageError::Io {
            image: img.image.clone(),
            path: layer.source.file.clone(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let found = hex_digest(&hash.finalize());
    if found != expected {
        return Err(ImageError::DigestMismatch {
            image: img.image.clone(),
            what: format!("layer {}", layer.name),
            expected: expected.to_owned(),
            found,
        });
    }
    Ok(())
}

fn layer_error(img: &ResolvedImage, layer: &Layer, e: UnpackError) -> ImageError {
    let image = img.image.clone();
    let name = layer.name.clone();
    match e {
        UnpackError::Io(source) => ImageError::Layer {
            image,
            layer: name,
            source,
        },
        UnpackError::Hostile { entry, reason } => ImageError::HostileEntry {
            image,
            layer: name,
            entry,
            reason,
        },
        UnpackError::TooLarge(limit) => ImageError::LayerTooLarge {
            image,
            layer: name,
            limit,
        },
        UnpackError::DiffId { expected, found } => ImageError::DigestMismatch {
            image,
            what: format!("uncompressed layer {name}"),
            expected,
            found,
        },
        UnpackError::NotADirectory { entry, found } => ImageError::MountPoint {
            image,
            entry,
            found,
        },
    }
}
