//! permessage-deflate (RFC 7692), once for both data paths: negotiated at the upgrade
//! ([`offer`]), applied by the [`Session`](crate::Session) to whole messages ([`codec`]).
//!
//! **Modes**, in the spirit of uWebSockets' presets, because a compressor with context takeover
//! costs real memory per connection (zlib's defaults: ~256 KiB to compress, ~40 KiB to inflate):
//! - [`DeflateMode::Shared`] (the default): no context takeover either way, so no codec state per
//!   connection at all; each worker thread keeps one inflater and one compressor per window
//!   size, reset after every message. A message sent to many sessions compresses the same way
//!   for each. Browsers offer the extension on every connection; this mode answers it at zero
//!   memory per idle connection, which is why it is the default.
//! - [`DeflateMode::Dedicated`]: context takeover where the client allows it (better ratios for
//!   streams of similar messages), a compressor and an inflater per session, taken from and given
//!   back to the worker thread's [`codec::Pool`]; `window_bits` bounds both windows (the client's
//!   through `client_max_window_bits` when it offers that parameter).
//! - [`DeflateMode::Off`]: offers are declined.
//!
//! Messages shorter than [`DeflateConfig::threshold`] go out uncompressed (a per-message choice
//! RFC 7692 allows); so does everything when the client limits our window to 8 bits, which
//! zlib cannot produce. Inflated sizes count against `max_message_size` while inflating.

pub mod codec;
pub mod offer;

use std::cell::RefCell;

pub use codec::{Deflater, InflateError, Inflater, Pool};
pub use offer::{answer, negotiate, Agreed};

/// How the server answers permessage-deflate offers (see the module documentation).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeflateMode {
    /// Decline every offer.
    Off,
    /// No context takeover, no state per connection (the default).
    Shared,
    /// Context takeover where allowed; a compressor and an inflater per session, with windows
    /// of at most `window_bits` (9..=15).
    Dedicated {
        /// Largest window, both directions (9..=15; 15: zlib's default).
        window_bits: u8,
    },
}

impl std::str::FromStr for DeflateMode {
    type Err = String;
    /// `off`, `shared`, `dedicated` (window 15) or `dedicated:N` (N in 9..=15).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("unknown deflate mode {s:?} (off, shared, dedicated or dedicated:9..15)");
        match s {
            "off" => Ok(DeflateMode::Off),
            "shared" => Ok(DeflateMode::Shared),
            "dedicated" => Ok(DeflateMode::Dedicated { window_bits: 15 }),
            _ => match s.strip_prefix("dedicated:").map(str::parse::<u8>) {
                Some(Ok(window_bits)) if (9..=15).contains(&window_bits) => {
                    Ok(DeflateMode::Dedicated { window_bits })
                }
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for DeflateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeflateMode::Off => f.write_str("off"),
            DeflateMode::Shared => f.write_str("shared"),
            DeflateMode::Dedicated { window_bits } => write!(f, "dedicated:{window_bits}"),
        }
    }
}

/// permessage-deflate settings (part of [`crate::Settings`]: a reload applies to new sessions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// How offers are answered (default [`DeflateMode::Shared`]).
    pub mode: DeflateMode,
    /// Messages shorter than this go out uncompressed (default 1 KiB).
    pub threshold: usize,
    /// zlib compression level, 0..=9 (default 6; 1 is faster, 9 smaller).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: DeflateMode::Shared,
            threshold: 1024,
            level: 6,
        }
    }
}

impl DeflateConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let DeflateMode::Dedicated { window_bits } = self.mode {
            if !(9..=15).contains(&window_bits) {
                return Err(format!(
                    "deflate window_bits must be in 9..=15 (is {window_bits})"
                ));
            }
        }
        if self.level > 9 {
            return Err(format!(
                "deflate level must be in 0..=9 (is {})",
                self.level
            ));
        }
        Ok(())
    }
}

