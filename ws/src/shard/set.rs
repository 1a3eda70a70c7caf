//! What the shards of one server share, and nothing more: the stop flag, per-shard counters, the
//! settings snapshot, and one bounded inbox per shard.
//!
//! Shards share no connection state. What crosses threads is small and one-directional:
//! - the stop flag;
//! - per-shard counters, each written by its shard only ([`ShardCounters`]);
//! - the settings snapshot: a reload stores a new `Arc<Settings>` and bumps an epoch; a shard
//!   compares the epoch (one relaxed load) at the start of each loop turn and takes the lock
//!   only when it changed, so the lock is touched once per reload per shard, never per message;
//! - one bounded inbox per shard (a lock-free `ArrayQueue` of `inbox_capacity` commands): sends
//!   to a session by id and broadcasts. The sender pushes and wakes the target shard's thread
//!   through its [`Wake`] (a kernel worker sleeps in its poll; a DPDK worker polls and needs
//!   none; a shard sending to itself skips the wake: it drains its inbox in the turn it is in).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_queue::ArrayQueue;
use tracing::warn;

use super::counters::{ShardCounters, WorkerStats};
use crate::settings::Settings;

/// A message for a session of another shard (or for all sessions): owned, shared by every shard
/// it goes to.
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

/// A command in a shard's inbox.
#[derive(Debug)]
pub enum Command {
    /// Send to one session (by id).
    Send(u64, Arc<OutMessage>),
    /// Send to every open session of the shard.
    Broadcast(Arc<OutMessage>),
    /// The application's deferred decision on the upgrade of connection `id`.
    Upgrade(u64, Box<crate::connection::Upgrade>),
    /// Deliver to the shard's subscribers of a topic (see `topics`).
    Publish(Arc<super::topics::Publication>),
}

/// Why a message could not be queued for a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeliverError {
    /// No such session: the id names no shard of this server, or the session has ended.
    NoSuchSession,
    /// The target shard's inbox is full (`ring_capacity` commands): try again later.
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

/// Wakes a shard's thread when its inbox got a command or the server stops.
pub trait Wake: Send + Sync {
    /// Makes the shard's next wait return at once.
    fn wake(&self) -> std::io::Result<()>;
}

/// State shared by all shards of one server (see the module documentation).
pub struct ShardSet {
    stopping: AtomicBool,
    counters: Box<[ShardCounters]>,
    inboxes: Box<[ArrayQueue<Command>]>,
    /// One per shard; `None` for shards that poll and need no wake-up.
    wakers: Box<[Option<Box<dyn Wake>>]>,
    settings: Mutex<Arc<Settings>>,
    epoch: AtomicU64,
    /// Topics: interest, statistics, publishing totals.
    pub(super) topics: super::topics::TopicBoard,
    /// Hears of every publication made on this node (the cluster link).
    #[allow(clippy::type_complexity)]
    pub(super) forward: OnceLock<Box<dyn Fn(&Arc<super::topics::Publication>) + Send + Sync>>,
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardSet")
            .field("shards", &self.counters.len())
            .finish_non_exhaustive()
    }
}

