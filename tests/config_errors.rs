//! `scf-gateway check --config FILE` on broken files: the contract's exit status 2 and
//! one `error: <file>:<line>:<col>: ...` (or `error: <file>: <key path>: ...`) line per
//! problem, run against the real binary.

use std::path::PathBuf;
use std::process::Command;

/// The outcome of one `scf-gateway check` run.
struct Checked {
    /// The config file as passed on the command line (and so as printed in messages).
    file: String,
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// The stderr lines, after checking the run failed the contract's way and every line
    /// has the contract's shape.
    fn error_lines(&self) -> Vec<&str> {
        assert_eq!(
            self.status,
            Some(2),
            "an invalid config exits with status 2; stderr:\n{}",
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(!lines.is_empty(), "no error printed");
        let prefix = format!("error: {}", self.file);
        for line in &lines {
            let rest = line.strip_prefix(&prefix).unwrap_or_else(|| {
                panic!("line does not start with {prefix:?}: {line}");
            });
            assert!(
                has_position(rest) || rest.starts_with(": "),
                "neither `:<line>:<col>: ` nor `: <key path>: ` follows the file: {line}"
            );
        }
        lines
    }

    /// Asserts there is exactly one problem, at `line:col`, whose message contains
    /// `message`.
    fn assert_one_error_at(&self, line: usize, col: usize, message: &str) {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "expected one error, got:\n{}", self.stderr);
        let expected = format!("error: {}:{line}:{col}: ", self.file);
        assert!(
            lines[0].starts_with(&expected),
            "expected a position {line}:{col}: {}",
            lines[0]
        );
        assert!(
            lines[0].contains(message),
            "expected {message:?} in: {}",
            lines[0]
        );
    }
}

/// `:<line>:<col>: ` with numbers.
fn has_position(rest: &str) -> bool {
    let mut parts = rest.splitn(4, ':');
    let numeric =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some("")
        && numeric(parts.next())
        && numeric(parts.next())
        && parts.next().is_some_and(|p| p.starts_with(' '))
}

