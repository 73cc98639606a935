//! Reading and unpacking images: a good image round trip through an OCI layout and a
//! `docker save` archive, the platform and size checks, and crafted hostile layers
//! that must leave nothing outside the image root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use scf_gateway::image::unpack::{apply_layer, UnpackError};
use scf_gateway::image::{ImageConfig, ImageError, ImageRef, Limits, Store};
use sha2::Digest as _;

// === helpers ===

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "scf-image-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tar built entry by entry, names written raw so hostile ones get through.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn entry(mut self, name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Self {
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
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, data, None)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, b"", None)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, b"", Some(target))
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, b"", Some(target))
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    let h = sha2::Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

const BIG: u64 = 1 << 30;

/// A root inside a sandbox directory, with a sibling `outside` that must stay empty.
struct Sandbox {
    _dir: TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        Sandbox {
            _dir: dir,
            root,
            outside,
        }
    }
    fn apply(&self, layer: &[u8]) -> Result<scf_gateway::image::unpack::LayerReport, UnpackError> {
        apply_layer(&self.root, layer, None, BIG)
    }
    fn assert_outside_empty(&self) {
        let n = std::fs::read_dir(&self.outside).unwrap().count();
        assert_eq!(n, 0, "something was written outside the root");
        let n = std::fs::read_dir(self.root.parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(n, 2, "something was written beside the root");
    }
}

// === hostile layers ===

#[test]
fn path_traversal_is_refused() {
    let s = Sandbox::new("traversal");
    for name in ["../outside/evil", "a/../../outside/evil", "./../evil"] {
        let layer = Layer::new().file(name, b"x").finish();
        let err = s.apply(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{name}: {err}");
    }
    s.assert_outside_empty();
}

#[test]
fn absolute_names_stay_under_the_root() {
    let s = Sandbox::new("absolute");
    let outside_file = s.outside.join("abs");
    let name = outside_file.to_str().unwrap().to_owned();
    let layer = Layer::new().file(&name, b"inside").finish();
    s.apply(&layer).unwrap();
    assert!(!outside_file.exists());
    let landed = s.root.join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(landed).unwrap(), b"inside");
    s.assert_outside_empty();
}

#[test]
fn a_write_through_a_symlink_is_refused() {
    let s = Sandbox::new("symlink");
    let outside = s.outside.to_str().unwrap().to_owned();
    // A symlinked directory, then a file under it: refused.
    let layer = Layer::new()
        .symlink("escape", &outside)
        .file("escape/pwned", b"x")
        .finish();
    let err = s.apply(&layer).unwrap_err();
    assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    // The same across layers: the symlink from an earlier layer.
    let lower = Layer::new().symlink("up", "../outside").finish();
    s.apply(&lower).unwrap();
    let upper = Layer::new().file("up/pwned", b"x").finish();
    assert!(matches!(
        s.apply(&upper).unwrap_err(),
        UnpackError::Hostile { .. }
    ));
    // A directory entry through it is refused just the same.
    let upper = Layer::new().dir("up/sub").finish();
    assert!(s.apply(&upper).is_err());
    // Even a symlink that stays inside the root is not written through.
    let layer = Layer::new()
        .dir("real")
        .symlink("inner", "real")
        .file("inner/x", b"x")
        .finish();
    assert!(matches!(
        s.apply(&layer).unwrap_err(),
        UnpackError::Hostile { .. }
    ));
    assert!(!s.root.join("real/x").exists());
    // A symlink to a file outside, then a regular file of the same name: the file
    // replaces the link instead of writing through it.
    std::fs::write(s.outside.join("target"), b"untouched").unwrap();
    let layer = Layer::new()
        .symlink("f", &format!("{outside}/target"))
        .file("f", b"replaced")
        .finish();
    s.apply(&layer).unwrap();
    assert_eq!(
        std::fs::read(s.outside.join("target")).unwrap(),
        b"untouched"
    );
    assert_eq!(std::fs::read(s.root.join("f")).unwrap(), b"replaced");
    std::fs::remove_file(s.outside.join("target")).unwrap();
    s.assert_outside_empty();
}

