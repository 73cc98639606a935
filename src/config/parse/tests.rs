use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::testing::*;
use crate::config::{ConfigError, DiscoveryConfig, FunctionKind, Location, StaticInstance};

// ---- defaults and valid files --------------------------------------------------------

#[test]
fn defaults_from_a_minimal_file() {
    let config = ok(FUNCTION);
    assert_eq!(config.path, Path::new(FILE));
    let s = &config.server;
    assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(
        s.admin_listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(s.max_body_bytes, 6_291_456);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s.workers, cpus);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert!(!s.access_log);
    assert_eq!(s.upstream_idle_timeout, Duration::from_secs(4));
    assert_eq!(config.platform.region, "ap-guangzhou");
    assert_eq!(config.platform.appid, "1250000000");
    assert_eq!(config.platform.uin, "100000000001");
    assert!(config.credentials.secret_id.is_none());
    assert!(config.credentials.secret_key.is_none());
    assert!(config.credentials.session_token.is_none());
    assert!(config.routes.is_empty());

    let [f] = config.functions.as_slice() else {
        panic!("one function expected");
    };
    assert_eq!(f.name, "hello");
    assert_eq!(f.namespace, "default");
    assert_eq!(f.version, "$LATEST");
    assert_eq!(f.kind, FunctionKind::Event);
    assert_eq!(f.memory_mb, 128);
    assert_eq!(f.timeout, Duration::from_secs(3));
    assert_eq!(f.instance_concurrency, 1);
    assert_eq!(f.queue_depth, 100);
    assert_eq!(f.queue_timeout, Duration::from_secs(1));
    assert_eq!(
        static_instances(f),
        [StaticInstance::Fixed {
            authority: "127.0.0.1:9001".to_string(),
            addr: "127.0.0.1:9001".parse().unwrap(),
        }]
    );
}

#[test]
fn an_empty_file_is_valid() {
    let config = ok("");
    assert!(config.functions.is_empty());
}

