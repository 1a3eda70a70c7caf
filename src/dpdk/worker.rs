//! The DPDK worker of one lcore: its shard of connections over its TCP stack.
//!
//! The worker is the stack's [`ConnEvents`]: the stack calls it from inside its poll for each
//! connection that opened, has bytes, saw the peer's FIN or got send room, and when a connection
//! is gone. The session lifecycle (handshake, open, finishing, deadlines, idle pings,
//! backpressure, the inbox, reload, stop) is the shard's, exactly as on the kernel path; this
//! module only moves bytes between the stack's rings and the shard.
//!
//! Input, the common case: the session parses straight in the socket's receive ring
//! (`Conn::recv_and_send` lends the ring's readable bytes and the send ring together); it
//! unmasks in place and hands out whole messages as slices of the ring, and its answers go
//! straight into the send ring. What it leaves unconsumed (an incomplete frame of at most
//! `inplace_frame_max` bytes) the connection keeps in its own held input, sized to what is held
//! (the shared layer's `HeldInput`: no pool buffer that trickling peers could drain). While
//! bytes are held (and for the request head), the ring's bytes are copied behind them into the
//! lcore's receive buffer and parsed there, as the kernel path parses its read buffer. Output the send ring cannot take waits in
//! the connection's pending output; then the connection is not read until it drains.

use std::net::SocketAddr;
use std::time::Instant;

use hioload_stack::{CloseReason, Conn, ConnEvents, ConnId, PacketQueue, SendRing, Stack};
use hioload_wsproto::connection::Release;
use hioload_wsproto::output_cache::{OutputCache, OutputCacheStats};
use hioload_wsproto::shard::TurnEnd;
use hioload_wsproto::{App, Limits, Listener, PendingOutput, Shard, ShardSet, Transport};
use std::sync::Arc;

use super::wire::RingWire;

/// A stack connection as the worker keeps it in its shard slot.
#[derive(Debug)]
pub(super) struct StackConn {
    /// The stack's id (slot index + generation).
    id: ConnId,
}

/// The worker's own buffers.
struct LcoreBuffers {
    /// The receive buffer: held bytes plus one whole receive ring.
    rbuf: Box<[u8]>,
    /// Storage of pending output.
    cache: OutputCache,
}

/// The WebSocket side of one lcore.
pub(super) struct Worker<A> {
    shard: Shard<StackConn, A>,
    bufs: LcoreBuffers,
    /// The ports the stack listens on, and what each speaks (plain, TLS).
    listeners: Vec<(u16, Listener)>,
    /// Read once per loop turn.
    clock: Instant,
}

impl<A: App> Worker<A> {
    /// The worker of lcore `index`; make it on that lcore (its buffers are then local).
    pub fn new(
        index: usize,
        app: A,
        set: Arc<ShardSet>,
        limits: &Limits,
        dpdk: &super::DpdkConfig,
        listeners: Vec<(u16, Listener)>,
    ) -> Self {
        let now = Instant::now();
        Worker {
            shard: Shard::new(index, app, set, dpdk.max_connections, now),
            bufs: LcoreBuffers {
                rbuf: vec![0u8; dpdk.ring_bytes + held_max(limits)].into_boxed_slice(),
                cache: OutputCache::new(),
            },
            listeners,
            clock: now,
        }
    }

    /// The start of a loop turn (reloaded settings apply here).
    pub fn begin_turn(&mut self, now: Instant) {
        self.clock = now;
        self.shard.begin_turn(now);
    }

