//! The image store: unpacked images by digest, each unpacked once.
//!
//! Layout under the store directory (`images.store`):
//!
//! ```text
//! STORE/sha256/<config hex>/rootfs/        the image's root filesystem
//! STORE/sha256/<config hex>/config.json    the image config, as stored
//! STORE/sha256/.tmp-<config hex>-<n>/      an unpack in progress
//! ```
//!
//! An image is keyed by its config digest, which names its layers' content (the
//! config lists their `diff_id`s), so a layout, an archive and a registry pull of the
//! same image share one entry. An unpack writes into a temporary sibling that is
//! renamed into place when complete: a directory under its final name is always whole.
//! Callers in this process wanting the same digest wait on one lock and the second
//! finds the work done; another process racing on the same store loses the rename
//! and uses the winner's copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::Digest as _;

use super::layout::{self, Layer, ResolvedImage};
use super::unpack::{self, UnpackError};
use super::{hex_digest, ImageConfig, ImageError, ImageRef, Limits};

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

/// The on-disk store of unpacked images. A process keeps one `Store` per store
/// directory: the per-digest locks that make concurrent callers share an unpack live
/// in it (one small entry per image digest seen).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    limits: Limits,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    unpacks: AtomicUsize,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    pub fn new(dir: impl Into<PathBuf>, limits: Limits) -> Self {
        Store {
            dir: dir.into(),
            limits,
            locks: Mutex::new(HashMap::new()),
            unpacks: AtomicUsize::new(0),
        }
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

        let lock = self.locks.lock().entry(hex.clone()).or_default().clone();
        let _held = lock.lock().await;
        let limits = self.limits;
        let image = resolved.image.clone();
        let unpacked = blocking(&image, move || {
            if final_dir.exists() {
                return Ok(false);
            }
            let tmp = base.join(format!(
                ".tmp-{hex}-{}-{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
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
    for layer in &img.layers {
        if let Some(expected) = &layer.digest {
            verify_blob(img, layer, expected)?;
        }
        let blob = layer.source.open().map_err(io_err(&layer.source.file))?;
        let report = unpack::apply_layer(
            &rootfs,
            blob,
            Some(&layer.diff_id),
            limits.max_layer_unpacked_bytes,
        )
        .map_err(|e| layer_error(img, layer, e))?;
        if report.skipped_special > 0 {
            tracing::debug!(
                image = %img.image,
                layer = %layer.name,
                skipped = report.skipped_special,
                "device nodes and FIFOs not created"
            );
        }
    }
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
    }
}
