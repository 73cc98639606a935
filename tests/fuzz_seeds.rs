//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) as plain tests: every seed
//! goes through the same entry point its target calls (`scf_gateway::fuzzing`), so
//! `cargo test` checks the invariants on valid and hostile inputs without nightly or
//! cargo-fuzz. An input that once crashed a target belongs in its corpus, where this
//! test keeps it fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use scf_gateway::fuzzing;

/// At least this many seeds per target: a corpus that went missing must fail, not pass
/// with nothing run.
const MIN_SEEDS: usize = 20;

fn run_corpus(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut seeds: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    seeds.sort();
    assert!(
        seeds.len() >= MIN_SEEDS,
        "{}: {} seeds",
        dir.display(),
        seeds.len()
    );
    let mut failed = Vec::new();
    for seed in &seeds {
        let data = std::fs::read(seed).unwrap();
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            failed.push(seed.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} seeds broke an invariant (messages above): {failed:#?}",
        failed.len(),
        seeds.len()
    );
}

#[test]
fn response_seeds() {
    run_corpus("response", fuzzing::response);
}

#[test]
fn chunked_body_seeds() {
    run_corpus("chunked_body", fuzzing::body);
}

#[test]
fn request_head_seeds() {
    run_corpus("request_head", fuzzing::request_head);
}

#[test]
fn config_seeds() {
    run_corpus("config", fuzzing::config);
}
