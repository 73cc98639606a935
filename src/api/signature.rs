//! Tencent Cloud API 3.0 request signatures (TC3-HMAC-SHA256), checked the way the
//! platform checks them, so that a call signed by an official SDK for `scf` is accepted
//! and anything else is refused with the platform's own error code.
//!
//! The signer hashes a canonical form of the request (method, path, query, the headers
//! it names in `SignedHeaders`, the SHA-256 of the body), then signs that hash with a key
//! derived from its secret key, the UTC date and the service. The gateway rebuilds the
//! same canonical form from what it received and compares the two signatures in constant
//! time. The canonical form is fed to SHA-256 piece by piece rather than written out
//! first: this runs for every API call, and a body can be megabytes.
//!
//! Where the SDKs and the platform's documentation differ, this follows the
//! documentation: the SDKs sign only `content-type;host` and hash those values as sent,
//! the documented rule lowercases and trims every signed header's value. For what the
//! SDKs send (a lowercase host and content type) both give the same hash.
//!
//! A caller parses the header ([`Authorization::parse`]), looks up the secret key of its
//! [`Authorization::secret_id`] (answering [`SignatureError::SecretIdNotFound`] when there
//! is none), then calls [`verify`].

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The only signing method accepted (the platform's older HmacSHA1/HmacSHA256 methods
/// carry the signature in form fields, which the SDKs no longer send for JSON calls).
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The service a credential scope must name: this endpoint answers only SCF's actions.
pub const SERVICE: &str = "scf";
const TERMINATOR: &str = "tc3_request";
/// How far `X-TC-Timestamp` may be from the gateway's clock, either way, as on the platform.
pub const MAX_SKEW_SECS: u64 = 300;
/// The platform requires these two among the signed headers: without them a signature
/// could be replayed against another host or with the body read as another type.
const REQUIRED_SIGNED_HEADERS: [&str; 2] = ["content-type", "host"];
/// SDKs sign two or three headers; the cap bounds the work a hostile header can ask for
/// (the check for a name listed twice is quadratic).
const MAX_SIGNED_HEADERS: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a call's signature is refused. Each variant is one of the platform's error codes
/// ([`SignatureError::code`]); the messages never hold a secret key or the signature the
/// gateway expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `AuthFailure.InvalidAuthorization`: the header, the timestamp or the signed
    /// headers are not what the signing method requires.
    #[error("The Authorization header is invalid: {0}")]
    InvalidAuthorization(#[from] Malformed),
    /// `AuthFailure.SignatureExpire`.
    #[error(
        "The signature has expired: X-TC-Timestamp {timestamp} is more than \
         {MAX_SKEW_SECS} seconds from the server time {now}"
    )]
    Expired { timestamp: u64, now: u64 },
    /// `AuthFailure.SecretIdNotFound`: for the caller, which looks the key up.
    #[error("The SecretId {secret_id} is not found")]
    SecretIdNotFound { secret_id: String },
    /// `AuthFailure.SignatureFailure`: well formed, in time, and not signed with the
    /// secret key of its SecretId.
    #[error("The provided credentials could not be validated; check the SecretKey and the signing method")]
    SignatureFailure,
}

impl SignatureError {
    /// The platform's error code, for `Response.Error.Code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidAuthorization(_) => "AuthFailure.InvalidAuthorization",
            Self::Expired { .. } => "AuthFailure.SignatureExpire",
            Self::SecretIdNotFound { .. } => "AuthFailure.SecretIdNotFound",
            Self::SignatureFailure => "AuthFailure.SignatureFailure",
        }
    }
}

/// What is wrong with a call that cannot be checked at all; all of these are
/// [`SignatureError::InvalidAuthorization`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the request has no Authorization header")]
    Missing,
    #[error("it is not ASCII text")]
    NotText,
    #[error("the signing method is not {ALGORITHM}")]
    Algorithm,
    #[error("it has no {0}")]
    MissingField(&'static str),
    #[error("it has {0} twice")]
    RepeatedField(&'static str),
    #[error("it has a part other than Credential, SignedHeaders and Signature")]
    UnknownField,
    #[error("Credential is not SecretId/Date/Service/{TERMINATOR}")]
    Credential,
    #[error("the date in Credential is not YYYY-MM-DD")]
    DateFormat,
    #[error("the service in Credential is not {SERVICE}")]
    Service,
    #[error("SignedHeaders is empty")]
    SignedHeadersEmpty,
    #[error("SignedHeaders has a name that is not a lowercase header name")]
    SignedHeaderName,
    #[error("SignedHeaders names a header twice")]
    SignedHeaderRepeated,
    #[error("SignedHeaders names more than {MAX_SIGNED_HEADERS} headers")]
    TooManySignedHeaders,
    #[error("SignedHeaders must include {0}")]
    RequiredHeaderUnsigned(&'static str),
    #[error("Signature is not 64 hexadecimal digits")]
    SignatureHex,
    #[error("X-TC-Timestamp is not a Unix time in seconds")]
    Timestamp,
    #[error(
        "the date in Credential, {credential}, is not the UTC date of X-TC-Timestamp, {expected}"
    )]
    DateMismatch {
        credential: String,
        expected: String,
    },
    #[error("the signed header {0} is not in the request")]
    SignedHeaderAbsent(String),
    #[error("the signed header {0} is in the request more than once")]
    SignedHeaderDuplicated(String),
}

