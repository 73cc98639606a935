//! How a response's body is framed and whether its connection stays open, decided
//! from the headers as the head parser goes by them (RFC 9112 §6.3 and §9.3).
//!
//! Transfer codings: only `chunked`, applied once, is accepted. A response in another
//! coding (`gzip, chunked`, `identity`, ...) is refused as invalid rather than
//! forwarded: decoding the chunks alone would hand the client a body still in a coding
//! nothing tells it about (`Transfer-Encoding` is hop-by-hop and cannot travel to an
//! HTTP/2 client), and no instance needs one. nginx refuses them the same way.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, StatusCode, Version};

use super::decode::BodyDecoder;
use super::UpstreamError;

/// What the `Transfer-Encoding` lines listed, all lines read as one list.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codings {
    /// No `Transfer-Encoding` line.
    Absent,
    /// A line without a coding in it, so far.
    Empty,
    /// `chunked`, once, and nothing else.
    Chunked,
    /// Any other coding, or `chunked` twice.
    Unsupported,
}

/// The headers that frame a response's body and say whether its connection stays open,
/// noted while the head is read into its map: three lookups in the map afterwards
/// (a hash and a probe each) cost more than comparing each name as it goes by, which
/// for these standard names is an integer comparison.
#[derive(Debug)]
pub struct Framers {
    transfer_encoding: Codings,
    /// Every `Content-Length` item agreed so far, or why they did not. An error waits
    /// until [`Framers::decoder`]: a `Transfer-Encoding`, or a response without a body,
    /// makes the length irrelevant. `Ok(None)`: no `Content-Length` line.
    content_length: Result<Option<u64>, &'static str>,
    connection_close: bool,
    connection_keep_alive: bool,
}

impl Default for Framers {
    fn default() -> Self {
        Framers {
            transfer_encoding: Codings::Absent,
            content_length: Ok(None),
            connection_close: false,
            connection_keep_alive: false,
        }
    }
}

