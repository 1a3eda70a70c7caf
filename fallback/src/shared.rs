//! What the workers of one transport share, and [`Remote`], the handle other threads use to reach
//! them.
//!
//! Workers share no connection state. What crosses threads is small and one-directional:
//! - the stop flag;
//! - per-worker counters, each on its own cache line, written by its worker only (plain load +
//!   store) and summed by readers; the worker's buffer-cache counters ([`CacheCounters`]), copied
//!   out by the worker at its tick (every 100 ms while it runs; an idle worker publishes at its
//!   next wake-up);
//! - the settings snapshot: a reload stores a new `Arc<Settings>` and bumps an epoch; a worker
//!   compares the epoch (one relaxed load) at each loop turn and takes the lock only when it
//!   changed, so the lock is touched once per reload per worker, never on the message path;
//! - one bounded inbox per worker (a lock-free `ArrayQueue` of `inbox_capacity` commands): sends
//!   to a session by id and broadcasts. The sender pushes and wakes the target worker through its
//!   `mio::Waker` (a worker sending to itself skips the wake: it drains its inbox at the end of
//!   the turn it is in).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;
use hioload_wsproto::assembly::{self, AssemblyStats};
use mio::Waker;
use tracing::warn;

use crate::bufcache::BufCacheStats;
use crate::config::Settings;
use crate::turn::TurnOutput;

/// A per-worker counter on its own cache line: written by one worker, summed by readers.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct PaddedCounter(pub AtomicUsize);

impl PaddedCounter {
    /// Adds `n` (single writer: no read-modify-write needed).
    pub fn add(&self, n: usize) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Subtracts `n` (single writer).
    pub fn sub(&self, n: usize) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    /// Sets a gauge (single writer).
    pub fn set(&self, n: usize) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-worker figures, written by that worker only.
#[derive(Default)]
pub(crate) struct WorkerCounters {
    /// Open sessions.
    pub sessions: PaddedCounter,
    /// Connections (any phase).
    pub connections: PaddedCounter,
    /// Inbox messages whose session was gone when they arrived.
    pub undelivered: PaddedCounter,
    /// Pings sent to idle sessions.
    pub idle_pings: PaddedCounter,
    /// Sessions dropped because they did not answer an idle ping.
    pub idle_drops: PaddedCounter,
    /// Reads deferred because no receive buffer could be had.
    pub buffer_waits: PaddedCounter,
    /// Receive buffers lent to the kernel's io_uring provided-buffer ring (gauge).
    pub ring_buffers: PaddedCounter,
    /// The worker's buffer-cache counters, as of its last tick.
    pub caches: CacheCounters,
}

/// A copy of one worker's buffer-cache counters (its output cache and its thread's message
/// assembly cache), written by that worker at its tick and read by `/metrics`. Plain relaxed
/// stores: the fields of one snapshot may come from two consecutive ticks.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct CacheCounters {
    output: [AtomicU64; 10],
    assembly: [AtomicU64; 8],
}

impl CacheCounters {
    /// Publishes `output` (the worker's [`BufCache`](crate::bufcache::BufCache) counters) and
    /// `assembly` (its thread's assembly cache). No lock, no allocation: 18 relaxed stores.
    pub fn publish(&self, output: BufCacheStats, assembly: AssemblyStats) {
        let o = output;
        let out = [
            o.borrowed,
            o.hits,
            o.misses,
            o.returned,
            o.freed,
            o.cached_buffers as u64,
            o.cached_bytes as u64,
            o.small_borrowed,
            o.small_misses,
            o.small_cached as u64,
        ];
        let a = assembly;
        let asm = [
            a.borrowed,
            a.hits,
            a.misses,
            a.grown,
            a.returned,
            a.freed,
            a.cached_buffers as u64,
            a.cached_bytes as u64,
        ];
        for (cell, v) in self.output.iter().zip(out) {
            cell.store(v, Ordering::Relaxed);
        }
        for (cell, v) in self.assembly.iter().zip(asm) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// The last published counters.
    fn snapshot(&self) -> (BufCacheStats, AssemblyStats) {
        let o = self.output.each_ref().map(|c| c.load(Ordering::Relaxed));
        let [borrowed, hits, misses, returned, freed, cached_buffers, cached_bytes, ..] = o;
        let [.., small_borrowed, small_misses, small_cached] = o;
        let output = BufCacheStats {
            borrowed,
            hits,
            misses,
            returned,
            freed,
            cached_buffers: cached_buffers as usize,
            cached_bytes: cached_bytes as usize,
            small_borrowed,
            small_misses,
            small_cached: small_cached as usize,
        };
        let [borrowed, hits, misses, grown, returned, freed, cached_buffers, cached_bytes] =
            self.assembly.each_ref().map(|c| c.load(Ordering::Relaxed));
        let assembly = AssemblyStats {
            borrowed,
            hits,
            misses,
            grown,
            returned,
            freed,
            cached_buffers: cached_buffers as usize,
            cached_bytes: cached_bytes as usize,
        };
        (output, assembly)
    }
}

/// A message for a session of another worker (or for all sessions): owned, shared by every
/// worker it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutMessage {
    /// A text message.
    Text(Box<str>),
    /// A binary message.
    Binary(Box<[u8]>),
}

