//! Test support for image functions: layer tars built entry by entry (hostile names
//! included), OCI image layouts written from them, and the example function as an
//! image (`function_image_layout`: its binary plus the shared libraries it loads), so
//! tests run a real image without a registry or a build tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::Digest as _;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "scf-image-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A layer tar built entry by entry. Names are written raw into the header, so hostile
/// ones (`..`, absolute) get through as a crafted layer would carry them.
pub struct Layer(tar::Builder<Vec<u8>>);

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    /// One entry: directories get mode 0755, everything else 0644, mtime 0.
    pub fn entry(self, name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Self {
        let mode = if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        };
        self.entry_with(name, kind, data, link, mode, 0)
    }

    pub fn entry_with(
        mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
        mode: u32,
        mtime: u64,
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name.fill(0);
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname.fill(0);
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, data, None)
    }

    /// A file with the given mode (an executable: 0o755).
    pub fn file_mode(self, name: &str, data: &[u8], mode: u32) -> Self {
        self.entry_with(name, tar::EntryType::Regular, data, None, mode, 0)
    }

    /// A file whose name may be longer than the old header's 100 bytes.
    pub fn long_file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, b"", None)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, b"", Some(target))
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, b"", Some(target))
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    let h = sha2::Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// How a layer is stored in a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Plain,
    Gzip,
}

/// A layer as a layout stores it.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
}

impl LayerBlob {
    pub fn new(tar: &[u8], stored: Stored) -> Self {
        let (bytes, media_type) = match stored {
            Stored::Plain => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            Stored::Gzip => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
        };
        LayerBlob {
            diff_id: sha(tar),
            digest: sha(&bytes),
            bytes,
            media_type,
        }
    }
}

/// Writes an OCI image layout into `dir` (created if missing): `oci-layout`, the blobs
/// and an `index.json` naming one image tagged `tag`, for linux/`arch`, with `config`
/// as the image config's `config` object and `layers` (uncompressed tars) stored as
/// asked. Returns the config digest.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    arch: &str,
    config: serde_json::Value,
    layers: &[(Vec<u8>, Stored)],
) -> String {
    let blobs: Vec<LayerBlob> = layers
        .iter()
        .map(|(tar, stored)| LayerBlob::new(tar, *stored))
        .collect();
    write_layout_blobs(dir, tag, arch, config, &blobs)
}

/// [`write_layout`] with the layers already as stored.
pub fn write_layout_blobs(
    dir: &Path,
    tag: &str,
    arch: &str,
    config: serde_json::Value,
    layers: &[LayerBlob],
) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for layer in layers {
        diff_ids.push(layer.diff_id.clone());
        let path = blobs.join(layer.digest.trim_start_matches("sha256:"));
        std::fs::write(path, &layer.bytes).unwrap();
        descriptors.push(serde_json::json!({
            "mediaType": layer.media_type,
            "digest": layer.digest,
            "size": layer.bytes.len(),
        }));
    }
    let config = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len()
        },
        "layers": descriptors,
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    config_digest
}

/// Choices for [`function_image_layout_with`].
#[derive(Clone, Debug)]
pub struct FunctionImage {
    /// The image's architecture (`amd64`; `arm64` for an image that must be refused).
    pub arch: String,
    /// Bytes of incompressible data added as `/padding` in a second (plain) layer, to
    /// make an image weigh more than a limit.
    pub padding_bytes: usize,
    /// The image's Cmd.
    pub cmd: Vec<String>,
    /// The image's User, if any.
    pub user: Option<String>,
}

impl Default for FunctionImage {
    fn default() -> Self {
        FunctionImage {
            arch: "amd64".into(),
            padding_bytes: 0,
            cmd: Vec::new(),
            user: None,
        }
    }
}

/// The `PATH` the function image's Env sets.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An OCI image layout in `dir` of the example function (`example_function()`) as a
/// linux/amd64 image tagged `tag`: one gzip layer with the binary at `/function`, the
/// shared libraries `ldd` lists for it at their paths, and an `/etc/passwd` and
/// `/etc/group` with `root` and `scf` (1000); Entrypoint `["/function"]`, Env `PATH`
/// and `IMAGE_VAR=from-image`, WorkingDir `/`, port 9000 exposed. Returns `dir`.
pub fn function_image_layout(dir: &Path, tag: &str) -> PathBuf {
    function_image_layout_with(dir, tag, &FunctionImage::default())
}

