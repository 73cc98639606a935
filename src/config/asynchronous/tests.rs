use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::testing::*;
use crate::config::{AsyncConfig, AsyncStore};

/// The absolute `data/async` beside `gateway.toml` (the tests' file, in the working
/// directory).
fn beside_config(rel: &str) -> PathBuf {
    std::path::absolute(Path::new(".")).unwrap().join(rel)
}

fn embedded_path(config: &AsyncConfig) -> &Path {
    match &config.store {
        AsyncStore::Embedded { path } => path,
        AsyncStore::Redis { .. } => panic!("expected the embedded store"),
    }
}

#[test]
fn defaults_without_the_section() {
    let a = ok("").asynchronous;
    assert!(!a.configured);
    assert_eq!(embedded_path(&a), beside_config("data/async"));
    assert_eq!(a.retries, 2);
    assert_eq!(
        a.retry_delays,
        [Duration::from_secs(60), Duration::from_secs(120)]
    );
    assert_eq!(a.retention, Duration::from_secs(72 * 3600));
    assert_eq!(a.max_event_bytes, 131_072);
}

#[test]
fn an_empty_section_is_configured_with_the_defaults() {
    let a = ok("[async]\n").asynchronous;
    assert!(a.configured);
    assert_eq!(
        a,
        AsyncConfig {
            configured: true,
            store: AsyncStore::Embedded {
                path: beside_config("data/async"),
            },
            ..AsyncConfig::default()
        }
    );
}

#[test]
fn every_key_is_read() {
    let a = ok(
        "[async]\nstore = \"embedded\"\npath = \"state/../queue\"\nretries = 3\n\
                retry_delays = [\"100ms\", \"1s\", \"1.5s\"]\nretention = \"1h\"\n\
                max_event_bytes = 6291456\n",
    )
    .asynchronous;
    assert_eq!(embedded_path(&a), beside_config("queue"));
    assert_eq!(a.retries, 3);
    assert_eq!(
        a.retry_delays,
        [
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_millis(1500)
        ]
    );
    assert_eq!(a.retention, Duration::from_secs(3600));
    assert_eq!(a.max_event_bytes, 6 * 1024 * 1024);
}

#[test]
fn an_absolute_path_stays_and_variables_are_resolved() {
    let config = parse_with(
        "[async]\npath = \"${STATE}/async\"\n",
        &[("STATE", "/var/lib/gw")],
    )
    .unwrap();
    assert_eq!(
        embedded_path(&config.asynchronous),
        Path::new("/var/lib/gw/async")
    );
}

#[test]
fn redis_takes_a_url_kept_secret() {
    let config = parse_with(
        "[async]\nstore = \"redis\"\nurl = \"redis://:${PW}@127.0.0.1:6379/0\"\n",
        &[("PW", "hunter2")],
    )
    .unwrap();
    let AsyncStore::Redis { url } = &config.asynchronous.store else {
        panic!("expected redis");
    };
    assert_eq!(url.expose(), "redis://:hunter2@127.0.0.1:6379/0");
    assert!(!format!("{:?}", config.asynchronous).contains("hunter2"));
}

#[test]
fn redis_needs_a_url() {
    let e = one_error("[async]\nstore = \"redis\"\n");
    assert_eq!(e.location, path("async.url"));
    assert_eq!(
        e.message,
        "missing required key `url` for store = \"redis\""
    );
}

#[test]
fn a_bad_url_is_refused_without_showing_it() {
    for (url, why) in [
        ("http://:pw@host:6379", "expected a redis:// URL"),
        (
            "rediss://:pw@cache.internal",
            "rediss:// (Redis over TLS) is not supported yet: use redis://",
        ),
        (
            "redis://:pw@",
            "has no host: expected redis://HOST[:PORT][/DB]",
        ),
        (
            "redis://:6379/0",
            "has no host: expected redis://HOST[:PORT][/DB]",
        ),
    ] {
        let e = one_error(&format!("[async]\nstore = \"redis\"\nurl = \"{url}\"\n"));
        assert_eq!(e.location, at(3, 7), "{url}");
        assert_eq!(
            e.message,
            format!("async.url: {why} (the value is not shown)"),
            "{url}"
        );
    }
}

#[test]
fn keys_of_the_other_store_do_not_apply() {
    let e = one_error("[async]\nstore = \"redis\"\nurl = \"redis://h\"\npath = \"q\"\n");
    assert_eq!(e.location, at(4, 1));
    assert!(
        e.message
            .starts_with("async.path: does not apply to store = \"redis\""),
        "{}",
        e.message
    );
    let e = one_error("[async]\nurl = \"redis://:secret@h\"\n");
    assert_eq!(e.location, at(2, 1));
    assert!(
        e.message
            .starts_with("async.url: does not apply to store = \"embedded\""),
        "{}",
        e.message
    );
    assert!(!e.message.contains("secret"));
}

#[test]
fn an_unknown_store_is_refused() {
    let e = one_error("[async]\nstore = \"sqlite\"\n");
    assert_eq!(e.location, at(2, 9));
    assert_eq!(
        e.message,
        "async.store: unknown store \"sqlite\": expected \"embedded\" or \"redis\""
    );
}

#[test]
fn unknown_keys_are_refused() {
    let e = one_error("[async]\nretry = 1\n");
    assert_eq!(e.location, at(2, 1));
    assert!(
        e.message.starts_with("unknown key \"retry\" in [async]"),
        "{}",
        e.message
    );
}

#[test]
fn numbers_are_bounded() {
    let e = one_error("[async]\nretries = 11\n");
    assert_eq!(e.location, at(2, 11));
    assert_eq!(
        e.message,
        "async.retries: must be between 0 and 10, found 11"
    );
    let e = one_error("[async]\nmax_event_bytes = 0\n");
    assert_eq!(
        e.message,
        "async.max_event_bytes: must be between 1 and 6291456, found 0"
    );
    let e = one_error("[async]\nmax_event_bytes = 6291457\n");
    assert_eq!(e.location, at(2, 19));
    let e = one_error("[async]\nretention = \"0s\"\n");
    assert_eq!(
        e.message,
        "async.retention: must be greater than zero, found \"0s\""
    );
}

#[test]
fn retry_delays_are_durations_and_needed_with_retries() {
    let e = one_error("[async]\nretry_delays = []\n");
    assert_eq!(e.location, at(2, 16));
    assert_eq!(
        e.message,
        "async.retry_delays: must list at least one delay when retries = 2 (set retries = 0 \
         for no retry)"
    );
    let none = ok("[async]\nretries = 0\nretry_delays = []\n").asynchronous;
    assert_eq!(none.retries, 0);
    assert!(none.retry_delays.is_empty());

    let e = one_error("[async]\nretry_delays = [\"1m\", \"soon\"]\n");
    assert_eq!(e.location, at(2, 23));
    assert!(
        e.message
            .starts_with("async.retry_delays[1]: invalid duration \"soon\""),
        "{}",
        e.message
    );
    let e = one_error("[async]\nretry_delays = \"1m\"\n");
    assert_eq!(e.location, at(2, 16));
    assert!(
        e.message
            .starts_with("async.retry_delays: expected an array"),
        "{}",
        e.message
    );
}
