//! The invocation's log tail: the last 4 KiB of what its log said, for the
//! `X-Scf-Log-Result` header of a `X-Scf-Log-Type: Tail` invocation, base64-encoded.

use super::TAIL_BYTES;

/// The last [`TAIL_BYTES`] of an invocation's log, each line followed by `\n`.
#[derive(Default)]
pub(super) struct Tail {
    buf: String,
}

impl Tail {
    pub(super) fn push(&mut self, line: &str) {
        self.buf.push_str(line);
        self.buf.push('\n');
        // Trim now and then, keeping at most 2x the tail: amortised O(1) per byte.
        if self.buf.len() > 2 * TAIL_BYTES {
            self.keep_last(TAIL_BYTES);
        }
    }

    fn keep_last(&mut self, n: usize) {
        if self.buf.len() > n {
            let mut start = self.buf.len() - n;
            while !self.buf.is_char_boundary(start) {
                start += 1;
            }
            self.buf.drain(..start);
        }
    }

    pub(super) fn finish(mut self) -> String {
        self.keep_last(TAIL_BYTES);
        self.buf
    }
}

/// Standard base64 (RFC 4648 alphabet) with `=` padding.
pub fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests;
