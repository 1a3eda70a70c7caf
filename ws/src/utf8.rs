//! Incremental UTF-8 validation across message fragments: a text message is rejected (1007) at
//! its first invalid byte, not at its end, and a code point split across fragments is carried.
//!
//! The bulk of every piece is checked by `core::str::from_utf8` (which has a fast ASCII path). Its
//! error tells apart "invalid here" (`error_len() == Some`) from "the input ends inside a code point
//! that is still a valid prefix" (`error_len() == None`); only the latter, at most 3 bytes, is
//! carried to the next piece.

/// Validator state for one text message.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    /// Bytes of an incomplete code point at the end of the last piece.
    carry: [u8; 4],
    carry_len: u8,
}

/// The input holds a byte sequence that can never be valid UTF-8.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Encoded length of the code point starting with `lead` (0 if `lead` cannot start one).
fn width(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any carried state: the start of a new message.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// Feeds the next piece. Errors as soon as an invalid sequence is seen (an incomplete code point
    /// at the end of the piece is fine and carried over).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = bytes;
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let need = width(self.carry[0]) - have;
            let take = need.min(rest.len());
            self.carry[have..have + take].copy_from_slice(&rest[..take]);
            let now = have + take;
            rest = &rest[take..];
            match core::str::from_utf8(&self.carry[..now]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() && take < need => {
                    self.carry_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match core::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Ends the message: errors if a code point is left incomplete. The validator is then reset.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let incomplete = self.carry_len != 0;
        self.carry_len = 0;
        if incomplete {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_ok(pieces: &[&[u8]]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        for p in pieces {
            v.feed(p)?;
        }
        v.finish()
    }

    #[test]
    fn code_points_split_at_every_position_are_accepted() {
        let text = "κόσμε €𝄞 a\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}".as_bytes();
        for split in 0..=text.len() {
            assert_eq!(
                pieces_ok(&[&text[..split], &text[split..]]),
                Ok(()),
                "split {split}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(pieces_ok(&bytes), Ok(()));
    }

    #[test]
    fn fails_at_the_first_invalid_byte_not_at_the_end() {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        // 0xED 0xA0 starts a UTF-16 surrogate: invalid as soon as the second byte is seen.
        v.feed(&[0xED]).unwrap();
        assert_eq!(v.feed(&[0xA0]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xF4, 0x90]), Err(InvalidUtf8), "above U+10FFFF");
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xFF]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        v.feed(&[0xE0]).unwrap();
        assert_eq!(v.feed(&[0x80]), Err(InvalidUtf8), "overlong 3-byte form");
    }

    #[test]
    fn incomplete_code_point_at_message_end_is_invalid() {
        assert_eq!(pieces_ok(&[&[0xE2, 0x82]]), Err(InvalidUtf8));
        assert_eq!(pieces_ok(&[b"ab", &[0xF0], &[0x9D]]), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_every_two_byte_split_of_sampled_inputs() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..3000 {
            let mut buf = [0u8; 12];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bias towards bytes that matter for UTF-8.
                *b = match seed % 4 {
                    0 => (seed >> 8) as u8 & 0x7f,
                    1 => 0x80 | ((seed >> 8) as u8 & 0x3f),
                    _ => (seed >> 8) as u8,
                };
            }
            let expected = core::str::from_utf8(&buf).is_ok();
            for split in 0..=buf.len() {
                let got = pieces_ok(&[&buf[..split], &buf[split..]]).is_ok();
                assert_eq!(got, expected, "{buf:x?} split {split}");
            }
        }
    }
}
