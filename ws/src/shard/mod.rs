//! One worker's share of the server: its connections and everything around them that is not
//! moving bytes. Both data paths run exactly this code; a transport (the kernel worker, the DPDK
//! worker of an lcore) only reads, writes and tells the shard what happened.
//!
//! A shard owns:
//! - the **slots**: each connection's [`Connection`] (lifecycle) next to the transport's state for
//!   it (`T`: a socket and its held input, a stack connection id). A session id names its shard and
//!   slot ([`session_id`]), so sends by id need no map;
//! - the **watch list**: the few connections with a timer armed (handshake, close, finishing,
//!   backpressure), checked at each tick (every 100 ms); idle open sessions cost no timer work;
//! - the **idle sweep**: sessions quiet for `idle_timeout` are pinged, those that do not answer
//!   within `pong_timeout` are dropped (1006);
//! - the **inbox**: commands from other threads (sends by id, broadcasts), run once per turn;
//! - **reload**: at the start of each loop turn ([`Shard::begin_turn`]) the shard compares the
//!   settings epoch and applies new settings to itself and every open session;
//! - **stop**: stop listening, Close 1001 to every session, wait `shutdown_grace` for the close
//!   handshakes, then release what is left.
//!
//! The transport's side of the seam is [`Transport`]: a [`Wire`] per connection, releasing a
//! connection, resuming a paused reader, closing the listener. A transport loop reads top to
//! bottom: `begin_turn`, its I/O (calling [`Shard::receive`] and [`Shard::after_output`] for each
//! connection that moved bytes), then [`Shard::end_turn`], and it waits at most
//! [`Shard::poll_timeout`].

mod counters;
mod set;
mod slots;
pub mod topics;
mod turn;

pub use counters::{CacheCounters, PaddedCounter, ShardCounters, WorkerStats};
pub use set::{
    session_id, shard_of, slot_of, Command, DeliverError, OutMessage, ShardSet, Wake, SLOT_BITS,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::close::CloseCode;
use crate::connection::{App, Connection, Release, ShardContext, Wire};
use crate::log_limit::{LogCause, LogLimit};
use crate::output_cache::OutputCacheStats;
use crate::pending::PendingOutput;
use crate::settings::Settings;

/// Deadline resolution: the watch list is checked this often.
pub const TICK: Duration = Duration::from_millis(100);
/// Idle sweeps happen at most this far apart.
const IDLE_SWEEP_MAX: Duration = Duration::from_secs(1);
/// Inbox commands run per turn at most (the rest wait for the next turn).
const INBOX_BATCH: usize = 1024;

/// What a shard needs from its transport, per connection and for itself.
pub trait Transport {
    /// The transport's state of one connection, kept in its slot.
    type Io;
    /// The wire of one connection, for output outside a read (inbox, pings, closes).
    type Wire<'a>: Wire
    where
        Self: 'a;

    /// The wire of the connection in `slot`.
    fn wire<'a>(&'a mut self, slot: usize, io: &'a mut Self::Io) -> Self::Wire<'a>;
    /// The connection in `slot` is over: let it go as `how` says and give back what it holds
    /// (`pending` included). `None`: it is gone and its slot is free; `Some(io)`: the transport
    /// still waits for it to go (a FIN exchange) and calls [`Shard::forget`] when it has.
    fn release(
        &mut self,
        slot: usize,
        io: Self::Io,
        pending: &mut PendingOutput,
        how: Release,
    ) -> Option<Self::Io>;
    /// Backpressure lifted: read the connection in `slot` again.
    fn resume_reading(&mut self, slot: usize, io: &mut Self::Io);
    /// The server stops: accept no more connections.
    fn stop_listening(&mut self);
    /// The transport's output-cache counters (published at the shard's tick).
    fn output_cache_stats(&self) -> OutputCacheStats;
}

/// Which kind of listener accepted a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Plain `ws://` (and HTTP).
    Plain,
    /// `wss://`: TLS first, with the certificates of [`Settings::tls`].
    Tls,
}

/// A connection and the transport's state for it.
#[derive(Debug)]
pub struct Slot<T> {
    /// The lifecycle.
    pub conn: Connection,
    /// The transport's state.
    pub io: T,
    /// In the watch list.
    watched: bool,
    /// Released, and kept until the transport says it is gone ([`Shard::forget`]).
    released: bool,
    /// The connection's memory as last counted in the shard's total.
    charged: usize,
}

impl<T> Slot<T> {
    /// Whether the connection was released and only waits for its transport to let it go:
    /// nothing more is done with it, input is discarded.
    pub fn is_released(&self) -> bool {
        self.released
    }
}

