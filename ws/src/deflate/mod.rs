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
    /// Of the messages sent compressed, how many reused the compression of the same broadcast
    /// for an earlier session (shared mode: compressed once per worker, window and level).
    pub broadcast_reuses: u64,
}

/// One worker thread's shared-mode codecs and scratch output.
struct Shared {
    stats: DeflateStats,
    /// While a broadcast is delivered: its payload's address and length, and the compressions
    /// made of it so far (window bits, level, bytes).
    batch: Option<Batch>,
    inflater: Option<Inflater>,
    /// One per window size 9..=15 (index `bits - 9`), created on first use.
    deflaters: [Option<Deflater>; 7],
    /// Compressed output of the message being sent.
    out: Vec<u8>,
    pool: Pool,
}

/// The compressions of one broadcast's payload, reused for every shared-mode session of the
/// worker that agreed the same window (the output of a compressor reset before each message
/// depends on nothing else).
struct Batch {
    payload: (usize, usize),
    done: Vec<(u8, u32, Vec<u8>)>,
}

/// Runs `f` (the delivery of one broadcast whose bytes are `payload`, alive and unchanged
/// throughout) with compression of `payload` done at most once per window and level.
pub fn with_broadcast<R>(payload: &[u8], f: impl FnOnce() -> R) -> R {
    let key = (payload.as_ptr() as usize, payload.len());
    let _ = SHARED.try_with(|s| {
        let mut s = s.borrow_mut();
        let mut batch = s.batch.take().unwrap_or(Batch {
            payload: key,
            done: Vec::new(),
        });
        batch.payload = key;
        batch.done.clear();
        s.batch = Some(batch);
    });
    let r = f();
    let _ = SHARED.try_with(|s| {
        if let Some(b) = s.borrow_mut().batch.as_mut() {
            b.payload = (0, 0);
            // Keep the storage of small compressions for the next broadcast.
            b.done.retain(|(_, _, v)| v.capacity() <= OUT_KEEP);
            for (_, _, v) in &mut b.done {
                v.clear();
            }
        }
    });
    r
}

/// Compressed output kept by a thread between messages; more is freed after the message (so
/// sends of messages above ~4 MiB compressed allocate their output each time).
const OUT_KEEP: usize = 4 << 20;

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
                broadcast_reuses: 0,
            },
            batch: None,
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

/// Compresses with the calling thread's shared compressor for `level`/`window_bits` (or, during
/// a broadcast of `input`, copies its earlier compression with the same parameters).
pub(crate) fn shared_compress(
    level: u32,
    window_bits: u8,
    input: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        let s = &mut *s;
        let key = (input.as_ptr() as usize, input.len());
        let mut batch = s.batch.as_mut().filter(|b| b.payload == key);
        if let Some(b) = &batch {
            let earlier = b
                .done
                .iter()
                .find(|(w, l, v)| *w == window_bits && *l == level && !v.is_empty());
            if let Some((_, _, bytes)) = earlier {
                if out.try_reserve(bytes.len()).is_err() {
                    return false;
                }
                out.extend_from_slice(bytes);
                s.stats.broadcast_reuses += 1;
                return true;
            }
        }
        let slot = &mut s.deflaters[usize::from(window_bits - 9)];
        if slot.as_ref().is_some_and(|d| d.level() != level) {
            *slot = None;
        }
        let ok = slot
            .get_or_insert_with(|| Deflater::new(level, window_bits))
            .compress(input, out, false);
        if let (true, Some(b)) = (ok, batch.as_mut()) {
            let mut kept = match b.done.iter().position(|(_, _, v)| v.is_empty()) {
                Some(i) => b.done.swap_remove(i).2,
                None => Vec::new(),
            };
            if kept.try_reserve(out.len()).is_ok() {
                kept.extend_from_slice(out);
                b.done.push((window_bits, level, kept));
            }
        }
        ok
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
