//! Launched instance processes, with real children (`python3`, `/bin/sh`): the SCF
//! environment, ports, readiness, start-up failures, stopping whole process trees, and
//! (as root) memory cgroups: the limit, out-of-memory kills, peak memory.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use common::{wait_for, PATIENCE};
use scf_gateway::config::{LaunchConfig, Network, Secret};
use scf_gateway::instance::cgroup::Version;
use scf_gateway::instance::process::{free_port, Exit, Process, Spec, StartError};
use tokio::time::Instant;

/// A tiny TCP server on `$PORT` that accepts and closes connections.
const SERVER: &str = r#"
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"#;

fn workdir(test: &str) -> PathBuf {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("scf_gateway=debug")
        .with_test_writer()
        .try_init();
    let dir = std::env::temp_dir().join(format!(
        "scf-launch-test-{test}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spec(workdir: &Path, command: &str, args: &[&str], memory_mb: u32) -> Spec {
    Spec {
        function: "hello".into(),
        namespace: "default".into(),
        version: "$LATEST".into(),
        region: "ap-guangzhou".into(),
        appid: "1250000000".into(),
        uin: "100000000001".into(),
        memory_mb,
        launch: LaunchConfig {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            image: None,
            network: Network::Host,
            env: vec![("GREETING".into(), Secret::new("hi there".into()))],
            workdir: workdir.to_path_buf(),
            port: None,
            min_instances: 0,
            max_instances: 4,
            ready_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        },
    }
}

fn python(workdir: &Path, script: &str, extra: &[&str], memory_mb: u32) -> Spec {
    let mut args = vec!["-c", script];
    args.extend_from_slice(extra);
    spec(workdir, "python3", &args, memory_mb)
}

fn sh(workdir: &Path, script: &str) -> Spec {
    spec(workdir, "/bin/sh", &["-c", script], 128)
}

/// Reads the instance's stdout and stderr on threads (so it never blocks on a full pipe).
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn drain(process: &mut Process) -> Output {
        let out = Output::default();
        let (stdout, stderr) = process.take_output().expect("output pipes");
        for fd in [stdout, stderr] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::File::from(fd);
                let mut buf = [0u8; 4096];
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.0.lock().extend_from_slice(&buf[..n]);
                }
            });
        }
        out
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