#[test]
fn hard_links_out_of_the_tree_are_refused() {
    let s = Sandbox::new("hardlink");
    std::fs::write(s.outside.join("secret"), b"secret").unwrap();
    let outside = s.outside.to_str().unwrap().to_owned();
    // `..` in the target.
    let layer = Layer::new().hardlink("h", "../outside/secret").finish();
    assert!(matches!(
        s.apply(&layer).unwrap_err(),
        UnpackError::Hostile { .. }
    ));
    // An absolute target is looked up under the root, where it does not exist.
    let layer = Layer::new()
        .hardlink("h", &format!("{outside}/secret"))
        .finish();
    assert!(matches!(
        s.apply(&layer).unwrap_err(),
        UnpackError::Hostile { .. }
    ));
    // Through a symlinked directory.
    let layer = Layer::new()
        .symlink("s", &outside)
        .hardlink("h", "s/secret")
        .finish();
    assert!(matches!(
        s.apply(&layer).unwrap_err(),
        UnpackError::Hostile { .. }
    ));
    assert!(!s.root.join("h").exists());
    // A link inside the tree works.
    let layer = Layer::new().file("a", b"A").hardlink("b", "a").finish();
    s.apply(&layer).unwrap();
    assert_eq!(std::fs::read(s.root.join("b")).unwrap(), b"A");
    std::fs::remove_file(s.outside.join("secret")).unwrap();
    s.assert_outside_empty();
}

#[test]
fn device_nodes_and_fifos_are_not_created() {
    let s = Sandbox::new("device");
    let mut layer = Layer::new().dir("dev");
    for (name, kind) in [
        ("dev/sda", tar::EntryType::Block),
        ("dev/mem", tar::EntryType::Char),
        ("dev/pipe", tar::EntryType::Fifo),
    ] {
        layer = layer.entry(name, kind, b"", None);
    }
    let report = s.apply(&layer.file("dev/ok", b"ok").finish()).unwrap();
    assert_eq!(report.skipped_special, 3);
    let names: Vec<_> = std::fs::read_dir(s.root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["ok"]);
    s.assert_outside_empty();
}

#[test]
fn a_decompression_bomb_is_refused() {
    let s = Sandbox::new("bomb");
    let zeros = vec![0u8; 16 << 20];
    let layer = gzip(&Layer::new().file("bomb", &zeros).finish());
    assert!(layer.len() < 1 << 20, "the bomb compresses well");
    let err = apply_layer(&s.root, &layer[..], None, 4 << 20).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge(_)), "{err}");
    // The same layer under a bound it fits in unpacks.
    apply_layer(&s.root, &layer[..], None, 32 << 20).unwrap();
    assert_eq!(
        std::fs::metadata(s.root.join("bomb")).unwrap().len(),
        16 << 20
    );
    s.assert_outside_empty();
}

#[test]
fn whiteouts_and_opaque_directories() {
    let s = Sandbox::new("whiteout");
    let lower = Layer::new()
        .dir("a")
        .file("a/x", b"x")
        .file("a/y", b"y")
        .dir("b")
        .file("b/z", b"z")
        .file("c", b"c")
        .file("keep", b"k")
        .finish();
    s.apply(&lower).unwrap();
    let upper = Layer::new()
        .dir("a")
        .file("a/new", b"n")
        .file("a/.wh..wh..opq", b"")
        .file(".wh.b", b"")
        .file(".wh.c", b"")
        .file(".wh.missing", b"")
        .file("nothere/.wh.x", b"")
        .finish();
    s.apply(&upper).unwrap();
    let mut a: Vec<_> = std::fs::read_dir(s.root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    a.sort();
    assert_eq!(a, vec!["new"]);
    assert!(!s.root.join("b").exists());
    assert!(!s.root.join("c").exists());
    assert!(!s.root.join("nothere").exists());
    assert!(s.root.join("keep").exists());
    // Whiteouts naming the directory itself or its parent are refused: at the top
    // of the tree the parent is outside the root.
    for name in [".wh..", ".wh...", "a/.wh...", ".wh."] {
        let layer = Layer::new().file(name, b"").finish();
        let err = s.apply(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{name}: {err}");
    }
    assert!(s.root.join("a/new").exists());
    // A whiteout under a symlinked directory removes nothing outside.
    std::fs::write(s.outside.join("victim"), b"v").unwrap();
    let layer = Layer::new()
        .symlink("l", s.outside.to_str().unwrap())
        .file("l/.wh.victim", b"")
        .finish();
    assert!(s.apply(&layer).is_err());
    assert!(s.outside.join("victim").exists());
    std::fs::remove_file(s.outside.join("victim")).unwrap();
    s.assert_outside_empty();
}

#[test]
fn a_layer_whose_content_does_not_match_its_diff_id_is_refused() {
    let s = Sandbox::new("diffid");
    let layer = Layer::new().file("a", b"a").finish();
    let err = apply_layer(&s.root, &layer[..], Some(&sha(b"other")), BIG).unwrap_err();
    assert!(matches!(err, UnpackError::DiffId { .. }), "{err}");
    apply_layer(&s.root, &layer[..], Some(&sha(&layer)), BIG).unwrap();
}

// === whole images ===

/// Writes an OCI layout of a two-layer image (one gzip, one plain) and returns the
/// config digest.
fn write_oci_layout(dir: &Path, tag: &str, arch: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let l1 = Layer::new()
        .dir("app")
        .file("app/server", b"#!/bin/sh\n")
        .dir("etc")
        .file("etc/old", b"old")
        .finish();
    let l2 = Layer::new()
        .file("app/data", b"data")
        .file("etc/.wh.old", b"")
        .finish();
    let l1_gz = gzip(&l1);
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/server"],
            "Cmd": ["--port", "9000"],
            "Env": ["PATH=/usr/bin", "MODE=test"],
            "WorkingDir": "/app",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(&l1), sha(&l2)]}
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
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": put(&l1_gz), "size": l1_gz.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": put(&l2), "size": l2.len()}
        ]
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

