//! Reading an image from disk: an OCI image layout directory or a `docker save`
//! archive, down to the same [`ResolvedImage`].
//!
//! Only the small documents (index, manifests, config) are read here, each checked
//! against the digest that names it; layer blobs are located and their sizes summed
//! against the image limit, and their digests are checked as they are unpacked
//! ([`super::store`]), so an image already in the store costs a few small reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use serde::Deserialize;

use super::{sha256_digest, ImageConfig, ImageError, ImageRef, Limits, PLATFORM};

/// The annotation an OCI layout's index names a tag with.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Index, manifest and config documents larger than this are refused unread.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Bytes of a file holding one blob: a whole file in an OCI layout, a member of the
/// archive for `docker save`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobSource {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl BlobSource {
    /// A reader of exactly this blob's bytes.
    pub fn open(&self) -> io::Result<io::Take<File>> {
        let mut f = File::open(&self.file)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.len))
    }
}

/// One layer of an image, in the order it is applied.
#[derive(Clone, Debug)]
pub struct Layer {
    /// How the layer is named in errors (its digest, or its name in the archive).
    pub name: String,
    pub source: BlobSource,
    /// The digest of the stored (compressed) bytes, when the format states one.
    pub digest: Option<String>,
    /// The digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// An image located on disk with its config read and checked.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference, as errors name the image.
    pub image: String,
    /// `sha256:<hex>` of the config: the image's identity in the store.
    pub config_digest: String,
    /// The config document as stored, kept beside the unpacked root.
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
}

/// Reads the image `r` names (paths relative to the current directory), checking its
/// platform and the sum of its layer sizes against `limits.max_image_bytes`.
pub fn read(r: &ImageRef, limits: &Limits) -> Result<ResolvedImage, ImageError> {
    let image = r.to_string();
    match r {
        ImageRef::Oci { dir, tag } => read_oci(&image, dir, tag.as_deref(), limits),
        ImageRef::DockerArchive { file } => read_docker_archive(&image, file, limits),
    }
}

fn io_err(image: &str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let image = image.to_owned();
    let path = path.to_owned();
    move |source| ImageError::Io {
        image,
        path,
        source,
    }
}

fn invalid(image: &str, what: impl Into<String>, reason: impl ToString) -> ImageError {
    ImageError::Invalid {
        image: image.to_owned(),
        what: what.into(),
        reason: reason.to_string(),
    }
}

// === OCI image layout ===

fn read_oci(
    image: &str,
    dir: &Path,
    tag: Option<&str>,
    limits: &Limits,
) -> Result<ResolvedImage, ImageError> {
    let index_path = dir.join("index.json");
    let index_bytes = read_capped(&index_path).map_err(io_err(image, &index_path))?;
    let index =
        ImageIndex::from_reader(&index_bytes[..]).map_err(|e| invalid(image, "index.json", e))?;

    let mut candidates: Vec<Descriptor> = match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .filter(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == tag)
            })
            .cloned()
            .collect(),
        None => index.manifests().clone(),
    };
    if candidates.is_empty() {
        return Err(match tag {
            Some(tag) => ImageError::TagNotFound {
                image: image.to_owned(),
                tag: tag.to_owned(),
            },
            None => invalid(image, "index.json", "it lists no image"),
        });
    }
    // A tag may name an index of per-platform manifests (a multi-platform image):
    // one level of nesting is opened.
    if candidates.len() == 1 && is_index(candidates[0].media_type()) {
        let nested = read_document(image, dir, &candidates[0])?;
        let nested = ImageIndex::from_reader(&nested[..])
            .map_err(|e| invalid(image, candidates[0].digest().to_string(), e))?;
        candidates = nested.manifests().clone();
    }
    let chosen = pick_platform(image, candidates)?;

    let manifest_bytes = read_document(image, dir, &chosen)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| invalid(image, format!("manifest {}", chosen.digest()), e))?;
    let config_bytes = read_document(image, dir, manifest.config())?;
    let config_digest = manifest.config().digest().to_string();
    let config = parse_config(image, &config_bytes)?;

    let total: u64 = manifest.layers().iter().map(|l| l.size()).sum();
    check_size(image, total, limits)?;
    let diff_ids = diff_ids(image, &config, manifest.layers().len())?;
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let path = blob_path(image, dir, d)?;
        let len = std::fs::metadata(&path)
            .map_err(io_err(image, &path))?
            .len();
        if len != d.size() {
            return Err(invalid(
                image,
                format!("layer {}", d.digest()),
                format!("it is {len} bytes, the manifest says {}", d.size()),
            ));
        }
        layers.push(Layer {
            name: d.digest().to_string(),
            source: BlobSource {
                file: path,
                offset: 0,
                len,
            },
            digest: Some(d.digest().to_string()),
            diff_id: diff_id.clone(),
        });
    }
    Ok(ResolvedImage {
        image: image.to_owned(),
        config_digest,
        config: ImageConfig::from_oci(&config),
        config_bytes,
        layers,
    })
}