/// Writes `text` to a fresh directory named after the test and runs `check` on it, with
/// `vars` set and the credential variables the samples use removed.
fn check_with_env(test: &str, text: &str, vars: &[(&str, &str)]) -> Checked {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("scf-gateway-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_scf-gateway"));
    command.arg("check").arg("--config").arg(&path);
    for name in ["SCF_SECRET_ID", "SCF_SECRET_KEY", "SCF_SESSION_TOKEN"] {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    let output = command.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Checked {
        file: path.display().to_string(),
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn check(test: &str, text: &str) -> Checked {
    check_with_env(test, text, &[])
}

/// A valid event function, lines 1 to 3.
const HELLO: &str = "[[functions]]\nname = \"hello\"\ninstances = [\"127.0.0.1:9001\"]\n";
/// A valid web function, four lines.
const WEB: &str =
    "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"127.0.0.1:9002\"]\n";

#[test]
fn a_valid_file_exits_0_with_a_summary() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[credentials]\nsecret_key = \"${{SCF_SECRET_KEY}}\"\n\n\
         {HELLO}\n{WEB}\n[[routes]]\npath_prefix = \"/web/\"\nfunction = \"web\"\n"
    );
    let run = check_with_env("valid", &text, &[("SCF_SECRET_KEY", "shhh-do-not-print")]);
    assert_eq!(run.status, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(run.stdout.contains("is valid"), "{}", run.stdout);
    assert!(run.stdout.contains("functions: 2"), "{}", run.stdout);
    assert!(run.stdout.contains("routes: 1"), "{}", run.stdout);
    assert!(run.stdout.contains("127.0.0.1:8080"), "{}", run.stdout);
    assert!(
        run.stdout.contains("*/web -> default/web"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("shhh"), "{}", run.stdout);
}

#[test]
fn check_says_the_api_endpoint_is_on_with_its_ids_never_its_keys() {
    let text = format!(
        "{HELLO}\n[[api.keys]]\nsecret_id = \"AKIDone\"\nsecret_key = \"${{API_KEY}}\"\n\
         [[api.keys]]\nsecret_id = \"AKIDtwo\"\nsecret_key = \"plain-do-not-print\"\n"
    );
    let run = check_with_env("api", &text, &[("API_KEY", "shhh-do-not-print")]);
    assert_eq!(run.status, Some(0), "stderr:\n{}", run.stderr);
    assert!(
        run.stdout
            .contains("api: Tencent Cloud API 3.0 on POST / with 2 key(s): AKIDone, AKIDtwo"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("do-not-print"), "{}", run.stdout);

    let run = check("api-off", HELLO);
    assert!(run.stdout.contains("api: off"), "{}", run.stdout);
}

#[test]
fn bad_toml() {
    let run = check(
        "bad-toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\nworkers = = 2\n",
    );
    let lines = run.error_lines();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("error: {}:3:", run.file))),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_key() {
    let run = check(
        "unknown-key",
        &format!("{HELLO}[server]\nlisen = \"127.0.0.1:1\"\n"),
    );
    run.assert_one_error_at(5, 1, "unknown key \"lisen\" in [server]");
}

#[test]
fn unknown_key_at_the_top_level() {
    let run = check(
        "unknown-top",
        &format!("{HELLO}\n[metrics]\nenabled = true\n"),
    );
    run.assert_one_error_at(5, 2, "unknown key \"metrics\"");
}

#[test]
fn wrong_type() {
    let run = check("wrong-type", &format!("{HELLO}timeout = 3\n"));
    run.assert_one_error_at(
        4,
        11,
        "functions[0].timeout: expected a duration string such as \"3s\", found integer",
    );
}

#[test]
fn bad_duration() {
    let run = check("bad-duration", &format!("{HELLO}queue_timeout = \"3\"\n"));
    run.assert_one_error_at(
        4,
        17,
        "invalid duration \"3\": expected a number with a unit (ms, s, m, h)",
    );
}

#[test]
fn duplicate_function() {
    let run = check("duplicate-function", &format!("{HELLO}\n{HELLO}"));
    run.assert_one_error_at(
        6,
        8,
        "duplicate function \"default/hello\": already defined by functions[0]",
    );
}

#[test]
fn route_to_unknown_function() {
    let text = format!("{WEB}[[routes]]\npath_prefix = \"/x\"\nfunction = \"missing\"\n");
    let run = check("route-unknown", &text);
    run.assert_one_error_at(7, 12, "route to unknown function \"missing\"");
}

#[test]
fn route_to_event_function() {
    let text = format!("{HELLO}[[routes]]\npath_prefix = \"/x\"\nfunction = \"hello\"\n");
    let run = check("route-event", &text);
    run.assert_one_error_at(6, 12, "routes can only target functions of type \"http\"");
}

#[test]
fn both_instances_and_launch() {
    let text = format!("{HELLO}[functions.launch]\ncommand = \"python3\"\n");
    let run = check("both", &text);
    let lines = run.error_lines();
    let both = format!(
        "error: {}:4:12: set either `instances` or `launch`, not both",
        run.file
    );
    assert!(lines.contains(&both.as_str()), "{}", run.stderr);
}

/// A launched function, lines 1 to 4; launch keys follow from line 5.
const LAUNCHED: &str =
    "[[functions]]\nname = \"thumb\"\n[functions.launch]\ncommand = \"python3\"\n";

#[test]
fn a_valid_launch_config_exits_0_without_printing_env_values() {
    let text = format!(
        "{LAUNCHED}args = [\"app.py\"]\nenv = {{ GREETING = \"hi-plain-value\", TOKEN = \"${{APP_TOKEN}}\" }}\n\
         workdir = \".\"\nport = 9000\n\n\
         [[functions]]\nname = \"scaled\"\nlaunch = {{ command = \"node\", min_instances = 1, max_instances = 3 }}\n"
    );
    let run = check_with_env(
        "launch-valid",
        &text,
        &[("APP_TOKEN", "shhh-launch-secret")],
    );
    assert_eq!(run.status, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(run.stdout.contains("functions: 2"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("default/thumb (event, version $LATEST, 128 MB, timeout 3s, launched `python3`, 0..1 instance(s) x 1 slot(s), port 9000, env GREETING TOKEN)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("launched `node`, 1..3 instance(s)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("shhh"), "{}", run.stdout);
    assert!(!run.stdout.contains("hi-plain-value"), "{}", run.stdout);
}

#[test]
fn launch_max_instances_zero() {
    let run = check("launch-max-zero", &format!("{LAUNCHED}max_instances = 0\n"));
    run.assert_one_error_at(
        5,
        17,
        "functions[0].launch.max_instances: must be between 1 and 1000, found 0",
    );
}

#[test]
fn launch_unknown_key() {
    let run = check("launch-unknown", &format!("{LAUNCHED}cmd_args = [\"x\"]\n"));
    run.assert_one_error_at(5, 1, "unknown key \"cmd_args\" in [functions.launch]");
}

#[test]
fn launch_problems_are_all_reported_without_secrets() {
    let text = format!(
        "{LAUNCHED}env = {{ TOKEN = \"${{APP_TOKEN}}-${{MISSING}}\" }}\nworkdir = \"nowhere\"\n\
         port = 9000\nmax_instances = 2\n\
         [[functions]]\nname = \"other\"\nlaunch = {{ command = \"x\", port = 9000 }}\n"
    );
    let run = check_with_env("launch-many", &text, &[("APP_TOKEN", "shhh-launch-secret")]);
    let lines = run.error_lines();
    let dir = std::path::Path::new(&run.file)
        .parent()
        .unwrap()
        .to_path_buf();
    let expected = [
        format!(
            "error: {}:5:17: functions[0].launch.env.TOKEN: environment variable MISSING is not set",
            run.file
        ),
        format!(
            "error: {}:6:11: functions[0].launch.workdir: directory \"{}\" does not exist",
            run.file,
            dir.join("nowhere").display()
        ),
        format!(
            "error: {}:8:17: functions[0].launch.max_instances: a pinned port allows one instance at most, found 2",
            run.file
        ),
        format!(
            "error: {}:11:34: functions[1].launch.port: port 9000 is already pinned by functions[0] \
             (\"default/thumb\"); two functions cannot share a pinned port",
            run.file
        ),
    ];
    assert_eq!(lines, expected, "{}", run.stderr);
    assert!(!run.stderr.contains("shhh"), "{}", run.stderr);
}

#[test]
fn neither_instances_nor_launch() {
    let run = check(
        "neither",
        &format!("{HELLO}\n[[functions]]\nname = \"other\"\n"),
    );
    let lines = run.error_lines();
    assert_eq!(
        lines,
        [format!(
            "error: {}: functions[1]: one of `instances` or `launch` is required",
            run.file
        )]
    );
}

#[test]
fn timer_and_async_errors_have_positions() {
    let text = format!(
        "{HELLO}[[functions.timers]]\nname = \"t\"\ncron = \"0 0 25 * * * *\"\n\n\
         [async]\nretries = 11\n"
    );
    let run = check("timers-async", &text);
    let lines = run.error_lines();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].contains(
            ":6:13: functions[0].timers[0].cron: field 3 (hour): `25` is out of range 0-23"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(":9:11: async.retries: must be between 0 and 10, found 11"),
        "{}",
        lines[1]
    );
}

#[test]
fn missing_environment_variable_is_named() {
    let text = format!(
        "[credentials]\nsecret_id = \"abc\"\nsecret_key = \"${{SCF_SECRET_KEY}}\"\n{HELLO}"
    );
    let run = check("missing-env", &text);
    run.assert_one_error_at(3, 14, "environment variable SCF_SECRET_KEY is not set");
    assert!(!run.stderr.contains("abc"), "{}", run.stderr);
}

#[test]
fn two_problems_give_two_lines() {
    let text = format!("[server]\nworkers = \"2\"\n{HELLO}memory_mb = 1\n");
    let run = check("two-problems", &text);
    let lines = run.error_lines();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].starts_with(&format!("error: {}:2:11: server.workers:", run.file)),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!(
            "error: {}:6:13: functions[0].memory_mb:",
            run.file
        )),
        "{}",
        lines[1]
    );
}

#[test]
fn an_unreadable_file_is_a_config_error() {
    let missing =
        std::env::temp_dir().join(format!("scf-gateway-absent-{}.toml", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .arg("check")
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {}: cannot read the file",
            missing.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_bundled_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("default/hello"), "{summary}");
}
