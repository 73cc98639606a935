//! Cutting what the pipes deliver into records: one per line, a trailing `\r` removed,
//! and a line longer than [`MAX_LINE`] cut into pieces of at most that many bytes. A cut
//! never splits a UTF-8 character of valid UTF-8 (it backs off by up to 3 bytes), so
//! pieces are 16,381..=16,384 bytes except the last.

use super::attribution::State;
use super::MAX_LINE;

// === impl State: lines (the state itself is in `attribution`) ===

impl State {
    /// Splits bytes read from pipe `i` into lines of at most [`MAX_LINE`] bytes.
    pub(super) fn feed(&mut self, i: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let pending = self.pipes[i].pending.len();
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) if pending + pos <= MAX_LINE => {
                    if pending == 0 {
                        self.line(i, strip_cr(&data[..pos]));
                    } else {
                        let mut line = std::mem::take(&mut self.pipes[i].pending);
                        line.extend_from_slice(&data[..pos]);
                        self.line(i, strip_cr(&line));
                        line.clear();
                        self.pipes[i].pending = line;
                    }
                    data = &data[pos + 1..];
                }
                _ => {
                    // No newline within MAX_LINE: keep the bytes, or cut a piece.
                    let room = MAX_LINE - pending;
                    if data.len() <= room {
                        self.pipes[i].pending.extend_from_slice(data);
                        return;
                    }
                    let mut piece = std::mem::take(&mut self.pipes[i].pending);
                    piece.extend_from_slice(&data[..room]);
                    data = &data[room..];
                    // Do not split a UTF-8 character: the next piece must not start
                    // with a continuation byte (back off up to 3 bytes).
                    let is_cont = |b: u8| b & 0xC0 == 0x80;
                    let mut cut = MAX_LINE;
                    if is_cont(data[0]) {
                        // The character's lead byte is one of the last 3; it starts the
                        // next piece. No lead byte there: not UTF-8, cut anywhere.
                        let mut lead = MAX_LINE - 1;
                        while lead > MAX_LINE - 3 && is_cont(piece[lead]) {
                            lead -= 1;
                        }
                        if !is_cont(piece[lead]) {
                            cut = lead;
                        }
                    }
                    let rest = piece.split_off(cut);
                    self.line(i, &piece);
                    piece.clear();
                    piece.extend_from_slice(&rest);
                    self.pipes[i].pending = piece;
                }
            }
        }
    }

    /// Emits the partial line of pipe `i`, if any, under the current context.
    pub(super) fn flush_partial(&mut self, i: usize) {
        if !self.pipes[i].pending.is_empty() {
            let mut line = std::mem::take(&mut self.pipes[i].pending);
            self.line(i, &line);
            line.clear();
            self.pipes[i].pending = line;
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
