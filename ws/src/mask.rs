//! Payload (un)masking (RFC 6455 §5.3), in place, a machine word at a time.
//!
//! Masking is an XOR with a 4-byte key repeated; the key's phase carries over when a payload
//! arrives in several pieces, so every call takes and returns the phase.

/// XORs `data` in place with `key`, starting at byte `phase` (0..4) of the key.
/// Returns the phase after the last byte, for the next piece of the same payload.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let _ = (data, key, phase);
    todo!("ws: apply_mask")
}
