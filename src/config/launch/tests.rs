use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::config::testing::*;
use crate::config::{
    parse, Config, ConfigError, ConfigErrors, FunctionConfig, InstanceSource, LaunchConfig,
    Location, Network,
};

/// A launched function, lines 1 to 4; launch keys follow from line 5.
const LAUNCH: &str = "[[functions]]\nname = \"a\"\n[functions.launch]\ncommand = \"python3\"\n";

fn launch_of(f: &FunctionConfig) -> &LaunchConfig {
    match &f.source {
        InstanceSource::Launch(launch) => launch,
        InstanceSource::Static(_) => panic!("expected a launched function"),
    }
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("scf-gateway-parse-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse_at(text: &str, file: &Path, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(text, file, &|name| vars.get(name).cloned())
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap()
}

#[test]
fn launch_defaults() {
    let config = ok(LAUNCH);
    let l = launch_of(&config.functions[0]);
    assert_eq!(l.command, "python3");
    assert!(l.args.is_empty());
    assert!(l.env.is_empty());
    // The config file's directory: here `gateway.toml` is relative to the process.
    assert_eq!(l.workdir, cwd());
    assert!(l.workdir.is_absolute());
    assert_eq!(l.port, None);
    assert_eq!(l.min_instances, 0);
    assert_eq!(l.max_instances, 4);
    assert_eq!(l.ready_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(300));
}

#[test]
fn every_launch_key_is_read() {
    let dir = TempDir::new("every-key");
    std::fs::create_dir_all(dir.0.join("functions/thumbnail")).unwrap();
    let text = r#"
[[functions]]
name = "thumbnail"
[functions.launch]
command = "${PY}"
args = ["app.py", "--port=${P}", "$LATEST"]
env = { GREETING = "hi", _TOKEN2 = "${SECRET}", EMPTY = "" }
workdir = "functions/./x/../thumbnail/"
port = 9000
min_instances = 1
max_instances = 1
ready_timeout = "1.5s"
idle_timeout = "10m"
"#;
    let vars = [("PY", "python3"), ("P", "9000"), ("SECRET", "t0p-s3cret")];
    let config = match parse_at(text, &dir.0.join("gateway.toml"), &vars) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    let l = launch_of(&config.functions[0]);
    assert_eq!(l.command, "python3");
    assert_eq!(l.args, ["app.py", "--port=9000", "$LATEST"]);
    let env: Vec<(&str, &str)> = l
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(env.len(), 3);
    for var in [("GREETING", "hi"), ("_TOKEN2", "t0p-s3cret"), ("EMPTY", "")] {
        assert!(env.contains(&var), "{env:?}");
    }
    assert_eq!(l.workdir, dir.0.join("functions/thumbnail"));
    assert_eq!(l.port, Some(9000));
    assert_eq!((l.min_instances, l.max_instances), (1, 1));
    assert_eq!(l.ready_timeout, Duration::from_millis(1500));
    assert_eq!(l.idle_timeout, Duration::from_secs(600));
    let debug = format!("{config:?}");
    assert!(!debug.contains("t0p-s3cret"), "{debug}");
}

#[test]
fn launch_as_an_inline_table() {
    let config = ok(
        "[[functions]]\nname = \"a\"\n\
         launch = { command = \"node\", args = [\"index.js\"], env = { A = \"1\" }, max_instances = 2 }\n",
    );
    let l = launch_of(&config.functions[0]);
    assert_eq!(
        (l.command.as_str(), l.args.as_slice()),
        ("node", &["index.js".to_string()][..])
    );
    assert_eq!(l.env[0].0, "A");
    assert_eq!(l.env[0].1.expose(), "1");
    assert_eq!(l.max_instances, 2);

    let config = ok("functions = [{ name = \"b\", launch = { command = \"x\" } }]\n");
    assert_eq!(launch_of(&config.functions[0]).command, "x");

    // `[functions.launch.env]` as its own table works as well.
    let config = ok(&format!("{LAUNCH}[functions.launch.env]\nB = \"2\"\n"));
    assert_eq!(launch_of(&config.functions[0]).env[0].0, "B");
}

#[test]
fn a_relative_workdir_is_relative_to_the_config_files_directory() {
    // The file is `tests/gateway.toml` relative to the process: `../src` is `<cwd>/src`.
    let text = format!("{LAUNCH}workdir = \"../src\"\n");
    let config = match parse_at(&text, Path::new("tests/gateway.toml"), &[]) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    let l = launch_of(&config.functions[0]);
    assert_eq!(l.workdir, cwd().join("src"));
    // Without `workdir`, the file's own directory, made absolute.
    let config = parse_at(LAUNCH, Path::new("./tests/gateway.toml"), &[]).unwrap();
    assert_eq!(launch_of(&config.functions[0]).workdir, cwd().join("tests"));
}

#[test]
fn an_absolute_workdir_is_kept() {
    let dir = TempDir::new("absolute");
    let text = format!("{LAUNCH}workdir = \"{}/.\"\n", dir.0.display());
    let config = ok(&text);
    assert_eq!(launch_of(&config.functions[0]).workdir, dir.0);
}

#[test]
fn a_workdir_that_is_missing_or_not_a_directory() {
    let all = errors(&format!("{LAUNCH}workdir = \"no-such-dir\"\n"));
    let missing = cwd().join("no-such-dir");
    assert_eq!(
        all,
        [ConfigError {
            location: at(5, 11),
            message: format!(
                "functions[0].launch.workdir: directory \"{}\" does not exist",
                missing.display()
            ),
        }]
    );
    let e = one_error(&format!("{LAUNCH}workdir = \"Cargo.toml\"\n"));
    assert_eq!(e.location, at(5, 11));
    assert_eq!(
        e.message,
        format!(
            "functions[0].launch.workdir: directory \"{}\" is not a directory",
            cwd().join("Cargo.toml").display()
        )
    );
    let e = one_error(&format!("{LAUNCH}workdir = \"\"\n"));
    assert_eq!(e.message, "functions[0].launch.workdir: must not be empty");
}

#[test]
fn launch_env_rules() {
    let text = format!(
        "{LAUNCH}env = {{ OK = \"${{SET}}\", TOKEN = \"${{SECRET_TOKEN}}\", 1X = \"a\", \"A-B\" = \"b\", N = 5 }}\n"
    );
    let all = errors_with(&text, &[("SET", "visible-only-in-env")]);
    let found: Vec<(&Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                &at(5, 32),
                "functions[0].launch.env.TOKEN: environment variable SECRET_TOKEN is not set"
            ),
            (
                &at(5, 51),
                "functions[0].launch.env: invalid environment variable name \"1X\": \
                 use letters, digits and `_`, not starting with a digit"
            ),
            (
                &at(5, 61),
                "functions[0].launch.env: invalid environment variable name \"A-B\": \
                 use letters, digits and `_`, not starting with a digit"
            ),
            (
                &at(5, 78),
                "functions[0].launch.env.N: expected a string, found integer"
            ),
        ]
    );
    for e in &all {
        assert!(!e.message.contains("visible-only-in-env"), "{}", e.message);
    }
    let e = one_error(&format!("{LAUNCH}env = [\"A=1\"]\n"));
    assert_eq!(
        e.message,
        "functions[0].launch.env: expected a table, found array"
    );
    let e = errors_with(
        &format!("{LAUNCH}env = {{ A = \"${{V}}\" }}\n"),
        &[("V", "x\0y")],
    );
    assert_eq!(
        e[0].message,
        "functions[0].launch.env.A: must not contain a NUL character (the value is not shown)"
    );
}

