//! DNS discovery end to end: the gateway binary follows a host name served by a real
//! DNS server on loopback (`dnsmasq`, its hosts file rewritten and reloaded with
//! SIGHUP), over backends on 127.0.0.1, 127.0.0.2 and 127.0.0.3 on one port.
//! Invocations go to exactly the addresses the name has; an address that leaves
//! finishes what it has in flight; a nameserver that stops answering changes nothing
//! but a warning. Without dnsmasq the test says so and passes, except under CI (`CI`
//! set), where it fails.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;

const PATIENCE: Duration = Duration::from_secs(15);

fn dnsmasq_installed() -> bool {
    let found = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .or_else(|_| {
            Command::new("/usr/sbin/dnsmasq")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
        });
    if matches!(found, Ok(s) if s.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "dnsmasq is not installed (Debian: dnsmasq-base), and CI needs this test"
    );
    eprintln!("skipped: dnsmasq is not installed (Debian: dnsmasq-base)");
    false
}

/// A dnsmasq answering for `*.test` from one hosts file, on 127.0.0.1:`port`.
struct Dns {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    dir: PathBuf,
}

impl Dns {
    async fn start(dir: &Path, port: u16, ips: &[&str]) -> Dns {
        let mut dns = Dns {
            child: None,
            port,
            hosts: dir.join("hosts"),
            dir: dir.to_path_buf(),
        };
        dns.set(ips);
        dns.spawn().await;
        dns
    }

    /// Starts dnsmasq and waits until it answers (a SIGHUP before it handles the
    /// signal would end it).
    async fn spawn(&mut self) {
        let program = if Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let child = Command::new(program)
            .arg("--keep-in-foreground")
            .arg(format!("--port={}", self.port))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            // Only the hosts file: no upstream servers, not /etc/hosts, no config file;
            // authoritative for `test`, so an unknown name is NXDOMAIN, not REFUSED.
            .args(["--no-resolv", "--no-hosts", "--conf-file=/dev/null"])
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .args(["--local=/test/", "--local-ttl=0", "--log-facility=-"])
            .arg(format!(
                "--pid-file={}",
                self.dir.join("dnsmasq.pid").display()
            ))
            // As root it would switch to a user who may not read the hosts file here.
            .arg("--user=root")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until("dnsmasq to answer", PATIENCE, async || answers(addr).await).await;
    }