#[test]
fn every_key_is_read() {
    let config = ok(r#"
[server]
listen = "0.0.0.0:80"
admin_listen = "[::1]:9999"
max_body_bytes = 1024
workers = 3
shutdown_grace = "0s"
access_log = true
upstream_idle_timeout = "250ms"

[platform]
region = "ap-shanghai"
appid = "1"
uin = "2"

[[functions]]
name = "web-fn_2"
namespace = "prod"
version = "3"
type = "http"
memory_mb = 256
timeout = "1.5s"
instance_concurrency = 10
queue_depth = 0
queue_timeout = "5m"
instances = ["127.0.0.1:9001", "localhost:9002"]
"#);
    let s = &config.server;
    assert_eq!(s.listen, "0.0.0.0:80".parse::<SocketAddr>().unwrap());
    assert_eq!(s.admin_listen, "[::1]:9999".parse::<SocketAddr>().unwrap());
    assert_eq!(s.max_body_bytes, 1024);
    assert_eq!(s.workers, 3);
    assert_eq!(s.shutdown_grace, Duration::ZERO);
    assert!(s.access_log);
    assert_eq!(s.upstream_idle_timeout, Duration::from_millis(250));
    assert_eq!(config.platform.region, "ap-shanghai");
    assert_eq!(config.platform.appid, "1");
    assert_eq!(config.platform.uin, "2");
    let f = &config.functions[0];
    assert_eq!(
        (f.namespace.as_str(), f.name.as_str()),
        ("prod", "web-fn_2")
    );
    assert_eq!(f.version, "3");
    assert_eq!(f.kind, FunctionKind::Http);
    assert_eq!(f.memory_mb, 256);
    assert_eq!(f.timeout, Duration::from_millis(1500));
    assert_eq!(f.instance_concurrency, 10);
    assert_eq!(f.queue_depth, 0);
    assert_eq!(f.queue_timeout, Duration::from_secs(300));
    let instances = static_instances(f);
    assert_eq!(instances.len(), 2);
    assert_eq!(
        instances[1],
        StaticInstance::Named {
            authority: "localhost:9002".into(),
            host: "localhost".into(),
            port: 9002,
        }
    );
    assert_eq!(config.discovery, DiscoveryConfig::default());
}

#[test]
fn inline_tables_and_dotted_keys_work_too() {
    let config = ok(r#"
server.listen = "127.0.0.1:1"
platform = { region = "ap-beijing" }
functions = [{ name = "a", instances = ["127.0.0.1:9001"] }]
"#);
    assert_eq!(config.server.listen.port(), 1);
    assert_eq!(config.platform.region, "ap-beijing");
    assert_eq!(config.functions[0].name, "a");
}

// ---- syntax --------------------------------------------------------------------------

#[test]
fn bad_toml_is_reported_with_its_position_and_nothing_else() {
    // Line 3 is broken; the unknown key on line 2 is not reported: a file that does
    // not parse is not checked further.
    let all = errors("[server]\nbogus = 1\nlisten = \"127.0.0.1:8080\n");
    assert!(!all.is_empty());
    assert!(all
        .iter()
        .all(|e| matches!(e.location, Location::Position { line: 3, .. })));
    assert!(!all.iter().any(|e| e.message.contains("bogus")));
}

#[test]
fn several_syntax_errors_are_all_reported() {
    let all = errors("a = \nb = 1\n[x\nc = \"1\"\n");
    let lines: Vec<usize> = all
        .iter()
        .filter_map(|e| match e.location {
            Location::Position { line, .. } => Some(line),
            _ => None,
        })
        .collect();
    assert!(lines.contains(&1), "{all:#?}");
    assert!(lines.contains(&3), "{all:#?}");
}

#[test]
fn a_duplicate_key_is_a_syntax_error_at_the_second_one() {
    let e = one_error("[server]\nworkers = 1\nworkers = 2\n");
    assert_eq!(e.location, at(3, 1));
    assert!(e.message.contains("duplicate key"), "{}", e.message);
}

// ---- unknown keys ----------------------------------------------------------------------

#[test]
fn unknown_key_at_the_top_level() {
    let e = one_error("foo = 1\n");
    assert_eq!(e.location, at(1, 1));
    assert!(
        e.message
            .starts_with("unknown key \"foo\" at the top level"),
        "{}",
        e.message
    );
    assert!(e.message.contains("server, platform"), "{}", e.message);
}

#[test]
fn unknown_tables_at_the_top_level() {
    let e = one_error("\n[servers]\nlisten = \"127.0.0.1:1\"\n");
    assert_eq!(e.location, at(2, 2));
    assert!(
        e.message.contains("unknown key \"servers\""),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("did you mean `server`?"),
        "{}",
        e.message
    );
}

#[test]
fn unknown_keys_in_every_section() {
    let text = format!(
        "[server]\nfoo = 1\n[platform]\nzone = \"x\"\n[credentials]\ntoken = \"s3cr3t\"\n\
         {FUNCTION}color = \"red\"\n[[routes]]\npath_prefix = \"/\"\nfunction = \"hello\"\n\
         weight = 1\n"
    );
    let all = errors(&text);
    let expected = [
        (at(2, 1), "unknown key \"foo\" in [server]"),
        (at(4, 1), "unknown key \"zone\" in [platform]"),
        (at(6, 1), "unknown key \"token\" in [credentials]"),
        (at(10, 1), "unknown key \"color\" in [[functions]]"),
        (at(14, 1), "unknown key \"weight\" in [[routes]]"),
    ];
    // The route also targets an event function: that is reported too.
    let unknown: Vec<&ConfigError> = all
        .iter()
        .filter(|e| e.message.starts_with("unknown key"))
        .collect();
    assert_eq!(unknown.len(), expected.len(), "{all:#?}");
    for (e, (location, start)) in unknown.iter().zip(expected) {
        assert_eq!(e.location, location, "{}", e.message);
        assert!(e.message.starts_with(start), "{}", e.message);
    }
    assert!(!all.iter().any(|e| e.message.contains("s3cr3t")));
}

#[test]
fn sections_of_the_wrong_shape() {
    let all = errors("server = 1\nfunctions = 2\n[routes]\npath_prefix = \"/\"\n");
    let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "server: expected a table, found integer",
            "functions: expected an array of tables ([[functions]]), found integer",
            "routes: expected an array of tables ([[routes]]), found table",
        ]
    );
}

#[test]
fn several_errors_are_reported_at_once_in_file_order() {
    let text = "[[routes]]\npath_prefix = \"/\"\nfunction = \"nope\"\n\
                [server]\nworkers = \"2\"\n\
                [[functions]]\nname = \"a\"\ntimeout = \"3\"\n\
                [async]\nretries = 11\n";
    let all = errors(text);
    let lines: Vec<Location> = all.iter().map(|e| e.location.clone()).collect();
    assert_eq!(
        lines,
        [
            at(3, 12),
            at(5, 11),
            path("functions[0]"),
            at(8, 11),
            at(10, 11)
        ],
        "{all:#?}"
    );
}
