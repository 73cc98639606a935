//! `server.admin_token`: what guards the admin API's writes (`POST /admin/*`).
//!
//! The token a request presents (`Authorization: Bearer <token>`) and the configured one
//! are both hashed (SHA-256) and the digests compared in constant time: the comparison
//! takes as long whatever the presented token is, its length included, so timing tells
//! an attacker nothing about how close a guess came.

use std::fmt;

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::json_error;
use crate::body::GatewayBody;
use crate::config::Secret;

/// The configured token, kept only as its digest.
pub(super) struct Token {
    digest: [u8; 32],
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("this needs the admin token: Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not one `Bearer <token>`")]
    Malformed,
    #[error("the admin token is wrong")]
    Wrong,
}

impl Token {
    pub(super) fn new(secret: &Secret) -> Token {
        Token {
            digest: digest(secret.expose().as_bytes()),
        }
    }

    /// Whether `headers` carry exactly one `Authorization: Bearer <token>` with this token.
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(Refusal::Missing)?;
        if values.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let presented = bearer(value).ok_or(Refusal::Malformed)?;
        if same(&self.digest, &digest(presented)) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

/// Equal digests, in time independent of where they differ (`subtle`).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// 401 with the reason, and the scheme to use (RFC 6750 §3).
pub(super) fn unauthorized(refusal: Refusal) -> Response<GatewayBody> {
    let mut response = json_error(StatusCode::UNAUTHORIZED, &refusal.to_string());
    let challenge = match refusal {
        Refusal::Missing => "Bearer realm=\"scf-gateway\"",
        Refusal::Malformed => "Bearer realm=\"scf-gateway\", error=\"invalid_request\"",
        Refusal::Wrong => "Bearer realm=\"scf-gateway\", error=\"invalid_token\"",
    };
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = Token::new(&Secret::new("s3cret-t0ken".into()));
        assert_eq!(token.check(&headers(&["Bearer s3cret-t0ken"])), Ok(()));
        assert_eq!(token.check(&headers(&["bearer  s3cret-t0ken "])), Ok(()));
        assert_eq!(token.check(&headers(&[])), Err(Refusal::Missing));
        for wrong in [
            "Bearer s3cret-t0ke",
            "Bearer s3cret-t0ken2",
            "Bearer S3CRET-T0KEN",
        ] {
            assert_eq!(
                token.check(&headers(&[wrong])),
                Err(Refusal::Wrong),
                "{wrong}"
            );
        }
        for malformed in [
            "s3cret-t0ken",
            "Basic czNjcmV0LXQwa2Vu",
            "Bearer",
            "Bearer ",
            "Bearers3cret-t0ken",
        ] {
            assert_eq!(
                token.check(&headers(&[malformed])),
                Err(Refusal::Malformed),
                "{malformed}"
            );
        }
        assert_eq!(
            token.check(&headers(&["Bearer s3cret-t0ken", "Bearer s3cret-t0ken"])),
            Err(Refusal::Malformed)
        );
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn digests_compare_whole() {
        let a = digest(b"a");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!same(&a, &b));
    }
}
