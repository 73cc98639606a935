//! Entry points for the fuzz targets in `fuzz/` and for the test that runs their seed
//! corpora (`tests/fuzz_seeds.rs`), so both drive exactly the same code.
//!
//! Each takes arbitrary bytes, feeds them to a parser a peer's bytes reach (an
//! instance's response head and body, a client's request head, the config file), and
//! panics only when an invariant breaks: a panic is a finding. The invariants are
//! written here, independently of the code they check, as what the contract and RFC
//! 9112 require rather than what the implementation happens to do.
//!
//! Not part of the gateway's API: public, and hidden from its documentation, only so
//! the fuzz crate and the tests can reach parsers the gateway keeps to itself.
//!
//! How the first byte of an input steers a target, so that a seed stays readable text:
//! - [`response`]: `H` reads the response to a HEAD request, `P` to a POST, anything
//!   else to a GET; the byte also sets the size of the pieces the head arrives in.
//! - [`body`]: `t` is a body read to the close, a digit `d` one of `8 * d` bytes,
//!   anything else a chunked body; the byte also sets the size of the pieces.
//! - [`request_head`] and [`config`] take their input whole.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::config::{parse, Config, FunctionKind};
use crate::error::{BadRequest, MAX_TARGET};
use crate::headers::{self, Stamp};
use crate::invoke::{request_host, web_uri};
use crate::routing::{Router, Target};
use crate::upstream::h1::{parse_head, BodyDecoder, HeaderNames, ResponseHead, UpstreamError};

/// The size of the pieces `len` bytes arrive in, from a selector byte: 1 to 16 bytes,
/// times one more for every KB (so that the head, parsed again on every piece, costs
/// a bounded number of passes).
fn step(selector: u8, len: usize) -> usize {
    (usize::from(selector % 16) + 1) * (1 + len / 1024)
}

// === the instance's response ===

