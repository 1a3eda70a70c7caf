//! Incremental UTF-8 validation across message fragments: a text message is rejected (1007) at
//! its first invalid byte, not at its end, and a code point split across fragments is carried.

/// Validator state for one text message.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    _state: u32,
}

/// The input holds a byte sequence that can never be valid UTF-8.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds the next piece. Errors as soon as an invalid sequence is seen (an incomplete code point
    /// at the end of the piece is fine and carried over).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let _ = bytes;
        todo!("ws: Utf8Validator::feed")
    }
    /// Ends the message: errors if a code point is left incomplete.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        todo!("ws: Utf8Validator::finish")
    }
}
