//! One loop turn's output for one connection, written with a single vectored send.
//!
//! While the protocol processes a read, every frame it emits (echoes, pongs, closes, handler
//! sends) goes to a [`TurnSink`]. Headers and small payloads are copied into the worker's staging
//! area; a large payload that lies inside the connection's receive buffer (a message unmasked in
//! place) is only recorded as a range of that buffer. At the end of the turn [`TurnOutput::flush`]
//! sends the connection's older pending output and all of this turn's pieces with one
//! `sendmsg`/`writev`, and copies into the connection's [`PendingOutput`] only what the kernel did not
//! take. An echo of a whole-frame message therefore costs one read, one write and no copy.
//!
//! A turn larger than [`STAGING_SMALL`] stages into a buffer borrowed from the worker's
//! [`OutputCache`], given back at the end of the turn; the same cache lends connections their large
//! pending output ([`PendingOutput::push_cached`]). A worker echoing large messages that are not in the
//! receive buffer (assembled ones) therefore allocates nothing per message in steady state.
//!
//! The range trick relies on the protocol's contract: bytes of the input it has handed out are not
//! modified again during the same `receive` call, and the caller flushes before it moves the
//! unconsumed tail.

use std::io::{self, IoSlice};

use hioload_wsproto::output_cache::{OutputCache, OutputCacheStats, STAGING_SMALL};
use hioload_wsproto::{FrameSink, PendingOutput, Wire};
use mio::net::TcpStream;

use crate::sys;

/// Payloads at least this large are sent from the receive buffer instead of being copied.
const ZERO_COPY_MIN: usize = 1024;
/// Most pieces in one turn; later frames are copied into staging.
const MAX_SEGS: usize = 64;

#[derive(Copy, Clone, Debug)]
enum Seg {
    /// A range of the receive buffer.
    Input { start: usize, len: usize },
    /// A range of the staging area.
    Staged { start: usize, len: usize },
    /// A range of the session's retained message (an assembled message sent back as is).
    Message { start: usize, len: usize },
}

/// A worker's reusable per-turn output: staging bytes plus the ordered pieces to send, and the
/// worker's cache of large output buffers.
#[derive(Default)]
pub struct TurnOutput {
    /// Own staging storage, at most `STAGING_SMALL` bytes; used while `large` is `None`.
    staging: Vec<u8>,
    /// Staging for a turn larger than `STAGING_SMALL`, borrowed from `cache` until the turn ends.
    large: Option<Vec<u8>>,
    segs: Vec<Seg>,
    bytes: usize,
    /// Address of the retained message this turn's `Seg::Message` ranges belong to (0: none).
    message_base: usize,
    /// Set by the last flush or staging when what it left unsent was exactly the end of the
    /// retained message from this offset on (the turn's last piece): not copied into the
    /// pending output, which adopts the message's buffer instead ([`TurnOutput::take_adoption`]).
    adopt_from: Option<usize>,
    cache: OutputCache,
}

impl TurnOutput {
    /// Empty output; its own staging grows to the largest turn seen, within `STAGING_SMALL`.
    pub fn new() -> Self {
        TurnOutput {
            staging: Vec::with_capacity(64 << 10),
            large: None,
            segs: Vec::with_capacity(MAX_SEGS),
            bytes: 0,
            message_base: 0,
            adopt_from: None,
            cache: OutputCache::new(),
        }
    }

    /// The worker's cache of large output buffers (counters, trimming).
    pub fn cache(&mut self) -> &mut OutputCache {
        &mut self.cache
    }

    /// The counters of the worker's output cache.
    pub fn cache_stats(&self) -> OutputCacheStats {
        self.cache.stats()
    }

    /// Gives a departing connection's large pending output back to the cache.
    pub fn release(&mut self, pending: &mut PendingOutput) {
        pending.release(&mut self.cache);
    }

