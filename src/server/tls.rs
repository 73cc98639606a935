//! TLS on `server.listen` (`[server.tls]`): rustls with the ring provider, TLS 1.2 and
//! 1.3, ALPN `h2` and `http/1.1`.
//!
//! The handshake runs in the connection's own task, never in the accept loop, so a slow
//! or silent client holds only its own task (and its place under `max_connections`),
//! for at most `handshake_timeout` from accept. After it, the connection is served like
//! a plain one: HTTP/2 when ALPN chose `h2`, HTTP/1.1 otherwise (the choice is the
//! client's ALPN, not a peek at its first bytes), with the same client timers, and
//! HTTP/1.1 connections parked when quiet (the TLS session stays, hyper's state goes).
//!
//! The certificate is held by a resolver whose [`CertifiedKey`] is swapped atomically:
//! [`TlsHandle::reload`] re-reads the files and, if the pair is good, every handshake
//! from then on presents the new certificate while open connections keep theirs; a bad
//! pair leaves the old one in place and says why. The handshake path takes no lock.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::activity::Activity;
use super::connection::ClientTimers;
use super::drain::Open;
use super::http2::serve_http2;
use super::parking::{serve_http1, wait_readable, ClientStream, Wake};
use crate::body::GatewayBody;
use crate::config::TlsConfig;

/// The ALPN protocols offered, in the server's order of preference.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Which of the two files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// Why a certificate and key cannot be served. Messages name the files, never their
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file \"{}\": {source}", path.display())]
    ReadCert { path: PathBuf, source: io::Error },
    #[error("cannot read the key file \"{}\": {source}", path.display())]
    ReadKey { path: PathBuf, source: io::Error },
    #[error("no PEM certificate in \"{}\"", path.display())]
    NoCertificate { path: PathBuf },
    #[error("\"{}\" holds a PEM section that cannot be decoded: {reason}", path.display())]
    BadCertificatePem { path: PathBuf, reason: String },
    #[error("the certificate in \"{}\" cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    /// The reason is not given: a PEM decoder's message could quote the key's text.
    #[error(
        "no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in \"{}\"",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the private key in \"{}\" cannot be used: {reason}", path.display())]
    UnusableKey { path: PathBuf, reason: String },
    #[error(
        "the private key in \"{}\" does not match the certificate in \"{}\"",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

impl TlsError {
    /// The file to blame: where a config error points.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::ReadCert { .. }
            | TlsError::NoCertificate { .. }
            | TlsError::BadCertificatePem { .. }
            | TlsError::BadCertificate { .. }
            | TlsError::Setup(_) => TlsFile::Cert,
            TlsError::ReadKey { .. }
            | TlsError::NoKey { .. }
            | TlsError::UnusableKey { .. }
            | TlsError::Mismatch { .. } => TlsFile::Key,
        }
    }
}

/// ring: classical key exchange only (X25519, P-256, P-384); rustls marks it deprecated
/// for that, its post-quantum group being aws-lc-rs's, which would bring cmake and a C
/// library into the build (docs/adr/0009-rustls-with-ring.md).
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads a PEM certificate chain and private key and checks that they make a pair.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::ReadCert {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificatePem {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = std::fs::read(key).map_err(|source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: key.to_path_buf(),
    })?;
    let signing =
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| TlsError::UnusableKey {
                path: key.to_path_buf(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type whose public half the provider cannot tell: nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// The certificate presented to every new handshake, swapped by [`TlsHandle::reload`].
struct CurrentKey(ArcSwap<CertifiedKey>);

impl fmt::Debug for CurrentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentKey")
    }
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS on the invocation listener: the acceptor every worker uses, and the way to swap
/// its certificate. Cheap to clone (one `Arc`); every clone sees a reload.
#[derive(Clone)]
pub struct TlsHandle {
    inner: Arc<Inner>,
}

struct Inner {
    acceptor: TlsAcceptor,
    current: Arc<CurrentKey>,
    /// `handshake_timeout` in milliseconds: changed by a reload too.
    handshake_timeout_ms: AtomicU64,
}

impl fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHandle")
            .field("handshake_timeout", &self.handshake_timeout())
            .finish_non_exhaustive()
    }
}

impl TlsHandle {
    /// Reads the certificate and key of `config` and sets up TLS 1.2 and 1.3 with ALPN
    /// `h2` and `http/1.1`.
    pub fn new(config: &TlsConfig) -> Result<TlsHandle, TlsError> {
        let key = load_certified_key(&config.cert, &config.key)?;
        let current = Arc::new(CurrentKey(ArcSwap::from_pointee(key)));
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        // Session tickets, so that a returning client resumes instead of a full
        // handshake (its keys rotate on their own); the certificate is not part of them.
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Setup)?;
        Ok(TlsHandle {
            inner: Arc::new(Inner {
                acceptor: TlsAcceptor::from(Arc::new(server)),
                current,
                handshake_timeout_ms: AtomicU64::new(millis(config.handshake_timeout)),
            }),
        })
    }

    /// Re-reads the certificate and key of `config` (their paths may have changed too)
    /// and, if they make a good pair, serves them to every handshake from now on; open
    /// connections keep the certificate they were made with. On error nothing changes:
    /// the old certificate stays, and the error says why the new one was refused.
    /// `handshake_timeout` is taken from `config` as well.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let key = load_certified_key(&config.cert, &config.key)?;
        self.inner.current.0.store(Arc::new(key));
        self.inner
            .handshake_timeout_ms
            .store(millis(config.handshake_timeout), Ordering::Relaxed);
        Ok(())
    }

    /// How long a new connection has to complete its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.handshake_timeout_ms.load(Ordering::Relaxed))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The TLS session as the HTTP servers see it: parked connections wait on the socket
/// under it, unless rustls already holds decrypted bytes nobody has read.
impl ClientStream for TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn has_buffered(&self) -> bool {
        // `wants_read` is false while decrypted bytes (or the peer's close) wait.
        !self.get_ref().1.wants_read()
    }

    /// A plain 408 cannot be written into a TLS session without a write that may
    /// wait; the connection just closes.
    fn request_timeout(&self) {}
}

/// One TLS client connection, from accept to close: the handshake (bounded by
/// `handshake_timeout` from accept, its state allocated only once the client sends
/// something), then HTTP/2 or HTTP/1.1 by ALPN. The counterpart of
/// `connection::client_connection` for a TLS listener.
#[allow(clippy::too_many_arguments)] // the plain connection's arguments and the TLS handle
pub(super) async fn client_connection<F, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: F,
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
    open: Open,
    activity: Arc<Activity>,
    timers: ClientTimers,
    tls: TlsHandle,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    open.register().await;
    let drain = &*open.drain;
    let deadline = Instant::now() + tls.handshake_timeout();
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    if wait_readable(&stream, timer.as_mut(), deadline, drain).await != Wake::Readable {
        return;
    }
    // `wait_readable` left the timer set to the deadline.
    let mut stream = tokio::select! {
        accepted = tls.inner.acceptor.accept(stream) => match accepted {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        () = timer.as_mut() => {
            tracing::debug!(%peer, "TLS handshake not complete within server.tls.handshake_timeout");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
    let handler = move |req| handler(req, peer);
    if h2 {
        serve_http2(stream, handler, &builders.1, drain, activity, timers, timer).await;
    } else {
        serve_http1(
            &mut stream,
            handler,
            &builders.0,
            drain,
            activity,
            timers,
            timer,
        )
        .await;
    }
}
