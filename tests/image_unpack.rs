//! Reading and unpacking images: a good image round trip through an OCI layout and a
//! `docker save` archive, the platform and size checks, and crafted hostile layers
//! that must leave nothing outside the image root.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::image::{gzip, sha, write_layout, Layer, Stored, TempDir};
use scf_gateway::image::unpack::{apply_layer, UnpackError};
use scf_gateway::image::{ImageConfig, ImageError, ImageRef, Limits, Store};

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
    let config = serde_json::json!({
        "Entrypoint": ["/app/server"],
        "Cmd": ["--port", "9000"],
        "Env": ["PATH=/usr/bin", "MODE=test"],
        "WorkingDir": "/app",
        "User": "1000:1000"
    });
    write_layout(
        dir,
        tag,
        arch,
        config,
        &[(l1, Stored::Gzip), (l2, Stored::Plain)],
    )
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

// === the store: interrupted unpacks, mount points, bounds, metadata ===

/// Set in a child test process to `LAYOUT|STORE`: the child prepares that image and is
/// killed by its parent midway.
const CHILD_ENV: &str = "SCF_IMAGE_TEST_CHILD_UNPACK";

/// Does nothing unless run as the child of `an_interrupted_unpack_is_never_used_and_is_swept`.
#[tokio::test]
async fn child_unpack_for_the_interrupt_test() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (layout, store) = spec.split_once('|').unwrap();
    let store = Store::new(store, Limits::default());
    let _ = store.prepare(&oci(Path::new(layout), None)).await;
}

fn store_entries(base: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(base) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn an_interrupted_unpack_is_never_used_and_is_swept() {
    let t = TempDir::new("interrupted");
    let layout = t.path().join("layout");
    // Enough data that the child is still writing it when it is killed.
    const ZEROS: usize = 48 << 20;
    let layer = Layer::new()
        .dir("app")
        .file("app/server", b"ok")
        .file("app/zeros", &vec![0u8; ZEROS])
        .finish();
    let digest = write_layout(
        &layout,
        "v1",
        "amd64",
        serde_json::json!({"Entrypoint": ["/app/server"]}),
        &[(layer, Stored::Gzip)],
    );
    let hex = digest.trim_start_matches("sha256:");
    let store_dir = t.path().join("store");
    let base = store_dir.join("sha256");

    // A gateway killed mid-unpack: a child process preparing the image, SIGKILLed
    // once it is writing the layer.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_unpack_for_the_interrupt_test",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}|{}", layout.display(), store_dir.display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = common::wait_for(
        "the child to be writing the layer",
        std::time::Duration::from_secs(60),
        async || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child ended before it was killed"
            );
            store_entries(&base)
                .into_iter()
                .find(|n| n.starts_with(".tmp-"))
                .map(|n| base.join(n))
                .filter(|tmp| tmp.join("rootfs/app/zeros").exists())
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(tmp.exists(), "the half-written unpack is left behind");
    assert!(!base.join(hex).exists(), "nothing under the final name");

    // The next gateway unpacks afresh and removes the leftover.
    let store = Store::new(&store_dir, Limits::default());
    let img = store.prepare(&oci(&layout, None)).await.unwrap();
    assert_eq!(store.unpack_count(), 1, "the leftover is not taken as done");
    assert_eq!(
        std::fs::metadata(img.rootfs.join("app/zeros"))
            .unwrap()
            .len(),
        ZEROS as u64
    );
    assert_eq!(store_entries(&base), vec![hex.to_owned()], "swept");
}

#[tokio::test]
async fn an_unpack_in_progress_is_not_swept() {
    use rustix::fs::{flock, FlockOperation};
    let t = TempDir::new("in-progress");
    let base = t.path().join("store/sha256");
    let busy = base.join(format!(".tmp-{}-1-0", "a".repeat(64)));
    let stale = base.join(format!(".tmp-{}-2-0", "b".repeat(64)));
    for dir in [&busy, &stale] {
        std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        // A symlink inside is removed, not followed.
        std::os::unix::fs::symlink(t.path(), dir.join("rootfs/up")).unwrap();
    }
    let lock = std::fs::File::open(&busy).unwrap();
    flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
    let store = Store::new(t.path().join("store"), Limits::default());
    assert_eq!(store.remove_stale().await.unwrap(), 1);
    assert!(busy.join("rootfs/etc").exists(), "a locked unpack stays");
    assert!(!stale.exists());
    assert!(
        t.path().join("store").exists(),
        "nothing outside is touched"
    );
    drop(lock);
    assert_eq!(store.remove_stale().await.unwrap(), 1);
    assert!(store_entries(&base).is_empty());
}

