//! Test support for the Redis store: a real `redis-server` of its own on a free
//! loopback port, without persistence, killed when dropped; it can be stopped and
//! started again on the same port to play an outage.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// The server's path, when installed (Debian: `redis-server`).
pub fn redis_server() -> Option<&'static str> {
    [
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
    ]
    .into_iter()
    .find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether a Redis test can run: redis-server is installed, or we are outside CI (the
/// test then skips with a message). In CI a missing server fails the test.
pub fn available() -> bool {
    if redis_server().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed (Debian: redis-server), and CI needs this test"
    );
    eprintln!("skipped: redis-server is not installed (Debian: redis-server)");
    false
}

/// A `redis-server` on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = RedisServer { child: None, port };
        server.start_again().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on its port, empty, and waits until it answers.
    pub async fn start_again(&mut self) {
        self.stop();
        let program = redis_server().expect("redis-server is installed");
        let child = Command::new(program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not accept connections within 20 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
