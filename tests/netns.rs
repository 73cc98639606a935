//! Network namespaces of isolated instances against the real kernel: instances on the
//! same port in two namespaces, reached at their addresses and not on the host's
//! loopback; removal that leaves nothing; leftovers swept and held slots never.
//!
//! Root only: without root each test says so and returns. The instances are the example
//! function (`cargo build --example function`). Everything a test builds is removed by
//! guards, also when the test fails.

mod common;

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{example_function, is_root, wait_until};
use scf_gateway::instance::netns::{sweep_stale, Netns, SLOTS, SLOTS_DIR};
use scf_gateway::sys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(20);

fn skipped() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: network namespaces need root");
    true
}

/// The example function on port 9000 inside `netns`, killed and reaped on drop.
struct Instance(Child);

impl Instance {
    fn start(netns: &Netns, marker: &str) -> Instance {
        let mut command = Command::new(example_function());
        command
            .args(["--port", "9000"])
            .env("NETNS_TEST_MARKER", marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        sys::join_netns_at_exec(&mut command, netns.open().expect("open the namespace"));
        Instance(command.spawn().expect("start the example function"))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment the instance at `addr` reports (`x-test-echo-env`), if it answers.
async fn environment(addr: SocketAddr) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nhost: instance\r\nx-test-echo-env: 1\r\n\
                  connection: close\r\n\r\n",
            )
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

fn at_9000(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, 9000))
}

