//! The status page in a real browser: Debian's `chromium`, headless, loads `GET /` from
//! the real gateway binary after some invocations (successes, a timeout, an unknown
//! function) and the test reads what a person sees: the functions, their instances and
//! states, the counts, the recent errors; and that no credential, `env` value or admin
//! token is anywhere in the document.
//!
//! Without chromium the test says so and returns, except under CI (`CI` set), where a
//! missing browser fails it. `STATUS_PAGE_SCREENSHOT=FILE.png` also saves a screenshot.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::StatusCode;

const CHROMIUM: &str = "chromium";
/// The most one browser run may take.
const BROWSER_TIME: Duration = Duration::from_secs(60);

const ENV_VALUE: &str = "env-value-Lp5s8";
const SECRET_ID: &str = "AKIDsecret-id-Qc2n7";
const SECRET_KEY: &str = "secret-key-Xy9d3";
const SESSION_TOKEN: &str = "session-token-Gb4t6";
const ADMIN_TOKEN: &str = "admin-token-Jw1r0";
const SECRETS: [&str; 5] = [ENV_VALUE, SECRET_ID, SECRET_KEY, SESSION_TOKEN, ADMIN_TOKEN];

/// Whether the browser runs here; a missing one fails the test under CI.
fn have_chromium() -> bool {
    let found = std::process::Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed, and CI must run the browser test (.ci/run installs it)"
        );
        eprintln!("skipped: chromium is not installed");
    }
    found
}

/// Runs headless chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`), in a
/// profile directory of its own; its standard output.
async fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_TIME, command.output())
        .await
        .expect("chromium took too long")
        .expect("chromium failed to run");
    assert!(out.status.success(), "chromium exited with {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text a person reads: tags dropped, entities decoded, whitespace collapsed.
fn visible_text(dom: &str) -> String {
    let body = dom.split_once("<body").map_or(dom, |(_, b)| b);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Profile(PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_functions_instances_counts_and_errors_and_no_secret() {
    if !have_chromium() {
        return;
    }
    let instance = FakeInstance::start().await;
    let functions = format!(
        "[credentials]\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n\
         session_token = \"{SESSION_TOKEN}\"\n\
         [[functions]]\nname = \"hello\"\ninstances = [\"{}\"]\ntimeout = \"300ms\"\n\
         [[functions]]\nname = \"thumbnail\"\nmemory_mb = 256\n\
         [functions.launch]\ncommand = \"{}\"\nenv = {{ API_SECRET = \"{ENV_VALUE}\" }}\n",
        instance.addr,
        example_function().display()
    );
    let server = format!("admin_token = \"{ADMIN_TOKEN}\"\n");
    let gw = GatewayProcess::start("status-page", &server, &functions);
    for _ in 0..3 {
        assert_eq!(
            invoke(gw.listen, "hello", &[], "{}").await.status,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        let answer = invoke(gw.listen, "thumbnail", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let timed_out = invoke(gw.listen, "hello", &[("x-test-sleep-ms", "2000")], "{}").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    let missing = invoke(gw.listen, "nosuch", &[], "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let profile = Profile(gw.dir.join("chromium-profile"));
    let url = format!("http://{}/", gw.admin);
    let dom = chromium(&profile.0, &url, &["--dump-dom"]).await;
    for secret in SECRETS {
        assert!(!dom.contains(secret), "the page shows {secret:?}:\n{dom}");
    }
    assert!(!dom.contains("<script"), "no JavaScript");
    let text = visible_text(&dom);
    let expect = [
        // The summary table, then each function.
        "scf-gateway ready 2 functions",
        "hello default event static 1 / 1",
        "thumbnail default event process 1 / 1",
        "thumbnail namespace default Type event Source process Memory 256 MB Timeout 3 s",
        "hello namespace default Type event Source static Memory 128 MB Timeout 300 ms",
        // Instances and their states.
        &format!("{addr} {addr} ready 0", addr = instance.addr),
        "thumbnail-1 127.0.0.1:",
        // Counts by outcome.
        "success 3 not_found 0 body_too_large 0 response_too_large 0 timeout 1",
        "success 2 not_found 0",
        // Recent errors and cold starts.
        "Invoking task timed out after 0.3 seconds",
        timed_out.request_id(),
        "Requests that matched no function Total 1",
        "Function [nosuch] not found in namespace [default]",
        missing.request_id(),
        "Recent cold starts Ready at (UTC) Took",
    ];
    for phrase in expect {
        assert!(text.contains(phrase), "the page lacks {phrase:?}:\n{text}");
    }

    if let Some(file) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        let file = PathBuf::from(file);
        chromium(
            &profile.0,
            &url,
            &[
                &format!("--screenshot={}", file.display()),
                "--window-size=1280,1900",
            ],
        )
        .await;
        assert!(file.exists(), "no screenshot at {}", file.display());
    }
}