impl OutMessage {
    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        match self {
            OutMessage::Text(t) => t.as_bytes(),
            OutMessage::Binary(b) => b,
        }
    }
}

/// A command in a worker's inbox.
pub(crate) enum Command {
    /// Send to one session (by id).
    Send(u64, Arc<OutMessage>),
    /// Send to every open session of the worker.
    Broadcast(Arc<OutMessage>),
}

/// Why a message could not be queued for a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeliverError {
    /// No such session: the id names no worker of this server, or the session has ended.
    NoSuchSession,
    /// The target worker's inbox is full (`ring_capacity` commands): try again later.
    Full,
    /// The server is stopping.
    Stopped,
}

impl fmt::Display for DeliverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeliverError::NoSuchSession => "no such session",
            DeliverError::Full => "the target worker's inbox is full",
            DeliverError::Stopped => "the server is stopping",
        })
    }
}

impl std::error::Error for DeliverError {}

/// State shared by all workers of one transport.
pub(crate) struct Shared {
    pub stopping: AtomicBool,
    pub workers: Box<[WorkerCounters]>,
    pub inboxes: Box<[ArrayQueue<Command>]>,
    pub wakers: Box<[Waker]>,
    settings: Mutex<Arc<Settings>>,
    epoch: AtomicU64,
}

impl Shared {
    pub fn new(settings: Settings, wakers: Vec<Waker>, inbox_capacity: usize) -> Shared {
        let n = wakers.len();
        Shared {
            stopping: AtomicBool::new(false),
            workers: (0..n).map(|_| WorkerCounters::default()).collect(),
            inboxes: (0..n)
                .map(|_| ArrayQueue::new(inbox_capacity.max(1)))
                .collect(),
            wakers: wakers.into_boxed_slice(),
            settings: Mutex::new(Arc::new(settings)),
            epoch: AtomicU64::new(0),
        }
    }

    /// Publishes worker `worker`'s buffer-cache counters (its output cache, in `turn`, and the
    /// calling thread's assembly cache): called by that worker, on its own thread, at its tick.
    pub fn publish_caches(&self, worker: usize, turn: &TurnOutput) {
        self.workers[worker]
            .caches
            .publish(turn.cache_stats(), assembly::stats());
    }

    /// The settings epoch (bumped by every reload).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The current settings and their epoch.
    pub fn settings(&self) -> (Arc<Settings>, u64) {
        let guard = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        (guard.clone(), self.epoch.load(Ordering::Acquire))
    }

    /// Publishes new settings and wakes every worker so that idle ones apply them now.
    pub fn publish(&self, settings: Settings) {
        {
            let mut guard = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            *guard = Arc::new(settings);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.wake_all();
    }

    pub fn wake_all(&self) {
        for waker in self.wakers.iter() {
            if let Err(e) = waker.wake() {
                warn!("cannot wake a worker: {e}");
            }
        }
    }

    /// Queues `cmd` for worker `worker`; `from` is the calling worker, if any (no wake needed).
    pub fn push(
        &self,
        worker: usize,
        cmd: Command,
        from: Option<usize>,
    ) -> Result<(), DeliverError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(DeliverError::Stopped);
        }
        let inbox = self
            .inboxes
            .get(worker)
            .ok_or(DeliverError::NoSuchSession)?;
        inbox.push(cmd).map_err(|_| DeliverError::Full)?;
        if from != Some(worker) {
            if let Err(e) = self.wakers[worker].wake() {
                warn!(worker, "cannot wake a worker: {e}");
            }
        }
        Ok(())
    }

    pub fn send_to(
        &self,
        id: u64,
        msg: Arc<OutMessage>,
        from: Option<usize>,
    ) -> Result<(), DeliverError> {
        self.push(worker_of(id), Command::Send(id, msg), from)
    }

    /// Queues `msg` for every worker; returns how many workers took it (a full inbox misses it).
    pub fn broadcast(
        &self,
        msg: Arc<OutMessage>,
        from: Option<usize>,
    ) -> Result<usize, DeliverError> {
        let mut reached = 0;
        let mut last_err = DeliverError::Full;
        for worker in 0..self.inboxes.len() {
            match self.push(worker, Command::Broadcast(msg.clone()), from) {
                Ok(()) => reached += 1,
                Err(e) => last_err = e,
            }
        }
        if reached == 0 {
            Err(last_err)
        } else {
            Ok(reached)
        }
    }
}