/// A parsed `Authorization: TC3-HMAC-SHA256 Credential=ID/DATE/scf/tc3_request,
/// SignedHeaders=..., Signature=HEX` header, borrowing from the header's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    secret_id: &'a str,
    date: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: [u8; 32],
}

impl<'a> Authorization<'a> {
    /// Parses the value of an `Authorization` header as the SDKs write it. The parts may
    /// come in any order, with spaces around the commas.
    pub fn parse(value: &'a [u8]) -> Result<Self, Malformed> {
        let value = std::str::from_utf8(value).map_err(|_| Malformed::NotText)?;
        let rest = value
            .strip_prefix(ALGORITHM)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(Malformed::Algorithm)?;

        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, field) = part
                .trim_ascii()
                .split_once('=')
                .ok_or(Malformed::UnknownField)?;
            let (slot, name) = match key {
                "Credential" => (&mut credential, "Credential"),
                "SignedHeaders" => (&mut signed_headers, "SignedHeaders"),
                "Signature" => (&mut signature, "Signature"),
                _ => return Err(Malformed::UnknownField),
            };
            if slot.replace(field).is_some() {
                return Err(Malformed::RepeatedField(name));
            }
        }
        let credential = credential.ok_or(Malformed::MissingField("Credential"))?;
        let signed_headers = signed_headers.ok_or(Malformed::MissingField("SignedHeaders"))?;
        let signature = signature.ok_or(Malformed::MissingField("Signature"))?;

        let mut scope = credential.split('/');
        let (Some(secret_id), Some(date), Some(service), Some(TERMINATOR), None) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(Malformed::Credential);
        };
        if secret_id.is_empty() {
            return Err(Malformed::Credential);
        }
        if !is_date(date) {
            return Err(Malformed::DateFormat);
        }
        if service != SERVICE {
            return Err(Malformed::Service);
        }
        check_signed_headers(signed_headers)?;
        let mut decoded = [0u8; 32];
        hex::decode_to_slice(signature, &mut decoded).map_err(|_| Malformed::SignatureHex)?;

        Ok(Self {
            secret_id,
            date,
            service,
            signed_headers,
            signature: decoded,
        })
    }

    /// The SecretId the caller signed with, to look its secret key up by.
    pub fn secret_id(&self) -> &'a str {
        self.secret_id
    }

    /// The credential's date, `YYYY-MM-DD` (not yet checked against the timestamp).
    pub fn date(&self) -> &'a str {
        self.date
    }

    /// The credential's service: always [`SERVICE`] once parsed.
    pub fn service(&self) -> &'a str {
        self.service
    }

    /// The signed header names, lowercase, in the order they were signed.
    pub fn signed_headers(&self) -> impl Iterator<Item = &'a str> {
        self.signed_headers.split(';')
    }

    /// The signature, decoded from hex.
    pub fn signature(&self) -> &[u8; 32] {
        &self.signature
    }
}

/// `YYYY-MM-DD` in digits; whether it is a real date does not matter, as it must equal
/// the one computed from the timestamp.
fn is_date(date: &str) -> bool {
    let bytes = date.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

fn check_signed_headers(list: &str) -> Result<(), Malformed> {
    if list.is_empty() {
        return Err(Malformed::SignedHeadersEmpty);
    }
    for (i, name) in list.split(';').enumerate() {
        if i == MAX_SIGNED_HEADERS {
            return Err(Malformed::TooManySignedHeaders);
        }
        if name.is_empty() || !name.bytes().all(is_lowercase_token_byte) {
            return Err(Malformed::SignedHeaderName);
        }
        if list.split(';').take(i).any(|earlier| earlier == name) {
            return Err(Malformed::SignedHeaderRepeated);
        }
    }
    for required in REQUIRED_SIGNED_HEADERS {
        if !list.split(';').any(|name| name == required) {
            return Err(Malformed::RequiredHeaderUnsigned(required));
        }
    }
    Ok(())
}

/// A byte of an HTTP header name (RFC 9110 `tchar`) other than an uppercase letter: the
/// canonical request names headers in lowercase.
fn is_lowercase_token_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

/// How a request's header is found by its lowercase name.
pub trait HeaderLookup {
    fn lookup(&self, name: &str) -> Lookup<'_>;
}

/// A header as the canonical request needs it: a header sent twice cannot be signed
/// unambiguously, so it is neither one value nor absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

/// The request's headers as received. Over HTTP/2 the host is the `:authority`, which is
/// not in the map: a caller serving HTTP/2 supplies it with its own [`HeaderLookup`].
impl HeaderLookup for HeaderMap {
    fn lookup(&self, name: &str) -> Lookup<'_> {
        let mut values = self.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Lookup::Absent,
            (Some(value), None) => Lookup::One(value.as_bytes()),
            (Some(_), Some(_)) => Lookup::Repeated,
        }
    }
}

