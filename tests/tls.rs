//! TLS on `server.listen`: a test CA and server certificates made here (rcgen), HTTP/1.1
//! and HTTP/2 through curl and a rustls client, ALPN, the handshake timeout, and the
//! certificate swapped by a reload.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use scf_gateway::config::TlsConfig;
use scf_gateway::server::TlsError;
use scf_gateway::RunningGateway;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A test CA in a directory of its own, issuing server certificates for `localhost` and
/// `127.0.0.1`.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("scf-gw-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "scf-gateway test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A new server certificate and key, written to `cert.pem` and `key.pem` (replacing
    /// what was there); returns the certificate.
    fn issue(&self) -> CertificateDer<'static> {
        let (cert, key) = self.make();
        std::fs::write(self.dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(self.dir.join("key.pem"), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn make(&self) -> (rcgen::Certificate, KeyPair) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.ca).unwrap(), key)
    }

    fn tls_config(&self, handshake_timeout: Duration) -> TlsConfig {
        TlsConfig {
            cert: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
            handshake_timeout,
        }
    }

    /// A rustls client trusting this CA, offering `alpn`.
    fn connector(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        #[allow(deprecated)] // the gateway's provider: ring
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A gateway on TLS with an event function `hello` and a web function under `/web`,
/// both on `instance`.
async fn tls_gateway(pki: &Pki, instance: SocketAddr, handshake_timeout: &str) -> RunningGateway {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [server.tls]\ncert = \"{}\"\nkey = \"{}\"\nhandshake_timeout = \"{handshake_timeout}\"\n\
         [[functions]]\nname = \"hello\"\ninstances = [\"{instance}\"]\n\
         [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{instance}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n",
        pki.dir.join("cert.pem").display(),
        pki.dir.join("key.pem").display(),
    );
    RunningGateway::start(&config(&text)).await.unwrap()
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    certs[0].clone().into_owned()
}

/// One HTTP/1.1 GET over an established TLS stream; the status.
async fn get_http1(stream: TlsStream<TcpStream>, path: &str) -> http::StatusCode {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("a response over TLS", sender.send_request(req))
        .await
        .unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

/// curl against the gateway: `(status, HTTP version)`.
async fn curl(pki: &Pki, addr: SocketAddr, version: &str, args: &[&str]) -> (String, String) {
    let url_path = args.last().unwrap();
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            version,
        ])
        .arg("--cacert")
        .arg(pki.ca_file())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .args(&args[..args.len() - 1])
        .arg(format!("https://localhost:{}{url_path}", addr.port()))
        .output();
    let output = within("curl", output).await.unwrap();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).unwrap();
    let (status, version) = out.split_once(' ').unwrap();
    (status.to_string(), version.to_string())
}

#[tokio::test]
async fn curl_reaches_functions_over_http1_and_h2_and_web_functions_see_https() {
    let pki = Pki::new("curl");
    pki.issue();
    let instance = FakeInstance::start().await;
    let gw = tls_gateway(&pki, instance.addr, "10s").await;
    let addr = gw.listen_addr();
    for version in ["--http1.1", "--http2"] {
        let expected = if version == "--http2" { "2" } else { "1.1" };
        let event = ["-X", "POST", "-d", "{}", "/v1/functions/hello/invocations"];
        assert_eq!(
            curl(&pki, addr, version, &event).await,
            ("200".into(), expected.into())
        );
        let before = instance.record.count();
        assert_eq!(
            curl(&pki, addr, version, &["/web/page"]).await,
            ("200".into(), expected.into())
        );
        let seen = instance.record.seen();
        let web = &seen[before];
        assert_eq!(web.path, "/web/page");
        assert_eq!(web.headers["x-forwarded-proto"], "https", "{version}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn alpn_chooses_h2_or_http1_and_tls_1_2_and_1_3_both_work() {
    let pki = Pki::new("alpn");
    pki.issue();
    let instance = FakeInstance::start().await;
    let gw = tls_gateway(&pki, instance.addr, "10s").await;
    let addr = gw.listen_addr();

    let both = pki.connector(&[b"h2", b"http/1.1"], BOTH);
    let stream = connect(&both, addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // An HTTP/2 exchange on it.
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://localhost:{}/web/h2", addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("an HTTP/2 response", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);

    let http1 = pki.connector(&[b"http/1.1"], BOTH);
    let stream = connect(&http1, addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_http1(stream, "/web/h1").await, 200);

    // No ALPN at all: HTTP/1.1, here over TLS 1.2.
    let none = pki.connector(&[], &[&rustls::version::TLS12]);
    let stream = connect(&none, addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get_http1(stream, "/web/plain").await, 200);

    // A client that does not trust the certificate gets no connection.
    let strangers = Pki::new("alpn-strangers");
    assert!(connect(&strangers.connector(&[], BOTH), addr)
        .await
        .is_err());
    gw.shutdown().await;
}

/// Reads until the gateway closes the connection; how long that took.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    within("the gateway to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn a_handshake_not_finished_within_handshake_timeout_is_closed() {
    let pki = Pki::new("handshake");
    pki.issue();
    let instance = FakeInstance::start().await;
    let gw = tls_gateway(&pki, instance.addr, "300ms").await;
    let timeout = Duration::from_millis(300);

    // Silent after connecting.
    let mut silent = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let waited = closed_after(&mut silent).await;
    assert!(
        waited >= timeout - Duration::from_millis(20),
        "closed after {waited:?}"
    );

    // Half a ClientHello, then nothing: the deadline still counts from the connect.
    let mut half = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let start = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_after(&mut half).await;
    assert!(start.elapsed() >= timeout - Duration::from_millis(20));

    // A client that completes its handshake in time is served.
    let stream = connect(&pki.connector(&[], BOTH), gw.listen_addr())
        .await
        .unwrap();
    assert_eq!(get_http1(stream, "/web/late").await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_a_bad_pair_changes_nothing() {
    let pki = Pki::new("reload");
    let first = pki.issue();
    let instance = FakeInstance::start().await;
    let gw = tls_gateway(&pki, instance.addr, "10s").await;
    let addr = gw.listen_addr();
    let tls = gw.tls().expect("a TLS listener has a handle");
    let connector = pki.connector(&[b"http/1.1"], BOTH);

    let old = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&old), first);

    // Swapped on disk: nothing changes until the reload.
    let second = pki.issue();
    assert_ne!(first, second);
    let before = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&before), first);
    tls.reload(&pki.tls_config(Duration::from_secs(10)))
        .unwrap();
    let after = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&after), second);
    // Connections made before keep theirs, and are still served.
    assert_eq!(get_http1(old, "/web/old").await, 200);
    assert_eq!(get_http1(after, "/web/new").await, 200);

    // A certificate whose key is not the one beside it: refused, the second stays.
    let (third, _) = pki.make();
    std::fs::write(pki.dir.join("cert.pem"), third.pem()).unwrap();
    let e = tls
        .reload(&pki.tls_config(Duration::from_secs(10)))
        .unwrap_err();
    assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("does not match the certificate"),
        "{e}"
    );
    // A key file that went missing: refused as well, naming the file.
    let gone = TlsConfig {
        key: pki.dir.join("missing-key.pem"),
        ..pki.tls_config(Duration::from_secs(10))
    };
    let e = tls.reload(&gone).unwrap_err();
    assert!(matches!(e, TlsError::ReadKey { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&display(&pki.dir.join("missing-key.pem"))),
        "{e}"
    );
    let still = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&still), second);
    assert_eq!(get_http1(still, "/web/still").await, 200);
    gw.shutdown().await;
}