#[test]
fn command_and_args_rules() {
    let e = one_error("[[functions]]\nname = \"a\"\n[functions.launch]\nargs = []\n");
    assert_eq!(e.location, path("functions[0].launch.command"));
    assert_eq!(
        e.message,
        "missing required key `command` (or `image` for an image function)"
    );
    let e = one_error("[[functions]]\nname = \"a\"\nlaunch = { command = \" \" }\n");
    assert_eq!(e.location, at(3, 22));
    assert_eq!(e.message, "functions[0].launch.command: must not be empty");
    let all = errors(&format!("{LAUNCH}args = [\"a\", 1]\n"));
    assert_eq!(all[0].location, at(5, 14));
    assert_eq!(
        all[0].message,
        "functions[0].launch.args[1]: expected a string, found integer"
    );
    let e = one_error(&format!("{LAUNCH}args = \"app.py\"\n"));
    assert_eq!(
        e.message,
        "functions[0].launch.args: expected an array of strings, found string"
    );
    let e = one_error("[[functions]]\nname = \"a\"\nlaunch = \"python3\"\n");
    assert_eq!(e.location, at(3, 10));
    assert_eq!(
        e.message,
        "functions[0].launch: expected a table, found string"
    );
}

#[test]
fn unknown_keys_in_launch() {
    let e = one_error(&format!("{LAUNCH}comand = \"x\"\n"));
    assert_eq!(e.location, at(5, 1));
    assert_eq!(
        e.message,
        "unknown key \"comand\" in [functions.launch] (did you mean `command`?)"
    );
    let e = one_error("[[functions]]\nname = \"a\"\nlaunch = { command = \"x\", replicas = 2 }\n");
    assert_eq!(e.location, at(3, 27));
    assert!(
        e.message
            .starts_with("unknown key \"replicas\" in [functions.launch]"),
        "{}",
        e.message
    );
}