/// An instance's response (head, then body) as the gateway's client reads it, whole and
/// in pieces. Checks that both readings agree, that the framing the head announces is
/// the one the body is read by, and that the body never yields more than it was given.
pub fn response(data: &[u8]) {
    let Some((&selector, wire)) = data.split_first() else {
        return;
    };
    let method = match selector {
        b'H' => Method::HEAD,
        b'P' => Method::POST,
        _ => Method::GET,
    };
    let mut whole = BytesMut::from(wire);
    let mut names = HeaderNames::default();
    let parsed = parse_head(&mut whole, &mut names, &method);
    let (in_pieces, rest) = head_in_pieces(wire, step(selector, wire.len()), &method);
    match (&parsed, &in_pieces) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_same_head(a, b);
            assert_eq!(whole, rest, "whole and in pieces leave different bytes");
        }
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        // The chunked framing that came with the head is checked with it: read in
        // pieces, the head may come first, and then its body must fail.
        (Err(_), Ok(Some(b))) => {
            let mut body = rest.clone();
            let mut decoder = b.body;
            let failed = loop {
                match decoder.decode(&mut body) {
                    Ok(Some(_)) => {}
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            assert!(
                failed,
                "whole: {parsed:?}; in pieces: {b:?} and its body reads"
            );
        }
        (a, b) => panic!("whole: {a:?}; in pieces: {b:?}"),
    }
    let Ok(Some(head)) = parsed else {
        return;
    };
    check_head(&head, &method);
    let given = whole.len();
    let mut decoder = head.body;
    let mut data = Vec::new();
    let ended = loop {
        match decoder.decode(&mut whole) {
            Ok(Some(frame)) => data.extend_from_slice(&frame),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        data.len() <= given,
        "a body of {} from {given} bytes",
        data.len()
    );
    if let Some(n) = head.body.size_hint().exact() {
        assert!(
            data.len() as u64 <= n,
            "{} bytes of a {n}-byte body",
            data.len()
        );
    }
    if ended.is_ok() && !decoder.is_done() {
        // The connection closing here ends only a body read to the close.
        let ends_at_close = decoder.ends_at_close();
        assert_eq!(decoder.end_of_stream().is_ok(), ends_at_close);
    }
    if decoder.is_done() && head.keep_alive {
        // The next response on the connection reads the same with the spellings this
        // one left remembered as with none.
        let mut fresh = whole.clone();
        let next = parse_head(&mut whole, &mut names, &method);
        let alone = parse_head(&mut fresh, &mut HeaderNames::default(), &method);
        match (&next, &alone) {
            (Ok(Some(a)), Ok(Some(b))) => assert_same_head(a, b),
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            (a, b) => panic!("with the names remembered: {a:?}; without: {b:?}"),
        }
    }
}

/// The head fed to the parser `step` bytes at a time, as reads from a socket would
/// bring it; what is left in the buffer once it is parsed (the rest of the input
/// appended).
fn head_in_pieces(
    wire: &[u8],
    step: usize,
    method: &Method,
) -> (Result<Option<ResponseHead>, UpstreamError>, BytesMut) {
    let mut names = HeaderNames::default();
    let mut read = BytesMut::new();
    let mut pieces = wire.chunks(step);
    loop {
        let Some(piece) = pieces.next() else {
            return (Ok(None), read);
        };
        read.extend_from_slice(piece);
        match parse_head(&mut read, &mut names, method) {
            Ok(None) => {}
            done => {
                for piece in pieces {
                    read.extend_from_slice(piece);
                }
                return (done, read);
            }
        }
    }
}

fn assert_same_head(a: &ResponseHead, b: &ResponseHead) {
    assert_eq!(a.status, b.status);
    assert_eq!(a.version, b.version);
    assert_eq!(a.headers, b.headers);
    assert_eq!(a.body, b.body);
    assert_eq!(a.keep_alive, b.keep_alive);
}

/// What a parsed head must say, by RFC 9112 §6 and the contract (section 7).
fn check_head(head: &ResponseHead, method: &Method) {
    assert!(
        !head.status.is_informational(),
        "an interim response was taken for the answer"
    );
    let no_body = method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if no_body {
        assert!(
            head.body.is_done(),
            "{} to {method} has a body",
            head.status
        );
    }
    let chunked = head.headers.contains_key(TRANSFER_ENCODING);
    if chunked {
        // Framed two ways: the length must not be passed on, nor the connection kept.
        assert!(!head.headers.contains_key(CONTENT_LENGTH));
        if !no_body {
            assert_ne!(head.version, Version::HTTP_10, "chunked in HTTP/1.0");
            assert_eq!(head.body, BodyDecoder::chunked());
        }
    } else if !no_body {
        // Without a transfer coding, the body is as long as every length item says.
        let lengths: Vec<&[u8]> = head
            .headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        match lengths.first() {
            None => assert!(head.body.ends_at_close()),
            Some(_) => {
                let n: Vec<u64> = lengths
                    .iter()
                    .map(
                        |l| match std::str::from_utf8(l).ok().and_then(|s| s.parse().ok()) {
                            Some(n) if l.iter().all(u8::is_ascii_digit) => n,
                            _ => panic!("a body framed by {lengths:?}"),
                        },
                    )
                    .collect();
                assert!(n.iter().all(|&l| l == n[0]), "{lengths:?}");
                assert_eq!(head.body.size_hint().exact(), Some(n[0]));
            }
        }
    }
    if head.body.ends_at_close() {
        assert!(
            !head.keep_alive,
            "a body read to the close on a kept connection"
        );
    }
    if head.version == Version::HTTP_10 && !connection_has(&head.headers, "keep-alive") {
        assert!(!head.keep_alive, "HTTP/1.0 kept without keep-alive");
    }
    if connection_has(&head.headers, "close") {
        assert!(!head.keep_alive, "kept despite Connection: close");
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

// === a response body ===

/// A response body decoded whole and in pieces: both must give the same data, stop
/// at the same place in the same state, and never yield more than they were given
/// (nor more than a length, nor anything but the input for a body read to the close).
pub fn body(data: &[u8]) {
    let Some((&selector, wire)) = data.split_first() else {
        return;
    };
    let decoder = match selector {
        b't' => BodyDecoder::to_close(),
        b'0'..=b'9' => BodyDecoder::length(8 * u64::from(selector - b'0')),
        _ => BodyDecoder::chunked(),
    };
    let whole = decode(decoder, wire, wire.len().max(1));
    let pieces = decode(decoder, wire, step(selector, wire.len()));
    assert!(whole.data.len() <= wire.len());
    assert_eq!(whole.data, pieces.data, "whole and in pieces differ");
    assert_eq!(
        whole.end, pieces.end,
        "whole and in pieces stop differently"
    );
    assert_eq!(whole.rest, pieces.rest);
    match selector {
        b't' => assert_eq!(whole.data, wire),
        b'0'..=b'9' => {
            let n = 8 * usize::from(selector - b'0');
            assert_eq!(whole.data, wire[..n.min(wire.len())]);
        }
        _ => {
            // What is left after a chunked body is the input's tail, untouched.
            assert!(wire.ends_with(&whole.rest));
            assert!(whole.data.len() + whole.rest.len() <= wire.len());
        }
    }
}

struct Decoded {
    data: Vec<u8>,
    /// The decoder's state when it stopped, or the error it stopped on.
    end: Result<BodyDecoder, String>,
    rest: Bytes,
}

fn decode(mut decoder: BodyDecoder, wire: &[u8], step: usize) -> Decoded {
    let mut read = BytesMut::new();
    let mut data = Vec::new();
    for piece in wire.chunks(step) {
        read.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut read) {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty(), "an empty data frame");
                    data.extend_from_slice(&frame);
                }
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        data,
                        end: Err(e.to_string()),
                        rest: Bytes::new(),
                    }
                }
            }
        }
    }
    Decoded {
        data,
        end: Ok(decoder),
        rest: read.freeze(),
    }
}

