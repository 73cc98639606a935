//! What crosses the gateway in headers: the client's `X-Scf-*` and hop-by-hop headers
//! are stripped, the platform's `X-Scf-*` set is stamped, and the function's answer is
//! cleaned of credentials before it reaches the client.
//!
//! Everything that does not change per invocation (names, and per function the memory,
//! timeout, identity and credential values) is built once into a [`Stamp`], already
//! encoded; the hot path strips the client's map in place and adds the request id.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE};

use crate::config::{Config, FunctionConfig};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-scf-request-id");
pub const MEMORY: HeaderName = HeaderName::from_static("x-scf-memory");
pub const TIMEOUT: HeaderName = HeaderName::from_static("x-scf-timeout");
pub const VERSION: HeaderName = HeaderName::from_static("x-scf-version");
pub const NAME: HeaderName = HeaderName::from_static("x-scf-name");
pub const NAMESPACE: HeaderName = HeaderName::from_static("x-scf-namespace");
pub const REGION: HeaderName = HeaderName::from_static("x-scf-region");
pub const APPID: HeaderName = HeaderName::from_static("x-scf-appid");
pub const UIN: HeaderName = HeaderName::from_static("x-scf-uin");
pub const SECRET_ID: HeaderName = HeaderName::from_static("x-scf-secret-id");
pub const SECRET_KEY: HeaderName = HeaderName::from_static("x-scf-secret-key");
pub const SESSION_TOKEN: HeaderName = HeaderName::from_static("x-scf-session-token");

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// How the client reached the gateway, as `X-Forwarded-Proto` tells web functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// `server.listen` with `[server.tls]`.
    Https,
}

/// Headers that describe one hop, never the message (RFC 9110 7.6.1), plus the
/// non-standard `proxy-connection` that old clients still send.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The per-function headers every request to an instance carries, prebuilt as the
/// bytes they are on the wire: the request path copies them into the request head
/// instead of inserting a dozen entries into a header map (a hash, a probe and often a
/// rehash each).
///
/// The platform's identity and credentials are one block shared by every function, so
/// with a thousand functions a request reads its function's few lines and one common
/// block, not a thousand copies of the same bytes.
#[derive(Clone)]
pub struct Stamp {
    /// Memory, timeout, version, name, namespace: `name: value\r\n` lines, lower-case
    /// names as HTTP/1.1 clients send them.
    function: Vec<u8>,
    /// Region, appid, uin and the credentials set: the same for every function.
    platform: Arc<[u8]>,
    count: usize,
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The lines hold credentials.
        f.debug_struct("Stamp")
            .field("headers", &self.count)
            .finish()
    }
}

/// The platform block shared by the stamps of one gateway's functions.
#[derive(Default)]
pub struct StampValues {
    platform: Option<(Arc<[u8]>, usize)>,
}

const REQUEST_ID_PREFIX: &[u8] = b"x-scf-request-id: ";

/// Appends `name: value\r\n`. Values that are not valid header values (a newline in
/// a name, say) cannot come from a validated config, but are left out, not trusted.
fn push_line(wire: &mut Vec<u8>, name: HeaderName, value: &str) -> usize {
    if HeaderValue::from_str(value).is_err() {
        return 0;
    }
    wire.extend_from_slice(name.as_str().as_bytes());
    wire.extend_from_slice(b": ");
    wire.extend_from_slice(value.as_bytes());
    wire.extend_from_slice(b"\r\n");
    1
}

impl StampValues {
    fn platform(&mut self, config: &Config) -> (Arc<[u8]>, usize) {
        if let Some(platform) = &self.platform {
            return platform.clone();
        }
        let mut wire = Vec::with_capacity(256);
        let mut count = 0;
        for (name, text) in [
            (REGION, &config.platform.region),
            (APPID, &config.platform.appid),
            (UIN, &config.platform.uin),
        ] {
            count += push_line(&mut wire, name, text);
        }
        let credentials = &config.credentials;
        for (name, secret) in [
            (SECRET_ID, &credentials.secret_id),
            (SECRET_KEY, &credentials.secret_key),
            (SESSION_TOKEN, &credentials.session_token),
        ] {
            if let Some(secret) = secret {
                count += push_line(&mut wire, name, secret.expose());
            }
        }
        let platform = (Arc::<[u8]>::from(wire), count);
        self.platform = Some(platform.clone());
        platform
    }
}