/// The way an operator reloads (`SIGHUP`, `POST /admin/reload`): the config file is read
/// again, and with it the certificate; a pair that no longer matches refuses the reload.
#[tokio::test]
async fn a_config_reload_rereads_the_certificate_and_a_bad_pair_refuses_it() {
    let pki = Pki::new("config-reload");
    let first = pki.issue();
    let instance = FakeInstance::start().await;
    let path = pki.dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
             [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n",
            instance.addr
        ),
    )
    .unwrap();
    let config = scf_gateway::Config::load(&path).unwrap();
    let gw = RunningGateway::start(&config).await.unwrap();
    let addr = gw.listen_addr();
    let connector = pki.connector(&[b"http/1.1"], BOTH);
    assert_eq!(
        peer_certificate(&connect(&connector, addr).await.unwrap()),
        first
    );

    let second = pki.issue();
    gw.reload().await.unwrap();
    let after = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&after), second);
    assert_eq!(get_http1(after, "/web/new").await, 200);

    let (third, _) = pki.make();
    std::fs::write(pki.dir.join("cert.pem"), third.pem()).unwrap();
    let errors = gw.reload().await.unwrap_err().to_string();
    assert!(
        errors.starts_with("error: ") && errors.contains("gateway.toml:"),
        "{errors}"
    );
    assert!(
        errors.contains("does not match the certificate"),
        "{errors}"
    );
    let still = connect(&connector, addr).await.unwrap();
    assert_eq!(peer_certificate(&still), second);
    assert_eq!(get_http1(still, "/web/still").await, 200);
    gw.shutdown().await;
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn a_quiet_http1_connection_over_tls_serves_again_and_closes_when_idle() {
    let pki = Pki::new("idle");
    pki.issue();
    let instance = FakeInstance::start().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         header_read_timeout = \"400ms\"\nclient_idle_timeout = \"1s\"\n\
         [server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n",
        pki.dir.join("cert.pem").display(),
        pki.dir.join("key.pem").display(),
        instance.addr,
    );
    let gw = RunningGateway::start(&config(&text)).await.unwrap();
    let stream = connect(&pki.connector(&[b"http/1.1"], BOTH), gw.listen_addr())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for path in ["/web/1", "/web/2"] {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("a response", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
        // Quiet for several of the connection's ticks (50 ms here): parked between.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then idle past `client_idle_timeout`: the gateway closes it.
    let start = Instant::now();
    let _ = within("the idle connection to close", conn).await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_plain_listener_has_no_tls_handle() {
    let instance = FakeInstance::start().await;
    let gw = gateway(&format!(
        "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n",
        instance.addr
    ))
    .await;
    assert!(gw.tls().is_none());
    gw.shutdown().await;
}

#[test]
fn check_names_tls_and_reads_paths_beside_the_config() {
    let pki = Pki::new("check");
    pki.issue();
    let path = pki.dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listeners: invocations on 127.0.0.1:8080 (TLS), admin on"),
        "{stdout}"
    );

    // A key that is not the certificate's: exit 2, the error at the key's position.
    let (other, other_key) = pki.make();
    drop(other);
    std::fs::write(pki.dir.join("other-key.pem"), other_key.serialize_pem()).unwrap();
    std::fs::write(
        &path,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"other-key.pem\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scf-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "error: {}:3:7: server.tls.key: the private key in",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    let key = other_key.serialize_pem();
    let body = key.lines().nth(1).unwrap();
    assert!(!stderr.contains(body), "the key in the error: {stderr}");
}