/// `kill(pid, 0)` fails with ESRCH: no such process, not even a zombie.
fn gone(pid: i32) -> bool {
    let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

fn group_gone(pgid: i32) -> bool {
    let pgid = rustix::process::Pid::from_raw(pgid).expect("a positive pgid");
    rustix::process::test_kill_process_group(pgid) == Err(rustix::io::Errno::SRCH)
}

/// Every process whose process group is `pgid`, leader included.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_string();
                    rest.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The instance's cgroup, or `None` (with a note) where the test must be skipped.
fn cgroup_or_skip(process: &Process, test: &str) -> bool {
    if !is_root() {
        eprintln!("note: {test} skipped: not running as root");
        return false;
    }
    if process.cgroup().is_none() {
        eprintln!("note: {test} skipped: no memory cgroup could be created here");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_gets_the_scf_environment_and_a_private_tmpdir() {
    let dir = workdir("env");
    let report = dir.join("env.json");
    let script = format!(
        r#"
import json, os, stat, sys
tmp = os.environ["TMPDIR"]
st = os.stat(tmp)
open(os.path.join(tmp, "scratch"), "w").write("x")
json.dump({{"env": dict(os.environ), "cwd": os.getcwd(),
           "tmp_is_dir": stat.S_ISDIR(st.st_mode), "tmp_mode": stat.S_IMODE(st.st_mode)}},
          open(sys.argv[1] + ".part", "w"))
os.rename(sys.argv[1] + ".part", sys.argv[1])
{SERVER}"#
    );
    let spec = python(&dir, &script, &[report.to_str().unwrap()], 128);
    let port = free_port().unwrap();
    let mut process = Process::spawn(&spec, "hello-1", port, None).unwrap();
    let output = Output::drain(&mut process);
    assert_eq!(process.port(), port);
    assert_eq!(process.addr().to_string(), format!("127.0.0.1:{port}"));
    process
        .wait_ready(PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}; output: {}", output.text()));

    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let env: HashMap<String, String> = serde_json::from_value(seen["env"].clone()).unwrap();
    let expect = [
        ("TENCENTCLOUD_RUNENV", "SCF"),
        ("USER", "qcloud"),
        ("SCF_FUNCTIONNAME", "hello"),
        ("SCF_FUNCTIONVERSION", "$LATEST"),
        ("TENCENTCLOUD_REGION", "ap-guangzhou"),
        ("TENCENTCLOUD_APPID", "1250000000"),
        ("TENCENTCLOUD_UIN", "100000000001"),
        ("GREETING", "hi there"),
    ];
    for (key, value) in expect {
        assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(env["PORT"], port.to_string());
    assert_eq!(Path::new(&env["USER_CODE_ROOT"]), dir.as_path());
    assert_eq!(Path::new(seen["cwd"].as_str().unwrap()), dir.as_path());
    // The gateway's own environment is inherited.
    // (Version managers such as pyenv may prepend their own directories.)
    let path = std::env::var("PATH").unwrap();
    assert!(env["PATH"].ends_with(&path), "PATH {}", env["PATH"]);

    let tmpdir = PathBuf::from(&env["TMPDIR"]);
    assert_eq!(Some(tmpdir.as_path()), process.tmpdir());
    assert_eq!(seen["tmp_is_dir"], true);
    assert_eq!(seen["tmp_mode"], 0o700);
    let mode = std::fs::metadata(&tmpdir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(tmpdir.join("scratch").exists());

    let pid = process.pid() as i32;
    process.stop(Duration::from_secs(5)).await;
    assert!(
        !tmpdir.exists(),
        "TMPDIR {} was not removed",
        tmpdir.display()
    );
    assert!(gone(pid));
    // Stopped by SIGTERM (python's default action).
    assert_eq!(process.exit_now().unwrap().signal, Some(libc::SIGTERM));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_get_different_ports_and_become_ready() {
    let dir = workdir("ports");
    let spec = python(&dir, SERVER, &[], 128);
    let (a, b) = (free_port().unwrap(), free_port().unwrap());
    assert_ne!(a, b);
    let mut one = Process::spawn(&spec, "hello-1", a, None).unwrap();
    let mut two = Process::spawn(&spec, "hello-2", b, None).unwrap();
    let (_o1, _o2) = (Output::drain(&mut one), Output::drain(&mut two));
    let (r1, r2) = tokio::join!(one.wait_ready(PATIENCE), two.wait_ready(PATIENCE));
    r1.unwrap();
    r2.unwrap();
    // Both really listen, each on its own port.
    tokio::net::TcpStream::connect(one.addr()).await.unwrap();
    tokio::net::TcpStream::connect(two.addr()).await.unwrap();
    tokio::join!(
        one.stop(Duration::from_secs(5)),
        two.stop(Duration::from_secs(5))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_listens_times_out_and_is_killed_with_its_group() {
    let dir = workdir("never");
    // A shell with a child: the whole group must go.
    let spec = sh(&dir, "sleep 100 & sleep 100; :");
    let port = free_port().unwrap();
    let mut process = Process::spawn(&spec, "hello-1", port, None).unwrap();
    let _output = Output::drain(&mut process);
    let pid = process.pid() as i32;
    let tmpdir = process.tmpdir().unwrap().to_path_buf();
    let started = Instant::now();
    let err = process
        .wait_ready(Duration::from_secs(1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err.to_string(),
        format!(
            "The request timed out in 1000ms.Please confirm your http server have enabled \
             listening on port {port}."
        )
    );
    assert_eq!(
        err,
        StartError::NeverListened {
            waited_ms: 1000,
            port
        }
    );
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(gone(pid), "the instance process is still there");
    assert!(group_gone(pid), "processes of its group are still there");
    assert!(!tmpdir.exists());
    assert_eq!(process.exit_now().unwrap().signal, Some(libc::SIGKILL));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_exiting_at_start_fails_fast_with_its_status() {
    let dir = workdir("exit3");
    let spec = python(
        &dir,
        "import sys, time; time.sleep(0.05); sys.exit(3)",
        &[],
        128,
    );
    let mut process = Process::spawn(&spec, "hello-1", free_port().unwrap(), None).unwrap();
    let _output = Output::drain(&mut process);
    // Fails fast: with the exit, not after the (generous) ready timeout.
    let err = process.wait_ready(PATIENCE).await.unwrap_err();
    let exit = Exit {
        code: Some(3),
        signal: None,
        oom_killed: false,
        memory_mb: 128,
    };
    assert_eq!(err, StartError::Exited(exit));
    assert_eq!(
        err.to_string(),
        "The instance exited during start-up: it exited with status 3"
    );
    assert_eq!(process.exited().await, exit);
    // exited() is cheap and repeatable.
    assert_eq!(process.exited().await, exit);
    process.stop(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_is_a_spawn_error() {
    let dir = workdir("missing");
    let spec = spec(&dir, "scf-no-such-command-xyz", &[], 128);
    let err = Process::spawn(&spec, "hello-1", free_port().unwrap(), None).unwrap_err();
    if is_root() {
        // (Unprivileged, an unreadable directory in PATH turns it into EACCES.)
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
    let err = StartError::from(err);
    assert!(
        err.to_string()
            .starts_with("The instance could not be started: cannot run `scf-no-such-command-xyz`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn spawn_tree(dir: &Path, script: &str, members: usize) -> (Process, Output, Vec<i32>) {
    let spec = sh(dir, script);
    let mut process = Process::spawn(&spec, "tree-1", free_port().unwrap(), None).unwrap();
    let output = Output::drain(&mut process);
    let pid = process.pid() as i32;
    let all = wait_for("the tree to start", PATIENCE, async || {
        let m = group_members(pid);
        (m.len() > members).then_some(m)
    })
    .await;
    (process, output, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_terminates_the_whole_process_tree_and_leaves_no_zombies() {
    let dir = workdir("tree");
    // Two children and a grandchild whose parent exits at once (an orphan).
    let (process, _output, members) =
        spawn_tree(&dir, "sleep 1000 & sleep 1000 & (sleep 1000 &); wait", 3).await;
    // SIGTERM ends every member: stop returns without waiting out the (generous) grace
    // that would end with a SIGKILL.
    let started = Instant::now();
    process.stop(PATIENCE).await;
    assert!(started.elapsed() < PATIENCE, "the grace ran out");
    for pid in members {
        assert!(gone(pid), "process {pid} is left (or a zombie)");
    }
    assert!(group_gone(process.pid() as i32));
    assert_eq!(process.exit_now().unwrap().signal, Some(libc::SIGTERM));
    // Idempotent.
    process.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_tree_that_ignores_sigterm_after_the_grace_period() {
    let dir = workdir("stubborn");
    let (process, _output, members) = spawn_tree(
        &dir,
        "trap '' TERM; sleep 1000 & sleep 1000 & wait; wait",
        2,
    )
    .await;
    let started = Instant::now();
    process.stop(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    for pid in members {
        assert!(gone(pid), "process {pid} is left (or a zombie)");
    }
    assert_eq!(process.exit_now().unwrap().signal, Some(libc::SIGKILL));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_drop_end_the_instance_without_waiting() {
    let dir = workdir("kill");
    let (process, _output, members) = spawn_tree(&dir, "sleep 1000 & sleep 1000; :", 1).await;
    // Not async: it cannot wait for the exit.
    process.kill();
    let exit = common::within("the killed instance to exit", process.exited()).await;
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(!exit.oom_killed);
    assert_eq!(exit.to_string(), "was killed by signal 9 (SIGKILL)");
    process.stop(Duration::from_secs(1)).await;
    for pid in members {
        assert!(gone(pid));
    }

    // Dropping a running instance kills it; the supervisor still reaps and cleans up.
    let (process, _output, members) = spawn_tree(&dir, "sleep 1000 & sleep 1000; :", 1).await;
    let tmpdir = process.tmpdir().unwrap().to_path_buf();
    drop(process);
    wait_for("the dropped instance to go", PATIENCE, async || {
        (members.iter().all(|&p| gone(p)) && !tmpdir.exists()).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_and_its_children_are_in_a_limited_memory_cgroup() {
    let dir = workdir("cgroup");
    // One child leaves the process group (setsid): the cgroup still holds it.
    let (process, _output, _) = spawn_tree(&dir, "setsid sleep 1000 & sleep 1000 & wait", 1).await;
    if !cgroup_or_skip(&process, "cgroup membership") {
        process.stop(Duration::from_secs(1)).await;
        return;
    }
    let cgroup = process.cgroup().unwrap();
    let path = cgroup.path().to_path_buf();
    let limit = match cgroup.version() {
        Version::V1 => "memory.limit_in_bytes",
        Version::V2 => "memory.max",
    };
    let limit = std::fs::read_to_string(path.join(limit)).unwrap();
    assert_eq!(limit.trim(), (128u64 << 20).to_string());
    // The shell, its sleep, and the setsid one once it has left the group.
    let pid = process.pid() as i32;
    let (members, escaped) = wait_for(
        "one process of the cgroup to leave the group",
        PATIENCE,
        async || {
            let pids = cgroup.pids();
            let members = group_members(pid);
            let escaped: Vec<i32> = pids
                .iter()
                .copied()
                .filter(|p| !members.contains(p))
                .collect();
            (pids.len() == 3 && members.len() == 2 && escaped.len() == 1)
                .then_some((members, escaped))
        },
    )
    .await;
    process.stop(Duration::from_secs(2)).await;
    for pid in members.iter().chain(&escaped) {
        assert!(
            gone(*pid),
            "process {pid} is left (or a zombie): {:?}; members {members:?}, escaped {escaped:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    assert!(
        !path.exists(),
        "the cgroup {} was not removed",
        path.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_its_memory_limit_is_oom_killed() {
    let dir = workdir("oom");
    let script = "import time\ntime.sleep(0.2)\nb = b'x' * (200 << 20)\ntime.sleep(30)";
    let spec = python(&dir, script, &[], 64);
    let mut process = Process::spawn(&spec, "hog-1", free_port().unwrap(), None).unwrap();
    let _output = Output::drain(&mut process);
    if !cgroup_or_skip(&process, "out-of-memory kill") {
        process.stop(Duration::from_secs(1)).await;
        return;
    }
    let exit = common::within("the process to be killed", process.exited()).await;
    assert_eq!(
        exit,
        Exit {
            code: None,
            signal: Some(libc::SIGKILL),
            oom_killed: true,
            memory_mb: 64
        }
    );
    assert_eq!(
        exit.to_string(),
        "was killed for exceeding its memory limit of 64 MB"
    );
    let cgroup = process.cgroup().unwrap();
    assert!(cgroup.oom_kills() >= 1);
    let peak = cgroup.peak_bytes().unwrap();
    assert!(peak > 32 << 20 && peak <= 64 << 20, "peak {peak}");
    process.stop(Duration::from_secs(1)).await;
    // After removal the last values are still answered.
    assert!(cgroup.oom_kills() >= 1);
    assert_eq!(cgroup.peak_bytes(), Some(peak));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peak_memory_is_measured_and_can_be_reset() {
    let dir = workdir("peak");
    let marker = dir.join("allocated");
    let script = r#"
import sys, time
b = b'x' * (40 << 20)
del b
open(sys.argv[1], "w").write("done")
time.sleep(30)
"#;
    let spec = python(&dir, script, &[marker.to_str().unwrap()], 128);
    let mut process = Process::spawn(&spec, "peak-1", free_port().unwrap(), None).unwrap();
    let _output = Output::drain(&mut process);
    if !cgroup_or_skip(&process, "peak memory") {
        process.stop(Duration::from_secs(1)).await;
        return;
    }
    wait_for("the allocation", PATIENCE, async || {
        marker.exists().then_some(())
    })
    .await;
    let cgroup = process.cgroup().unwrap();
    let peak = cgroup.peak_bytes().unwrap();
    assert!(peak >= 40 << 20, "peak {peak}");
    assert!(peak < 128 << 20, "peak {peak}");
    // A new invocation starts a new measurement (where the kernel allows a reset).
    cgroup.reset_peak();
    let after = cgroup.peak_bytes().unwrap();
    let current = cgroup.current_bytes().unwrap();
    assert!(current > 0);
    if cgroup.version() == Version::V1 {
        assert!(after > 0 && after < 30 << 20, "peak after reset {after}");
    }
    process.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
