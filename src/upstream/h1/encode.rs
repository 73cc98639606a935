//! The request head as it goes on the wire, and how the request's body is framed.
//!
//! The request's headers come already cleaned by the gateway; the client adds only the
//! framing its body needs and the caller's extra lines (the per-function stamp),
//! written as bytes rather than inserted into the header map.

use std::io::Write;

use http::header::CONTENT_LENGTH;
use http::Method;

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    /// No body, or one whose length the head announced.
    Length,
    Chunked,
}

pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head into `out` and says how the body is framed: as the client
/// framed it when it gave a length, chunked when the length is unknown.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    extra: &[&[u8]],
    empty_body: bool,
    exact_len: Option<u64>,
) -> Framing {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for lines in extra {
        out.extend_from_slice(lines);
    }
    let framing = if parts.headers.contains_key(CONTENT_LENGTH) {
        Framing::Length
    } else if empty_body {
        // A body-carrying method says "empty" explicitly, as clients do.
        if !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        ) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Length
    } else if let Some(n) = exact_len {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue, Request};

    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = "/web/a?x=1".parse().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req.into_parts().0
    }

    #[test]
    fn heads_carry_the_target_headers_and_framing() {
        let mut out = Vec::new();
        let parts = request(Method::POST, &[("content-length", "2"), ("x-a", "b")]);
        let framing = encode_head(&mut out, &parts, &[b"x-b: c\r\n"], false, None);
        assert_eq!(framing, Framing::Length);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /web/a?x=1 HTTP/1.1\r\ncontent-length: 2\r\nx-a: b\r\nx-b: c\r\n\r\n"
        );
        let parts = request(Method::POST, &[]);
        encode_head(&mut out, &parts, &[], true, None);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let parts = request(Method::GET, &[]);
        encode_head(&mut out, &parts, &[], true, None);
        assert!(out.ends_with(b"HTTP/1.1\r\n\r\n"));
        let parts = request(Method::PUT, &[]);
        assert_eq!(
            encode_head(&mut out, &parts, &[], false, Some(7)),
            Framing::Length
        );
        assert!(out.ends_with(b"content-length: 7\r\n\r\n"));
        assert_eq!(
            encode_head(&mut out, &parts, &[], false, None),
            Framing::Chunked
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }
}