    /// Bytes queued this turn.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing was queued this turn.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Queues a copy of `bytes` (HTTP responses, frames built outside `receive`).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.stage(bytes);
    }

    /// A frame sink for this turn. `input` is the connection's receive buffer (empty outside a
    /// read): payloads inside it may be sent from there.
    pub fn sink(&mut self, input: &[u8]) -> TurnSink<'_> {
        TurnSink {
            base: input.as_ptr() as usize,
            len: input.len(),
            out: self,
        }
    }

    fn stage(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = self.staged().len();
        let need = start + bytes.len();
        if need > self.staged().capacity() {
            self.grow_staging(need);
        }
        self.large
            .as_mut()
            .unwrap_or(&mut self.staging)
            .extend_from_slice(bytes);
        self.bytes += bytes.len();
        match self.segs.last_mut() {
            Some(Seg::Staged { start: s, len }) if *s + *len == start => *len += bytes.len(),
            _ => self.segs.push(Seg::Staged {
                start,
                len: bytes.len(),
            }),
        }
    }

    /// This turn's staged bytes.
    fn staged(&self) -> &Vec<u8> {
        self.large.as_ref().unwrap_or(&self.staging)
    }

    /// Makes room for `need` staged bytes: the own storage doubles up to `STAGING_SMALL`; beyond,
    /// the staged bytes move to a buffer from the cache (offsets stay valid).
    fn grow_staging(&mut self, need: usize) {
        let cap = self.staged().capacity();
        if need <= STAGING_SMALL {
            let target = need.max(2 * cap).min(STAGING_SMALL);
            self.staging.reserve_exact(target - self.staging.len());
            return;
        }
        let mut grown = self.cache.take(need.max(2 * cap));
        grown.extend_from_slice(self.staged());
        self.staging.clear();
        if let Some(old) = self.large.replace(grown) {
            self.cache.give(old);
        }
    }

    fn piece<'a>(&'a self, seg: Seg, from: Sources<'a>) -> &'a [u8] {
        piece(self.staged(), seg, from)
    }

    /// Sends `pending` followed by this turn's pieces (taken from `from` and staging) with as
    /// few vectored sends as the kernel allows, stopping at `WouldBlock`; appends what was not
    /// sent to `pending` and clears this turn. Returns the bytes sent. `from.input` must be the
    /// buffer given to [`TurnOutput::sink`], and `from.message` the session's retained message,
    /// both unchanged since.
    pub fn flush(
        &mut self,
        stream: &TcpStream,
        pending: &mut PendingOutput,
        from: Sources<'_>,
    ) -> io::Result<usize> {
        let total = pending.len() + self.bytes;
        let mut sent = 0;
        let mut result = Ok(());
        while sent < total {
            let mut iov = [IoSlice::new(&[]); MAX_SEGS + 1];
            let mut n_iov = 0;
            let mut skip = sent;
            let pieces = std::iter::once(pending.unsent())
                .chain(self.segs.iter().map(|&s| self.piece(s, from)));
            for piece in pieces {
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                iov[n_iov] = IoSlice::new(&piece[skip..]);
                skip = 0;
                n_iov += 1;
            }
            match sys::send_vectored(stream, &iov[..n_iov]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            self.keep_unsent(pending, from, sent);
        }
        self.clear();
        result.map(|()| sent)
    }

    /// Appends this turn's output to `pending` without sending anything (the io_uring backend
    /// sends `pending` with the loop turn's submission) and clears the turn.
    pub fn stage_into(&mut self, pending: &mut PendingOutput, from: Sources<'_>) {
        self.keep_unsent(pending, from, 0);
        self.clear();
    }

    /// Appends this turn's bytes to `dst` (the io_uring backend's send arena) and clears the
    /// turn. The caller checked that `dst` has room: nothing here allocates.
    pub fn move_into(&mut self, dst: &mut Vec<u8>, from: Sources<'_>) {
        debug_assert!(dst.capacity() - dst.len() >= self.bytes);
        let staged = self.large.as_ref().unwrap_or(&self.staging);
        for &seg in &self.segs {
            dst.extend_from_slice(piece(staged, seg, from));
        }
        self.clear();
    }

    /// Puts `front` before the bytes already in `pending` (what a ring send did not get out
    /// belongs before the output queued behind it). Rare: only after a short ring send.
    pub fn requeue_front(&mut self, pending: &mut PendingOutput, front: &[u8]) {
        debug_assert!(self.is_empty());
        self.stage(front);
        self.stage(pending.unsent());
        let old = pending.len();
        pending.consume_cached(old, &mut self.cache);
        self.keep_unsent(pending, Sources::NONE, 0);
        self.clear();
    }

    /// Where the pending output should adopt the retained message after the last flush or
    /// staging (the offset of its first unsent byte), if it should; the caller then hands the
    /// message's buffer to [`PendingOutput::adopt`], before anything else is queued.
    pub fn take_adoption(&mut self) -> Option<usize> {
        self.adopt_from.take()
    }

    /// After `sent` bytes of `pending` + this turn went out: keeps the rest in `pending`, in
    /// order; or, when the rest is only the end of the retained message, leaves it for the
    /// pending output to adopt ([`TurnOutput::take_adoption`]).
    fn keep_unsent(&mut self, pending: &mut PendingOutput, from: Sources<'_>, sent: usize) {
        let total = pending.len() + self.bytes;
        let from_pending = sent.min(pending.len());
        let mut skip = sent - from_pending;
        pending.consume_cached(from_pending, &mut self.cache);
        if let Some(&Seg::Message { start, len }) = self.segs.last() {
            let before = total - len;
            if sent >= before && sent < total {
                self.adopt_from = Some(start + (sent - before));
                return;
            }
        }
        if sent < total && self.bytes > 0 {
            // Room for this whole turn, not just its unsent part: the size asked for does not
            // depend on how much the kernel took, so a cached buffer fits every such turn.
            let room = pending.len() + self.bytes;
            pending.reserve_cached(room, &mut self.cache);
        }
        let staged = self.large.as_ref().unwrap_or(&self.staging);
        for &seg in &self.segs {
            let piece = piece(staged, seg, from);
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            pending.push_cached(&piece[skip..], &mut self.cache);
            skip = 0;
        }
    }

    /// Drops this turn's output without sending it (the connection is gone).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.staging.clear();
        self.bytes = 0;
        self.message_base = 0;
        if let Some(large) = self.large.take() {
            self.cache.give(large);
        }
    }
}