/// What the end of a loop turn found.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnEnd {
    /// The tick ran (deadlines were checked): transports do their own periodic work here.
    pub ticked: bool,
    /// The shard is done: stopped and every connection finished (or the grace period is over).
    pub done: bool,
}

/// One worker's connections and their lifecycle; see the module documentation.
pub struct Shard<T, A> {
    index: usize,
    app: A,
    set: Arc<ShardSet>,
    settings: Arc<Settings>,
    epoch: u64,
    slots: Vec<Option<Slot<T>>>,
    free: Vec<usize>,
    live: usize,
    max_connections: usize,
    watched: Vec<(usize, u64)>,
    watched_spare: Vec<(usize, u64)>,
    http: Vec<u8>,
    next_serial: u64,
    next_tick: Instant,
    next_idle_sweep: Instant,
    stop_deadline: Option<Instant>,
    /// Bytes the connections hold (sum of their `charged`), against the memory budget.
    memory: usize,
    log: LogLimit,
    /// The subscriber index of this shard's sessions (`topics.rs`).
    topics: topics::ShardTopics,
}

impl<T, A: App> Shard<T, A> {
    /// Shard `index` of `set`, serving `app`, with room for `max_connections` (at most 2^20).
    pub fn new(
        index: usize,
        app: A,
        set: Arc<ShardSet>,
        max_connections: usize,
        now: Instant,
    ) -> Self {
        let (settings, epoch) = set.settings();
        let mut shard = Shard {
            index,
            app,
            set,
            settings,
            epoch,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            max_connections: max_connections.clamp(1, 1 << SLOT_BITS),
            // Sized up front: growing them on a first busy turn would allocate mid-run.
            watched: Vec::with_capacity(256),
            watched_spare: Vec::with_capacity(256),
            http: Vec::with_capacity(1024),
            next_serial: 0,
            next_tick: now + TICK,
            next_idle_sweep: now,
            stop_deadline: None,
            memory: 0,
            log: LogLimit::new(),
            topics: topics::ShardTopics::default(),
        };
        shard.next_idle_sweep = now + shard.idle_sweep_period();
        shard
    }

