//! The response body decoder: by length, chunked, or up to the close of the
//! connection, fed with whatever bytes have arrived.
//!
//! It works on a buffer, not a socket, so tests and a fuzzer can drive it with any
//! bytes. Data comes out as slices of the buffer, never copied.

use bytes::{Buf, Bytes, BytesMut};
use http_body::SizeHint;

use super::UpstreamError;

/// A chunk-size line or trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a response body stands, and so how its next bytes are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BodyDecoder {
    state: Decode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decode {
    Length(u64),
    Chunked(Chunk),
    ToClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers(usize),
}

/// What the chunked framing at the front of the buffer says to do next.
enum Step {
    /// Skip this many bytes of framing.
    Framing(usize),
    /// This many bytes of data come first.
    Data(usize),
    /// More bytes are needed.
    More,
    /// The body ends after this many bytes (the empty line closing the trailers).
    End(usize),
}

impl Chunk {
    /// Reads the framing at the front of `buf` and moves on past it.
    fn step(&mut self, buf: &[u8]) -> Result<Step, UpstreamError> {
        match *self {
            Chunk::Size => {
                let Some(end) = line_end(buf) else {
                    return too_long(buf.len(), MAX_CHUNK_LINE, "chunk size line too long");
                };
                // Whether the line came in one read or many, the same limit.
                if end + 2 > MAX_CHUNK_LINE {
                    return Err(UpstreamError::Invalid("chunk size line too long"));
                }
                let size = chunk_size(&buf[..end])?;
                *self = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
                Ok(Step::Framing(end + 2))
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64);
                *self = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                Ok(Step::Data(n as usize))
            }
            Chunk::DataEnd => match buf.get(..2) {
                None => Ok(Step::More),
                Some(b"\r\n") => {
                    *self = Chunk::Size;
                    Ok(Step::Framing(2))
                }
                Some(_) => Err(UpstreamError::Invalid("chunk not followed by CRLF")),
            },
            // Trailers are read and dropped: the gateway's clients get none.
            Chunk::Trailers(seen) => {
                let Some(end) = line_end(buf) else {
                    return too_long(seen + buf.len(), MAX_TRAILERS, "trailers too long");
                };
                if seen + end + 2 > MAX_TRAILERS {
                    return Err(UpstreamError::Invalid("trailers too long"));
                }
                if end == 0 {
                    return Ok(Step::End(2));
                }
                *self = Chunk::Trailers(seen + end + 2);
                Ok(Step::Framing(end + 2))
            }
        }
    }
}

impl BodyDecoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> BodyDecoder {
        let state = if n == 0 {
            Decode::Done
        } else {
            Decode::Length(n)
        };
        BodyDecoder { state }
    }

    /// A chunked body, from its first chunk-size line.
    pub fn chunked() -> BodyDecoder {
        BodyDecoder {
            state: Decode::Chunked(Chunk::Size),
        }
    }

    /// A body that ends when the instance closes the connection.
    pub fn to_close() -> BodyDecoder {
        BodyDecoder {
            state: Decode::ToClose,
        }
    }

    /// No body (or none left).
    pub fn done() -> BodyDecoder {
        BodyDecoder {
            state: Decode::Done,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, Decode::Done)
    }

    /// Whether only the close of the connection ends the body.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.state, Decode::ToClose)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of body data in `read` (split off its front, along with the
    /// framing before it); `Ok(None)` when more bytes are needed or the body has ended
    /// (see [`BodyDecoder::is_done`]). Bytes after the body's end stay in `read`.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            match &mut self.state {
                Decode::Done => return Ok(None),
                Decode::ToClose => {
                    return Ok((!read.is_empty()).then(|| read.split().freeze()));
                }
                Decode::Length(left) => {
                    if read.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(read.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = Decode::Done;
                    }
                    return Ok(Some(read.split_to(n as usize).freeze()));
                }
                Decode::Chunked(chunk) => match chunk.step(read)? {
                    Step::Framing(n) => read.advance(n),
                    Step::Data(n) => return Ok(Some(read.split_to(n).freeze())),
                    Step::More => return Ok(None),
                    Step::End(n) => {
                        read.advance(n);
                        self.state = Decode::Done;
                    }
                },
            }
        }
    }

    /// Checks the framing of the body bytes already in `buf` (those that came with the
    /// head), consuming nothing: a chunked body broken there is refused while the
    /// response can still be answered with an error, before its head is passed on.
    pub fn check(&self, buf: &[u8]) -> Result<(), UpstreamError> {
        let Decode::Chunked(mut chunk) = self.state else {
            return Ok(());
        };
        let mut at = 0;
        loop {
            match chunk.step(&buf[at..])? {
                Step::Framing(n) | Step::Data(n) => at += n,
                Step::More | Step::End(_) => return Ok(()),
            }
        }
    }

    /// The connection reached its end: the end of a body read to the close, else a
    /// body cut short.
    pub fn end_of_stream(&mut self) -> Result<(), UpstreamError> {
        match self.state {
            Decode::ToClose | Decode::Done => {
                self.state = Decode::Done;
                Ok(())
            }
            _ => Err(UpstreamError::ClosedMidBody),
        }
    }
}

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn too_long(len: usize, limit: usize, what: &'static str) -> Result<Step, UpstreamError> {
    if len > limit {
        Err(UpstreamError::Invalid(what))
    } else {
        Ok(Step::More)
    }
}