impl Framers {
    /// Notes one header line of the response head.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == TRANSFER_ENCODING {
            self.note_codings(value.as_bytes());
        } else if name == CONTENT_LENGTH {
            self.note_length(value.as_bytes());
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                }
            }
        }
    }

    fn note_codings(&mut self, value: &[u8]) {
        if self.transfer_encoding == Codings::Absent {
            self.transfer_encoding = Codings::Empty;
        }
        // Empty list items are allowed (RFC 9110 §5.6.1) and say nothing.
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.transfer_encoding = match self.transfer_encoding {
                Codings::Absent | Codings::Empty if chunked => Codings::Chunked,
                _ => Codings::Unsupported,
            };
        }
    }

    fn note_length(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let Ok(agreed) = self.content_length else {
                return;
            };
            let n = std::str::from_utf8(item.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            self.content_length = match (n, agreed) {
                (None, _) => Err("invalid content-length"),
                (Some(n), Some(l)) if l != n => Err("conflicting content-length"),
                (Some(n), _) => Ok(Some(n)),
            };
        }
    }

    /// How the body is read: RFC 9112 §6.3, in its order.
    pub fn decoder(
        &self,
        method: &Method,
        status: StatusCode,
        version: Version,
    ) -> Result<BodyDecoder, UpstreamError> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(BodyDecoder::done());
        }
        match self.transfer_encoding {
            Codings::Absent => {}
            // RFC 9112 §6.1: HTTP/1.0 has no transfer codings, so the framing is faulty.
            _ if version == Version::HTTP_10 => {
                return Err(UpstreamError::Invalid(
                    "transfer-encoding in an HTTP/1.0 response",
                ))
            }
            Codings::Chunked => return Ok(BodyDecoder::chunked()),
            Codings::Empty | Codings::Unsupported => {
                return Err(UpstreamError::UnsupportedTransferCoding)
            }
        }
        Ok(match self.content_length.map_err(UpstreamError::Invalid)? {
            Some(0) => BodyDecoder::done(),
            Some(n) => BodyDecoder::length(n),
            None => BodyDecoder::to_close(),
        })
    }

    /// Whether a `Content-Length` came with a `Transfer-Encoding`, which overrides it:
    /// the length must not be passed on (RFC 9112 §6.3).
    pub fn length_overridden(&self) -> bool {
        self.transfer_encoding != Codings::Absent && self.content_length != Ok(None)
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it unless
    /// told `keep-alive`. A response framed two ways closes it too: that is how
    /// responses are split, and what follows it on the connection cannot be trusted.
    pub fn keep_alive(&self, version: Version) -> bool {
        !self.connection_close
            && (version != Version::HTTP_10 || self.connection_keep_alive)
            && !self.length_overridden()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// What the head reader notes, from a whole map.
    fn framers(map: &HeaderMap) -> Framers {
        let mut framers = Framers::default();
        for (name, value) in map {
            framers.note(name, value);
        }
        framers
    }

    fn framing(
        method: &Method,
        status: StatusCode,
        map: &HeaderMap,
    ) -> Result<BodyDecoder, UpstreamError> {
        framers(map).decoder(method, status, Version::HTTP_11)
    }

    fn keep_alive(version: Version, map: &HeaderMap) -> bool {
        framers(map).keep_alive(version)
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let ok = StatusCode::OK;
        let cl = headers(&[("content-length", "5")]);
        let done = BodyDecoder::done();
        assert_eq!(
            framing(&Method::POST, ok, &cl).unwrap(),
            BodyDecoder::length(5)
        );
        assert_eq!(framing(&Method::HEAD, ok, &cl).unwrap(), done);
        assert_eq!(
            framing(&Method::GET, StatusCode::NO_CONTENT, &cl).unwrap(),
            done
        );
        assert_eq!(
            framing(&Method::GET, StatusCode::NOT_MODIFIED, &cl).unwrap(),
            done
        );
        assert_eq!(
            framing(&Method::GET, ok, &HeaderMap::new()).unwrap(),
            BodyDecoder::to_close()
        );
        let same = headers(&[("content-length", "5, 5")]);
        assert_eq!(
            framing(&Method::GET, ok, &same).unwrap(),
            BodyDecoder::length(5)
        );
        for bad in ["5, 6", "-1", "+5", "", "0x5"] {
            let h = headers(&[("content-length", bad)]);
            assert!(framing(&Method::GET, ok, &h).is_err(), "{bad:?}");
            // A bad length does not matter where no length is read.
            assert_eq!(framing(&Method::HEAD, ok, &h).unwrap(), done);
        }
        let lines = headers(&[("content-length", "7"), ("content-length", "7")]);
        assert_eq!(
            framing(&Method::GET, ok, &lines).unwrap(),
            BodyDecoder::length(7)
        );
        let lines = headers(&[("content-length", "7"), ("content-length", "8")]);
        assert!(framing(&Method::GET, ok, &lines).is_err());
    }

    #[test]
    fn chunked_overrides_a_length_which_is_then_dropped_with_the_connection() {
        let ok = StatusCode::OK;
        for both in [
            headers(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            // Even an invalid length before it.
            headers(&[("content-length", "x"), ("transfer-encoding", "Chunked")]),
        ] {
            assert_eq!(
                framing(&Method::GET, ok, &both).unwrap(),
                BodyDecoder::chunked()
            );
            assert!(framers(&both).length_overridden());
            assert!(!keep_alive(Version::HTTP_11, &both));
        }
        let alone = headers(&[("transfer-encoding", "chunked")]);
        assert!(!framers(&alone).length_overridden());
        assert!(keep_alive(Version::HTTP_11, &alone));
        let length = headers(&[("content-length", "5")]);
        assert!(!framers(&length).length_overridden());
    }

    #[test]
    fn only_chunked_alone_is_an_accepted_transfer_coding() {
        let ok = StatusCode::OK;
        for accepted in [
            &[("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", " CHUNKED ")],
            &[("transfer-encoding", ", chunked,")],
            &[("transfer-encoding", ""), ("transfer-encoding", "chunked")],
        ] {
            let h = headers(accepted);
            assert_eq!(
                framing(&Method::GET, ok, &h).unwrap(),
                BodyDecoder::chunked(),
                "{accepted:?}"
            );
        }
        for refused in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "chunked, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "")],
            &[
                ("transfer-encoding", "gzip, chunked"),
                ("content-length", "5"),
            ],
        ] {
            let h = headers(refused);
            assert!(
                matches!(
                    framing(&Method::GET, ok, &h),
                    Err(UpstreamError::UnsupportedTransferCoding)
                ),
                "{refused:?}"
            );
            // Without a body there is nothing in a coding to hand on.
            assert_eq!(framing(&Method::HEAD, ok, &h).unwrap(), BodyDecoder::done());
        }
        // HTTP/1.0 has no transfer codings at all.
        let h = headers(&[("transfer-encoding", "chunked")]);
        assert!(framers(&h)
            .decoder(&Method::GET, ok, Version::HTTP_10)
            .is_err());
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        assert!(keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keep_alive(
            Version::HTTP_10,
            &headers(&[("connection", "Keep-Alive")])
        ));
        assert!(!keep_alive(
            Version::HTTP_11,
            &headers(&[("connection", "foo, Close")])
        ));
        // `close` wins wherever it is.
        assert!(!keep_alive(
            Version::HTTP_10,
            &headers(&[("connection", "close"), ("connection", "keep-alive")])
        ));
    }
}
