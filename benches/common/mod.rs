//! What the benchmarks that start real instances share.

use std::path::PathBuf;

/// The release build of the example function (`examples/function.rs`). Cargo is always
/// asked to build it: a stale binary would lack a switch a benchmark needs.
pub fn example_function() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "function"])
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the example function failed");
    target.join("release/examples/function")
}