fn is_index(m: &MediaType) -> bool {
    match m {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

fn platform_name(os: &Os, arch: &Arch) -> String {
    format!("{os}/{arch}")
}

/// One manifest stands for itself (its config's platform is checked later); among
/// several, the linux/amd64 one is taken.
fn pick_platform(image: &str, candidates: Vec<Descriptor>) -> Result<Descriptor, ImageError> {
    let candidates = match <[_; 1]>::try_from(candidates) {
        Ok([only]) => return Ok(only),
        Err(candidates) => candidates,
    };
    let mut found = Vec::new();
    let mut matching = Vec::new();
    for d in candidates {
        match d.platform() {
            Some(p) if *p.os() == Os::Linux && *p.architecture() == Arch::Amd64 => matching.push(d),
            Some(p) => found.push(platform_name(p.os(), p.architecture())),
            None => found.push("an unstated platform".to_owned()),
        }
    }
    match <[_; 1]>::try_from(matching) {
        Ok([only]) => Ok(only),
        Err(matching) if matching.is_empty() => Err(ImageError::Platform {
            image: image.to_owned(),
            found: found.join(", "),
        }),
        Err(matching) => Err(ImageError::Ambiguous {
            image: image.to_owned(),
            reason: format!(
                "{} manifests are for {PLATFORM}; name one with a tag",
                matching.len()
            ),
        }),
    }
}

/// The path of a blob in the layout. The digest is checked to be a sha256 in hex
/// before it becomes part of a path, so a hostile index cannot point elsewhere.
fn blob_path(image: &str, dir: &Path, d: &Descriptor) -> Result<PathBuf, ImageError> {
    let digest = d.digest().to_string();
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            invalid(
                image,
                format!("digest {digest:?}"),
                "only sha256 is supported",
            )
        })?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

/// A small blob (index, manifest, config), read whole and checked against its
/// descriptor's size and digest.
fn read_document(image: &str, dir: &Path, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(image, dir, d)?;
    let bytes = read_capped(&path).map_err(io_err(image, &path))?;
    let found = sha256_digest(&bytes);
    if bytes.len() as u64 != d.size() || found != d.digest().to_string() {
        return Err(ImageError::DigestMismatch {
            image: image.to_owned(),
            what: format!("blob {}", path.display()),
            expected: d.digest().to_string(),
            found,
        });
    }
    Ok(bytes)
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    read_all_capped(f.take(MAX_DOCUMENT_BYTES + 1))
}

fn read_all_capped(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

fn parse_config(image: &str, bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    let config = ImageConfiguration::from_reader(bytes).map_err(|e| invalid(image, "config", e))?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(ImageError::Platform {
            image: image.to_owned(),
            found: platform_name(config.os(), config.architecture()),
        });
    }
    Ok(config)
}

/// The config's uncompressed layer digests, one per layer of the image.
fn diff_ids<'c>(
    image: &str,
    config: &'c ImageConfiguration,
    layers: usize,
) -> Result<&'c [String], ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(invalid(
            image,
            "config",
            format!(
                "it lists {} layer digests for {layers} layers",
                diff_ids.len()
            ),
        ));
    }
    Ok(diff_ids)
}

fn check_size(image: &str, total: u64, limits: &Limits) -> Result<(), ImageError> {
    if total > limits.max_image_bytes {
        return Err(ImageError::TooLarge {
            image: image.to_owned(),
            size: total,
            limit: limits.max_image_bytes,
        });
    }
    Ok(())
}

// === docker save archive ===

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    layers: Vec<String>,
}

enum Member {
    File { offset: u64, len: u64 },
    Link(String),
}

fn read_docker_archive(
    image: &str,
    file: &Path,
    limits: &Limits,
) -> Result<ResolvedImage, ImageError> {
    let members = index_archive(file).map_err(io_err(image, file))?;
    let locate = |name: &str| -> Result<BlobSource, ImageError> {
        let mut name = normalize(name);
        // Older archives link repeated layers to their first copy.
        for _ in 0..8 {
            match members.get(&name) {
                Some(Member::File { offset, len }) => {
                    return Ok(BlobSource {
                        file: file.to_owned(),
                        offset: *offset,
                        len: *len,
                    })
                }
                Some(Member::Link(target)) => {
                    let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                    name = normalize(&format!("{base}/{target}"));
                }
                None => break,
            }
        }
        Err(invalid(
            image,
            "archive",
            format!("it has no file {name:?}"),
        ))
    };
    let read_member = |name: &str| -> Result<Vec<u8>, ImageError> {
        let src = locate(name)?;
        let r = src.open().map_err(io_err(image, file))?;
        read_all_capped(r).map_err(io_err(image, file))
    };

    let manifest_bytes = read_member("manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(image, "manifest.json", e))?;
    let entry = match <[_; 1]>::try_from(entries) {
        Ok([entry]) => entry,
        Err(entries) => {
            return Err(ImageError::Ambiguous {
                image: image.to_owned(),
                reason: format!("the archive holds {} images, not one", entries.len()),
            })
        }
    };
    let config_bytes = read_member(&entry.config)?;
    let config_digest = sha256_digest(&config_bytes);
    let config = parse_config(image, &config_bytes)?;

    let diff_ids = diff_ids(image, &config, entry.layers.len())?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
        layers.push(Layer {
            name: name.clone(),
            source: locate(name)?,
            digest: None,
            diff_id: diff_id.clone(),
        });
    }
    check_size(image, layers.iter().map(|l| l.source.len).sum(), limits)?;
    Ok(ResolvedImage {
        image: image.to_owned(),
        config_digest,
        config: ImageConfig::from_oci(&config),
        config_bytes,
        layers,
    })
}

/// Where each member of the archive lies, so layers are read in place.
fn index_archive(file: &Path) -> io::Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(File::open(file)?);
    let mut members = HashMap::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_file() {
            members.insert(
                name,
                Member::File {
                    offset: entry.raw_file_position(),
                    len: entry.size(),
                },
            );
        } else if kind.is_symlink() {
            if let Some(target) = entry.link_name_bytes() {
                members.insert(name, Member::Link(String::from_utf8_lossy(&target).into()));
            }
        }
    }
    Ok(members)
}

/// `a/./b/../c` → `a/c`, without leading `/`; only names inside the archive matter.
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}
