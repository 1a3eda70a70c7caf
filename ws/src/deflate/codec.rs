//! Raw DEFLATE for messages (RFC 7692 §7.2): compress with a sync flush and drop the final
//! `00 00 ff ff`; inflate after putting it back. Output goes into caller-owned buffers that grow
//! in bounded steps, and inflating stops as soon as the output passes the message limit (a small
//! frame that inflates past `max_message_size` costs at most the limit plus one step).
//!
//! The codec states are zlib-rs's through flate2 (pure Rust, window bits 9..=15 on both sides).
//! They are reset, never rebuilt, between messages and sessions: [`Pool`] keeps the states of
//! sessions that ended for the next ones, and shared-mode states live once per worker thread.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail a sync flush ends with, removed on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output growth per step while inflating or deflating.
const STEP: usize = 64 << 10;

/// Why a compressed message could not be inflated.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (close 1009).
    TooBig,
    /// It is not valid DEFLATE data (close 1007).
    Corrupt,
    /// No memory for the output (close 1011).
    NoMemory,
}

/// A compressor for one window size and level.
pub struct Deflater {
    c: Compress,
    window_bits: u8,
    level: u32,
}

impl Deflater {
    /// A raw-deflate compressor; `window_bits` 9..=15 (8 cannot be had from zlib: see
    /// [`crate::deflate::Agreed`] users, which then send uncompressed).
    pub fn new(level: u32, window_bits: u8) -> Self {
        Deflater {
            c: Compress::new_with_window_bits(Compression::new(level), false, window_bits),
            window_bits,
            level,
        }
    }

    /// The window this compressor uses.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// The level this compressor uses.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Appends `input` compressed (without the sync-flush tail) to `out`; then resets the
    /// context unless `keep_context`. `false` if memory for the output could not be had.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>, keep_context: bool) -> bool {
        // Room for the whole output at once (DEFLATE's worst case is a few bytes per 16 KiB
        // stored block): one call, so that the output does not depend on the room the caller's
        // buffer happened to have (zlib-rs cuts its blocks where the output space ends).
        if out
            .try_reserve(input.len() + input.len() / 64 + 128)
            .is_err()
        {
            return false;
        }
        let start_in = self.c.total_in();
        let ok = loop {
            let used = (self.c.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64
                && out
                    .try_reserve(STEP.min(input.len() - used + 64).max(64))
                    .is_err()
            {
                break false;
            }
            let Ok(status) = self
                .c
                .compress_vec(&input[used..], out, FlushCompress::Sync)
            else {
                break false;
            };
            let used = (self.c.total_in() - start_in) as usize;
            // Done when all input is in and the flush left room to spare (it did not stop
            // for lack of space), or had nothing left to write.
            if used == input.len() && (out.len() < out.capacity() || status == Status::BufError) {
                break true;
            }
        };
        if ok && out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if !keep_context || !ok {
            self.c.reset();
        }
        ok
    }
}

