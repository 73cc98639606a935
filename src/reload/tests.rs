use super::*;
use crate::config::parse;
use std::path::Path;

fn config(text: &str) -> Config {
    match parse(text, Path::new("test.toml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid:\n{e}"),
    }
}

fn keeps(old: &str, new: &str) -> bool {
    let (old, new) = (config(old), config(new));
    keeps_instances(&old, &old.functions[0], &new, &new.functions[0])
}

const STATIC: &str = "[[functions]]\nname = \"f\"\ninstances = [\"127.0.0.1:9001\"]\n";
const LAUNCHED: &str = "[[functions]]\nname = \"f\"\n[functions.launch]\ncommand = \"server\"\n";

#[test]
fn request_path_settings_keep_the_pool() {
    assert!(keeps(
        STATIC,
        &format!("{STATIC}timeout = \"9s\"\nmemory_mb = 256\n")
    ));
    assert!(keeps(STATIC, &format!("{STATIC}type = \"http\"\n")));
    assert!(keeps(
        LAUNCHED,
        &LAUNCHED.replace("[functions.launch]", "timeout = \"9s\"\n[functions.launch]")
    ));
}

#[test]
fn instance_changes_make_a_new_pool() {
    assert!(!keeps(STATIC, &STATIC.replace("9001", "9002")));
    assert!(!keeps(
        STATIC,
        &format!("{STATIC}instance_concurrency = 2\n")
    ));
    assert!(!keeps(STATIC, &format!("{STATIC}queue_depth = 7\n")));
    assert!(!keeps(STATIC, &STATIC.replace("\"f\"", "\"g\"")));
    assert!(!keeps(STATIC, &format!("{STATIC}namespace = \"other\"\n")));
    assert!(!keeps(STATIC, LAUNCHED));
    assert!(!keeps(
        LAUNCHED,
        &format!("{LAUNCHED}args = [\"--fast\"]\n")
    ));
    // A launched instance carries its memory limit and version.
    assert!(!keeps(
        LAUNCHED,
        &LAUNCHED.replace("[functions.launch]", "memory_mb = 256\n[functions.launch]")
    ));
    assert!(!keeps(
        &format!("[platform]\nregion = \"ap-guangzhou\"\n{LAUNCHED}"),
        &format!("[platform]\nregion = \"ap-shanghai\"\n{LAUNCHED}")
    ));
    // A static pool does not: its instances are someone else's.
    assert!(keeps(
        &format!("[platform]\nregion = \"ap-guangzhou\"\n{STATIC}"),
        &format!("[platform]\nregion = \"ap-shanghai\"\n{STATIC}")
    ));
}

#[test]
fn listener_and_worker_changes_need_a_restart() {
    let old = config("[server]\nlisten = \"127.0.0.1:8080\"\nworkers = 2\n");
    let new = config("[server]\nlisten = \"127.0.0.1:8081\"\nworkers = 3\nmax_body_bytes = 10\n");
    assert_eq!(
        restart_needed(&old.server, &new.server),
        ["server.listen", "server.workers"]
    );
    assert!(restart_needed(&old.server, &old.server).is_empty());
}

#[test]
fn async_store_changes_need_a_restart() {
    let embedded = config("[async]\npath = \"q1\"\n");
    let moved = config("[async]\npath = \"q2\"\nretries = 5\n");
    let redis = config("[async]\nstore = \"redis\"\nurl = \"redis://a\"\n");
    let other_redis = config("[async]\nstore = \"redis\"\nurl = \"redis://b\"\n");
    let store = |c: &Config| c.asynchronous.store.clone();
    assert_eq!(
        async_restart_needed(&store(&embedded), &store(&moved)),
        ["async.path"]
    );
    assert_eq!(
        async_restart_needed(&store(&embedded), &store(&redis)),
        ["async.store"]
    );
    assert_eq!(
        async_restart_needed(&store(&redis), &store(&other_redis)),
        ["async.url"]
    );
    assert!(async_restart_needed(&store(&redis), &store(&redis)).is_empty());
    // Without a section, the default path beside the file: the same store.
    assert!(async_restart_needed(&store(&config("")), &store(&config("[async]\n"))).is_empty());
}