async fn wait_answering(netns: &Netns, marker: &str) {
    let addr = at_9000(netns.instance_addr());
    wait_until(&format!("the instance at {addr}"), PATIENCE, async || {
        environment(addr)
            .await
            .is_some_and(|env| env.contains(marker))
    })
    .await;
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn netns_listed(name: &str) -> bool {
    ip(&["netns", "list"])
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn link_listed(name: &str) -> bool {
    ip(&["-o", "link"]).lines().any(|line| {
        line.split_whitespace()
            .nth(1)
            .map(|n| n.trim_end_matches(':'))
            .is_some_and(|n| n == name || n.split('@').next() == Some(name))
    })
}

/// Locks slot `n` the way the gateway does; `None` if someone holds it.
fn lock_slot(n: u32) -> Option<File> {
    std::fs::create_dir_all(SLOTS_DIR).expect("create the slot directory");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(Path::new(SLOTS_DIR).join(n.to_string()))
        .expect("open a slot lock");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .ok()
        .map(|()| file)
}

/// A free slot with nothing of it on the host, locked.
fn free_slot() -> (u32, File) {
    let start = fastrand::u32(..SLOTS);
    (0..SLOTS)
        .map(|i| (start + i) % SLOTS)
        .find_map(|n| {
            let free = !Path::new(&format!("/run/netns/scfgw-{n}")).exists()
                && !Path::new(&format!("/sys/class/net/scfgw{n}")).exists();
            free.then(|| lock_slot(n).map(|lock| (n, lock))).flatten()
        })
        .expect("a free slot")
}

/// A namespace and link made by hand for slot `n`, as a killed gateway leaves them.
/// Removed on drop unless someone else holds the slot by then (it is theirs).
struct HandMade(u32);

impl HandMade {
    fn build(n: u32) -> HandMade {
        let made = HandMade(n);
        let (netns, link) = (format!("scfgw-{n}"), format!("scfgw{n}"));
        let status = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip netns add {netns}");
        let status = Command::new("ip")
            .args(["link", "add", &link, "type", "veth", "peer"])
            .args(["name", "eth0", "netns", &netns])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link add {link}");
        made
    }
}

impl Drop for HandMade {
    fn drop(&mut self) {
        if lock_slot(self.0).is_some() {
            let n = self.0;
            let _ = Command::new("ip")
                .args(["link", "del", &format!("scfgw{n}")])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("scfgw-{n}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn an_instance_listens_on_9000_in_its_namespace_not_on_the_host() {
    if skipped() {
        return;
    }
    let netns = Netns::create().await.expect("create a namespace");
    let n = netns.slot();
    assert!(n < SLOTS);
    assert_eq!(netns.name(), format!("scfgw-{n}"));
    assert_eq!(netns.link(), format!("scfgw{n}"));
    assert_eq!(netns.path(), Path::new("/run/netns").join(netns.name()));
    let host = u32::from(netns.host_addr());
    assert_eq!(host, u32::from(Ipv4Addr::new(169, 254, 128, 0)) + 4 * n + 1);
    assert_eq!(u32::from(netns.instance_addr()), host + 1);
    assert!(netns_listed(netns.name()) && link_listed(netns.link()));

    let marker = format!("isolated-{n}-{}", std::process::id());
    let _instance = Instance::start(&netns, &marker);
    wait_answering(&netns, &marker).await;

    // Whatever may listen on the host's 9000, it is not this instance.
    if let Some(answer) = environment("127.0.0.1:9000".parse().unwrap()).await {
        assert!(
            !answer.contains(&marker),
            "the instance answered on the host"
        );
    }

    // Nothing but the link itself is routed from inside, and the host forwards nothing
    // that arrives from it.
    let routes = ip(&["-n", netns.name(), "-o", "route", "show", "table", "all"]);
    assert!(!routes.contains("default"), "a default route: {routes}");
    let forwarding = std::fs::read_to_string(format!(
        "/proc/sys/net/ipv4/conf/{}/forwarding",
        netns.link()
    ))
    .unwrap();
    assert_eq!(forwarding.trim(), "0");
    let lo = ip(&["-n", netns.name(), "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is up: {lo}");
}

#[tokio::test]
async fn two_namespaces_each_have_their_own_port_9000() {
    if skipped() {
        return;
    }
    let first = Netns::create().await.expect("create a namespace");
    let second = Netns::create().await.expect("create a second namespace");
    assert_ne!(first.slot(), second.slot());
    let pid = std::process::id();
    let (one, two) = (format!("first-{pid}"), format!("second-{pid}"));
    let _first_instance = Instance::start(&first, &one);
    let _second_instance = Instance::start(&second, &two);
    wait_answering(&first, &one).await;
    wait_answering(&second, &two).await;
    let again = environment(at_9000(first.instance_addr())).await.unwrap();
    assert!(again.contains(&one) && !again.contains(&two));
}

#[tokio::test]
async fn remove_leaves_no_namespace_and_no_link() {
    if skipped() {
        return;
    }
    let mut netns = Netns::create().await.expect("create a namespace");
    let (name, link) = (netns.name().to_owned(), netns.link().to_owned());
    {
        let marker = format!("removed-{}", std::process::id());
        let _instance = Instance::start(&netns, &marker);
        wait_answering(&netns, &marker).await;
    }
    netns.remove().await;
    assert!(!netns_listed(&name), "{name} is still in `ip netns list`");
    assert!(!link_listed(&link), "{link} is still in `ip -o link`");
    assert!(!netns.path().exists());
    netns.remove().await;

    // Dropped without `remove`: removed all the same.
    let dropped = Netns::create().await.expect("create a namespace");
    let (name, link) = (dropped.name().to_owned(), dropped.link().to_owned());
    drop(dropped);
    assert!(!netns_listed(&name) && !link_listed(&link));
}

#[tokio::test]
async fn leftovers_of_free_slots_are_swept_and_held_slots_never() {
    if skipped() {
        return;
    }
    // A slot of our own, with what a killed gateway would leave in it.
    let (n, lock) = free_slot();
    let _leftover = HandMade::build(n);
    let (name, link) = (format!("scfgw-{n}"), format!("scfgw{n}"));

    // A namespace in use, with its instance answering.
    let held = Netns::create().await.expect("create a namespace");
    let marker = format!("held-{}", std::process::id());
    let _instance = Instance::start(&held, &marker);
    wait_answering(&held, &marker).await;

    sweep_stale("runc").await;
    assert!(
        netns_listed(&name) && link_listed(&link),
        "a held slot was swept"
    );
    assert!(netns_listed(held.name()) && link_listed(held.link()));
    assert!(environment(at_9000(held.instance_addr()))
        .await
        .is_some_and(|env| env.contains(&marker)));

    drop(lock);
    let swept = sweep_stale("runc").await;
    // Another gateway may take the slot meanwhile (and clear it itself): then it is not
    // a leftover any more.
    if lock_slot(n).is_some() {
        assert!(swept >= 1);
        assert!(!netns_listed(&name), "{name} was not swept");
        assert!(!link_listed(&link), "{link} was not swept");
    }
    assert!(netns_listed(held.name()) && link_listed(held.link()));

    // Without the runtime, containers are skipped quietly.
    sweep_stale("/nonexistent/runc").await;
}

#[tokio::test]
async fn setup_and_teardown_cost() {
    if skipped() {
        return;
    }
    const ROUNDS: u32 = 10;
    let (mut setup, mut teardown) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let began = Instant::now();
        let mut netns = Netns::create().await.expect("create a namespace");
        setup += began.elapsed();
        let began = Instant::now();
        netns.remove().await;
        teardown += began.elapsed();
    }
    eprintln!(
        "network namespace: setup {:?}, teardown {:?} (mean of {ROUNDS})",
        setup / ROUNDS,
        teardown / ROUNDS
    );
}

/// A container in the `created` state (its init waiting, nothing run) with an empty
/// bundle of its own, as a killed gateway leaves one; deleted on drop.
struct Container {
    id: String,
    bundle: std::path::PathBuf,
}

impl Container {
    /// `None` when runc is not installed.
    fn create(id: String) -> Option<Container> {
        let bundle = std::env::temp_dir().join(format!("{id}.bundle"));
        let container = Container { id, bundle };
        std::fs::create_dir_all(container.bundle.join("rootfs")).unwrap();
        // runc checks at create that the process's program exists; it never runs.
        std::fs::write(container.bundle.join("rootfs/probe"), b"").unwrap();
        std::fs::set_permissions(
            container.bundle.join("rootfs/probe"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        match Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&container.bundle)
            .status()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            status => assert!(status.unwrap().success(), "runc spec"),
        }
        let config = container.bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/probe"]);
        std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
        // The container's init keeps runc's stdio open: to a file, not a pipe.
        let log = container.bundle.join("create.log");
        let status = Command::new("runc")
            .args(["create", "--bundle"])
            .arg(&container.bundle)
            .arg(&container.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "runc create: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(container)
    }
}

fn containers() -> Vec<String> {
    let output = Command::new("runc").args(["list", "-q"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

#[tokio::test]
async fn a_leftover_container_of_a_free_slot_is_swept() {
    if skipped() {
        return;
    }
    let (n, lock) = free_slot();
    let id = format!("scfgw-{n}-netns-test-{}", std::process::id());
    let Some(_container) = Container::create(id.clone()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "runc is not installed (Debian: runc), and CI needs this test"
        );
        eprintln!("skipped: runc is not installed");
        return;
    };
    assert!(containers().contains(&id));

    sweep_stale("runc").await;
    assert!(
        containers().contains(&id),
        "the container of a held slot was swept"
    );

    drop(lock);
    // Another sweeper (a test beside this one) may hold the slot's lock while it deletes
    // the container itself: this sweep then skips the slot. Either way it must go.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        sweep_stale("runc").await;
        if !containers().contains(&id) {
            break;
        }
        assert!(Instant::now() < deadline, "{id} was not swept");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