/// A decompressor (window 15: it reads any smaller window too).
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// A raw-deflate decompressor.
    pub fn new() -> Self {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }

    /// Appends the inflated `input` (a whole compressed message, without its tail) to `out`,
    /// at most `max` bytes; then resets the context unless `keep_context` (after an error it is
    /// reset anyway: the session ends).
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        keep_context: bool,
    ) -> Result<(), InflateError> {
        let start = out.len();
        let result = self
            .feed(input, out, start, max)
            .and_then(|()| self.feed(&TAIL, out, start, max));
        if !keep_context || result.is_err() {
            self.d.reset(false);
        }
        result
    }

    fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        start: usize,
        max: usize,
    ) -> Result<(), InflateError> {
        let in0 = self.d.total_in();
        loop {
            let used = (self.d.total_in() - in0) as usize;
            if out.len() - start > max {
                return Err(InflateError::TooBig);
            }
            if out.capacity() == out.len() {
                // One step at a time, never more than the limit allows (plus one byte, to see
                // that it is passed).
                let room = (max + 1 - (out.len() - start)).min(STEP.max(input.len()));
                out.try_reserve_exact(room)
                    .map_err(|_| InflateError::NoMemory)?;
            }
            let before = (out.len(), used);
            let status = self
                .d
                .decompress_vec(&input[used..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (self.d.total_in() - in0) as usize;
            if out.len() - start > max {
                return Err(InflateError::TooBig);
            }
            let progressed = (out.len(), used) != before;
            match status {
                Status::StreamEnd => return Ok(()),
                _ if used == input.len() && out.len() < out.capacity() => return Ok(()),
                _ if !progressed && out.len() < out.capacity() => {
                    return Err(InflateError::Corrupt)
                }
                _ => {}
            }
        }
    }
}

/// Codec states of ended sessions, kept for the next ones (bounded).
pub struct Pool {
    deflaters: Vec<Deflater>,
    inflaters: Vec<Inflater>,
}

/// Most states of each kind a pool keeps.
pub const POOL_MAX: usize = 256;

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    /// An empty pool (allocates nothing).
    pub const fn new() -> Self {
        Pool {
            deflaters: Vec::new(),
            inflaters: Vec::new(),
        }
    }

    /// A compressor for `level` and `window_bits`: a kept one if one matches, else a new one.
    pub fn deflater(&mut self, level: u32, window_bits: u8) -> Deflater {
        match self
            .deflaters
            .iter()
            .position(|d| d.window_bits == window_bits && d.level == level)
        {
            Some(i) => self.deflaters.swap_remove(i),
            None => Deflater::new(level, window_bits),
        }
    }

    /// A decompressor: a kept one, else a new one.
    pub fn inflater(&mut self) -> Inflater {
        self.inflaters.pop().unwrap_or_default()
    }

    /// Keeps `d` (reset) for a later session, within the bound.
    pub fn give_deflater(&mut self, mut d: Deflater) {
        if self.deflaters.len() < POOL_MAX {
            d.c.reset();
            self.deflaters.push(d);
        }
    }

    /// Keeps `i` (reset) for a later session, within the bound.
    pub fn give_inflater(&mut self, mut i: Inflater) {
        if self.inflaters.len() < POOL_MAX {
            i.d.reset(false);
            self.inflaters.push(i);
        }
    }

    /// States kept: (compressors, decompressors).
    pub fn len(&self) -> (usize, usize) {
        (self.deflaters.len(), self.inflaters.len())
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.deflaters.is_empty() && self.inflaters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0;
        while v.len() < n {
            v.extend_from_slice(
                format!("{{\"id\":{i},\"name\":\"user{}\",\"ok\":true}},", i % 97).as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trip_with_and_without_context() {
        let data = json(100_000);
        for keep in [false, true] {
            let mut d = Deflater::new(6, 15);
            let mut i = Inflater::new();
            for round in 0..3 {
                let mut z = Vec::new();
                assert!(d.compress(&data, &mut z, keep));
                assert!(!z.ends_with(&TAIL));
                assert!(z.len() < data.len() / 4, "compresses: {}", z.len());
                let mut back = Vec::new();
                i.inflate(&z, &mut back, 1 << 20, keep).unwrap();
                assert_eq!(back, data, "round {round}, keep {keep}");
            }
        }
    }

    #[test]
    fn small_windows_and_empty_messages() {
        for bits in 9..=15 {
            let data = json(10_000);
            let mut z = Vec::new();
            assert!(Deflater::new(6, bits).compress(&data, &mut z, false));
            let mut back = Vec::new();
            Inflater::new()
                .inflate(&z, &mut back, 1 << 20, false)
                .unwrap();
            assert_eq!(back, data);
        }
        let mut z = Vec::new();
        assert!(Deflater::new(6, 15).compress(b"", &mut z, false));
        let mut back = Vec::new();
        Inflater::new().inflate(&z, &mut back, 10, false).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut z = Vec::new();
        assert!(Deflater::new(9, 15).compress(&zeros, &mut z, false));
        assert!(z.len() < 20 << 10, "10 MiB of zeros in {} bytes", z.len());
        let mut out = Vec::new();
        let err = Inflater::new().inflate(&z, &mut out, 1 << 20, false);
        assert_eq!(err, Err(InflateError::TooBig));
        assert!(
            out.capacity() <= (1 << 20) + STEP + 1,
            "held {}",
            out.capacity()
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        let err = Inflater::new().inflate(&[0xff; 64], &mut out, 1 << 20, false);
        assert_eq!(err, Err(InflateError::Corrupt));
    }

    #[test]
    fn the_pool_reuses_states() {
        let mut pool = Pool::new();
        let d = pool.deflater(6, 12);
        pool.give_deflater(d);
        pool.give_inflater(Inflater::new());
        assert_eq!(pool.len(), (1, 1));
        let d = pool.deflater(6, 12);
        assert_eq!(d.window_bits(), 12);
        assert_eq!(pool.len(), (0, 1));
        let _ = pool.deflater(6, 13);
        let _ = pool.inflater();
        assert!(pool.is_empty());
    }
}