    /// The end of a loop turn: inbox, deadlines, idle sweep, stop.
    pub fn end_turn<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>, now: Instant) -> TurnEnd {
        let mut x = StackTransport {
            stack,
            cache: &mut self.bufs.cache,
            listeners: &self.listeners,
        };
        self.shard.end_turn(&mut x, now)
    }

    /// At the end: every connection still there is released (open sessions reported 1006).
    pub fn close_all<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>) {
        let mut x = StackTransport {
            stack,
            cache: &mut self.bufs.cache,
            listeners: &self.listeners,
        };
        self.shard.close_all(&mut x, Instant::now());
    }

    /// Whether the worker is stopping (listener closed, sessions closing).
    pub fn is_stopping(&self) -> bool {
        self.shard.is_stopping()
    }

    /// Publishes the stack's SYN-flood counters beside the shard's (at the tick).
    pub fn publish_stack_stats(&self, stats: &hioload_stack::StackStats) {
        let c = self.shard.counters();
        c.tcp_half_open_evicted
            .set(stats.half_open_evicted as usize);
        c.tcp_handshake_timeouts
            .set(stats.handshake_timeouts as usize);
        c.tcp_syn_dropped.set(stats.syn_dropped as usize);
    }

    /// Connections the worker still tracks.
    pub fn connections(&self) -> usize {
        self.shard.live()
    }

    /// Reads and processes what the receive ring holds, while nothing is pending.
    fn read(&mut self, slot: usize, conn: &mut Conn<'_>) {
        let now = self.clock;
        // The ring holds at most `ring_bytes`, and nothing arrives during this loop: it ends.
        loop {
            let Some(s) = self.shard.slot_mut(slot) else {
                return;
            };
            if s.conn.ended().is_some()
                || !s.conn.pending().is_empty()
                || s.conn.read_paused()
                || conn.recv_queue() == 0
            {
                break;
            }
            if s.conn.held_len() == 0 && s.conn.parses_frames() {
                // The common case: parse in the ring. After a wrap, or with a partial frame
                // held back, the bytes go through the receive buffer below instead.
                self.read_in_ring(slot, conn);
                continue;
            }
            // The held bytes go first, then what the ring has.
            let bufs = &mut self.bufs;
            let held = s.conn.held_mut().move_to(&mut bufs.rbuf);
            let filled = held + conn.recv_slice(&mut bufs.rbuf[held..]);
            let mut wire = RingWire {
                target: &mut *conn,
                cache: &mut bufs.cache,
            };
            self.shard
                .receive(slot, &mut bufs.rbuf[..filled], &mut wire, now);
        }
        if conn.is_eof()
            && self
                .shard
                .slot(slot)
                .is_some_and(|s| s.conn.ended().is_none())
        {
            self.shard.peer_gone(
                slot,
                None,
                &mut ConnTransport {
                    conn,
                    cache: &mut self.bufs.cache,
                },
                now,
            );
        }
    }

    /// Runs the session straight over the receive ring's readable bytes, answering into the
    /// send ring (no copy of ours); what it leaves unconsumed the connection holds, and the
    /// ring is emptied of it all.
    fn read_in_ring(&mut self, slot: usize, conn: &mut Conn<'_>) {
        let now = self.clock;
        let (shard, bufs) = (&mut self.shard, &mut self.bufs);
        conn.recv_and_send(|rx, tx: &mut SendRing<'_>| {
            shard.receive(
                slot,
                rx,
                &mut RingWire {
                    target: tx,
                    cache: &mut bufs.cache,
                },
                now,
            );
            rx.len()
        });
    }
}

impl<A: App> ConnEvents for Worker<A> {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let id = conn.id();
        let peer = SocketAddr::V4(conn.remote());
        let io = StackConn { id };
        let kind = self
            .listeners
            .iter()
            .find(|(port, _)| *port == conn.local_port())
            .map_or(Listener::Plain, |(_, kind)| *kind);
        if self
            .shard
            .open_at_on(kind, id.index(), io, peer, self.clock)
            .is_err()
        {
            // Stopping (accepted from the backlog after the listener closed), or over the
            // connection cap (counted and logged by the shard): reset at once.
            conn.abort();
        }
    }

    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        let id = conn.id();
        let slot = id.index();
        match self.shard.slot(slot) {
            Some(s) if s.io.id == id && !s.is_released() => {}
            _ => {
                // Not ours, or released (reset at stop, FIN sent): discard what arrives.
                consume(conn, usize::MAX);
                return;
            }
        }
        let now = self.clock;
        let mut x = ConnTransport {
            conn: &mut *conn,
            cache: &mut self.bufs.cache,
        };
        if let Some(s) = self.shard.slot_mut(slot) {
            let _ =
                hioload_wsproto::Wire::flush(&mut x.wire(slot, &mut s.io), s.conn.pending_mut());
        }
        self.read(slot, conn);
        self.shard.after_output(
            slot,
            &mut ConnTransport {
                conn,
                cache: &mut self.bufs.cache,
            },
            now,
        );
    }

    fn on_close(&mut self, id: ConnId, reason: CloseReason) {
        if self.shard.slot(id.index()).is_some_and(|s| s.io.id == id) {
            self.shard
                .forget(id.index(), reason == CloseReason::Reset, self.clock);
        }
    }
}