/// [`function_image_layout`] with another architecture, padding, Cmd or User.
pub fn function_image_layout_with(dir: &Path, tag: &str, opts: &FunctionImage) -> PathBuf {
    static FUNCTION_LAYER: std::sync::OnceLock<LayerBlob> = std::sync::OnceLock::new();
    let mut layers = vec![FUNCTION_LAYER.get_or_init(cached_function_layer).clone()];
    if opts.padding_bytes > 0 {
        let padding = Layer::new()
            .file("padding", &noise(opts.padding_bytes))
            .finish();
        layers.push(LayerBlob::new(&padding, Stored::Plain));
    }
    let mut config = serde_json::json!({
        "Entrypoint": ["/function"],
        "Env": [format!("PATH={IMAGE_PATH}"), "IMAGE_VAR=from-image"],
        "WorkingDir": "/",
        "ExposedPorts": {"9000/tcp": {}},
    });
    if !opts.cmd.is_empty() {
        config["Cmd"] = serde_json::json!(opts.cmd);
    }
    if let Some(user) = &opts.user {
        config["User"] = serde_json::json!(user);
    }
    write_layout_blobs(dir, tag, &opts.arch, config, &layers);
    dir.to_owned()
}

/// The shared libraries `ldd` lists for `binary` (the dynamic loader included), as
/// absolute paths.
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd runs");
    assert!(out.status.success(), "ldd {}: {out:?}", binary.display());
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader as
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

/// The function layer, compressed and hashed once per build of the example: kept
/// beside the binary (`function.oci-layer`, its digests in `function.oci-layer.json`),
/// since compressing tens of MB in an unoptimised test build takes seconds.
fn cached_function_layer() -> LayerBlob {
    let binary = super::example_function();
    let meta = std::fs::metadata(&binary).unwrap();
    let stamp = format!(
        "{}-{:?}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    );
    let blob_path = binary.with_extension("oci-layer");
    let meta_path = binary.with_extension("oci-layer.json");
    let cached = std::fs::read(&meta_path)
        .ok()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
        .filter(|m| m["stamp"] == stamp.as_str())
        .and_then(|m| {
            let bytes = std::fs::read(&blob_path).ok()?;
            (bytes.len() as u64 == m["size"].as_u64()?).then(|| LayerBlob {
                diff_id: m["diff_id"].as_str().unwrap_or_default().to_owned(),
                digest: m["digest"].as_str().unwrap_or_default().to_owned(),
                bytes,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            })
        });
    if let Some(layer) = cached {
        return layer;
    }
    let layer = LayerBlob::new(&function_layer(&binary), Stored::Gzip);
    // Written under temporary names and renamed, as test binaries run side by side;
    // the blob first, so a description is never newer than its blob.
    let tmp = |p: &Path| p.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(tmp(&blob_path), &layer.bytes).unwrap();
    std::fs::rename(tmp(&blob_path), &blob_path).unwrap();
    let description = serde_json::json!({
        "stamp": stamp,
        "size": layer.bytes.len(),
        "diff_id": layer.diff_id,
        "digest": layer.digest,
    });
    std::fs::write(tmp(&meta_path), description.to_string()).unwrap();
    std::fs::rename(tmp(&meta_path), &meta_path).unwrap();
    layer
}

fn function_layer(binary: &Path) -> Vec<u8> {
    let mut files: Vec<(PathBuf, Vec<u8>)> =
        vec![(PathBuf::from("/function"), std::fs::read(binary).unwrap())];
    for lib in shared_libraries(binary) {
        // Read through any symlink: the image holds the file under the listed name.
        let bytes = std::fs::read(&lib).unwrap();
        files.push((lib, bytes));
    }
    let mut layer = Layer::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (path, _) in &files {
        for anc in path.ancestors().skip(1) {
            if anc != Path::new("/") && !dirs.iter().any(|d| d == anc) {
                dirs.push(anc.to_owned());
            }
        }
    }
    dirs.push(PathBuf::from("/etc"));
    dirs.sort();
    for d in &dirs {
        layer = layer.dir(d.to_str().unwrap().trim_start_matches('/'));
    }
    for (path, bytes) in &files {
        let name = path.to_str().unwrap().trim_start_matches('/');
        layer = layer.long_file(name, bytes, 0o755);
    }
    layer = layer
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/sbin/nologin\nscf:x:1000:1000::/tmp:/sbin/nologin\n",
        )
        .file("etc/group", b"root:x:0:\nscf:x:1000:\n");
    layer.finish()
}

/// Bytes gzip cannot shrink (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