impl Stamp {
    /// Builds the fixed part of the stamp for one function, on its own.
    pub fn new(config: &Config, function: &FunctionConfig) -> Stamp {
        Stamp::shared(config, function, &mut StampValues::default())
    }

    /// Builds the stamp for one function, sharing the platform block with the other
    /// stamps built from `values` (all of them from the same `config`).
    pub fn shared(config: &Config, function: &FunctionConfig, values: &mut StampValues) -> Stamp {
        let mut wire = Vec::with_capacity(128);
        let mut count = 0;
        for (name, text) in [
            (MEMORY, &function.memory_mb.to_string()),
            (TIMEOUT, &function.timeout.as_millis().to_string()),
            (VERSION, &function.version),
            (NAME, &function.name),
            (NAMESPACE, &function.namespace),
        ] {
            count += push_line(&mut wire, name, text);
        }
        let (platform, shared) = values.platform(config);
        Stamp {
            function: wire,
            platform,
            count: count + shared,
        }
    }

    /// The stamp of one invocation as header lines, in order: to be written into the
    /// request head after the request's own (stripped) headers.
    pub fn lines<'a>(&'a self, request_id: &'a HeaderValue) -> [&'a [u8]; 5] {
        [
            REQUEST_ID_PREFIX,
            request_id.as_bytes(),
            b"\r\n",
            &self.function,
            &self.platform,
        ]
    }

    /// How many headers a stamp adds (the request id included).
    pub fn len(&self) -> usize {
        self.count + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The part after `x-scf-` / `x_scf_` (names in a `HeaderMap` are already lower case).
fn scf_suffix(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let sep = |c: u8| c == b'-' || c == b'_';
    (b.len() > 6 && b[0] == b'x' && sep(b[1]) && &b[2..5] == b"scf" && sep(b[5]))
        .then(|| &name[6..])
}

fn is_scf(name: &str) -> bool {
    scf_suffix(name).is_some()
}

/// `name` is `canonical` (a lower-case name spelled with `-`), with `_` for any `-`.
/// Lengths differ for almost every pair, so most calls stop at the first comparison.
fn spelled(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
}

/// `X-Scf-*` headers a function must not pass to the client: credentials, and its own
/// request id (the gateway's replaces it). `-` and `_` are the same here.
fn is_scf_private(name: &str) -> bool {
    scf_suffix(name).is_some_and(|rest| {
        let rest = rest.as_bytes();
        (rest.len() > 7 && spelled(&rest[..7], b"secret-"))
            || spelled(rest, b"session-token")
            || spelled(rest, b"request-id")
    })
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// A hop-by-hop or framing header in either spelling: `Transfer_Encoding`,
/// `Content_Length`, `Keep_Alive`, `Proxy_Connection`, ... Many servers (CGI and WSGI
/// among them) fold `_` and `-` into one name, so an instance could take the `_` form
/// for the real header. `Content-Length` itself stays: the body it frames goes along.
fn is_hop_by_hop_or_alias(name: &str) -> bool {
    let b = name.as_bytes();
    // Every header of every request goes by here, and most names have
    // none of the lengths looked for: they are passed over with one bit test.
    if b.len() >= 32 || ALIAS_LENGTHS & (1 << b.len()) == 0 {
        return false;
    }
    // `Content-Length`, in nearly every request and response, is the one name of its
    // length (see `ALIAS_LENGTHS`).
    if b.len() == LENGTH_NAME.len() {
        return b != LENGTH_NAME && spelled(b, LENGTH_NAME);
    }
    HOP_BY_HOP.iter().any(|h| spelled(b, h.as_bytes()))
}

const LENGTH_NAME: &[u8] = b"content-length";

/// The lengths of the names [`is_hop_by_hop_or_alias`] looks for, as bits. No
/// hop-by-hop name has the length of `content-length` (checked when this is built).
const ALIAS_LENGTHS: u32 = {
    let mut bits = 1 << LENGTH_NAME.len();
    let mut i = 0;
    while i < HOP_BY_HOP.len() {
        assert!(HOP_BY_HOP[i].len() != LENGTH_NAME.len());
        bits |= 1 << HOP_BY_HOP[i].len();
        i += 1;
    }
    bits
};

/// The header names a `Connection` header lists (they are hop-by-hop too), lower case
/// and spelled with `-` for `_`: see [`is_listed`].
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase().replace('_', "-"))
        .filter(|t| !t.is_empty())
        .collect()
}