/// The parts of a call that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a, H: ?Sized> {
    /// As sent: `POST`.
    pub method: &'a str,
    /// `/` for the API's calls.
    pub canonical_uri: &'a str,
    /// Empty for `POST`; for `GET`, the query string as sent.
    pub canonical_query: &'a str,
    pub headers: &'a H,
    pub body: &'a [u8],
    /// The `X-TC-Timestamp` header's value, as sent: the signer hashed it as text.
    pub timestamp: &'a str,
}

/// Checks a call against the secret key of its SecretId, at the gateway's time `now`
/// (Unix seconds): the timestamp first (within [`MAX_SKEW_SECS`], and of the credential's
/// date), then the signature.
pub fn verify<H: HeaderLookup + ?Sized>(
    authorization: &Authorization<'_>,
    request: &SignedRequest<'_, H>,
    now: u64,
    secret_key: &str,
) -> Result<(), SignatureError> {
    let timestamp = parse_timestamp(request.timestamp)?;
    if timestamp.abs_diff(now) > MAX_SKEW_SECS {
        return Err(SignatureError::Expired { timestamp, now });
    }
    let expected_date = utc_date(timestamp);
    if expected_date.as_ref().map(|date| &date[..]) != Some(authorization.date.as_bytes()) {
        return Err(Malformed::DateMismatch {
            credential: authorization.date.to_owned(),
            expected: expected_date
                .map(|date| String::from_utf8_lossy(&date).into_owned())
                .unwrap_or_else(|| "past the year 9999".to_owned()),
        }
        .into());
    }
    let expected = compute_signature(
        authorization.date,
        authorization.signed_headers,
        request,
        secret_key,
    )?;
    if bool::from(expected.ct_eq(&authorization.signature)) {
        Ok(())
    } else {
        Err(SignatureError::SignatureFailure)
    }
}

/// The `Authorization` value an official SDK sends for `request` (signing
/// `content-type;host`), for clients of the gateway written in Rust: tests, benchmarks,
/// tools.
pub fn sign<H: HeaderLookup + ?Sized>(
    request: &SignedRequest<'_, H>,
    secret_id: &str,
    secret_key: &str,
) -> Result<String, SignatureError> {
    const SIGNED_HEADERS: &str = "content-type;host";
    let timestamp = parse_timestamp(request.timestamp)?;
    let date = utc_date(timestamp).ok_or(Malformed::Timestamp)?;
    let date = std::str::from_utf8(&date).map_err(|_| Malformed::Timestamp)?;
    let signature = compute_signature(date, SIGNED_HEADERS, request, secret_key)?;
    Ok(format!(
        "{ALGORITHM} Credential={secret_id}/{date}/{SERVICE}/{TERMINATOR}, \
         SignedHeaders={SIGNED_HEADERS}, Signature={}",
        String::from_utf8_lossy(&hex_lower(&signature))
    ))
}

/// Digits only: `u64::from_str` would also take a leading `+`, which the platform's
/// integer parameter does not.
fn parse_timestamp(value: &str) -> Result<u64, Malformed> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed::Timestamp);
    }
    value.parse().map_err(|_| Malformed::Timestamp)
}

/// The UTC date of a Unix time as `YYYY-MM-DD`, or `None` past the year 9999, which no
/// credential date can name. (Howard Hinnant's days-to-civil algorithm, on the
/// non-negative days a `u64` timestamp gives.)
fn utc_date(timestamp: u64) -> Option<[u8; 10]> {
    let days = timestamp / 86_400;
    // Days since 0000-03-01, so that the leap day ends each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    let mut out = *b"0000-00-00";
    write_digits(&mut out[0..4], year);
    write_digits(&mut out[5..7], month);
    write_digits(&mut out[8..10], day);
    Some(out)
}

