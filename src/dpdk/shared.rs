//! What the lcores share with the rest of the process: the stop flag, one cache-line-padded set
//! of counters per lcore (read by `/metrics` and `/debug/probes`), and one bounded inbox per lcore
//! for messages sent to its sessions from elsewhere (`Server::send_to`, `Ctx::send_to`,
//! broadcasts). An lcore drains its inbox once per loop turn. Reloaded settings are published
//! here too and picked up by each lcore at its next deadline tick (the only lock, off the
//! message path).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_queue::ArrayQueue;
use hioload_fallback::{DeliverError, OutMessage, Settings, WorkerStats};

/// Session ids: lcore index in the top 16 bits, a serial in the middle, the connection slot in the
/// low 20 bits (slots are below `max_connections`, at most 2^20), so that an lcore finds the
/// session of an id without a map.
pub(super) const SLOT_BITS: u32 = 20;

/// A command in an lcore's inbox.
pub(crate) enum Command {
    /// Send to one session (by id).
    Send(u64, Arc<OutMessage>),
    /// Send to every open session of the lcore.
    Broadcast(Arc<OutMessage>),
}

/// One lcore's counters and inbox.
#[repr(align(64))]
pub(crate) struct Lcore {
    pub sessions: AtomicUsize,
    pub connections: AtomicUsize,
    pub undelivered: AtomicUsize,
    pub idle_pings: AtomicUsize,
    pub idle_drops: AtomicUsize,
    pub inbox: ArrayQueue<Command>,
}

/// Shared by the EAL thread, the lcores and the server's callers.
pub(crate) struct Shared {
    pub stopping: AtomicBool,
    /// Bumped by every `publish`.
    epoch: AtomicU64,
    settings: Mutex<Option<Arc<Settings>>>,
    /// Set once the number of polling lcores is known (after EAL init).
    lcores: OnceLock<Box<[Lcore]>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            stopping: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            settings: Mutex::new(None),
            lcores: OnceLock::new(),
        }
    }

    /// Creates the per-lcore state (once).
    pub fn set_lcores(&self, n: usize, inbox_capacity: usize) {
        let _ = self.lcores.set(
            (0..n)
                .map(|_| Lcore {
                    sessions: AtomicUsize::new(0),
                    connections: AtomicUsize::new(0),
                    undelivered: AtomicUsize::new(0),
                    idle_pings: AtomicUsize::new(0),
                    idle_drops: AtomicUsize::new(0),
                    inbox: ArrayQueue::new(inbox_capacity.max(1)),
                })
                .collect(),
        );
    }

    /// Publishes reloaded settings for every lcore.
    pub fn publish(&self, settings: Settings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(settings));
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// The settings published after `epoch`, with the new epoch; `None` if nothing changed.
    pub fn settings_since(&self, epoch: u64) -> Option<(Arc<Settings>, u64)> {
        let now = self.epoch.load(Ordering::Acquire);
        if now == epoch {
            return None;
        }
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some((settings, now))
    }

    /// Lcore `i`'s state (after `set_lcores`).
    pub fn lcore(&self, i: usize) -> &Lcore {
        &self.lcores.get().expect("lcores are set before they run")[i]
    }

    /// Open sessions on every lcore.
    pub fn session_count(&self) -> usize {
        self.lcores.get().map_or(0, |l| {
            l.iter().map(|c| c.sessions.load(Ordering::Relaxed)).sum()
        })
    }

    /// Per-lcore counters in the kernel workers' shape (what `/metrics` reads).
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.lcores.get().map_or(Vec::new(), |l| {
            l.iter()
                .map(|c| WorkerStats {
                    sessions: c.sessions.load(Ordering::Relaxed),
                    connections: c.connections.load(Ordering::Relaxed),
                    undelivered: c.undelivered.load(Ordering::Relaxed),
                    idle_pings: c.idle_pings.load(Ordering::Relaxed),
                    idle_drops: c.idle_drops.load(Ordering::Relaxed),
                    ..WorkerStats::default()
                })
                .collect()
        })
    }

    /// Queues `msg` for session `id` on the lcore that owns it.
    pub fn send_to(&self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(DeliverError::Stopped);
        }
        let lcore = self
            .lcores
            .get()
            .and_then(|l| l.get((id >> 48) as usize))
            .ok_or(DeliverError::NoSuchSession)?;
        lcore
            .inbox
            .push(Command::Send(id, msg))
            .map_err(|_| DeliverError::Full)
    }

    /// Queues `msg` for every open session; returns the number of lcores that took it.
    pub fn broadcast(&self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(DeliverError::Stopped);
        }
        let lcores = self.lcores.get().ok_or(DeliverError::Stopped)?;
        let mut queued = 0;
        for l in lcores.iter() {
            if l.inbox.push(Command::Broadcast(msg.clone())).is_ok() {
                queued += 1;
            }
        }
        if queued == 0 && !lcores.is_empty() {
            return Err(DeliverError::Full);
        }
        Ok(queued)
    }
}
