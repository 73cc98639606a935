//! `[images]`: where image functions' images are unpacked (`store`), which OCI runtime
//! runs their containers (`runtime`) and how large an image may be
//! (`max_image_bytes`). Registry credentials (`[[images.registries]]`) belong to
//! registry pulls, which are not built yet, and are refused as such.

use std::path::Path;

use super::launch::normalize_path;
use super::walk::{Ctx, Section};
use super::ImagesConfig;

const IMAGES_KEYS: &[&str] = &["store", "runtime", "max_image_bytes", "registries"];

/// The default `max_image_bytes`: SCF takes images below 1 GiB.
const DEFAULT_MAX_IMAGE_BYTES: u64 = 1 << 30;

pub(super) fn read_images(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    config_dir: &Path,
) -> ImagesConfig {
    ctx.check_keys(s, IMAGES_KEYS);
    if let Some((key, _)) = s.get("registries") {
        ctx.error(
            key.span(),
            "images.registries: image registries are not supported yet",
        );
    }
    let base = std::path::absolute(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let store = match ctx.get_str(s, "store", "a string") {
        Some(store) if store.value.is_empty() => {
            ctx.error(store.span, "images.store: must not be empty");
            base.join("data/images")
        }
        Some(store) => base.join(store.value),
        None => base.join("data/images"),
    };
    let runtime = match ctx.get_str(s, "runtime", "a string") {
        Some(r) if r.value.trim().is_empty() || r.value.contains('\0') => {
            ctx.error(r.span, "images.runtime: must be a program name or a path");
            "runc".to_string()
        }
        Some(r) => r.value,
        None => "runc".to_string(),
    };
    ImagesConfig {
        store: normalize_path(&store),
        runtime,
        max_image_bytes: ctx.get_u64(s, "max_image_bytes", 1..=u64::MAX, DEFAULT_MAX_IMAGE_BYTES),
    }
}
