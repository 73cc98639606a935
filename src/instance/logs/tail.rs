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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
