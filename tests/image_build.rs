//! Images built the way users build them. The test fixture's OCI layout of the example
//! function is read back by skopeo (a reader independent of ours) and by the store;
//! the example Dockerfile (`examples/image/`) is built with buildah and the result
//! prepared by the store. Where skopeo or buildah is not installed, or buildah cannot
//! run for want of root, those parts are skipped and say so.

mod common;

use std::path::Path;
use std::process::Command;
use tokio::time::Instant;

use common::image::{
    function_image_layout, function_image_layout_with, shared_libraries, FunctionImage, TempDir,
    IMAGE_PATH,
};
use scf_gateway::image::{ImageError, ImageRef, Limits, Store, User, MOUNT_POINTS};

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn oci(dir: &Path, tag: &str) -> ImageRef {
    ImageRef::parse(&format!("oci:{}:{tag}", dir.display())).unwrap()
}

fn skopeo(args: &[&str]) -> serde_json::Value {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The config digest the layout's index names for `tag`, read without the crate.
fn config_digest(layout: &Path, tag: &str) -> String {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = read(&blob(manifest["digest"].as_str().unwrap()));
    manifest["config"]["digest"].as_str().unwrap().to_owned()
}

/// Runs the image's `/function --crash-at-start` chrooted into its root: it exits 3
/// only if the binary and every library it loads are in the image.
fn assert_runs_inside(rootfs: &Path) {
    if !common::is_root() {
        eprintln!("note: not root: the image's binary is not run in a chroot");
        return;
    }
    let status = Command::new("chroot")
        .arg(rootfs)
        .args(["/function", "--crash-at-start"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "/function in {}", rootfs.display());
}

#[tokio::test]
async fn the_function_image_fixture_reads_back() {
    let t = TempDir::new("fixture");
    let layout = function_image_layout(&t.path().join("layout"), "v1");
    let store = Store::new(t.path().join("store"), Limits::default());
    let img = store.prepare(&oci(&layout, "v1")).await.unwrap();
    assert_eq!(img.digest, config_digest(&layout, "v1"));
    assert_eq!(img.config.entrypoint, vec!["/function"]);
    assert!(img.config.cmd.is_empty());
    assert_eq!(
        img.config.env,
        vec![format!("PATH={IMAGE_PATH}"), "IMAGE_VAR=from-image".into()]
    );
    assert_eq!(img.config.working_dir.as_deref(), Some("/"));
    assert_eq!(img.config.user, None);
    assert_eq!(
        img.user().unwrap(),
        User {
            uid: 0,
            gid: 0,
            additional_gids: vec![]
        }
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(img.rootfs.join("function"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    for lib in shared_libraries(&common::example_function()) {
        let inside = img.rootfs.join(lib.strip_prefix("/").unwrap());
        assert!(inside.is_file(), "{} is in the image", lib.display());
    }
    for dir in MOUNT_POINTS {
        assert!(img.rootfs.join(dir).is_dir(), "{dir}");
    }
    assert_runs_inside(&img.rootfs);

    // The variants: another architecture, a User, padding past a limit.
    let arm = function_image_layout_with(
        &t.path().join("arm"),
        "v1",
        &FunctionImage {
            arch: "arm64".into(),
            ..FunctionImage::default()
        },
    );
    let err = store.inspect(&oci(&arm, "v1")).await.unwrap_err();
    assert!(matches!(err, ImageError::Platform { .. }), "{err}");
    let scf = function_image_layout_with(
        &t.path().join("user"),
        "v1",
        &FunctionImage {
            user: Some("scf".into()),
            cmd: vec!["--port".into(), "9000".into()],
            ..FunctionImage::default()
        },
    );
    let img_scf = store.prepare(&oci(&scf, "v1")).await.unwrap();
    assert_eq!(img_scf.config.cmd, vec!["--port", "9000"]);
    assert_eq!(img_scf.user().unwrap().uid, 1000);
    let padded = function_image_layout_with(
        &t.path().join("padded"),
        "v1",
        &FunctionImage {
            padding_bytes: 4 << 20,
            ..FunctionImage::default()
        },
    );
    let plain_size = store.inspect(&oci(&layout, "v1")).await.unwrap().layers[0]
        .source
        .len;
    let limited = Store::new(
        t.path().join("store"),
        Limits {
            max_image_bytes: plain_size + (2 << 20),
            ..Limits::default()
        },
    );
    limited.inspect(&oci(&layout, "v1")).await.unwrap();
    let err = limited.inspect(&oci(&padded, "v1")).await.unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");

    if !on_path("skopeo") {
        eprintln!("skipped: skopeo is not on PATH, the layout is not read back by it");
        return;
    }
    let reference = format!("oci:{}:v1", layout.display());
    let inspect = skopeo(&["inspect", &reference]);
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    assert!(inspect["Env"]
        .as_array()
        .unwrap()
        .contains(&"IMAGE_VAR=from-image".into()));
    let config = skopeo(&["inspect", "--config", &reference]);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/function"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert!(config["config"]["ExposedPorts"]["9000/tcp"].is_object());
    let manifest = skopeo(&["inspect", "--raw", &reference]);
    assert_eq!(manifest["config"]["digest"], img.digest.as_str());
    let arm = skopeo(&["inspect", &format!("oci:{}:v1", arm.display())]);
    assert_eq!(arm["Architecture"], "arm64");
}

#[tokio::test]
async fn the_example_dockerfile_builds_with_buildah() {
    if !common::is_root() {
        eprintln!("skipped: building an image with buildah needs root");
        return;
    }
    if !on_path("buildah") {
        eprintln!("skipped: buildah is not on PATH");
        return;
    }
    let t = TempDir::new("buildah");
    let layout = t.path().join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/image/build.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&layout)
        .arg("v1")
        .env("FUNCTION_BINARY", common::example_function())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "build.sh: {out:?}");
    eprintln!("buildah built and pushed the example image in {took:?}");

    let store = Store::new(t.path().join("store"), Limits::default());
    let img = store.prepare(&oci(&layout, "v1")).await.unwrap();
    assert_eq!(img.digest, config_digest(&layout, "v1"));
    assert_eq!(img.config.entrypoint, vec!["/function"]);
    assert_eq!(img.config.cmd, vec!["--port", "9000"]);
    assert!(
        img.config.env.contains(&"IMAGE_VAR=from-image".to_owned()),
        "{:?}",
        img.config.env
    );
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(img.config.working_dir.as_deref(), Some("/"));
    for dir in MOUNT_POINTS {
        assert!(img.rootfs.join(dir).is_dir(), "{dir}");
    }
    assert_runs_inside(&img.rootfs);

    // The build leaves no mount behind (buildah's storage was under the temporary
    // directory, now removed).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(t.path().to_str().unwrap()),
        "a mount is left under {}",
        t.path().display()
    );
    assert_eq!(
        std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>(),
        ["layout".to_owned(), "store".to_owned()].into(),
    );
}