/// Counters of the calling thread's permessage-deflate work (since the thread started).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeflateStats {
    /// Sessions that negotiated the extension.
    pub sessions: u64,
    /// Compressed messages received (and inflated).
    pub messages_in: u64,
    /// Their bytes as received.
    pub bytes_in: u64,
    /// Their bytes once inflated.
    pub bytes_inflated: u64,
    /// Messages sent compressed.
    pub messages_out: u64,
    /// Their bytes before compression.
    pub bytes_raw_out: u64,
    /// Their bytes as sent.
    pub bytes_out: u64,
    /// Whole messages sent uncompressed in such sessions (under the threshold, an 8-bit
    /// window, or compression did not pay).
    pub messages_plain_out: u64,
}

/// One worker thread's shared-mode codecs and scratch output.
struct Shared {
    stats: DeflateStats,
    inflater: Option<Inflater>,
    /// One per window size 9..=15 (index `bits - 9`), created on first use.
    deflaters: [Option<Deflater>; 7],
    /// Compressed output of the message being sent.
    out: Vec<u8>,
    pool: Pool,
}

/// Compressed output kept by a thread between messages; more is freed after the message.
const OUT_KEEP: usize = 256 << 10;

thread_local! {
    static SHARED: RefCell<Shared> = const {
        RefCell::new(Shared {
            stats: DeflateStats {
                sessions: 0,
                messages_in: 0,
                bytes_in: 0,
                bytes_inflated: 0,
                messages_out: 0,
                bytes_raw_out: 0,
                bytes_out: 0,
                messages_plain_out: 0,
            },
            inflater: None,
            deflaters: [None, None, None, None, None, None, None],
            out: Vec::new(),
            pool: Pool::new(),
        })
    };
}

/// Runs `f` with the calling thread's compressed-output buffer (emptied first; trimmed after).
pub(crate) fn with_out<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SHARED.with(|s| {
        let mut buf = std::mem::take(&mut s.borrow_mut().out);
        buf.clear();
        let r = f(&mut buf);
        buf.clear();
        if buf.capacity() > OUT_KEEP {
            buf = Vec::new();
        }
        s.borrow_mut().out = buf;
        r
    })
}

/// Compresses with the calling thread's shared compressor for `level`/`window_bits`.
pub(crate) fn shared_compress(
    level: u32,
    window_bits: u8,
    input: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        let slot = &mut s.deflaters[usize::from(window_bits - 9)];
        if slot.as_ref().is_some_and(|d| d.level() != level) {
            *slot = None;
        }
        slot.get_or_insert_with(|| Deflater::new(level, window_bits))
            .compress(input, out, false)
    })
}

/// Inflates with the calling thread's shared inflater (no context kept).
pub(crate) fn shared_inflate(
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), InflateError> {
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        s.inflater
            .get_or_insert_with(Inflater::new)
            .inflate(input, out, max, false)
    })
}

/// A compressor (if `deflater`) and an inflater (if `inflater`) for a dedicated session, from
/// the calling thread's pool.
pub(crate) fn take_codecs(
    level: u32,
    window_bits: u8,
    deflater: bool,
    inflater: bool,
) -> (Option<Deflater>, Option<Inflater>) {
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        (
            deflater.then(|| s.pool.deflater(level, window_bits)),
            inflater.then(|| s.pool.inflater()),
        )
    })
}

/// Gives a dedicated session's codecs back to the calling thread's pool.
pub(crate) fn give_codecs(d: Option<Deflater>, i: Option<Inflater>) {
    let _ = SHARED.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if let Some(d) = d {
                s.pool.give_deflater(d);
            }
            if let Some(i) = i {
                s.pool.give_inflater(i);
            }
        }
    });
}

/// The calling thread's counters.
pub fn stats() -> DeflateStats {
    SHARED.try_with(|s| s.borrow().stats).unwrap_or_default()
}

/// Counts into the calling thread's counters.
pub(crate) fn count(f: impl FnOnce(&mut DeflateStats)) {
    let _ = SHARED.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            f(&mut s.stats);
        }
    });
}

/// Codec states the calling thread keeps for later sessions: (compressors, inflaters).
pub fn pooled() -> (usize, usize) {
    SHARED.with(|s| s.borrow().pool.len())
}