    /// Makes `svc.test` resolve to `ips`, and has dnsmasq read it again.
    fn set(&self, ips: &[&str]) {
        let text: String = ips.iter().map(|ip| format!("{ip} svc.test\n")).collect();
        let tmp = self.dir.join("hosts.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        if let Some(child) = &self.child {
            signal(child.id(), "HUP");
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A query for `svc.test` (A) to `addr` gets an answer within 100 ms.
async fn answers(addr: SocketAddr) -> bool {
    let query: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03svc\x04test\x00\x00\x01\x00\x01";
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    if socket.send_to(query, addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await,
        Ok(Ok(n)) if n >= 12 && buf[..2] == query[..2]
    )
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A port free on 127.0.0.1 for both UDP and TCP, as dnsmasq binds both.
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Three backends on one port, at 127.0.0.1, .2 and .3.
async fn backends() -> Vec<FakeInstance> {
    loop {
        let first = FakeInstance::start().await;
        let port = first.addr.port();
        let mut all = vec![first];
        for ip in ["127.0.0.2", "127.0.0.3"] {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            if std::net::TcpListener::bind(addr).is_err() {
                break;
            }
            all.push(FakeInstance::start_on(addr).await);
        }
        if all.len() == 3 {
            return all;
        }
    }
}

fn counts(backends: &[FakeInstance]) -> Vec<usize> {
    backends.iter().map(|b| b.record.count()).collect()
}

fn logged(gw: &GatewayProcess, text: &str) -> bool {
    gw.logs.lock().iter().any(|l| l.contains(text))
}

/// Invokes `n` times, each answered 200; returns how many each backend got meanwhile.
async fn spread(gw: &GatewayProcess, backends: &[FakeInstance], n: usize) -> Vec<usize> {
    let before = counts(backends);
    for _ in 0..n {
        let answer = invoke(gw.listen, "svc", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    counts(backends)
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect()
}

/// Invokes until backend `i` has received an invocation.
async fn until_reached(gw: &GatewayProcess, backends: &[FakeInstance], i: usize, what: &str) {
    wait_until(what, PATIENCE, async || {
        let _ = invoke(gw.listen, "svc", &[], "{}").await;
        backends[i].record.count() > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_follow_the_addresses_of_a_host_name() {
    if !dnsmasq_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("scf-gw-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = backends().await;
    let port = b[0].addr.port();
    let mut dns = Dns::start(&dir, free_dns_port(), &["127.0.0.1", "127.0.0.2"]).await;

    let gw = GatewayProcess::start(
        "discovery",
        "",
        &format!(
            "[discovery]\ninterval = \"200ms\"\nnameserver = \"127.0.0.1:{}\"\n\
             [[functions]]\nname = \"svc\"\ninstance_concurrency = 4\n\
             instances = [\"svc.test:{port}\"]\n",
            dns.port
        ),
    );

    // Exactly the two addresses of the name.
    until_reached(&gw, &b, 0, "127.0.0.1 to be invoked").await;
    until_reached(&gw, &b, 1, "127.0.0.2 to be invoked").await;
    let got = spread(&gw, &b, 20).await;
    assert_eq!(got[2], 0, "127.0.0.3 is not behind the name: {got:?}");
    assert_eq!(
        b[2].record
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // A new address joins warm: connected before any invocation needs it.
    dns.set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    wait_until("a warm connection to 127.0.0.3", PATIENCE, async || {
        b[2].record
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    })
    .await;
    assert_eq!(b[2].record.count(), 0);
    until_reached(&gw, &b, 2, "127.0.0.3 to be invoked").await;

    // An address that leaves takes no new invocation and finishes the one it holds.
    let mut held = Vec::new();
    for _ in 0..3 {
        let listen = gw.listen;
        held.push(tokio::spawn(async move {
            invoke(listen, "svc", &[("x-test-hold", "1")], "{}").await
        }));
        let n = held.len();
        wait_until("the held invocation to arrive", PATIENCE, async || {
            b.iter().map(|b| b.record.inflight()).sum::<usize>() == n
        })
        .await;
    }
    assert_eq!(
        b.iter().map(|b| b.record.inflight()).collect::<Vec<_>>(),
        [1, 1, 1],
        "one held invocation per instance (least loaded first)"
    );
    dns.set(&["127.0.0.1", "127.0.0.3"]);
    wait_until("127.0.0.2 to leave", PATIENCE, async || {
        logged(&gw, "instance left")
    })
    .await;
    let got = spread(&gw, &b, 20).await;
    assert_eq!(got[1], 0, "127.0.0.2 left the name: {got:?}");
    for backend in &b {
        backend.record.release(1);
    }
    for h in held {
        let answer = within("a held invocation", h).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }

    // The nameserver stops answering: the last set keeps serving, with a warning.
    let since = gw.logs.lock().len();
    let failures = || {
        gw.logs.lock()[since..]
            .iter()
            .filter(|l| l.contains("DNS lookup failed"))
            .count()
    };
    dns.stop();
    wait_until("the failed lookup to be logged", PATIENCE, async || {
        failures() > 0
    })
    .await;
    let got = spread(&gw, &b, 20).await;
    assert_eq!(got[1], 0, "{got:?}");
    assert!(got[0] > 0 && got[2] > 0, "the last set serves: {got:?}");
    assert_eq!(failures(), 1, "logged once, not every interval");

    // Back, with another set: followed again.
    dns.set(&["127.0.0.2"]);
    dns.spawn().await;
    wait_until("lookups to answer again", PATIENCE, async || {
        logged(&gw, "DNS lookups answer again")
    })
    .await;
    wait_until(
        "127.0.0.2 alone to be behind the name",
        PATIENCE,
        async || {
            let before = counts(&b);
            for _ in 0..5 {
                let _ = invoke(gw.listen, "svc", &[], "{}").await;
            }
            let after = counts(&b);
            after[1] - before[1] == 5
        },
    )
    .await;

    // No address at all (NXDOMAIN): the pool empties and says why.
    dns.set(&[]);
    wait_until("the pool to empty", PATIENCE, async || {
        let answer = invoke(gw.listen, "svc", &[], "{}").await;
        answer.status == StatusCode::BAD_GATEWAY
            && answer.error_message().contains("resolve to no address")
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scf_gateway_instances{function=\"svc\",state=\"ready\"}"
        ),
        Some(0.0),
        "{metrics}"
    );

    drop(gw);
    dns.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