/// The worker that owns session `id` (its index is in the id's top 16 bits).
pub fn worker_of(id: u64) -> usize {
    (id >> 48) as usize
}

/// A handle on a running transport's workers, usable from any thread: sends by session id,
/// broadcasts, settings reloads, counters. Cheap to clone.
#[derive(Clone)]
pub struct Remote {
    pub(crate) shared: Arc<Shared>,
}

/// A snapshot of one worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Open WebSocket sessions.
    pub sessions: usize,
    /// TCP connections (handshaking, open or finishing).
    pub connections: usize,
    /// Messages sent by id whose session had ended when they arrived.
    pub undelivered: usize,
    /// Pings sent to sessions idle for `idle_timeout`.
    pub idle_pings: usize,
    /// Sessions dropped for not answering an idle ping within `pong_timeout`.
    pub idle_drops: usize,
    /// Reads deferred because no receive buffer could be had.
    pub buffer_waits: usize,
    /// Receive buffers lent to the kernel's io_uring provided-buffer ring, waiting for data
    /// (taken from the buffer pool, so counted there as in use; 0 with the poll backend).
    pub ring_buffers: usize,
    /// The worker's cache of large output buffers (staging and pending output), as of its last
    /// tick (every 100 ms while it runs). Zero where the data path has none (DPDK lcores).
    pub output_cache: BufCacheStats,
    /// The worker thread's cache of message-assembly buffers, as of its last tick. Zero where
    /// the data path does not publish it (DPDK lcores).
    pub assembly_cache: AssemblyStats,
}

impl Remote {
    /// Queues `msg` for session `id`, on whichever worker owns it.
    pub fn send_to(&self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.shared.send_to(id, msg, None)
    }
    /// Queues `msg` for every open session; returns the number of workers that took it.
    pub fn broadcast(&self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.shared.broadcast(msg, None)
    }
    /// Publishes new settings; each worker applies them at its next loop turn (existing sessions
    /// get the new limits too).
    pub fn reload(&self, settings: Settings) {
        self.shared.publish(settings)
    }
    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings().0
    }
    /// Counters of every worker.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.shared
            .workers
            .iter()
            .map(|w| {
                let (output_cache, assembly_cache) = w.caches.snapshot();
                WorkerStats {
                    sessions: w.sessions.get(),
                    connections: w.connections.get(),
                    undelivered: w.undelivered.get(),
                    idle_pings: w.idle_pings.get(),
                    idle_drops: w.idle_drops.get(),
                    buffer_waits: w.buffer_waits.get(),
                    ring_buffers: w.ring_buffers.get(),
                    output_cache,
                    assembly_cache,
                }
            })
            .collect()
    }
    /// Open sessions across all workers.
    pub fn session_count(&self) -> usize {
        self.shared.workers.iter().map(|w| w.sessions.get()).sum()
    }
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_cache_counters_read_back_field_for_field() {
        let counters = CacheCounters::default();
        let output = BufCacheStats {
            borrowed: 1,
            hits: 2,
            misses: 3,
            returned: 4,
            freed: 5,
            cached_buffers: 6,
            cached_bytes: 7,
            small_borrowed: 8,
            small_misses: 9,
            small_cached: 10,
        };
        let assembly = AssemblyStats {
            borrowed: 11,
            hits: 12,
            misses: 13,
            grown: 14,
            returned: 15,
            freed: 16,
            cached_buffers: 17,
            cached_bytes: 18,
        };
        counters.publish(output, assembly);
        assert_eq!(counters.snapshot(), (output, assembly));
    }
}