/// `name` is one of the `listed` tokens (from [`connection_tokens`]) in either
/// spelling: `Connection: x-foo` names `x_foo` too, and `Connection: x_foo` names
/// `x-foo`, since a server that folds `_` into `-` takes them for one header.
fn is_listed(listed: &[String], name: &str) -> bool {
    listed
        .iter()
        .any(|t| spelled(name.as_bytes(), t.as_bytes()))
}

/// The client's header asking for the tail of the invocation's log (`Tail`), which the
/// gateway answers itself: like every `X-Scf-*` header, it never reaches the instance.
pub const LOG_TYPE: HeaderName = HeaderName::from_static("x-scf-log-type");
/// `RequestResponse` (the default) or `Event`.
pub const INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-scf-invocation-type");
/// On a timer's invocations: `timer`.
pub const TRIGGER_SRC: HeaderName = HeaderName::from_static("x-scf-trigger-src");

/// A client's headers cleaned for the instance, and what its stripped `X-Scf-*` headers
/// asked of the gateway.
pub struct Stripped {
    pub headers: HeaderMap,
    /// `X-Scf-Log-Type: Tail`: the response carries the invocation's log tail.
    pub log_tail: bool,
    /// `X-Scf-Invocation-Type: Event`: an asynchronous invocation.
    pub event: bool,
}