fn write_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        // A decimal digit: the cast cannot truncate.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The signature of `request` by `secret_key` over the given scope date and signed
/// headers (the timestamp was checked to be digits, and is hashed as sent).
fn compute_signature<H: HeaderLookup + ?Sized>(
    date: &str,
    signed_headers: &str,
    request: &SignedRequest<'_, H>,
    secret_key: &str,
) -> Result<[u8; 32], SignatureError> {
    let mut canonical = Sha256::new();
    for part in [
        request.method,
        "\n",
        request.canonical_uri,
        "\n",
        request.canonical_query,
        "\n",
    ] {
        canonical.update(part);
    }
    for name in signed_headers.split(';') {
        let value = match request.headers.lookup(name) {
            Lookup::One(value) => value,
            Lookup::Absent => return Err(Malformed::SignedHeaderAbsent(name.to_owned()).into()),
            Lookup::Repeated => {
                return Err(Malformed::SignedHeaderDuplicated(name.to_owned()).into())
            }
        };
        canonical.update(name);
        canonical.update(":");
        update_lowercase(&mut canonical, value.trim_ascii());
        canonical.update("\n");
    }
    canonical.update("\n");
    canonical.update(signed_headers);
    canonical.update("\n");
    canonical.update(hex_lower(&Sha256::digest(request.body).into()));
    let canonical_hash = hex_lower(&canonical.finalize().into());

    let mut tc3_key = Vec::with_capacity(3 + secret_key.len());
    tc3_key.extend_from_slice(b"TC3");
    tc3_key.extend_from_slice(secret_key.as_bytes());
    let date_key = hmac(&tc3_key, &[date.as_bytes()])?;
    let service_key = hmac(&date_key, &[SERVICE.as_bytes()])?;
    let signing_key = hmac(&service_key, &[TERMINATOR.as_bytes()])?;
    hmac(
        &signing_key,
        &[
            ALGORITHM.as_bytes(),
            b"\n",
            request.timestamp.as_bytes(),
            b"\n",
            date.as_bytes(),
            b"/",
            SERVICE.as_bytes(),
            b"/",
            TERMINATOR.as_bytes(),
            b"\n",
            &canonical_hash,
        ],
    )
}

