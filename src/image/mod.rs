//! Container images read from disk and unpacked into the image store.
//!
//! An image function runs a container whose root filesystem is an image's layers
//! applied in order. This module turns an image reference (`oci:DIR[:TAG]` or
//! `docker-archive:FILE`) into a checked, unpacked root filesystem in the store plus
//! the parts of the image config a runtime bundle needs ([`ImageConfig`]):
//!
//! - [`layout`] reads the two on-disk formats down to one [`layout::ResolvedImage`]:
//!   the config, its digest and the layer blobs, with platform, digests and size
//!   checked;
//! - [`unpack`] applies one layer to a root directory without ever letting an entry
//!   land outside it;
//! - [`store`] lays images out by digest and unpacks each one once, however many
//!   callers ask at the same time;
//! - [`user`] resolves the image's `User` against its own `/etc/passwd` and
//!   `/etc/group`, read inside the image root.
//!
//! docs/images.md describes the store layout and the rules for hostile layers.

pub mod layout;
pub mod store;
pub mod unpack;
pub mod user;

use std::fmt;
use std::path::PathBuf;

pub use layout::ResolvedImage;
pub use store::{PreparedImage, Store, MOUNT_POINTS};
pub use user::{resolve_user, User};

/// The only platform images are run on.
pub const PLATFORM: &str = "linux/amd64";

/// A reference to an image on local disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory, with the tag to pick from its index (the
    /// `org.opencontainers.image.ref.name` annotation); without a tag the index must
    /// name a single image.
    Oci { dir: PathBuf, tag: Option<String> },
    /// A `docker save` archive holding one image.
    DockerArchive { file: PathBuf },
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]` or `docker-archive:FILE`. Other forms (registry
    /// references) are not read from disk and give `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return None;
            }
            // The tag is what follows the last ':', unless that part is a path.
            return Some(match rest.rsplit_once(':') {
                Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
                    ImageRef::Oci {
                        dir: PathBuf::from(dir),
                        tag: Some(tag.to_owned()),
                    }
                }
                _ => ImageRef::Oci {
                    dir: PathBuf::from(rest),
                    tag: None,
                },
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return None;
            }
            return Some(ImageRef::DockerArchive {
                file: PathBuf::from(rest),
            });
        }
        None
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Oci { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Oci {
                dir,
                tag: Some(tag),
            } => write!(f, "oci:{}:{tag}", dir.display()),
            ImageRef::DockerArchive { file } => write!(f, "docker-archive:{}", file.display()),
        }
    }
}

/// Bounds applied while reading and unpacking an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most the image's layers may weigh, as stored (compressed), together.
    pub max_image_bytes: u64,
    /// The most one layer may weigh once decompressed (a decompression bomb is refused
    /// when it passes this).
    pub max_layer_unpacked_bytes: u64,
    /// The most all the image's layers may weigh once decompressed, together (the
    /// tar streams, as they are read).
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: 1 << 30,
            max_layer_unpacked_bytes: 8 << 30,
            max_unpacked_bytes: 8 << 30,
        }
    }
}

/// What the runtime bundle builder needs from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// The image's Entrypoint (replaced by a function's `command`).
    pub entrypoint: Vec<String>,
    /// The image's Cmd (replaced by a function's `args`).
    pub cmd: Vec<String>,
    /// `NAME=VALUE` pairs, under the SCF environment.
    pub env: Vec<String>,
    /// The working directory inside the container, if the image sets one.
    pub working_dir: Option<String>,
    /// `user[:group]` as the image states it, if it sets one.
    pub user: Option<String>,
}

impl ImageConfig {
    pub(crate) fn from_oci(config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return ImageConfig::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
        }
    }
}

/// Why an image could not be read or unpacked. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image}: {path}: {source}")]
    Io {
        image: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image}: {what} is not valid: {reason}")]
    Invalid {
        image: String,
        what: String,
        reason: String,
    },
    #[error("image {image}: no image tagged {tag:?} in the layout's index")]
    TagNotFound { image: String, tag: String },
    #[error("image {image}: {reason}")]
    Ambiguous { image: String, reason: String },
    #[error("image {image} is for {found}; only {PLATFORM} is supported")]
    Platform { image: String, found: String },
    #[error("image {image} is {size} bytes of layers, more than the limit of {limit} bytes")]
    TooLarge {
        image: String,
        size: u64,
        limit: u64,
    },
    #[error("image {image}: {what} has digest {found}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: String,
        expected: String,
        found: String,
    },
    #[error("image {image}: layer {layer} unpacks to more than {limit} bytes")]
    LayerTooLarge {
        image: String,
        layer: String,
        limit: u64,
    },
    #[error("image {image}: its layers unpack to more than {limit} bytes together")]
    UnpackedTooLarge { image: String, limit: u64 },
    #[error(
        "image {image}: {entry} is {found} in the image; a container mounts a directory there"
    )]
    MountPoint {
        image: String,
        entry: String,
        found: &'static str,
    },
    #[error("image {image}: user {user:?}: {reason}")]
    User {
        image: String,
        user: String,
        reason: String,
    },
    #[error("image {image}: layer {layer}: entry {entry:?} {reason}")]
    HostileEntry {
        image: String,
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("image {image}: layer {layer}: {source}")]
    Layer {
        image: String,
        layer: String,
        #[source]
        source: std::io::Error,
    },
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex_digest(&sha2::Sha256::digest(bytes))
}

pub(crate) fn hex_digest(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(7 + hash.len() * 2);
    s.push_str("sha256:");
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            ImageRef::parse("oci:images/resize:v3"),
            Some(ImageRef::Oci {
                dir: "images/resize".into(),
                tag: Some("v3".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:/srv/img"),
            Some(ImageRef::Oci {
                dir: "/srv/img".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("oci:a:b/c"),
            Some(ImageRef::Oci {
                dir: "a:b/c".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("docker-archive:img.tar"),
            Some(ImageRef::DockerArchive {
                file: "img.tar".into()
            })
        );
        assert_eq!(ImageRef::parse("registry.example.com/app:1"), None);
        assert_eq!(ImageRef::parse("oci:"), None);
        assert_eq!(
            ImageRef::parse("oci:images/resize:v3").map(|r| r.to_string()),
            Some("oci:images/resize:v3".into())
        );
    }
}