/// HTTP/2 lets a client split `cookie` into several fields (RFC 9113 §8.2.3); on the
/// way to an instance over HTTP/1.1 they are joined into one with `; `, as that RFC
/// asks, since many servers read only the first `Cookie` line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    // Every part was a valid header value, and `; ` is too.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Cleans a client request's headers, in place, for an instance: no `X-Scf-*`, no
/// hop-by-hop header, no `_` spelling of a hop-by-hop or framing name (so
/// `Transfer_Encoding` cannot pass for framing), nothing named in `Connection`, no
/// `Expect` (a per-hop negotiation the gateway answers itself), with room reserved for
/// the stamp. `Host` is
/// left for the caller to keep (web) or replace (event). Most requests have nothing to
/// remove; they cost one pass over the names.
pub fn strip_request(mut headers: HeaderMap, extra: usize) -> Stripped {
    let doomed = |n: &str| is_scf(n) || is_hop_by_hop_or_alias(n) || n == "expect";
    let mut log_tail = false;
    let mut event = false;
    // Most requests carry nothing to strip, and so no `X-Scf-Log-Type` or
    // `X-Scf-Invocation-Type` either: the scan that finds out spares them the lookups.
    if headers.keys().any(|n| doomed(n.as_str())) {
        log_tail = headers
            .get(LOG_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"));
        event = headers
            .get(INVOCATION_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"event"));
        let listed = connection_tokens(&headers);
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| doomed(n.as_str()) || is_listed(&listed, n.as_str()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    headers.reserve(extra);
    Stripped {
        headers,
        log_tail,
        event,
    }
}

/// Cleans a function's response headers for the client: hop-by-hop headers and those
/// named in `Connection` (in either spelling) go, the credentials the function might
/// echo never leave, and the gateway's request id replaces whatever the function sent.
pub fn strip_response(headers: &mut HeaderMap, request_id: &HeaderValue) {
    // One pass to find out whether anything must go; most responses need nothing.
    let doomed = |n: &HeaderName| {
        let n = n.as_str();
        is_hop_by_hop(n) || is_scf_private(n)
    };
    if headers.keys().any(doomed) {
        let listed = connection_tokens(headers);
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| doomed(n) || is_listed(&listed, n.as_str()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    headers.insert(REQUEST_ID, request_id.clone());
}

/// `X-Forwarded-For/-Proto/-Host` for a web request: the client's address is appended
/// to any chain it brought, the original host is recorded.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&HeaderValue>,
    scheme: Scheme,
) {
    let ip = client.to_string();
    let chain = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(chain) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    let proto = match scheme {
        Scheme::Http => HTTP,
        Scheme::Https => HTTPS,
    };
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// A fresh UUID v4 request id as a header value.
pub fn new_request_id() -> HeaderValue {
    request_id_value(new_uuid())
}

/// A UUID v4 from a cryptographic random source: request ids are the keys of the
/// asynchronous query API, so they must not be guessable. rand's thread-local ChaCha12
/// is seeded and periodically reseeded from the operating system: no system call per
/// request.
pub fn new_uuid() -> uuid::Uuid {
    use rand::Rng;
    // One `u128` draw: an array of bytes would be drawn byte by byte.
    uuid::Builder::from_random_bytes(rand::rng().random::<u128>().to_ne_bytes()).into_uuid()
}

/// `id` as a request id header value.
pub fn request_id_value(id: uuid::Uuid) -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf);
    // Owned by one shared allocation from the start, so the clones for the response and
    // the logs are reference counts: no copy, and no second allocation when a
    // `copy_from_slice` buffer is promoted on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)).unwrap_or(
        HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_scf_in_every_spelling_and_hop_by_hop() {
        let h = map(&[
            ("X-Scf-Request-Id", "forged"),
            ("x_scf_uin", "1"),
            ("X_SCF_SECRET_KEY", "k"),
            ("Connection", "keep-alive, X-Custom"),
            ("x-custom", "gone"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "example.com"),
            ("content-type", "application/json"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-scfnot", "kept"),
        ]);
        let out = strip_request(h, 0).headers;
        let mut names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["accept", "content-type", "host", "x-scfnot"]);
        let accepts: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accepts, vec!["a", "b"]);
    }

    #[test]
    fn underscore_spellings_of_hop_by_hop_and_framing_names_are_stripped() {
        let h = map(&[
            ("Transfer_Encoding", "chunked"),
            ("Content_Length", "99"),
            ("Keep_Alive", "1"),
            ("Proxy_Connection", "x"),
            ("Proxy_Authorization", "x"),
            ("X_Scf_Secret-Key", "forged"),
            ("x-scf_request_id", "forged"),
            ("content-length", "2"),
            ("x_custom_name", "kept"),
            ("content_type", "kept"),
            ("content-lengthy", "kept"),
        ]);
        let out = strip_request(h, 0).headers;
        let mut names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "content-length",
                "content-lengthy",
                "content_type",
                "x_custom_name"
            ]
        );
        assert!(spelled(b"keep_alive", b"keep-alive"));
        assert!(!spelled(b"keep-alive", b"keep_alive"));
        assert!(!spelled(b"keep-alivee", b"keep-alive"));
    }

    #[test]
    fn headers_named_in_connection_go_in_either_spelling() {
        let h = map(&[
            ("connection", "X-Foo, x_bar"),
            ("x-foo", "1"),
            ("x_foo", "2"),
            ("X_Bar", "3"),
            ("x-bar", "4"),
            ("x-foo-bar", "kept"),
            ("x_fo", "kept"),
        ]);
        let out = strip_request(h, 0).headers;
        let mut names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["x-foo-bar", "x_fo"]);

        let mut h = map(&[
            ("connection", "x-foo"),
            ("x_foo", "1"),
            ("x-foo", "2"),
            ("content-length", "2"),
            ("x-kept", "yes"),
        ]);
        strip_response(&mut h, &HeaderValue::from_static("ours"));
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-length", "x-kept", "x-scf-request-id"]);
    }

    #[test]
    fn the_log_tail_request_is_read_before_it_is_stripped() {
        for (value, tail) in [("Tail", true), ("tail", true), ("None", false)] {
            let out = strip_request(map(&[("X-Scf-Log-Type", value), ("accept", "a")]), 0);
            assert_eq!(out.log_tail, tail, "{value}");
            assert!(out.headers.get(LOG_TYPE).is_none());
            assert_eq!(out.headers.len(), 1);
        }
        let plain = strip_request(map(&[("accept", "a")]), 0);
        assert!(!plain.log_tail);
        assert!(!plain.event);
    }

    #[test]
    fn the_invocation_type_is_read_before_it_is_stripped() {
        for (value, event) in [("Event", true), ("event", true), ("RequestResponse", false)] {
            let out = strip_request(map(&[("X-Scf-Invocation-Type", value)]), 0);
            assert_eq!(out.event, event, "{value}");
            assert!(out.headers.is_empty());
        }
    }

    #[test]
    fn connection_can_name_an_scf_header_without_leaking_anything() {
        let h = map(&[("connection", "X-Scf-Name"), ("x-scf-name", "evil")]);
        let out = strip_request(h, 0).headers;
        assert!(out.is_empty());
        let id = new_request_id();
        let config = crate::config::parse(
            "[[functions]]\nname = \"f\"\ninstances = [\"127.0.0.1:1\"]\n",
            std::path::Path::new("t.toml"),
            &|_| None,
        );
        if let Ok(config) = config {
            let stamp = Stamp::new(&config, &config.functions[0]);
            let lines: Vec<u8> = stamp.lines(&id).concat();
            let text = String::from_utf8(lines).unwrap();
            assert!(text.starts_with(&format!("x-scf-request-id: {}\r\n", id.to_str().unwrap())));
            assert!(text.contains("\r\nx-scf-name: f\r\n"), "{text}");
            assert_eq!(text.matches("\r\n").count(), stamp.len());
            // The stamp's Debug never shows values (it carries credentials).
            assert!(!format!("{stamp:?}").contains("x-scf"));
        }
    }

    #[test]
    fn stamps_of_one_gateway_share_equal_values() {
        let config = crate::config::parse(
            "[credentials]\nsecret_id = \"id\"\n\
             [[functions]]\nname = \"a\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"b\"\ninstances = [\"127.0.0.1:1\"]\n",
            std::path::Path::new("t.toml"),
            &|_| None,
        )
        .expect("valid config");
        let mut values = StampValues::default();
        let a = Stamp::shared(&config, &config.functions[0], &mut values);
        let b = Stamp::shared(&config, &config.functions[1], &mut values);
        let id = new_request_id();
        let text = |s: &Stamp| String::from_utf8(s.lines(&id).concat()).unwrap();
        let (ta, tb) = (text(&a), text(&b));
        assert!(ta.contains("\r\nx-scf-name: a\r\n"), "{ta}");
        assert!(tb.contains("\r\nx-scf-name: b\r\n"), "{tb}");
        assert!(ta.contains("x-scf-secret-id: id\r\n"), "{ta}");
        assert_eq!(ta.matches("\r\n").count(), a.len());
        // One platform block for both.
        assert!(Arc::ptr_eq(&a.platform, &b.platform));
    }

    #[test]
    fn response_never_carries_credentials_and_gets_our_request_id() {
        let mut h = map(&[
            ("x-scf-secret-key", "k"),
            ("X-Scf-Secret-Id", "i"),
            ("x-scf-session-token", "t"),
            ("x-scf-request-id", "theirs"),
            ("x-scf-custom", "kept"),
            ("connection", "close"),
            ("content-length", "2"),
        ]);
        let ours = HeaderValue::from_static("ours");
        strip_response(&mut h, &ours);
        assert_eq!(h.get(REQUEST_ID).unwrap(), "ours");
        assert!(h.get("x-scf-secret-key").is_none());
        assert!(h.get("x-scf-secret-id").is_none());
        assert!(h.get("x-scf-session-token").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("x-scf-custom").unwrap(), "kept");
        assert_eq!(h.get("content-length").unwrap(), "2");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn forwarded_appends_to_the_chain() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(&host),
            Scheme::Http,
        );
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(X_FORWARDED_HOST).unwrap(), "example.com");
    }

    #[test]
    fn cookie_fields_of_http2_are_joined_into_one() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.insert(COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[COOKIE], "a=1");
        let mut none = HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }
}