fn hmac(key: &[u8], message: &[&[u8]]) -> Result<[u8; 32], SignatureError> {
    // HMAC takes a key of any length, so this never fails; were it to, the call would be
    // refused rather than the gateway stopped.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .map_err(|_| SignatureError::SignatureFailure)?;
    for part in message {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

/// Feeds `value` lowercased, through a stack buffer: signed values are short (a host, a
/// content type), and the canonical request is never written out whole.
fn update_lowercase(hash: &mut Sha256, value: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in value.chunks(buf.len()) {
        let lowered = &mut buf[..chunk.len()];
        lowered.copy_from_slice(chunk);
        lowered.make_ascii_lowercase();
        hash.update(&*lowered);
    }
}

/// Lowercase hex, as the canonical request and the signature are written.
fn hex_lower(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    const SECRET_ID: &str = "AKIDgatewaytestsecretid0000000000000";
    const SECRET_KEY: &str = "gatewaytestsecretkey0000000000000";

    /// A call as recorded by tests/api/sign_vectors.py (the official Python SDK; run it
    /// to regenerate): the headers that matter here, lowercase, and the body.
    struct Vector {
        name: &'static str,
        timestamp: u64,
        headers: &'static [(&'static str, &'static str)],
        body: &'static [u8],
    }

    const VECTORS: &[Vector] = &[
        Vector {
            name: "sdk_invoke_escaped_unicode_with_port",
            timestamp: 1767225599,
            headers: &[
                ("content-type", "application/json"),
                ("host", "127.0.0.1:9000"),
                ("x-tc-action", "Invoke"),
                ("x-tc-timestamp", "1767225599"),
                ("authorization", "TC3-HMAC-SHA256 Credential=AKIDgatewaytestsecretid0000000000000/2025-12-31/scf/tc3_request, SignedHeaders=content-type;host, Signature=594c34c93c1aed39438a311af468f94aa83b281f34fd6b966e9586c502fc628d"),
            ],
            body: b"{\"FunctionName\": \"hello\", \"ClientContext\": \"{\\\"Event\\\":\\\"h\\u00e9llo \\u51fd\\u6570\\\"}\"}",
        },
        Vector {
            name: "sdk_invoke_function_with_token",
            timestamp: 1767225600,
            headers: &[
                ("content-type", "application/json"),
                ("host", "127.0.0.1:9000"),
                ("x-tc-action", "InvokeFunction"),
                ("x-tc-timestamp", "1767225600"),
                ("x-tc-token", "gatewaytesttoken00000000000000000000000000000000"),
                ("authorization", "TC3-HMAC-SHA256 Credential=AKIDgatewaytestsecretid0000000000000/2026-01-01/scf/tc3_request, SignedHeaders=content-type;host, Signature=0a00b130493da46d1300307e90402c96d3b859c07a2670ac5d17eb91f07c9de7"),
            ],
            body: b"{\"FunctionName\": \"hello\", \"Event\": \"{\\\"k\\\":1}\", \"Namespace\": \"default\"}",
        },
        Vector {
            name: "raw_utf8_body_with_charset",
            timestamp: 1767268800,
            headers: &[
                ("host", "scf.tencentcloudapi.com"),
                ("content-type", "application/json; charset=utf-8"),
                ("x-tc-timestamp", "1767268800"),
                ("authorization", "TC3-HMAC-SHA256 Credential=AKIDgatewaytestsecretid0000000000000/2026-01-01/scf/tc3_request, SignedHeaders=content-type;host, Signature=e7d1e9198a460cc34c63c2609800e1218d4467e676255686e07a53bead78261c"),
            ],
            body: b"{\"FunctionName\":\"hello\",\"ClientContext\":\"{\\\"Event\\\":\\\"h\xc3\xa9llo \xe5\x87\xbd\xe6\x95\xb0\\\"}\"}",
        },
        Vector {
            name: "documented_rule_signed_action",
            timestamp: 1767268800,
            headers: &[
                ("host", "127.0.0.1:9000"),
                ("content-type", "application/json"),
                ("x-tc-action", "Invoke"),
                ("x-tc-timestamp", "1767268800"),
                ("authorization", "TC3-HMAC-SHA256 Credential=AKIDgatewaytestsecretid0000000000000/2026-01-01/scf/tc3_request, SignedHeaders=content-type;host;x-tc-action, Signature=c280ab84156ba2711f677fed8772c872e527e4b490f4e74cb638875f97dbd9ae"),
            ],
            body: b"{\"FunctionName\":\"hello\"}",
        },
    ];

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    fn header<'a>(vector: &'a Vector, name: &str) -> &'a str {
        vector
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .expect("vector has the header")
    }

    /// Parses the vector's own Authorization header and verifies the call with the given
    /// changes: headers, body, time and key.
    fn check(
        vector: &Vector,
        headers: &HeaderMap,
        body: &[u8],
        now: u64,
        secret_key: &str,
    ) -> Result<(), SignatureError> {
        let authorization = Authorization::parse(header(vector, "authorization").as_bytes())?;
        let request = SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers,
            body,
            timestamp: header(vector, "x-tc-timestamp"),
        };
        verify(&authorization, &request, now, secret_key)
    }

    fn check_as_sent(vector: &Vector) -> Result<(), SignatureError> {
        let headers = header_map(vector.headers);
        check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY)
    }

    #[test]
    fn sdk_vectors_verify() {
        for vector in VECTORS {
            assert_eq!(check_as_sent(vector), Ok(()), "{}", vector.name);
        }
    }

    #[test]
    fn sign_writes_what_the_sdk_writes() {
        for vector in VECTORS.iter().filter(|v| !v.name.starts_with("documented")) {
            let headers = header_map(vector.headers);
            let request = SignedRequest {
                method: "POST",
                canonical_uri: "/",
                canonical_query: "",
                headers: &headers,
                body: vector.body,
                timestamp: header(vector, "x-tc-timestamp"),
            };
            assert_eq!(
                sign(&request, SECRET_ID, SECRET_KEY).as_deref(),
                Ok(header(vector, "authorization")),
                "{}",
                vector.name
            );
        }
    }

    #[test]
    fn a_flipped_body_byte_fails() {
        for vector in VECTORS {
            let headers = header_map(vector.headers);
            for at in [0, vector.body.len() / 2, vector.body.len() - 1] {
                let mut body = vector.body.to_vec();
                body[at] ^= 0x01;
                assert_eq!(
                    check(vector, &headers, &body, vector.timestamp, SECRET_KEY),
                    Err(SignatureError::SignatureFailure),
                    "{} byte {at}",
                    vector.name
                );
            }
        }
    }

    #[test]
    fn a_wrong_secret_key_fails() {
        for vector in VECTORS {
            let headers = header_map(vector.headers);
            for key in ["gatewaytestsecretkey0000000000001", "", SECRET_ID] {
                let err = check(vector, &headers, vector.body, vector.timestamp, key)
                    .expect_err("wrong key");
                assert_eq!(err, SignatureError::SignatureFailure, "{}", vector.name);
                assert_eq!(err.code(), "AuthFailure.SignatureFailure");
            }
        }
    }

    #[test]
    fn a_changed_signed_header_fails() {
        let vector = &VECTORS[0];
        for (name, value) in [
            // The SDK signs the Host with its port: the gateway must see the same one.
            ("host", "127.0.0.1"),
            ("host", "127.0.0.1:9001"),
            ("content-type", "application/json; charset=utf-8"),
        ] {
            let mut headers = header_map(vector.headers);
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
            assert_eq!(
                check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
                Err(SignatureError::SignatureFailure),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn signed_header_values_are_compared_lowercased_and_trimmed() {
        // The documented rule lowercases values, so the vector that signed
        // `x-tc-action:invoke` for `X-TC-Action: Invoke` verifies as sent...
        let vector = VECTORS
            .iter()
            .find(|v| v.name == "documented_rule_signed_action")
            .expect("vector");
        assert_eq!(check_as_sent(vector), Ok(()));
        // ...and with any case of that value or of the host, or spaces around them.
        let mut headers = header_map(vector.headers);
        headers.insert("x-tc-action", HeaderValue::from_static(" INVOKE "));
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9000\t"));
        assert_eq!(
            check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
            Ok(())
        );
        // A different action is a different signature.
        headers.insert("x-tc-action", HeaderValue::from_static("InvokeFunction"));
        assert_eq!(
            check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
            Err(SignatureError::SignatureFailure)
        );
    }

    #[test]
    fn unsigned_headers_do_not_matter() {
        // The SDK does not sign X-TC-Token (nor X-TC-Action): changing them is not a
        // signature failure (what they say is the caller's to check).
        let vector = VECTORS
            .iter()
            .find(|v| v.name == "sdk_invoke_function_with_token")
            .expect("vector");
        let mut headers = header_map(vector.headers);
        headers.insert("x-tc-token", HeaderValue::from_static("other"));
        headers.insert("x-tc-action", HeaderValue::from_static("ListFunctions"));
        assert_eq!(
            check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
            Ok(())
        );
    }

    #[test]
    fn timestamps_more_than_300_seconds_off_expire() {
        for vector in VECTORS {
            let headers = header_map(vector.headers);
            let t = vector.timestamp;
            for now in [t - 300, t - 299, t + 299, t + 300] {
                assert_eq!(
                    check(vector, &headers, vector.body, now, SECRET_KEY),
                    Ok(()),
                    "{} now {now}",
                    vector.name
                );
            }
            for now in [t - 301, t + 301, 0, u64::MAX] {
                let err =
                    check(vector, &headers, vector.body, now, SECRET_KEY).expect_err("expired");
                assert_eq!(err, SignatureError::Expired { timestamp: t, now });
                assert_eq!(err.code(), "AuthFailure.SignatureExpire");
            }
        }
    }

    #[test]
    fn the_credential_date_must_be_the_timestamps_utc_date() {
        // 2025-12-31T23:59:59Z, signed for 2025-12-31: a credential saying 2026-01-01
        // (a signer in a zone east of UTC) is refused before any signature is computed.
        let vector = &VECTORS[0];
        assert_eq!(vector.timestamp, 1_767_225_599);
        let authorization = header(vector, "authorization").replace("/2025-12-31/", "/2026-01-01/");
        let headers = header_map(vector.headers);
        let request = SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers: &headers,
            body: vector.body,
            timestamp: header(vector, "x-tc-timestamp"),
        };
        let parsed = Authorization::parse(authorization.as_bytes()).expect("well formed");
        let err = verify(&parsed, &request, vector.timestamp, SECRET_KEY).expect_err("date");
        assert_eq!(
            err,
            SignatureError::InvalidAuthorization(Malformed::DateMismatch {
                credential: "2026-01-01".into(),
                expected: "2025-12-31".into(),
            })
        );
        assert_eq!(err.code(), "AuthFailure.InvalidAuthorization");
    }

    #[test]
    fn bad_timestamps_are_invalid() {
        let vector = &VECTORS[0];
        let headers = header_map(vector.headers);
        let authorization =
            Authorization::parse(header(vector, "authorization").as_bytes()).expect("parse");
        for timestamp in [
            "",
            "+1767225599",
            "1767225599.0",
            " 1767225599",
            "-1",
            "99999999999999999999",
        ] {
            let request = SignedRequest {
                method: "POST",
                canonical_uri: "/",
                canonical_query: "",
                headers: &headers,
                body: vector.body,
                timestamp,
            };
            assert_eq!(
                verify(&authorization, &request, vector.timestamp, SECRET_KEY),
                Err(SignatureError::InvalidAuthorization(Malformed::Timestamp)),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn signed_headers_must_each_be_sent_once() {
        let vector = &VECTORS[0];
        let mut headers = header_map(vector.headers);
        headers.remove("host");
        assert_eq!(
            check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
            Err(Malformed::SignedHeaderAbsent("host".into()).into())
        );
        let mut headers = header_map(vector.headers);
        headers.append("content-type", HeaderValue::from_static("application/json"));
        assert_eq!(
            check(vector, &headers, vector.body, vector.timestamp, SECRET_KEY),
            Err(Malformed::SignedHeaderDuplicated("content-type".into()).into())
        );
    }

    #[test]
    fn parse_reads_the_sdk_header() {
        let vector = &VECTORS[1];
        let authorization =
            Authorization::parse(header(vector, "authorization").as_bytes()).expect("parse");
        assert_eq!(authorization.secret_id(), SECRET_ID);
        assert_eq!(authorization.date(), "2026-01-01");
        assert_eq!(authorization.service(), "scf");
        assert_eq!(
            authorization.signed_headers().collect::<Vec<_>>(),
            ["content-type", "host"]
        );
        assert_eq!(authorization.signature()[..4], [0x0a, 0x00, 0xb1, 0x30]);
    }

    #[test]
    fn parse_takes_any_order_spacing_and_hex_case() {
        let vector = &VECTORS[0];
        let sent = header(vector, "authorization");
        let (credential, rest) = sent
            .strip_prefix("TC3-HMAC-SHA256 ")
            .and_then(|rest| rest.split_once(", "))
            .expect("shape");
        let (signed, signature) = rest.split_once(", ").expect("shape");
        let reordered = format!(
            "TC3-HMAC-SHA256 {} ,{},  {}",
            signature
                .to_ascii_uppercase()
                .replace("SIGNATURE=", "Signature="),
            credential,
            signed
        );
        let original = Authorization::parse(sent.as_bytes()).expect("parse");
        assert_eq!(Authorization::parse(reordered.as_bytes()), Ok(original));
        // Unsorted names parse; the canonical request follows their order, so the SDK's
        // signature no longer matches.
        let unsorted = sent.replace("content-type;host", "host;content-type");
        let parsed = Authorization::parse(unsorted.as_bytes()).expect("parse");
        assert_eq!(
            parsed.signed_headers().collect::<Vec<_>>(),
            ["host", "content-type"]
        );
        let headers = header_map(vector.headers);
        let request = SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers: &headers,
            body: vector.body,
            timestamp: header(vector, "x-tc-timestamp"),
        };
        assert_eq!(
            verify(&parsed, &request, vector.timestamp, SECRET_KEY),
            Err(SignatureError::SignatureFailure)
        );
    }

    #[test]
    fn malformed_headers_are_invalid_authorization() {
        let sig = "a".repeat(64);
        let good = |credential: &str, signed: &str| {
            format!(
                "TC3-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={sig}"
            )
        };
        let id = "AKIDx/2026-01-01/scf/tc3_request";
        let many: Vec<String> = (0..31).map(|i| format!("x-{i}")).collect();
        let too_many = format!("content-type;host;{}", many.join(";"));
        let cases: Vec<(String, Malformed)> = vec![
            (String::new(), Malformed::Algorithm),
            (
                good(id, "content-type;host").replace("TC3-HMAC-SHA256", "TC3-HMAC-SHA1"),
                Malformed::Algorithm,
            ),
            (
                good(id, "content-type;host").replace("TC3-HMAC-SHA256 ", "TC3-HMAC-SHA256"),
                Malformed::Algorithm,
            ),
            (
                good(id, "content-type;host").replace("TC3-HMAC-SHA256", "HMAC-SHA256"),
                Malformed::Algorithm,
            ),
            (
                format!("TC3-HMAC-SHA256 Credential={id}, SignedHeaders=content-type;host"),
                Malformed::MissingField("Signature"),
            ),
            (
                format!("TC3-HMAC-SHA256 SignedHeaders=content-type;host, Signature={sig}"),
                Malformed::MissingField("Credential"),
            ),
            (
                format!("TC3-HMAC-SHA256 Credential={id}, Signature={sig}"),
                Malformed::MissingField("SignedHeaders"),
            ),
            (
                format!("{}, Credential={id}", good(id, "content-type;host")),
                Malformed::RepeatedField("Credential"),
            ),
            (
                format!("{}, Timestamp=1", good(id, "content-type;host")),
                Malformed::UnknownField,
            ),
            (
                format!("{},", good(id, "content-type;host")),
                Malformed::UnknownField,
            ),
            (
                good(id, "content-type;host").replace(", ", " "),
                Malformed::MissingField("SignedHeaders"),
            ),
            (
                good("AKIDx/2026-01-01/scf", "content-type;host"),
                Malformed::Credential,
            ),
            (
                good("AKIDx/2026-01-01/scf/tc3_request/x", "content-type;host"),
                Malformed::Credential,
            ),
            (
                good("AKIDx/2026-01-01/scf/tc4_request", "content-type;host"),
                Malformed::Credential,
            ),
            (
                good("/2026-01-01/scf/tc3_request", "content-type;host"),
                Malformed::Credential,
            ),
            (
                good("AKIDx/2026-1-01/scf/tc3_request", "content-type;host"),
                Malformed::DateFormat,
            ),
            (
                good("AKIDx/20260101/scf/tc3_request", "content-type;host"),
                Malformed::DateFormat,
            ),
            (
                good("AKIDx/2026-01-01/cvm/tc3_request", "content-type;host"),
                Malformed::Service,
            ),
            (
                good("AKIDx/2026-01-01/SCF/tc3_request", "content-type;host"),
                Malformed::Service,
            ),
            (good(id, ""), Malformed::SignedHeadersEmpty),
            (good(id, "content-type;;host"), Malformed::SignedHeaderName),
            (good(id, "Content-Type;host"), Malformed::SignedHeaderName),
            (good(id, "content-type;host;"), Malformed::SignedHeaderName),
            (good(id, "content-type;ho st"), Malformed::SignedHeaderName),
            (
                good(id, "content-type;host;host"),
                Malformed::SignedHeaderRepeated,
            ),
            (
                good(id, "content-type"),
                Malformed::RequiredHeaderUnsigned("host"),
            ),
            (
                good(id, "host;x-tc-action"),
                Malformed::RequiredHeaderUnsigned("content-type"),
            ),
            (good(id, &too_many), Malformed::TooManySignedHeaders),
            (
                good(id, "content-type;host").replace(&sig, &sig[1..]),
                Malformed::SignatureHex,
            ),
            (
                good(id, "content-type;host").replace(&sig, &format!("{sig}00")),
                Malformed::SignatureHex,
            ),
            (
                good(id, "content-type;host").replace(&sig, &"g".repeat(64)),
                Malformed::SignatureHex,
            ),
        ];
        for (value, want) in &cases {
            let got = Authorization::parse(value.as_bytes());
            assert_eq!(got.as_ref().err(), Some(want), "{value}");
            let err = SignatureError::from(want.clone());
            assert_eq!(err.code(), "AuthFailure.InvalidAuthorization");
        }
        // 32 signed names are allowed, one fewer than the refused list above.
        let most = too_many.rsplit_once(';').expect("list").0;
        assert!(Authorization::parse(good(id, most).as_bytes()).is_ok());
        // Bytes past ASCII (an obs-text header value) are not a header the SDK writes.
        let mut bytes = good(id, "content-type;host").into_bytes();
        bytes.push(0xff);
        assert_eq!(Authorization::parse(&bytes), Err(Malformed::NotText));
    }

    #[test]
    fn codes_are_the_platforms() {
        let cases = [
            (
                SignatureError::from(Malformed::Missing),
                "AuthFailure.InvalidAuthorization",
            ),
            (
                SignatureError::Expired {
                    timestamp: 1,
                    now: 302,
                },
                "AuthFailure.SignatureExpire",
            ),
            (
                SignatureError::SecretIdNotFound {
                    secret_id: "AKIDx".into(),
                },
                "AuthFailure.SecretIdNotFound",
            ),
            (
                SignatureError::SignatureFailure,
                "AuthFailure.SignatureFailure",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn messages_hold_neither_the_key_nor_the_expected_signature() {
        let vector = &VECTORS[0];
        let headers = header_map(vector.headers);
        let mut body = vector.body.to_vec();
        body[0] ^= 1;
        // What the gateway expects for the changed body: sign computes it.
        let request = SignedRequest {
            method: "POST",
            canonical_uri: "/",
            canonical_query: "",
            headers: &headers,
            body: &body,
            timestamp: header(vector, "x-tc-timestamp"),
        };
        let expected = sign(&request, SECRET_ID, SECRET_KEY).expect("sign");
        let expected_hex = expected.rsplit_once("Signature=").expect("sig").1;
        let errors = [
            check(vector, &headers, &body, vector.timestamp, SECRET_KEY),
            check(
                vector,
                &headers,
                vector.body,
                vector.timestamp + 301,
                SECRET_KEY,
            ),
            check(vector, &headers, &body, vector.timestamp, "another key"),
        ];
        for err in errors {
            let err = err.expect_err("refused");
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(SECRET_KEY), "{text}");
                assert!(!text.contains(expected_hex), "{text}");
            }
        }
    }

    #[test]
    fn utc_dates() {
        for (timestamp, date) in [
            (0, "1970-01-01"),
            (86_399, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_767_225_599, "2025-12-31"),
            (1_767_225_600, "2026-01-01"),
            (4_107_542_400, "2100-03-01"),
            (253_402_300_799, "9999-12-31"),
        ] {
            assert_eq!(
                utc_date(timestamp).as_ref().map(|d| &d[..]),
                Some(date.as_bytes()),
                "{timestamp}"
            );
        }
        assert_eq!(utc_date(253_402_300_800), None);
        assert_eq!(utc_date(u64::MAX), None);
    }
}
