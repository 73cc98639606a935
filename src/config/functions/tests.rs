use crate::config::testing::*;
use crate::config::{Location, StaticInstance};

#[test]
fn duplicate_functions_are_reported_at_the_second_name() {
    let text = format!("{FUNCTION}\n{FUNCTION}");
    let e = one_error(&text);
    assert_eq!(e.location, at(6, 8));
    assert_eq!(
        e.message,
        "duplicate function \"default/hello\": already defined by functions[0]"
    );
    // The same name in another namespace is another function.
    ok(&format!(
        "{FUNCTION}namespace = \"a\"\n{FUNCTION}namespace = \"b\"\n"
    ));
}

#[test]
fn names_are_required_and_restricted() {
    let all = errors(
        "[[functions]]\ninstances = [\"127.0.0.1:1\"]\n\
         [[functions]]\nname = \"a b\"\nnamespace = \"\"\ninstances = [\"127.0.0.1:1\"]\n\
         [[functions]]\nname = \"c\"\nversion = \"v 1\"\ntype = \"web\"\ninstances = [\"127.0.0.1:1\"]\n",
    );
    let found: Vec<(&Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (&path("functions[0].name"), "missing required key `name`"),
            (
                &at(4, 8),
                "functions[1].name: invalid name \"a b\": use only letters, digits, `-` and `_`"
            ),
            (&at(5, 13), "functions[1].namespace: invalid namespace \"\": must not be empty"),
            (
                &at(9, 11),
                "functions[2].version: invalid value \"v 1\": must not contain whitespace or control characters"
            ),
            (
                &at(10, 8),
                "functions[2].type: unknown function type \"web\": expected \"event\" or \"http\""
            ),
        ]
    );
}

#[test]
fn instances_and_launch_together() {
    let text = format!("{FUNCTION}[functions.launch]\ncommand = \"python3\"\n");
    let e = one_error(&text);
    assert_eq!(e.location, at(4, 12));
    assert_eq!(e.message, "set either `instances` or `launch`, not both");
    // The launch table's own problems are still reported.
    let text = format!("{FUNCTION}launch = {{ command = \"\" }}\n");
    let messages: Vec<String> = errors(&text).into_iter().map(|e| e.message).collect();
    assert_eq!(
        messages,
        [
            "set either `instances` or `launch`, not both",
            "functions[0].launch.command: must not be empty",
        ]
    );
}

#[test]
fn neither_instances_nor_launch() {
    let e = one_error("[[functions]]\nname = \"a\"\n");
    assert_eq!(e.location, path("functions[0]"));
    assert_eq!(e.message, "one of `instances` or `launch` is required");
}

#[test]
fn bad_instances() {
    let all = errors(
        "[[functions]]\nname = \"a\"\ninstances = [\"127.0.0.1\", 9001, \"127.0.0.1:0\", \"h:x\"]\n\
         [[functions]]\nname = \"b\"\ninstances = []\n\
         [[functions]]\nname = \"c\"\ninstances = \"127.0.0.1:1\"\n",
    );
    let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "functions[0].instances[0]: instance \"127.0.0.1\" has no port: expected \"host:port\", e.g. \"127.0.0.1:9000\"",
            "functions[0].instances[1]: expected a \"host:port\" string, found integer",
            "functions[0].instances[2]: instance \"127.0.0.1:0\": port 0 cannot be connected to",
            "functions[0].instances[3]: instance \"h:x\" has no port: expected \"host:port\", e.g. \"127.0.0.1:9000\"",
            "functions[1].instances: must list at least one \"host:port\" address",
            "functions[2].instances: expected an array of \"host:port\" strings, found string",
        ]
    );
    assert_eq!(all[0].location, at(3, 14));
    assert_eq!(all[1].location, at(3, 27));
}

/// A host name is followed at run time: one that does not resolve yet (a Service
/// with no pods, a resolver that is down) is no error at load.
#[test]
fn host_names_are_resolved_at_run_time() {
    let config = ok("[[functions]]\nname = \"a\"\n\
         instances = [\"no-such-host.invalid:9000\", \"127.0.0.1:9001\", \"[::1]:9002\", \"svc.ns.svc.cluster.local.:80\"]\n");
    assert_eq!(
        static_instances(&config.functions[0]),
        [
            StaticInstance::Named {
                authority: "no-such-host.invalid:9000".into(),
                host: "no-such-host.invalid".into(),
                port: 9000,
            },
            StaticInstance::Fixed {
                authority: "127.0.0.1:9001".into(),
                addr: "127.0.0.1:9001".parse().unwrap(),
            },
            StaticInstance::Fixed {
                authority: "[::1]:9002".into(),
                addr: "[::1]:9002".parse().unwrap(),
            },
            StaticInstance::Named {
                authority: "svc.ns.svc.cluster.local.:80".into(),
                host: "svc.ns.svc.cluster.local.".into(),
                port: 80,
            },
        ]
    );
}

#[test]
fn malformed_host_names_are_errors_with_a_position() {
    let all = errors(
        "[[functions]]\nname = \"a\"\n\
         instances = [\"a b:1\", \"::1:9000\", \"a..b:1\", \"svc:0\", \":80\"]\n",
    );
    let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "functions[0].instances[0]: instance \"a b:1\": invalid host name \"a b\": use labels of letters, digits, `-` and `_` separated by dots",
            "functions[0].instances[1]: instance \"::1:9000\": an IPv6 address goes in brackets: \"[::1]:9000\"",
            "functions[0].instances[2]: instance \"a..b:1\": invalid host name \"a..b\": use labels of letters, digits, `-` and `_` separated by dots",
            "functions[0].instances[3]: instance \"svc:0\": port 0 cannot be connected to",
            "functions[0].instances[4]: instance \":80\" has no port: expected \"host:port\", e.g. \"127.0.0.1:9000\"",
        ]
    );
    assert_eq!(all[0].location, at(3, 14));
    assert_eq!(all[1].location, at(3, 23));
}
