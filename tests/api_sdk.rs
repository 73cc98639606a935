//! The Tencent Cloud API 3.0 endpoint driven by the official Python SDK,
//! `tencentcloud-sdk-python-scf`, unmodified: only its endpoint points at the gateway.
//! The checks themselves are in `tests/api/sdk_client.py`; this test starts the gateway
//! and the functions the script calls, runs it, and requires every check to pass.
//!
//! Without the SDK the test says so and returns, except under CI (`CI` set), where a
//! missing SDK fails it: `.ci/run` installs the package from PyPI.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::events::EventInstance;
use common::GatewayProcess;

const SECRET_ID: &str = "AKIDsdkTestKey000000000000000000000";
const SECRET_KEY: &str = "sdk-test-secret-key-0123456789abcdef";
/// The checks the script reports, in order; each must print `ok NAME`.
const CHECKS: [&str; 11] = [
    "Invoke",
    "Invoke LogType Tail",
    "InvokeFunction",
    "Invoke Event, GetAsyncEventStatus",
    "ListAsyncEvents",
    "TerminateAsyncEvent",
    "ListFunctions",
    "GetFunction",
    "unknown function",
    "wrong secret key",
    "unknown secret id",
];

/// Whether the official SDK can be imported; a missing one fails the test under CI.
fn sdk_available() -> bool {
    let import = Command::new("python3")
        .args(["-c", "import tencentcloud.scf.v20180416.scf_client"])
        .output();
    if matches!(import, Ok(out) if out.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tencentcloud-sdk-python-scf is not installed (pip install tencentcloud-sdk-python-scf), \
         and CI needs this test"
    );
    eprintln!("skipped: tencentcloud-sdk-python-scf is not installed");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_invokes_and_inspects_functions_unchanged() {
    if !sdk_available() {
        return;
    }
    let echo = EventInstance::start().await;
    let store = std::env::temp_dir().join(format!("scf-events-api-sdk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions/hello");
    let server = format!(
        "[async]\nstore = \"embedded\"\npath = \"{}\"\n\n\
         [api]\n[[api.keys]]\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n",
        store.display()
    );
    let functions = format!(
        "[[functions]]\nname = \"hello\"\nmemory_mb = 256\ntimeout = \"3s\"\n\
         [functions.launch]\ncommand = \"python3\"\nargs = [\"app.py\"]\nworkdir = \"{}\"\n\n\
         [[functions]]\nname = \"echo\"\ninstances = [\"{}\"]\ninstance_concurrency = 1\n",
        hello.display(),
        echo.addr
    );
    let gw = GatewayProcess::start("api-sdk", &server, &functions);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/sdk_client.py");
    let child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(gw.listen.to_string())
        .args([SECRET_ID, SECRET_KEY])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the SDK script finishes within 120 s")
        .expect("the SDK script ran");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);

    let passed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert!(
        output.status.success(),
        "the SDK script failed after {passed:?}:\n{err}\n{out}"
    );
    assert_eq!(passed, CHECKS, "{out}");
    assert!(out.contains("all checks passed"), "{out}");

    // No secret key in anything the gateway wrote, though one call was signed with a
    // wrong key and another answered SignatureFailure.
    let logs = gw.logs.lock().join("\n");
    assert!(
        !logs.contains(SECRET_KEY),
        "the secret key is in the gateway's log"
    );
    let _ = std::fs::remove_dir_all(&store);
}
