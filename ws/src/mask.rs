//! Payload (un)masking (RFC 6455 §5.3), in place, many bytes at a time.
//!
//! Masking is an XOR with a 4-byte key repeated; the key's phase carries over when a payload
//! arrives in several pieces, so every call takes and returns the phase.
//!
//! Speed without `unsafe`: the key is rotated to the current phase and spread over a 64-byte block;
//! XOR-ing 64-byte chunks against that block is a loop LLVM turns into SIMD loads/XORs/stores
//! (SSE2 on any x86-64, NEON on aarch64) for any alignment of `data`. What is left (< 64 bytes) goes
//! 8 bytes at a time as `u64` words, then bytewise.

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
    let mut rest: &mut [u8] = data;
    if rest.len() >= BLOCK {
        let mut block = [0u8; BLOCK];
        for chunk in block.chunks_exact_mut(4) {
            chunk.copy_from_slice(&key);
        }
        let mut blocks = rest.chunks_exact_mut(BLOCK);
        for chunk in &mut blocks {
            for (b, k) in chunk.iter_mut().zip(block.iter()) {
                *b ^= *k;
            }
        }
        rest = blocks.into_remainder();
    }
    // Every step so far was a multiple of 4 bytes: the key phase is unchanged.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes(w.try_into().expect("8 bytes")) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
    (phase + data.len()) & 3
}

/// The key as seen from byte `phase` of it.
#[inline]
fn rotate_key(key: [u8; 4], phase: usize) -> [u8; 4] {
    [
        key[phase & 3],
        key[(phase + 1) & 3],
        key[(phase + 2) & 3],
        key[(phase + 3) & 3],
    ]
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