#[test]
fn a_pinned_port_allows_one_instance() {
    let config = ok(&format!("{LAUNCH}port = 9000\n"));
    let l = launch_of(&config.functions[0]);
    assert_eq!(
        (l.port, l.min_instances, l.max_instances),
        (Some(9000), 0, 1)
    );
    let config = ok(&format!(
        "{LAUNCH}port = 9000\nmin_instances = 1\nmax_instances = 1\n"
    ));
    let l = launch_of(&config.functions[0]);
    assert_eq!((l.min_instances, l.max_instances), (1, 1));

    let e = one_error(&format!("{LAUNCH}port = 9000\nmax_instances = 2\n"));
    assert_eq!(e.location, at(6, 17));
    assert_eq!(
        e.message,
        "functions[0].launch.max_instances: a pinned port allows one instance at most, found 2"
    );
    let e = one_error(&format!("{LAUNCH}port = 9000\nmin_instances = 2\n"));
    assert_eq!(e.location, at(6, 17));
    assert_eq!(
        e.message,
        "functions[0].launch.min_instances: must not exceed max_instances \
         (a pinned port allows one instance at most), found 2"
    );
    let messages: Vec<String> = errors(&format!("{LAUNCH}port = 0\n[[functions]]\nname = \"b\"\nlaunch = {{ command = \"x\", port = 65536 }}\n"))
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(
        messages,
        [
            "functions[0].launch.port: must be between 1 and 65535, found 0",
            "functions[1].launch.port: must be between 1 and 65535, found 65536",
        ]
    );
}

#[test]
fn two_functions_cannot_pin_the_same_port() {
    let text = "[[functions]]\nname = \"a\"\nlaunch = { command = \"x\", port = 9000 }\n\
                [[functions]]\nname = \"b\"\nlaunch = { command = \"x\", port = 9001 }\n\
                [[functions]]\nname = \"c\"\nnamespace = \"n\"\nlaunch = { command = \"x\", port = 9000 }\n";
    let e = one_error(text);
    assert_eq!(e.location, at(10, 34));
    assert_eq!(
        e.message,
        "functions[2].launch.port: port 9000 is already pinned by functions[0] \
         (\"default/a\"); two functions cannot share a pinned port"
    );
}

#[test]
fn instance_counts() {
    let config = ok(&format!("{LAUNCH}min_instances = 2\nmax_instances = 2\n"));
    let l = launch_of(&config.functions[0]);
    assert_eq!((l.min_instances, l.max_instances), (2, 2));

    let e = one_error(&format!("{LAUNCH}min_instances = 5\nmax_instances = 3\n"));
    assert_eq!(e.location, at(6, 17));
    assert_eq!(
        e.message,
        "functions[0].launch.max_instances: must be at least min_instances (5), found 3"
    );
    let e = one_error(&format!("{LAUNCH}min_instances = 5\n"));
    assert_eq!(e.location, at(5, 17));
    assert_eq!(
        e.message,
        "functions[0].launch.min_instances: must not exceed max_instances \
         (max_instances defaults to 4), found 5"
    );
    let e = one_error(&format!("{LAUNCH}max_instances = 0\n"));
    assert_eq!(e.location, at(5, 17));
    assert_eq!(
        e.message,
        "functions[0].launch.max_instances: must be between 1 and 1000, found 0"
    );
    let e = one_error(&format!("{LAUNCH}min_instances = -1\n"));
    assert_eq!(
        e.message,
        "functions[0].launch.min_instances: must be between 0 and 1000, found -1"
    );
}

#[test]
fn launch_timeouts_must_be_positive() {
    let messages: Vec<String> = errors(&format!(
        "{LAUNCH}ready_timeout = \"0s\"\nidle_timeout = \"0ms\"\n"
    ))
    .into_iter()
    .map(|e| e.message)
    .collect();
    assert_eq!(
        messages,
        [
            "functions[0].launch.ready_timeout: must be greater than zero, found \"0s\"",
            "functions[0].launch.idle_timeout: must be greater than zero, found \"0ms\"",
        ]
    );
}