#[tokio::test]
async fn mount_points_are_made_and_planted_ones_are_refused() {
    let t = TempDir::new("mountpoints");
    let store = Store::new(t.path().join("store"), Limits::default());
    let config = serde_json::json!({"Entrypoint": ["/app/server"]});

    let good = t.path().join("good");
    let layer = Layer::new()
        .dir("app")
        .file("app/server", b"ok")
        .entry_with("tmp", tar::EntryType::Directory, b"", None, 0o1777, 0)
        .finish();
    write_layout(
        &good,
        "v1",
        "amd64",
        config.clone(),
        &[(layer, Stored::Plain)],
    );
    let img = store.prepare(&oci(&good, None)).await.unwrap();
    for dir in scf_gateway::image::MOUNT_POINTS {
        let meta = std::fs::symlink_metadata(img.rootfs.join(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let tmp_mode = std::fs::metadata(img.rootfs.join("tmp")).unwrap();
    assert_eq!(
        tmp_mode.permissions().mode() & 0o7777,
        0o1777,
        "the image's own /tmp is kept"
    );

    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let planted: [(&str, Vec<u8>, &str); 3] = [
        (
            "tmp",
            Layer::new()
                .symlink("tmp", outside.to_str().unwrap())
                .finish(),
            "/tmp is a symlink",
        ),
        (
            "proc",
            Layer::new().file("proc", b"not a directory").finish(),
            "/proc is a file",
        ),
        (
            "dev",
            Layer::new().symlink("dev", "/dev").finish(),
            "/dev is a symlink",
        ),
    ];
    for (name, layer, expect) in planted {
        let dir = t.path().join(name);
        write_layout(
            &dir,
            "v1",
            "amd64",
            config.clone(),
            &[(layer, Stored::Plain)],
        );
        let err = store.prepare(&oci(&dir, None)).await.unwrap_err();
        assert!(matches!(err, ImageError::MountPoint { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(expect) && msg.contains(&dir.display().to_string()),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(
        store_entries(&t.path().join("store/sha256")).len(),
        1,
        "refused images leave nothing in the store"
    );
}

#[tokio::test]
async fn the_whole_image_unpacked_size_is_bounded() {
    let t = TempDir::new("total");
    let layout = t.path().join("layout");
    let layer = |name: &str| Layer::new().file(name, &vec![0u8; 3 << 20]).finish();
    write_layout(
        &layout,
        "v1",
        "amd64",
        serde_json::json!({}),
        &[(layer("a"), Stored::Gzip), (layer("b"), Stored::Gzip)],
    );
    // Each layer fits the per-layer bound; together they pass the image bound.
    let limits = Limits {
        max_layer_unpacked_bytes: 4 << 20,
        max_unpacked_bytes: 5 << 20,
        ..Limits::default()
    };
    let store = Store::new(t.path().join("store"), limits);
    let err = store.prepare(&oci(&layout, None)).await.unwrap_err();
    assert!(matches!(err, ImageError::UnpackedTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&(5u64 << 20).to_string()), "{err}");
    assert!(store_entries(&t.path().join("store/sha256")).is_empty());

    let roomy = Store::new(
        t.path().join("store"),
        Limits {
            max_unpacked_bytes: 7 << 20,
            ..limits
        },
    );
    let img = roomy.prepare(&oci(&layout, None)).await.unwrap();
    assert!(img.rootfs.join("a").exists() && img.rootfs.join("b").exists());
}

#[test]
fn modes_and_modification_times_are_kept() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let s = Sandbox::new("metadata");
    let layer = Layer::new()
        .entry_with(
            "d",
            tar::EntryType::Directory,
            b"",
            None,
            0o750,
            1_500_000_000,
        )
        .entry_with(
            "d/run",
            tar::EntryType::Regular,
            b"x",
            None,
            0o4755,
            1_600_000_000,
        )
        .entry_with(
            "d/ro",
            tar::EntryType::Regular,
            b"x",
            None,
            0o400,
            1_600_000_001,
        )
        .entry_with(
            "d/l",
            tar::EntryType::Symlink,
            b"",
            Some("run"),
            0o777,
            1_600_000_002,
        )
        .finish();
    s.apply(&layer).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(s.root.join(p)).unwrap();
    assert_eq!(meta("d").permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta("d/run").permissions().mode() & 0o7777, 0o4755);
    assert_eq!(meta("d/ro").permissions().mode() & 0o7777, 0o400);
    assert_eq!(
        meta("d").mtime(),
        1_500_000_000,
        "set after the files in it"
    );
    assert_eq!(meta("d/run").mtime(), 1_600_000_000);
    assert_eq!(meta("d/ro").mtime(), 1_600_000_001);
    assert_eq!(meta("d/l").mtime(), 1_600_000_002);
    s.assert_outside_empty();
}
