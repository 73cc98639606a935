//! `[server.tls]`: the certificate chain and private key `server.listen` serves TLS
//! with, and how long a client gets to finish its handshake. The two files are read
//! and checked here, at load time (parseable, the key matching the certificate), so a
//! bad pair is a config error with its position, like any other, and never a surprise
//! at start or on reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::launch::normalize_path;
use super::walk::{Ctx, Section, Str};
use crate::server::tls::{load_certified_key, TlsFile};

const TLS_KEYS: &[&str] = &["cert", "key", "handshake_timeout"];

/// `[server.tls]`: `server.listen` speaks TLS (1.2 and 1.3, ALPN `h2` and `http/1.1`).
/// Only the paths are kept: the key's bytes are read where they are used and never
/// printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, end-entity certificate first. Absolute.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Absolute.
    pub key: PathBuf,
    /// A client's TLS handshake must be complete this long after it connected.
    /// Default 10 s.
    pub handshake_timeout: Duration,
}

/// `None` when `[server.tls]` is absent, or when it is unusable (reported).
pub(super) fn read_tls(
    ctx: &mut Ctx<'_>,
    server: &Section<'_, '_>,
    config_dir: &Path,
) -> Option<TlsConfig> {
    let s = ctx.table(server, "tls", "[server.tls]")?;
    ctx.check_keys(&s, TLS_KEYS);
    let handshake_timeout =
        ctx.get_duration(&s, "handshake_timeout", Duration::from_secs(10), true);
    let cert = read_path(ctx, &s, "cert", config_dir);
    let key = read_path(ctx, &s, "key", config_dir);
    let ((cert, cert_span), (key, key_span)) = (cert?, key?);
    if let Err(e) = load_certified_key(&cert, &key) {
        let (name, span) = match e.file() {
            TlsFile::Cert => ("cert", cert_span),
            TlsFile::Key => ("key", key_span),
        };
        ctx.error(span, format!("{}: {e}", s.key_path(name)));
        return None;
    }
    Some(TlsConfig {
        cert,
        key,
        handshake_timeout,
    })
}

/// A required file path, relative to the config file's directory.
fn read_path(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    key: &str,
    config_dir: &Path,
) -> Option<(PathBuf, std::ops::Range<usize>)> {
    let path = s.key_path(key);
    if s.get(key).is_none() {
        ctx.error_at_path(path, s.start, format!("missing required key `{key}`"));
        return None;
    }
    let Str { value, span } = ctx.get_str(s, key, "a file path")?;
    if value.is_empty() || value.contains('\0') {
        ctx.error(span, format!("{path}: must be a file path"));
        return None;
    }
    let base = std::path::absolute(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    Some((normalize_path(&base.join(value)), span))
}

#[cfg(test)]
mod tests;