// === a client's request head ===

/// The functions and routes the request-head target routes against.
const ROUTED: &str = r#"
[[functions]]
name = "hello"
instances = ["127.0.0.1:1"]
[[functions]]
name = "hello"
namespace = "prod"
version = "2"
instances = ["127.0.0.1:1"]
[[functions]]
name = "web"
type = "http"
instances = ["127.0.0.1:1"]
[[functions]]
name = "api"
type = "http"
instances = ["127.0.0.1:1"]
[[routes]]
path_prefix = "/web"
function = "web"
strip_prefix = true
[[routes]]
host = "api.test"
path_prefix = "/"
function = "api"
[[routes]]
host = "[::1]"
path_prefix = "/v6/x"
function = "api"
strip_prefix = true
"#;

fn routed() -> &'static (Config, Router) {
    static ROUTER: OnceLock<(Config, Router)> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = match parse(ROUTED, Path::new("fuzz.toml"), &|_| None) {
            Ok(config) => config,
            Err(e) => panic!("the fuzzing routes do not parse:\n{e}"),
        };
        let router = Router::new(&config);
        (config, router)
    })
}

/// A client's HTTP/1.x request head, read as hyper reads it, then put through what the
/// gateway does with it before an instance is chosen: the host it is for, routing, and
/// the cleaning of its headers. Also as an HTTP/2 request with the same fields.
pub fn request_head(data: &[u8]) {
    let Some(req) = read_request(data) else {
        return;
    };
    gateway_view(&req);
    let mut h2 = req;
    *h2.version_mut() = Version::HTTP_2;
    gateway_view(&h2);
}

/// The request as hyper's server would hand it over, or `None` where hyper answers
/// 400 itself.
fn read_request(data: &[u8]) -> Option<Request<()>> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return None;
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *req.uri_mut() = parsed.path?.parse::<Uri>().ok()?;
    *req.version_mut() = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fn gateway_view(req: &Request<()>) {
    let host = request_host(req);
    check_host(req, &host);
    let Ok(host) = host else {
        return;
    };
    let (config, router) = routed();
    let uri = req.uri();
    let Ok(target) = router.route(req.method(), uri.path(), uri.query(), host) else {
        return;
    };
    let strip = match target {
        Target::Invoke { function } => {
            assert_eq!(config.functions[function].kind, FunctionKind::Event);
            assert_eq!(req.method(), Method::POST);
            None
        }
        Target::Web { function, strip } => {
            assert_eq!(config.functions[function].kind, FunctionKind::Http);
            assert!(
                strip <= uri.path().len(),
                "strip {strip} of {:?}",
                uri.path()
            );
            Some(strip)
        }
        Target::Api => {
            assert_eq!(req.method(), Method::POST);
            assert_eq!(uri.path(), "/");
            return;
        }
        Target::Query => {
            assert_ne!(req.method(), Method::POST);
            assert!(crate::asynchronous::api::is_query_path(uri.path()));
            return;
        }
    };
    let mut headers = headers::strip_request(req.headers().clone(), 4).headers;
    check_stripped(req.headers(), &headers);
    headers::join_cookies(&mut headers);
    assert!(headers.get_all(http::header::COOKIE).iter().count() <= 1);
    if let Some(strip) = strip {
        let original = match uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(HOST).cloned(),
        };
        if let Some(host) = &original {
            headers.insert(HOST, host.clone());
        }
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        headers::add_forwarded(
            &mut headers,
            client,
            original.as_ref(),
            headers::Scheme::Http,
        );
        let forwarded = web_uri(uri, strip);
        assert!(forwarded.authority().is_none(), "forwarded as {forwarded}");
        // The target on the request line the instance gets (see `upstream::h1`).
        let wire = forwarded.path_and_query().map_or("/", |pq| pq.as_str());
        assert!(
            wire.starts_with('/') || wire == "*",
            "{uri} forwarded as {wire:?}"
        );
        if strip > 0 {
            let rest = &uri.path()[strip..];
            let path = wire.split('?').next().unwrap_or_default();
            // The rest of the path, unless it could not stand as a target on its own.
            assert!(
                path == rest || path == "/",
                "{rest:?} forwarded as {wire:?}"
            );
        }
    }
}

