//! Payload (un)masking (RFC 6455 §5.3), in place, many bytes at a time.
//!
//! Masking is an XOR with a 4-byte key repeated; the key's phase carries over when a payload
//! arrives in several pieces, so every call takes and returns the phase.
//!
//! Speed without `unsafe`: the key is rotated to the current phase and spread over a 64-byte block;
//! XOR-ing 64-byte chunks against that block is a loop LLVM turns into SIMD loads/XORs/stores
//! (SSE2 on any x86-64, NEON on aarch64) for any alignment of `data`. The tail is done bytewise.

/// Bytes XOR-ed per inner loop step: a multiple of every common SIMD width.
const BLOCK: usize = 64;

/// XORs `data` in place with `key`, starting at byte `phase` (0..4) of the key.
/// Returns the phase after the last byte, for the next piece of the same payload.
///
/// Masking and unmasking are the same operation.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let key = rotate_key(key, phase);
    if data.len() < 16 {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    } else {
        let word = u32::from_ne_bytes(key);
        let mut block = [0u8; BLOCK];
        for chunk in block.chunks_exact_mut(4) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let mut chunks = data.chunks_exact_mut(BLOCK);
        for chunk in &mut chunks {
            for (b, k) in chunk.iter_mut().zip(block.iter()) {
                *b ^= *k;
            }
        }
        // BLOCK is a multiple of 4, so the tail starts at key phase 0 again.
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
    (phase + data.len()) & 3
}

/// The key as seen from byte `phase` of it.
#[inline]
fn rotate_key(key: [u8; 4], phase: usize) -> [u8; 4] {
    [key[phase & 3], key[(phase + 1) & 3], key[(phase + 2) & 3], key[(phase + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[(phase + i) % 4];
        }
    }

    #[test]
    fn matches_bytewise_reference_for_all_lengths_offsets_and_phases() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..8 {
            for len in 0..(src.len() - offset) {
                for phase in 0..4 {
                    let mut fast = src.clone();
                    let mut slow = src.clone();
                    let end = apply_mask(&mut fast[offset..offset + len], key, phase);
                    reference(&mut slow[offset..offset + len], key, phase);
                    assert_eq!(fast, slow, "offset {offset} len {len} phase {phase}");
                    assert_eq!(end, (phase + len) % 4);
                }
            }
        }
    }

    #[test]
    fn pieces_carry_the_phase() {
        let key = [1, 2, 3, 4];
        let src: Vec<u8> = (0..200u8).collect();
        let mut whole = src.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = src.clone();
        let mut phase = 0;
        for range in [0..1, 1..3, 3..70, 70..71, 71..200] {
            phase = apply_mask(&mut pieces[range], key, phase);
        }
        assert_eq!(whole, pieces);
    }
}
