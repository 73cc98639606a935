//! The response head parser: bytes in, status, headers and body framing out.
//!
//! It works on a buffer, not a socket, so it can be driven by tests and a fuzzer with
//! any bytes. Header values come out as slices of the head's bytes, not copies.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::decode::BodyDecoder;
use super::framing::Framers;
use super::UpstreamError;

/// A response head larger than this is refused (hyper's client allows ~400 KB; an
/// instance answering with 64 KB of headers is broken).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// At most this many spellings are remembered per connection.
const NAME_CACHE: usize = 32;

/// Header names as one instance spells them, parsed once: an instance answers with the
/// same few names in the same order every time, and parsing a name (lower-casing,
/// matching the standard set, copying an unknown one) was the largest single cost of
/// reading a response head.
#[derive(Default)]
pub struct HeaderNames {
    seen: Vec<(Box<[u8]>, HeaderName)>,
}

impl HeaderNames {
    /// The name spelled `raw`, from the names this connection has seen (first where the
    /// last response had its `i`-th header), else parsed and remembered.
    fn get(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, UpstreamError> {
        if let Some((seen, name)) = self.seen.get(i) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        if let Some((_, name)) = self.seen.iter().find(|(seen, _)| **seen == *raw) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)
            .map_err(|_| UpstreamError::Invalid("invalid header name"))?;
        if self.seen.len() < NAME_CACHE {
            self.seen.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

/// A parsed response head and what it says about the body and the connection.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// As the instance sent them, minus a `Content-Length` that `Transfer-Encoding`
    /// overrides (RFC 9112 §6.3): passed on, it would frame the body wrongly.
    pub headers: HeaderMap,
    pub body: BodyDecoder,
    /// Whether the connection can carry another exchange once this body has ended.
    pub keep_alive: bool,
}

/// Where a header's name and value sit in the response head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Parses a complete response head (to a request with `method`) off the front of
/// `read`, skipping interim (1xx) responses; `Ok(None)` while more bytes are needed.
/// What follows the head stays in `read`: the start of the body.
pub fn parse_head(
    read: &mut BytesMut,
    names: &mut HeaderNames,
    method: &Method,
) -> Result<Option<ResponseHead>, UpstreamError> {
    loop {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let result = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            read,
            &mut slots,
        );
        let len = match result {
            // Whether the head came in one read or many, the same limit.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(UpstreamError::Invalid("response head too large"))
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if read.len() > MAX_HEAD => {
                return Err(UpstreamError::Invalid("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(UpstreamError::Invalid("too many headers"))
            }
            Err(_) => return Err(UpstreamError::Invalid("malformed response head")),
        };
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(UpstreamError::Invalid("unexpected protocol switch"));
            }
            read.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Invalid("invalid status code"))?;
        if method == Method::CONNECT && status.is_success() {
            // The connection is a tunnel from here, whatever the head says of a body
            // (RFC 9112 §6.3): the gateway does not tunnel, and reused, the connection
            // would carry the next request into it.
            return Err(UpstreamError::Invalid("unexpected tunnel (2xx to CONNECT)"));
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Header values become slices of the head's bytes, not copies: note where
        // names and values are, then freeze the head.
        let base = read.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let mut spans = [Span::default(); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            *span = Span {
                name: (name as u32, (name + h.name.len()) as u32),
                value: (value as u32, (value + h.value.len()) as u32),
            };
        }
        let head = read.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        let mut framers = Framers::default();
        for (i, &span) in spans[..count].iter().enumerate() {
            let name = names.get(i, &head[span.name()])?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value()))
                .map_err(|_| UpstreamError::Invalid("invalid header value"))?;
            framers.note(&name, &value);
            headers.append(name, value);
        }
        let body = framers.decoder(method, status, version)?;
        // A body whose framing is already broken in the bytes that came with the head
        // makes the whole response invalid: refused here, it is a 502 the client can
        // still be given, where failing on the first poll of the body would leave the
        // client with a head and a cut stream, or with nothing.
        body.check(read)?;
        if framers.length_overridden() {
            headers.remove(CONTENT_LENGTH);
        }
        let keep_alive = framers.keep_alive(version) && !body.ends_at_close();
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            body,
            keep_alive,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8], method: &Method) -> Result<Option<ResponseHead>, UpstreamError> {
        parse_head(
            &mut BytesMut::from(wire),
            &mut HeaderNames::default(),
            method,
        )
    }

    #[test]
    fn a_head_and_the_start_of_its_body_come_apart() {
        let mut read =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhel"[..]);
        let mut names = HeaderNames::default();
        let head = parse_head(&mut read, &mut names, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["content-length"], "5");
        assert_eq!(head.headers["x-a"], "b");
        assert!(head.keep_alive);
        assert_eq!(&read[..], b"hel");
        // The spellings are remembered for the next response on the connection.
        let mut read = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..]);
        let head = parse_head(&mut read, &mut names, &Method::GET)
            .unwrap()
            .unwrap();
        assert!(head.body.is_done());
    }

    #[test]
    fn partial_interim_and_broken_heads() {
        // Cut anywhere, a head waits for more.
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n";
        for cut in 0..wire.len() {
            assert!(
                parse(&wire[..cut], &Method::GET).unwrap().is_none(),
                "{cut}"
            );
        }
        let head = parse(wire, &Method::GET).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert!(head.body.is_done());
        for bad in [
            &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX\x01: y\r\n\r\n",
        ] {
            assert!(parse(bad, &Method::GET).is_err(), "{bad:?}");
        }
        let tunnel = b"HTTP/1.1 200 Connection Established\r\ncontent-length: 0\r\n\r\n";
        assert!(parse(tunnel, &Method::CONNECT).is_err());
        let refused = b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n";
        assert!(
            parse(refused, &Method::CONNECT)
                .unwrap()
                .unwrap()
                .keep_alive
        );
        let huge = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'x'; MAX_HEAD]].concat();
        assert!(parse(&huge, &Method::GET).is_err());
    }

    /// What a fuzz target does: a whole response from bytes, head then body, with no
    /// socket.
    #[test]
    fn a_whole_response_decodes_from_bytes() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     4\r\nwhol\r\n1\r\ne\r\n0\r\n\r\nHTTP/1.1 200 OK";
        let mut read = BytesMut::from(&wire[..]);
        let head = parse_head(&mut read, &mut HeaderNames::default(), &Method::GET)
            .unwrap()
            .unwrap();
        let mut body = head.body;
        let mut data = Vec::new();
        while let Some(frame) = body.decode(&mut read).unwrap() {
            data.extend_from_slice(&frame);
        }
        assert_eq!(data, b"whole");
        assert!(body.is_done() && head.keep_alive);
        // The next response on the connection stays in the buffer.
        assert_eq!(&read[..], b"HTTP/1.1 200 OK");
    }

    #[test]
    fn a_chunked_body_broken_in_the_bytes_that_came_with_the_head_fails_the_head() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice();
        for broken in [
            &b"zz\r\n"[..],
            b"fffffffffffffffff\r\nx\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\r\nq\r\n",
        ] {
            let wire = [head, broken].concat();
            assert!(
                matches!(parse(&wire, &Method::GET), Err(UpstreamError::Invalid(_))),
                "{broken:?}"
            );
        }
        // Cut short, the body is not judged yet: the rest may come.
        for partial in [&b""[..], b"5", b"5\r\nhel", b"5\r\nhello\r", b"0\r\nx: y"] {
            let wire = [head, partial].concat();
            assert!(parse(&wire, &Method::GET).unwrap().is_some(), "{partial:?}");
        }
        // Only chunked framing can be broken; a length or a HEAD body is not looked at.
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nzz\r\n";
        assert!(parse(wire, &Method::GET).unwrap().is_some());
        let wire = [head, b"zz\r\n"].concat();
        assert!(parse(&wire, &Method::HEAD).unwrap().is_some());
    }

    #[test]
    fn transfer_encoding_drops_the_content_length_and_the_connection() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse(wire, &Method::GET).unwrap().unwrap();
        assert!(!head.headers.contains_key(CONTENT_LENGTH));
        assert_eq!(head.headers["transfer-encoding"], "chunked");
        assert!(!head.body.is_done() && !head.body.ends_at_close());
        assert!(!head.keep_alive);
        // Alone, chunked keeps the connection.
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse(wire, &Method::GET).unwrap().unwrap().keep_alive);
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(
            parse(wire, &Method::GET),
            Err(UpstreamError::UnsupportedTransferCoding)
        ));
    }
}