/// The hex size at the start of a chunk-size line (extensions after `;` are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(UpstreamError::Invalid("invalid chunk size"));
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char)
            .to_digit(16)
            .ok_or(UpstreamError::Invalid("invalid chunk size"))?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes: the frames, and where it stopped.
    fn feed(
        mut decoder: BodyDecoder,
        wire: &[u8],
        step: usize,
    ) -> (Vec<u8>, Result<BodyDecoder, UpstreamError>) {
        let mut read = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step.max(1)) {
            read.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut read) {
                    Ok(Some(frame)) => data.extend_from_slice(&frame),
                    Ok(None) => break,
                    Err(e) => return (data, Err(e)),
                }
            }
        }
        (data, Ok(decoder))
    }

    fn body(
        decoder: BodyDecoder,
        wire: &[u8],
    ) -> (Vec<Vec<u8>>, Result<BodyDecoder, UpstreamError>) {
        let mut decoder = decoder;
        let mut read = BytesMut::from(wire);
        let mut frames = Vec::new();
        loop {
            match decoder.decode(&mut read) {
                Ok(Some(data)) => frames.push(data.to_vec()),
                Ok(None) => return (frames, Ok(decoder)),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n0\r\nx-t: 1\r\n\r\n";
        let (frames, end) = body(BodyDecoder::chunked(), wire);
        assert_eq!(frames, vec![b"hello".to_vec(), b" ".to_vec()]);
        assert!(end.unwrap().is_done());
        // Cut anywhere, it waits for more instead of failing.
        let (frames, end) = body(BodyDecoder::chunked(), b"a\r\n01234");
        assert_eq!(frames, vec![b"01234".to_vec()]);
        let expect = BodyDecoder {
            state: Decode::Chunked(Chunk::Data(5)),
        };
        assert_eq!(end.unwrap(), expect);
        let (_, end) = body(BodyDecoder::chunked(), b"5\r\nhelloXX");
        assert!(end.is_err());
        let (_, end) = body(BodyDecoder::chunked(), b"zz\r\n");
        assert!(end.is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(body(BodyDecoder::chunked(), &long).1.is_err());
        let trailers = [
            b"0\r\n".as_slice(),
            &b"x: y\r\n".repeat(MAX_TRAILERS / 6 + 1),
        ]
        .concat();
        assert!(body(BodyDecoder::chunked(), &trailers).1.is_err());
    }

    /// The same bytes, fed in pieces of every size, decode to the same body and stop
    /// where it ends; what follows the body stays for the next response.
    #[test]
    fn chunked_bodies_decode_whatever_the_pieces_they_arrive_in() {
        let wire = b"3\r\nabc\r\n10;x=\"y\"\r\n0123456789abcdef\r\n0\r\nt: 1\r\n\r\nHTTP/1.1";
        for step in 1..wire.len() {
            let (data, end) = feed(BodyDecoder::chunked(), wire, step);
            assert_eq!(data, b"abc0123456789abcdef", "step {step}");
            assert!(end.unwrap().is_done(), "step {step}");
        }
        let mut read = BytesMut::from(&wire[..]);
        let mut decoder = BodyDecoder::chunked();
        while decoder.decode(&mut read).unwrap().is_some() {}
        assert_eq!(&read[..], b"HTTP/1.1");
    }

    /// `check` judges the bytes it is given as `decode` would, without consuming them.
    #[test]
    fn check_finds_what_decode_would_fail_on() {
        let cases: [&[u8]; 8] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\nextra",
            b"5\r\nhel",
            b"zz\r\n",
            b"fffffffffffffffff\r\n",
            b"5\r\nhelloXX",
            b"1\r\na\r\n;\r\n",
            b"3;x=y\r\nabc\r\n0\r\nt: 1\r\n",
        ];
        for wire in cases {
            let decoder = BodyDecoder::chunked();
            let checked = decoder.check(wire);
            assert_eq!(checked.is_err(), body(decoder, wire).1.is_err(), "{wire:?}");
        }
        assert!(BodyDecoder::length(3).check(b"zz\r\n").is_ok());
        assert!(BodyDecoder::to_close().check(b"zz\r\n").is_ok());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(BodyDecoder::chunked().check(&long).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (frames, end) = body(BodyDecoder::length(3), b"abcdef");
        assert_eq!(frames, vec![b"abc".to_vec()]);
        assert!(end.unwrap().is_done());
        assert!(BodyDecoder::length(0).is_done());
    }

    #[test]
    fn the_end_of_the_stream_ends_only_a_body_read_to_the_close() {
        let (frames, end) = body(BodyDecoder::to_close(), b"abc");
        assert_eq!(frames, vec![b"abc".to_vec()]);
        let mut decoder = end.unwrap();
        assert!(decoder.end_of_stream().is_ok());
        assert!(decoder.is_done());
        assert!(BodyDecoder::length(3).end_of_stream().is_err());
        assert!(BodyDecoder::chunked().end_of_stream().is_err());
    }
}