/// The transport of one connection, inside the stack's poll (the connection in hand).
struct ConnTransport<'c, 'a> {
    conn: &'c mut Conn<'a>,
    cache: &'c mut OutputCache,
}

impl<'a> Transport for ConnTransport<'_, 'a> {
    type Io = StackConn;
    type Wire<'w>
        = RingWire<'w, &'w mut Conn<'a>>
    where
        Self: 'w;

    fn wire<'w>(&'w mut self, _slot: usize, _io: &'w mut StackConn) -> Self::Wire<'w> {
        RingWire {
            target: &mut *self.conn,
            cache: &mut *self.cache,
        }
    }
    fn release(
        &mut self,
        _slot: usize,
        io: StackConn,
        pending: &mut PendingOutput,
        how: Release,
    ) -> Option<StackConn> {
        let mut wire = RingWire {
            target: &mut *self.conn,
            cache: &mut *self.cache,
        };
        Some(release(&mut wire, io, pending, how))
    }
    fn resume_reading(&mut self, _slot: usize, _io: &mut StackConn) {
        // The read follows in the same `on_ready`.
    }
    fn stop_listening(&mut self) {}
    fn output_cache_stats(&self) -> OutputCacheStats {
        self.cache.stats()
    }
}

/// The transport of any connection, between the stack's polls (inbox, deadlines, stop).
struct StackTransport<'s, Q: PacketQueue> {
    stack: &'s mut Stack<Q>,
    cache: &'s mut OutputCache,
    listeners: &'s [(u16, Listener)],
}

impl<Q: PacketQueue> Transport for StackTransport<'_, Q> {
    type Io = StackConn;
    type Wire<'w>
        = RingWire<'w, Option<Conn<'w>>>
    where
        Self: 'w;

    fn wire<'w>(&'w mut self, _slot: usize, io: &'w mut StackConn) -> Self::Wire<'w> {
        RingWire {
            target: self.stack.conn(io.id),
            cache: &mut *self.cache,
        }
    }
    fn release(
        &mut self,
        _slot: usize,
        io: StackConn,
        pending: &mut PendingOutput,
        how: Release,
    ) -> Option<StackConn> {
        let conn = self.stack.conn(io.id)?; // gone from the stack already: free the slot now
        let mut wire = RingWire {
            target: conn,
            cache: &mut *self.cache,
        };
        Some(release(&mut wire, io, pending, how))
    }
    fn resume_reading(&mut self, _slot: usize, _io: &mut StackConn) {
        // The stack calls `on_ready` when the peer's ACKs make send room.
    }
    fn stop_listening(&mut self) {
        for (port, _) in self.listeners {
            self.stack.unlisten(*port);
        }
    }
    fn output_cache_stats(&self) -> OutputCacheStats {
        self.cache.stats()
    }
}

/// Lets a connection go: gracefully (what is pending into the ring as far as it fits, then FIN)
/// or with a reset. The stack reaps it after the FIN exchange or at once after the reset, and
/// then calls `on_close`, which forgets it.
fn release<T: SendTargetExt>(
    wire: &mut RingWire<'_, T>,
    io: StackConn,
    pending: &mut PendingOutput,
    how: Release,
) -> StackConn {
    match how {
        Release::Close => {
            let _ = hioload_wsproto::Wire::flush(wire, pending);
            wire.target.close();
        }
        Release::Reset => wire.target.abort(),
    }
    pending.release(wire.cache);
    io
}

/// What the release needs of a send target beyond sending.
trait SendTargetExt: super::wire::SendTarget {
    fn abort(&mut self);
}

impl SendTargetExt for &mut Conn<'_> {
    fn abort(&mut self) {
        Conn::abort(self);
    }
}

impl SendTargetExt for Conn<'_> {
    fn abort(&mut self) {
        Conn::abort(self);
    }
}

/// Most bytes a connection holds back between reads: an incomplete in-place frame (with its
/// largest header) or an incomplete request head.
pub(super) fn held_max(limits: &Limits) -> usize {
    (limits.inplace_frame_max + 14).max(limits.max_head_bytes)
}

/// Takes up to `n` bytes from the receive ring (two rounds cover its wrap).
fn consume(conn: &mut Conn<'_>, mut n: usize) {
    for _ in 0..2 {
        if n == 0 {
            return;
        }
        let taken = conn.recv_with(|b| n.min(b.len()));
        if taken == 0 {
            return;
        }
        n -= taken;
    }
}