fn expected_config() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/app/server".into()],
        cmd: vec!["--port".into(), "9000".into()],
        env: vec!["PATH=/usr/bin".into(), "MODE=test".into()],
        working_dir: Some("/app".into()),
        user: Some("1000:1000".into()),
    }
}

fn oci(dir: &Path, tag: Option<&str>) -> ImageRef {
    ImageRef::Oci {
        dir: dir.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

#[tokio::test]
async fn an_oci_layout_round_trips() {
    let t = TempDir::new("oci");
    let layout = t.path().join("layout");
    let digest = write_oci_layout(&layout, "v1", "amd64");
    let store = Store::new(t.path().join("store"), Limits::default());
    for tag in [Some("v1"), None] {
        let img = store.prepare(&oci(&layout, tag)).await.unwrap();
        assert_eq!(img.digest, digest);
        assert_eq!(img.config, expected_config());
        let hex = digest.trim_start_matches("sha256:");
        assert_eq!(
            img.rootfs,
            t.path().join("store/sha256").join(hex).join("rootfs")
        );
        assert_eq!(
            std::fs::read(img.rootfs.join("app/server")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(std::fs::read(img.rootfs.join("app/data")).unwrap(), b"data");
        assert!(!img.rootfs.join("etc/old").exists());
        assert!(img.rootfs.join("../config.json").exists());
    }
    assert_eq!(
        store.unpack_count(),
        1,
        "the second prepare finds it unpacked"
    );
    let entries: Vec<_> = std::fs::read_dir(t.path().join("store/sha256"))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1, "no temporary directory is left");

    let err = store.prepare(&oci(&layout, Some("v2"))).await.unwrap_err();
    assert!(matches!(err, ImageError::TagNotFound { .. }), "{err}");
    assert!(err.to_string().contains("v2"));
}

#[tokio::test]
async fn concurrent_prepares_share_one_unpack() {
    let t = TempDir::new("concurrent");
    let layout = t.path().join("layout");
    write_oci_layout(&layout, "v1", "amd64");
    let store = Arc::new(Store::new(t.path().join("store"), Limits::default()));
    let r = oci(&layout, Some("v1"));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let r = r.clone();
            tokio::spawn(async move { store.prepare(&r).await })
        })
        .collect();
    let mut roots = Vec::new();
    for t in tasks {
        roots.push(t.await.unwrap().unwrap().rootfs);
    }
    assert_eq!(roots[0], roots[1]);
    assert_eq!(store.unpack_count(), 1);
    assert!(roots[0].join("app/server").exists());
}

#[tokio::test]
async fn platform_size_and_missing_layouts_are_errors() {
    let t = TempDir::new("checks");
    let store = Store::new(t.path().join("store"), Limits::default());

    let arm = t.path().join("arm");
    write_oci_layout(&arm, "v1", "arm64");
    let err = store.prepare(&oci(&arm, Some("v1"))).await.unwrap_err();
    assert!(matches!(err, ImageError::Platform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    let missing = t.path().join("missing");
    let err = store.inspect(&oci(&missing, None)).await.unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("index.json"), "{err}");

    let good = t.path().join("good");
    write_oci_layout(&good, "v1", "amd64");
    let tiny = Store::new(
        t.path().join("store"),
        Limits {
            max_image_bytes: 64,
            ..Limits::default()
        },
    );
    let err = tiny.prepare(&oci(&good, None)).await.unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");

    // A corrupted layer blob is caught by its digest.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            good.join("blobs/sha256")
                .join(m.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let l2 = manifest["layers"][1]["digest"].as_str().unwrap();
    let path = good
        .join("blobs/sha256")
        .join(l2.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = store.prepare(&oci(&good, None)).await.unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(t.path().join("store/sha256"))
            .unwrap()
            .count(),
        0,
        "a failed unpack leaves nothing in the store"
    );
}

#[tokio::test]
async fn an_index_of_several_platforms_picks_linux_amd64() {
    let t = TempDir::new("multi");
    let amd = t.path().join("amd");
    let arm = t.path().join("arm");
    let amd_digest = write_oci_layout(&amd, "v1", "amd64");
    write_oci_layout(&arm, "v1", "arm64");
    // One layout holding both: the blobs merged, an index with two platforms.
    let multi = t.path().join("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    let mut manifests = Vec::new();
    for (src, arch) in [(&arm, "arm64"), (&amd, "amd64")] {
        for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), multi.join("blobs/sha256").join(e.file_name())).unwrap();
        }
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
        let mut d = idx["manifests"][0].clone();
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        manifests.push(d);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(multi.join("index.json"), index.to_string()).unwrap();
    let store = Store::new(t.path().join("store"), Limits::default());
    let img = store.prepare(&oci(&multi, Some("v1"))).await.unwrap();
    assert_eq!(img.digest, amd_digest);

    // Only arm64 listed: an error naming it.
    let mut only_arm = index.clone();
    only_arm["manifests"] = serde_json::json!([manifests[0].clone(), manifests[0].clone()]);
    std::fs::write(multi.join("index.json"), only_arm.to_string()).unwrap();
    let err = store.inspect(&oci(&multi, None)).await.unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[tokio::test]
async fn a_docker_archive_round_trips() {
    let t = TempDir::new("docker");
    let l1 = Layer::new()
        .dir("app")
        .file("app/server", b"#!/bin/sh\n")
        .finish();
    let l2 = Layer::new().file("app/data", b"data").finish();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/server"],
            "Cmd": ["--port", "9000"],
            "Env": ["PATH=/usr/bin", "MODE=test"],
            "WorkingDir": "/app",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(&l1), sha(&l2)]}
    })
    .to_string();
    let config_digest = sha(config.as_bytes());
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["demo:latest"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"]
    }])
    .to_string();
    let archive = Layer::new()
        .file("manifest.json", manifest.as_bytes())
        .file(&config_name, config.as_bytes())
        .dir("l1")
        .file("l1/layer.tar", &l1)
        .dir("l2")
        .file("l2/real.tar", &l2)
        .symlink("l2/layer.tar", "real.tar")
        .finish();
    let file = t.path().join("image.tar");
    std::fs::write(&file, archive).unwrap();
    let store = Store::new(t.path().join("store"), Limits::default());
    let r = ImageRef::parse(&format!("docker-archive:{}", file.display())).unwrap();
    let img = store.prepare(&r).await.unwrap();
    assert_eq!(img.digest, config_digest);
    assert_eq!(img.config, expected_config());
    assert_eq!(std::fs::read(img.rootfs.join("app/data")).unwrap(), b"data");
    assert_eq!(
        std::fs::read(img.rootfs.join("app/server")).unwrap(),
        b"#!/bin/sh\n"
    );
}

#[test]
fn zstd_layers_unpack() {
    let s = Sandbox::new("zstd");
    let tar = Layer::new().dir("z").file("z/file", b"zstd").finish();
    let layer =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    apply_layer(&s.root, &layer[..], Some(&sha(&tar)), BIG).unwrap();
    assert_eq!(std::fs::read(s.root.join("z/file")).unwrap(), b"zstd");
    // A zstd bomb is refused like a gzip one.
    let bomb = Layer::new().file("bomb", &vec![0u8; 8 << 20]).finish();
    let bomb =
        ruzstd::encoding::compress_to_vec(&bomb[..], ruzstd::encoding::CompressionLevel::Fastest);
    let err = apply_layer(&s.root, &bomb[..], None, 1 << 20).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge(_)), "{err}");
    s.assert_outside_empty();
}