/// RFC 9112 §3.2 and §3.2.2, and the contract's 414.
fn check_host(req: &Request<()>, host: &Result<Option<&str>, BadRequest>) {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_TARGET {
        assert!(matches!(host, Err(BadRequest::TargetTooLong)), "{host:?}");
        return;
    }
    let hosts = req.headers().get_all(HOST).iter().count();
    let authority = req.uri().authority().map(|a| a.as_str());
    match host {
        Ok(host) => {
            if req.version() == Version::HTTP_11 {
                assert_eq!(hosts, 1, "an HTTP/1.1 request with {hosts} Host fields");
            }
            if let Some(authority) = authority {
                assert_eq!(*host, Some(authority), "the URI's host is the request's");
            }
        }
        Err(BadRequest::MissingHost) => {
            assert!(req.version() == Version::HTTP_11 && hosts == 0);
        }
        Err(BadRequest::DuplicateHost) => {
            assert!(req.version() == Version::HTTP_11 && hosts > 1);
        }
        Err(e) => panic!("{e:?} for a target of {target} bytes"),
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the non-standard `proxy-connection`. Written
/// out again rather than taken from `headers`: the check must not share the list it
/// checks, or a name missing from it would go unnoticed by both.
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

/// Every field an instance must not get went, and every other one stayed, values and
/// order intact.
fn check_stripped(before: &HeaderMap, after: &HeaderMap) {
    let listed: Vec<String> = before
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for name in before.keys() {
        let spelled = name.as_str();
        let canonical = spelled.replace('_', "-");
        let must_go = (canonical.starts_with("x-scf-") && canonical.len() > 6)
            || HOP_BY_HOP.contains(&canonical.as_str())
            || (canonical == "content-length" && spelled != "content-length")
            || spelled == "expect"
            // Named in `Connection`, in either spelling (`x_foo` for `x-foo` and back).
            || listed.iter().any(|t| t.replace('_', "-") == canonical);
        if must_go {
            assert!(!after.contains_key(name), "{spelled} reached the instance");
        } else {
            let kept: Vec<_> = after.get_all(name).iter().collect();
            let given: Vec<_> = before.get_all(name).iter().collect();
            assert_eq!(kept, given, "{spelled} changed on the way");
        }
    }
    assert!(after.keys().all(|n| before.contains_key(n)));
}

// === the config file ===

/// A config file's text through the loader: a valid config is one the gateway can run
/// on (routes point at web functions, the stamp it writes into every request head is
/// well-formed header lines); an invalid one is reported as `error:` lines, one per
/// problem.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "PORT" => Some("8080".to_owned()),
        "SECRET" => Some(SECRET.to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    match parse(text, Path::new("fuzz.toml"), &env) {
        Ok(config) => check_config(&config),
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused without a reason");
            let shown = errors.to_string();
            assert_eq!(shown.lines().count(), errors.errors.len(), "{shown}");
            assert!(shown.lines().all(|l| l.starts_with("error: fuzz.toml")));
            // A credential's value is never shown (other values may be, to say what
            // is wrong with them, wherever they came from).
            for line in shown.lines().filter(|l| l.contains("credentials")) {
                assert!(!line.contains(SECRET), "a secret shown: {line}");
            }
        }
    }
}

/// What `${SECRET}` stands for in a fuzzed config.
const SECRET: &str = "s3cr3t-from-env";

fn check_config(config: &Config) {
    let credentials = format!("{:?}", config.credentials);
    assert!(!credentials.contains(SECRET), "{credentials}");
    assert_ne!(config.server.listen, config.server.admin_listen);
    for route in &config.routes {
        let function = &config.functions[route.function];
        assert_eq!(function.kind, FunctionKind::Http);
        assert!(route.path_prefix.starts_with('/'));
    }
    let _ = Router::new(config);
    let request_id = HeaderValue::from_static("00000000-0000-0000-0000-000000000000");
    for function in &config.functions {
        let stamp = Stamp::new(config, function);
        let mut lines: Vec<u8> = stamp.lines(&request_id).concat();
        lines.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(&lines, &mut slots) {
            Ok(httparse::Status::Complete((len, parsed))) => {
                assert_eq!(len, lines.len(), "the stamp does not end where it should");
                assert_eq!(parsed.len(), stamp.len(), "the stamp's lines miscounted");
                for h in parsed {
                    let name = h.name.to_ascii_lowercase();
                    assert!(name.starts_with("x-scf-"), "the stamp writes {name}");
                }
            }
            other => panic!("the stamp is not header lines: {other:?}"),
        }
    }
}
