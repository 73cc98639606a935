use std::time::Duration;

use super::*;
use crate::config::testing::*;

#[test]
fn wrong_types_name_the_key_and_both_types() {
    let text = format!(
        "[server]\nlisten = 8080\naccess_log = \"yes\"\nmax_body_bytes = 1.5\n\
         {FUNCTION}timeout = 3\nmemory_mb = \"128\"\n"
    );
    let all = errors(&text);
    let expected = [
        (
            at(2, 10),
            "server.listen: expected an address string such as \"127.0.0.1:8080\", found integer",
        ),
        (
            at(3, 14),
            "server.access_log: expected a boolean (true or false), found string",
        ),
        (
            at(4, 18),
            "server.max_body_bytes: expected an integer, found float",
        ),
        (
            at(8, 11),
            "functions[0].timeout: expected a duration string such as \"3s\", found integer",
        ),
        (
            at(9, 13),
            "functions[0].memory_mb: expected an integer, found string",
        ),
    ];
    assert_eq!(all.len(), expected.len(), "{all:#?}");
    for (e, (location, message)) in all.iter().zip(expected) {
        assert_eq!((&e.location, e.message.as_str()), (&location, message));
    }
}

#[test]
fn integers_out_of_range() {
    let text = format!(
        "[server]\nworkers = 0\nmax_body_bytes = -1\n{FUNCTION}memory_mb = 32\n\
         instance_concurrency = 0\nqueue_depth = 2000000\n"
    );
    let messages: Vec<String> = errors(&text).into_iter().map(|e| e.message).collect();
    assert_eq!(
        messages,
        [
            "server.workers: must be between 1 and 1024, found 0",
            "server.max_body_bytes: must be at least 1, found -1",
            "functions[0].memory_mb: must be between 64 and 65536, found 32",
            "functions[0].instance_concurrency: must be between 1 and 1000, found 0",
            "functions[0].queue_depth: must be between 0 and 1000000, found 2000000",
        ]
    );
}

#[test]
fn durations_with_units_and_decimals() {
    let cases = [
        ("250ms", Duration::from_millis(250)),
        ("3s", Duration::from_secs(3)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("0.5s", Duration::from_millis(500)),
        ("1.5s", Duration::from_millis(1500)),
        ("1.5ms", Duration::from_micros(1500)),
        ("0.25h", Duration::from_secs(900)),
        ("0s", Duration::ZERO),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn malformed_durations() {
    for text in [
        "3", "-3s", "3x", "s", "", "abc", "1.s", ".5s", "1.2.3s", "3 s", "3S", "1e3s",
    ] {
        let why = parse_duration(text).unwrap_err();
        assert_eq!(
            why,
            format!(
                "invalid duration {text:?}: expected a number with a unit (ms, s, m, h), \
                 e.g. \"3s\" or \"250ms\""
            )
        );
    }
    assert!(parse_duration("99999999999999999999999h").is_err());
}

#[test]
fn bad_durations_in_the_file() {
    let text = format!(
        "[server]\nshutdown_grace = \"30\"\nupstream_idle_timeout = \"0ms\"\n\
         {FUNCTION}timeout = \"0s\"\nqueue_timeout = \"-1s\"\n"
    );
    let all = errors(&text);
    let expected = [
        (at(2, 18), "server.shutdown_grace: invalid duration \"30\": expected a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\""),
        (at(3, 25), "server.upstream_idle_timeout: must be greater than zero, found \"0ms\""),
        (at(7, 11), "functions[0].timeout: must be greater than zero, found \"0s\""),
        (at(8, 17), "functions[0].queue_timeout: invalid duration \"-1s\": expected a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\""),
    ];
    assert_eq!(all.len(), expected.len(), "{all:#?}");
    for (e, (location, message)) in all.iter().zip(expected) {
        assert_eq!((&e.location, e.message.as_str()), (&location, message));
    }
}