impl ShardSet {
    /// The shared state of `wakers.len()` shards, each with an inbox of `inbox_capacity`.
    pub fn new(
        settings: Settings,
        wakers: Vec<Option<Box<dyn Wake>>>,
        inbox_capacity: usize,
    ) -> ShardSet {
        let n = wakers.len();
        ShardSet {
            stopping: AtomicBool::new(false),
            counters: (0..n).map(|_| ShardCounters::default()).collect(),
            inboxes: (0..n)
                .map(|_| ArrayQueue::new(inbox_capacity.max(1)))
                .collect(),
            wakers: wakers.into_boxed_slice(),
            settings: Mutex::new(Arc::new(settings)),
            epoch: AtomicU64::new(0),
            topics: super::topics::TopicBoard::new(n),
            forward: OnceLock::new(),
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether there is no shard at all.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Shard `shard`'s counters.
    pub fn counters(&self, shard: usize) -> &ShardCounters {
        &self.counters[shard]
    }

    /// Every shard's counters, as snapshots.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.counters.iter().map(ShardCounters::snapshot).collect()
    }

    /// Connections in any phase, summed over the shards (the connection cap counts these).
    pub fn connection_count(&self) -> usize {
        (0..self.len())
            .map(|i| self.counters(i).connections.get())
            .sum()
    }

    /// Bytes held by every shard's connections, as of each shard's last tick.
    pub fn memory(&self) -> usize {
        (0..self.len()).map(|i| self.counters(i).memory.get()).sum()
    }

    /// Open sessions across all shards.
    pub fn session_count(&self) -> usize {
        self.counters.iter().map(|c| c.sessions.get()).sum()
    }

    /// Shard `shard`'s inbox.
    pub fn inbox(&self, shard: usize) -> &ArrayQueue<Command> {
        &self.inboxes[shard]
    }

    /// Asks every shard to stop (once); returns whether this call did.
    pub fn stop(&self) -> bool {
        let first = !self.stopping.swap(true, Ordering::AcqRel);
        if first {
            self.wake_all();
        }
        first
    }

    /// Whether a stop has been asked.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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

    /// Publishes new settings; every shard applies them at the start of its next loop turn.
    pub fn publish(&self, settings: Settings) {
        {
            let mut guard = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            *guard = Arc::new(settings);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.wake_all();
    }

    fn wake(&self, shard: usize) {
        if let Some(Some(waker)) = self.wakers.get(shard) {
            if let Err(e) = waker.wake() {
                warn!(shard, "cannot wake a worker: {e}");
            }
        }
    }

    fn wake_all(&self) {
        for shard in 0..self.wakers.len() {
            self.wake(shard);
        }
    }

    /// Queues `cmd` for shard `shard`; `from` is the calling shard, if any (no wake needed).
    pub fn push(
        &self,
        shard: usize,
        cmd: Command,
        from: Option<usize>,
    ) -> Result<(), DeliverError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(DeliverError::Stopped);
        }
        let inbox = self.inboxes.get(shard).ok_or(DeliverError::NoSuchSession)?;
        inbox.push(cmd).map_err(|_| DeliverError::Full)?;
        if from != Some(shard) {
            self.wake(shard);
        }
        Ok(())
    }

    /// Queues `msg` for session `id`, on whichever shard owns it.
    pub fn send_to(
        &self,
        id: u64,
        msg: Arc<OutMessage>,
        from: Option<usize>,
    ) -> Result<(), DeliverError> {
        self.push(shard_of(id), Command::Send(id, msg), from)
    }

    /// Queues `msg` for every shard; returns how many shards took it (a full inbox misses it).
    pub fn broadcast(
        &self,
        msg: Arc<OutMessage>,
        from: Option<usize>,
    ) -> Result<usize, DeliverError> {
        let mut reached = 0;
        let mut last_err = DeliverError::Full;
        for shard in 0..self.inboxes.len() {
            match self.push(shard, Command::Broadcast(msg.clone()), from) {
                Ok(()) => reached += 1,
                Err(e) => last_err = e,
            }
        }
        if reached == 0 && !self.inboxes.is_empty() {
            Err(last_err)
        } else {
            Ok(reached)
        }
    }
}

/// Session ids: shard index in the top 16 bits, a serial in the middle 28, the connection's slot
/// in its shard in the low 20 (at most 2^20 connections per shard), so that a shard finds the
/// session of an id without a map, and an id of an earlier occupant of a slot never matches.
pub const SLOT_BITS: u32 = 20;

/// The shard that owns session `id`.
pub fn shard_of(id: u64) -> usize {
    (id >> 48) as usize
}

/// The slot of session `id` in its shard.
pub fn slot_of(id: u64) -> usize {
    (id & ((1 << SLOT_BITS) - 1)) as usize
}

/// The id of the connection in `slot` of `shard`, the `serial`-th of that shard.
pub fn session_id(shard: usize, serial: u64, slot: usize) -> u64 {
    let serial = serial & ((1 << (48 - SLOT_BITS)) - 1);
    ((shard as u64) << 48) | (serial << SLOT_BITS) | slot as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_shard_and_slot_and_differ_per_occupant() {
        let a = session_id(3, 7, 12345);
        let b = session_id(3, 8, 12345);
        assert_eq!((shard_of(a), slot_of(a)), (3, 12345));
        assert_eq!((shard_of(b), slot_of(b)), (3, 12345));
        assert_ne!(a, b);
    }

    #[test]
    fn a_full_inbox_and_a_stopped_set_refuse() {
        let set = ShardSet::new(Settings::default(), vec![None, None], 1);
        let msg = Arc::new(OutMessage::Text("x".into()));
        assert_eq!(set.send_to(session_id(1, 0, 0), msg.clone(), None), Ok(()));
        assert_eq!(
            set.send_to(session_id(1, 0, 0), msg.clone(), None),
            Err(DeliverError::Full)
        );
        assert_eq!(
            set.send_to(session_id(9, 0, 0), msg.clone(), None),
            Err(DeliverError::NoSuchSession)
        );
        assert_eq!(
            set.broadcast(msg.clone(), None),
            Ok(1),
            "shard 0 still has room"
        );
        set.stop();
        assert_eq!(set.broadcast(msg, None), Err(DeliverError::Stopped));
    }
}