    /// The shard's index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }
    /// What the shards share.
    pub fn set(&self) -> &Arc<ShardSet> {
        &self.set
    }
    /// This shard's counters.
    pub fn counters(&self) -> &ShardCounters {
        self.set.counters(self.index)
    }
    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    /// Connections in any phase.
    pub fn live(&self) -> usize {
        self.live
    }
    /// Whether the shard is stopping (stop asked, listener closed).
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }
    /// This shard's subscriber index.
    pub fn topics(&self) -> &topics::ShardTopics {
        &self.topics
    }
    /// The connection in `slot`, if any.
    pub fn slot(&self, slot: usize) -> Option<&Slot<T>> {
        self.slots.get(slot).and_then(Option::as_ref)
    }
    /// The connection in `slot`, if any.
    pub fn slot_mut(&mut self, slot: usize) -> Option<&mut Slot<T>> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// The start of a loop turn: applies reloaded settings (one relaxed load when nothing
    /// changed). The one point where settings change, on every data path.
    pub fn begin_turn(&mut self, now: Instant) {
        if self.set.epoch() != self.epoch {
            self.apply_settings(now);
        }
    }

    fn apply_settings(&mut self, now: Instant) {
        let (new, epoch) = self.set.settings();
        self.epoch = epoch;
        let settings = self.settings.reloaded(&new);
        for slot in self.slots.iter_mut().flatten() {
            if let Some(session) = slot.conn.session_mut() {
                session.set_limits(settings.limits.clone());
            }
        }
        self.settings = Arc::new(settings);
        self.next_idle_sweep = now + self.idle_sweep_period();
        debug!(shard = self.index, epoch, "settings reloaded");
    }

    // ---- connections ---------------------------------------------------------------------------

    /// Takes a new connection into a free slot; its handshake deadline starts. Refused (the
    /// transport state is handed back, for the transport to close at once) while stopping, with
    /// every slot taken, or at the server's connection cap (`max_connections`: counted, and
    /// logged at a rate limit).
    pub fn open(&mut self, io: T, peer: SocketAddr, now: Instant) -> Result<usize, T> {
        self.open_on(Listener::Plain, io, peer, now)
    }

    /// [`Shard::open`] for a connection accepted on `listener`: a TLS listener's connections
    /// start with a TLS handshake (with the certificates of the settings in force); refused if
    /// the settings have none.
    pub fn open_on(
        &mut self,
        listener: Listener,
        io: T,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<usize, T> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < self.max_connections => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(io),
        };
        self.open_at_on(listener, slot, io, peer, now)
            .map(|()| slot)
            .inspect_err(|_| self.free.push(slot))
    }

    /// [`Shard::open`] into a slot the transport chose (its own connection index, below
    /// `max_connections`), for transports that number their connections densely. A shard uses
    /// either this or `open`, not both.
    pub fn open_at(&mut self, slot: usize, io: T, peer: SocketAddr, now: Instant) -> Result<(), T> {
        self.open_at_on(Listener::Plain, slot, io, peer, now)
    }

    /// [`Shard::open_at`] for a connection accepted on `listener` (see [`Shard::open_on`]).
    pub fn open_at_on(
        &mut self,
        listener: Listener,
        slot: usize,
        io: T,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), T> {
        if self.set.is_stopping() || slot >= self.max_connections {
            return Err(io);
        }
        if self.set.connection_count() >= self.settings.max_connections {
            self.counters().connections_refused.add(1);
            if self.log.allow(LogCause::Refused, now) {
                warn!(%peer, cap = self.settings.max_connections,
                    "connection refused: the server holds max_connections connections");
            }
            return Err(io);
        }
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].is_some() {
            return Err(io);
        }
        let id = session_id(self.index, self.next_serial, slot);
        let mut conn = Connection::new(id, peer, now, &self.settings);
        if listener == Listener::Tls {
            let started = match &self.settings.tls {
                Some(acceptor) => conn.start_tls(acceptor).map_err(|e| e.0),
                None => Err("no TLS certificate configured".to_string()),
            };
            if let Err(why) = started {
                if self.log.allow(LogCause::Refused, now) {
                    warn!(%peer, "TLS connection refused: {why}");
                }
                return Err(io);
            }
        }
        self.next_serial += 1;
        self.slots[slot] = Some(Slot {
            conn,
            io,
            watched: false,
            released: false,
            charged: 0,
        });
        self.live += 1;
        self.counters().connections.add(1);
        self.update(slot);
        Ok(())
    }

    /// Runs the connection in `slot` over received bytes (see [`Connection::receive`]: `input`
    /// starts with the connection's held bytes, and what stays unconsumed is held again by the
    /// connection). Then the transport sends this turn's output and calls
    /// [`Shard::after_output`].
    pub fn receive<W: Wire + ?Sized>(
        &mut self,
        slot: usize,
        input: &mut [u8],
        wire: &mut W,
        now: Instant,
    ) {
        if let Some((s, mut cx)) = self.split(slot) {
            s.conn.receive(input, wire, &mut cx, now);
        }
    }

    /// Takes `n` bytes the transport read straight into the room
    /// [`Connection::bulk_room`] gave for the connection in `slot` (see
    /// [`Connection::receive_bulk`]); then, as after [`Shard::receive`], the transport sends the
    /// turn's output and calls [`Shard::after_output`].
    ///
    /// # Safety
    /// As [`Connection::receive_bulk`]: those `n` bytes were written, and nothing else was done
    /// with the connection since `bulk_room`.
    pub unsafe fn receive_bulk<W: Wire + ?Sized>(
        &mut self,
        slot: usize,
        n: usize,
        wire: &mut W,
        now: Instant,
    ) {
        if let Some((s, mut cx)) = self.split(slot) {
            // SAFETY: the caller's contract, passed on.
            unsafe { s.conn.receive_bulk(n, wire, &mut cx, now) };
        }
    }

    /// After the transport sent (or queued) the connection's output: backpressure verdicts, our
    /// FIN, timers; a connection that ended is released.
    pub fn after_output<X: Transport<Io = T>>(&mut self, slot: usize, x: &mut X, now: Instant) {
        let Some((s, mut cx)) = self.split(slot) else {
            return;
        };
        let resume = s
            .conn
            .after_output(&mut x.wire(slot, &mut s.io), cx.settings, now);
        after_verdicts(s, &mut cx, x, slot, now, resume);
        self.settle(slot, x);
    }

    /// The application's deferred decision on the upgrade of the connection in `slot`: the 101
    /// (and the session's start) or the refusal goes out.
    fn complete_upgrade<X: Transport<Io = T>>(
        &mut self,
        slot: usize,
        decision: crate::connection::Upgrade,
        x: &mut X,
        now: Instant,
    ) {
        let Some((s, mut cx)) = self.split(slot) else {
            return;
        };
        let mut wire = x.wire(slot, &mut s.io);
        s.conn.complete_upgrade(decision, &mut wire, &mut cx, now);
        match wire.flush(s.conn.pending_mut()) {
            Err(e) => {
                drop(wire);
                s.conn.peer_gone(Some(&e), &mut cx, now);
            }
            Ok(()) => {
                s.conn.after_output(&mut wire, cx.settings, now);
                drop(wire);
            }
        }
        self.settle(slot, x);
    }

    /// The peer closed (`error` `None`) or the connection broke: the session is reported closed
    /// (1006) and the connection released.
    pub fn peer_gone<X: Transport<Io = T>>(
        &mut self,
        slot: usize,
        error: Option<&std::io::Error>,
        x: &mut X,
        now: Instant,
    ) {
        if let Some((s, mut cx)) = self.split(slot) {
            s.conn.peer_gone(error, &mut cx, now);
        }
        self.settle(slot, x);
    }

    /// Ends the connection in `slot` now (reset), reporting `code` if its session is open.
    pub fn end<X: Transport<Io = T>>(
        &mut self,
        slot: usize,
        code: CloseCode,
        reason: &str,
        x: &mut X,
        now: Instant,
    ) {
        if let Some((s, mut cx)) = self.split(slot) {
            s.conn.end(code, reason, &mut cx, now);
        }
        self.settle(slot, x);
    }

    /// The transport's connection in `slot` is gone (after [`Transport::release`] kept it, or on
    /// its own: `reset` tells how). A session still open is reported closed with 1006.
    pub fn forget(&mut self, slot: usize, reset: bool, now: Instant) {
        let Some((s, mut cx)) = self.split(slot) else {
            return;
        };
        let error = reset.then(|| std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        s.conn.peer_gone(error.as_ref(), &mut cx, now);
        self.free_slot(slot);
    }

    /// Queues output on the connection in `slot` through its wire (`f`), sends it, and applies
    /// the verdicts; a broken connection is released.
    fn with_output<X: Transport<Io = T>, R>(
        &mut self,
        slot: usize,
        x: &mut X,
        now: Instant,
        f: impl FnOnce(&mut Connection, &mut X::Wire<'_>) -> R,
    ) -> Option<R> {
        let (s, mut cx) = self.split(slot)?;
        let mut wire = x.wire(slot, &mut s.io);
        let result = f(&mut s.conn, &mut wire);
        match wire.flush(s.conn.pending_mut()) {
            Err(e) => {
                drop(wire);
                s.conn.peer_gone(Some(&e), &mut cx, now);
            }
            Ok(()) => {
                s.conn.settle(&mut cx, now);
                let resume = s.conn.after_output(&mut wire, cx.settings, now);
                drop(wire);
                after_verdicts(s, &mut cx, x, slot, now, resume);
            }
        }
        self.settle(slot, x);
        Some(result)
    }

    // ---- the end of a loop turn ---------------------------------------------------------------

    /// How long the transport may wait for I/O before [`Shard::end_turn`] has work: zero with
    /// commands in the inbox, until the next tick while timers are armed or stopping, until the
    /// next idle sweep while sessions are open, else as long as it likes.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.set.inbox(self.index).is_empty() {
            Some(Duration::ZERO)
        } else if !self.watched.is_empty()
            || self.stop_deadline.is_some()
            || self.set.is_stopping()
            || self.counters().memory.get() != self.memory
            || self.topics.report_due()
        {
            Some(self.next_tick.saturating_duration_since(now))
        } else if self.settings.idle_timeout.is_some() && self.counters().sessions.get() > 0 {
            Some(
                self.next_idle_sweep
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            )
        } else {
            None
        }
    }
}

/// After the backpressure verdicts of the connection in `slot`: a paused reader is read again
/// (`resume`), and an application that was told of backpressure hears that the output is back
/// under the soft bound ([`App::on_drain`]) and may send again.
fn after_verdicts<T, A: App, X: Transport<Io = T>>(
    s: &mut Slot<T>,
    cx: &mut ShardContext<'_, A>,
    x: &mut X,
    slot: usize,
    now: Instant,
    resume: bool,
) {
    if resume {
        x.resume_reading(slot, &mut s.io);
    }
    if s.conn.drain_due(cx.settings) {
        let mut wire = x.wire(slot, &mut s.io);
        s.conn.drained(&mut wire, cx);
        if wire.flush(s.conn.pending_mut()).is_ok() {
            s.conn.after_output(&mut wire, cx.settings, now);
        }
    }
}

#[cfg(test)]
mod tests;