/// What a turn's ranges point into besides its staging: the receive buffer the sink was made
/// for, and the session's retained message (each empty if none).
#[derive(Copy, Clone, Debug, Default)]
pub struct Sources<'a> {
    /// The buffer given to [`TurnOutput::sink`].
    pub input: &'a [u8],
    /// The connection's retained message
    /// ([`Connection::output_parts`](hioload_wsproto::Connection::output_parts)).
    pub message: &'a [u8],
}

impl Sources<'_> {
    /// Neither (output staged outside a read).
    pub const NONE: Sources<'static> = Sources {
        input: &[],
        message: &[],
    };
}

/// The bytes of `seg`: a range of `from` or of `staged`.
fn piece<'a>(staged: &'a [u8], seg: Seg, from: Sources<'a>) -> &'a [u8] {
    match seg {
        Seg::Input { start, len } => &from.input[start..start + len],
        Seg::Staged { start, len } => &staged[start..start + len],
        Seg::Message { start, len } => &from.message[start..start + len],
    }
}

/// The [`FrameSink`] of one turn, and the [`Wire`] of a connection during a read; see the module
/// documentation.
pub struct TurnSink<'t> {
    base: usize,
    len: usize,
    out: &'t mut TurnOutput,
}

impl TurnSink<'_> {
    /// Offset of `payload` in the receive buffer, if it lies entirely inside it.
    fn input_offset(&self, payload: &[u8]) -> Option<usize> {
        let start = (payload.as_ptr() as usize).checked_sub(self.base)?;
        (start + payload.len() <= self.len).then_some(start)
    }
}

impl TurnSink<'_> {
    /// Records `payload`, which lies inside the retained `message`, as a range of it (after
    /// `header`); copies it if it is small or this turn already names another message.
    fn message_frame(&mut self, header: &[u8], payload: &[u8], message: &[u8]) {
        let base = message.as_ptr() as usize;
        let out = &mut *self.out;
        let same = out.message_base == 0 || out.message_base == base;
        if payload.len() < ZERO_COPY_MIN || !same || out.segs.len() >= MAX_SEGS - 1 {
            return FrameSink::send_frame(self, header, payload);
        }
        out.stage(header);
        out.message_base = base;
        out.segs.push(Seg::Message {
            start: payload.as_ptr() as usize - base,
            len: payload.len(),
        });
        out.bytes += payload.len();
    }
}

impl FrameSink for TurnSink<'_> {
    fn send_message_frame(&mut self, header: &[u8], payload: &[u8], message: &[u8]) {
        self.message_frame(header, payload, message);
    }
    fn keeps_message_ranges(&self) -> bool {
        true
    }
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.out.stage(header);
        if payload.len() >= ZERO_COPY_MIN && self.out.segs.len() < MAX_SEGS - 1 {
            if let Some(start) = self.input_offset(payload) {
                self.out.segs.push(Seg::Input {
                    start,
                    len: payload.len(),
                });
                self.out.bytes += payload.len();
                return;
            }
        }
        self.out.stage(payload);
    }
}

/// During a read, output is only recorded: the worker sends the turn when the read is done (one
/// vectored write or a ring send), so `flush` has nothing to do and the write side is not shut
/// down in the middle of a read.
impl Wire for TurnSink<'_> {
    fn queue_frame(&mut self, _pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        FrameSink::send_frame(self, header, payload);
    }
    fn queue_message_frame(
        &mut self,
        _pending: &mut PendingOutput,
        header: &[u8],
        payload: &[u8],
        message: &[u8],
    ) {
        self.message_frame(header, payload, message);
    }
    fn keeps_message_ranges(&self) -> bool {
        true
    }
    fn queue_bytes(&mut self, _pending: &mut PendingOutput, bytes: &[u8]) {
        self.out.stage(bytes);
    }
    fn flush(&mut self, _pending: &mut PendingOutput) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&mut self, _pending: &mut PendingOutput) -> bool {
        false
    }
    fn queued(&self) -> usize {
        self.out.len()
    }
}

#[cfg(test)]
mod tests;