#[test]
fn lexical_normalization() {
    assert_eq!(normalize_path(Path::new("/a/./b/../c/")), Path::new("/a/c"));
    assert_eq!(normalize_path(Path::new("/../a")), Path::new("/a"));
    assert_eq!(normalize_path(Path::new("a/../../b")), Path::new("../b"));
    assert_eq!(config_dir(Path::new("gateway.toml")), Path::new("."));
    assert_eq!(
        config_dir(Path::new("/etc/gw/g.toml")),
        Path::new("/etc/gw")
    );
    assert!(is_env_name("_A1"));
    assert!(!is_env_name("1A"));
    assert!(!is_env_name(""));
    assert!(!is_env_name("A.B"));
}

/// An image function, lines 1 to 3; launch keys follow from line 4.
const IMAGE_FN: &str = "[[functions]]\nname = \"img\"\n[functions.launch]\n";

#[test]
fn registry_images_are_not_supported_yet() {
    let e = one_error(&format!(
        "{IMAGE_FN}image = \"registry.example.com:5000/app:1\"\n"
    ));
    assert_eq!(e.location, at(4, 9));
    assert!(
        e.message.contains("registry images") && e.message.contains("not supported yet"),
        "{}",
        e.message
    );
    // An unusable image is one error, not one more per image-only key.
    let e = one_error(&format!(
        "{IMAGE_FN}image = \"registry.example.com/app:1\"\ntmp_mb = 64\n"
    ));
    assert!(e.message.contains("registry images"), "{}", e.message);
    let e = one_error("[images]\n[[images.registries]]\nhost = \"r:5000\"\n");
    assert!(e.message.contains("not supported yet"), "{}", e.message);
}

#[test]
fn a_missing_layout_is_a_config_error_naming_the_image() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let e = one_error(&format!("{IMAGE_FN}image = \"oci:no/such/layout:v1\"\n"));
    assert_eq!(e.location, at(4, 9));
    assert!(
        e.message
            .starts_with("functions[0].launch.image: image oci:"),
        "{}",
        e.message
    );
    assert!(e.message.contains("no/such/layout"), "{}", e.message);
    let e = one_error(&format!(
        "{IMAGE_FN}image = \"docker-archive:missing.tar\"\n"
    ));
    assert!(e.message.contains("missing.tar"), "{}", e.message);
}

#[test]
fn image_only_keys_and_network_values_are_checked() {
    let all = errors(&format!("{IMAGE_FN}image = \"x/y:1\"\nworkdir = \".\"\n"));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[1].message.contains("`workdir` is for processes"),
        "{}",
        all[1].message
    );
    let e = one_error(&format!("{LAUNCH}tmp_mb = 64\n"));
    assert!(e.message.contains("only image functions"), "{}", e.message);
    let e = one_error(&format!("{LAUNCH}network = \"bridge\"\n"));
    assert_eq!(e.location, at(5, 11));
    assert!(
        e.message.contains("\"host\" or \"isolated\""),
        "{}",
        e.message
    );
    let e = one_error("[[functions]]\nname = \"a\"\n[functions.launch]\nargs = [\"x\"]\n");
    assert!(e.message.contains("`command` (or `image`"), "{}", e.message);
}

#[test]
fn isolated_processes_listen_on_9000_and_may_all_use_it() {
    let text = format!(
        "{LAUNCH}network = \"isolated\"\nmax_instances = 3\n\
         [[functions]]\nname = \"b\"\n[functions.launch]\ncommand = \"x\"\n\
         network = \"isolated\"\nport = 8000\n"
    );
    if !rustix::process::geteuid().is_root() {
        let e = one_error(&text);
        assert!(e.message.contains("need root"), "{}", e.message);
        return;
    }
    let config = ok(&text);
    let a = launch_of(&config.functions[0]);
    assert_eq!(a.network, Network::Isolated);
    assert_eq!(a.port, Some(9000));
    assert_eq!(a.max_instances, 3);
    let b = launch_of(&config.functions[1]);
    assert_eq!(b.port, Some(8000));
    // A port inside a namespace pins nothing on the host: four instances by default.
    assert_eq!(b.max_instances, 4);
    assert!(b.image.is_none());
}

#[test]
fn images_section_defaults_and_values() {
    let config = ok(FUNCTION);
    assert_eq!(config.images.store, cwd().join("data/images"));
    assert_eq!(config.images.runtime, "runc");
    assert_eq!(config.images.max_image_bytes, 1 << 30);
    let config = ok(&format!(
        "[images]\nstore = \"/srv/images\"\nruntime = \"/usr/sbin/runc\"\n\
         max_image_bytes = 1000\n{FUNCTION}"
    ));
    assert_eq!(config.images.store, Path::new("/srv/images"));
    assert_eq!(config.images.runtime, "/usr/sbin/runc");
    assert_eq!(config.images.max_image_bytes, 1000);
}
