//! One worker: a thread that owns a poll instance, a listener, a [`Shard`] of connections, and
//! runs them to completion. Nothing here is shared with other workers except what the
//! [`ShardSet`](hioload_wsproto::ShardSet) holds (stop flag, counters, inboxes, settings), so
//! the loop takes no lock.
//!
//! The session lifecycle (handshake, open, finishing, deadlines, idle pings, backpressure, the
//! inbox, reload, stop) is the shard's; this module only moves bytes between sockets and the
//! shard. How bytes cross the kernel boundary is a [`Backend`], one file each, mio-style:
//! `poll_backend` (readiness: epoll, kqueue, IOCP through mio) and `uring_backend` (Linux
//! io_uring: receives are completions, small sends ride the wait). A loop turn, either backend:
//! 1. wait for I/O (at most what the shard and the ready list allow);
//! 2. the shard applies reloaded settings ([`Shard::begin_turn`]);
//! 3. per connection event: flush pending output if writable, then read (poll) or take the
//!    received buffer (io_uring); each read goes through the shard and its output is sent at
//!    the end of that read with one vectored send (or a ring send);
//! 4. accept new connections, read connections that still have input (read budget, resumed
//!    after backpressure), then the shard's end of turn: inbox, deadlines, idle sweep, stop.

mod accept;
mod input;
mod io;
mod poll_backend;
#[cfg(target_os = "linux")]
mod uring_backend;

pub(crate) use io::{Io, Listening, Socket};
pub(crate) use poll_backend::PollBackend;
#[cfg(target_os = "linux")]
pub(crate) use uring_backend::UringBackend;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hioload_wsproto::{App, Listener, PendingOutput, Shard, ShardSet, Transport};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::config::TransportConfig;
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::turn::TurnOutput;

pub(crate) const WAKER: Token = Token(0);
/// Listener `i` of a worker has token `FIRST_LISTENER + i` (a plain and a TLS one at most).
pub(crate) const FIRST_LISTENER: usize = 1;
pub(crate) const MAX_LISTENERS: usize = 2;
pub(crate) const FIRST_CONN: usize = FIRST_LISTENER + MAX_LISTENERS;

/// How a worker's bytes cross the kernel boundary; the one internal interface both backends
/// implement. Everything else about a connection is the worker's (reads, held input) or the
/// shard's (its lifecycle).
pub(crate) trait Backend<B: RecvBuffer>: Sized {
    /// The backend's own state of one connection.
    type Conn: Default;
    /// What the mio poll watches on a connection.
    const INTEREST: Interest;
    /// Prepares an accepted socket.
    fn prepare(stream: &TcpStream) -> std::io::Result<()>;
    /// The connection in `slot` may be read; `bulk`: it streams large messages
    /// ([`Connection::expects_large`](hioload_wsproto::Connection::expects_large)), which the
    /// worker reads straight into the message buffer when it can. `true`: the worker reads it
    /// now with `recv` (readiness, or large messages); `false`: the backend brings its input
    /// itself (an armed receive).
    fn want_input(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, Self::Conn>,
        bulk: bool,
    ) -> std::io::Result<bool>;
    /// After the worker read the connection in `slot` directly because `want_input` said so:
    /// a backend that brings input itself arms what tells it of the next input (unless reads
    /// are paused or the connection waits in the ready list). `large`: the connection streams
    /// large messages ([`Connection::expects_large`](hioload_wsproto::Connection::expects_large)).
    /// Nothing by default.
    fn after_direct_read(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, Self::Conn>,
        large: bool,
    ) -> std::io::Result<()> {
        let _ = (slot, sock, large);
        Ok(())
    }
    /// Takes a receive buffer back before the pool does (the io_uring ring refills from it);
    /// returns it when the backend does not want it.
    fn take_back(&mut self, buf: B) -> Option<B>;
    /// Whether earlier output of this connection is still in the backend's hands (later output
    /// waits behind it, and our FIN too).
    fn send_in_flight(conn: &Self::Conn) -> bool;
    /// The end of a read: sends the turn's output (`from`: the receive buffer and the retained
    /// message its payload ranges point into), or queues it for the backend to send.
    fn send_turn(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, Self::Conn>,
        turn: &mut TurnOutput,
        pending: &mut PendingOutput,
        from: crate::turn::Sources<'_>,
    ) -> std::io::Result<()>;
    /// The connection in `slot` is released: stop what is in flight for it and close `stream`
    /// (not before anything queued that names its descriptor has reached the kernel).
    fn release(&mut self, slot: usize, stream: TcpStream, conn: Self::Conn);
    /// Periodic work at the shard's tick.
    fn tick(&mut self) {}
    /// The worker's loop, until the shard is done.
    fn run<A: App, P: RecvBuffers<Buf = B>>(worker: Worker<A, Self, P>);
}

/// A worker before its thread runs: everything that can fail is done (listener registered).
pub(crate) struct WorkerSeed {
    pub index: usize,
    pub cfg: Arc<TransportConfig>,
    pub set: Arc<ShardSet>,
    pub poll: Poll,
    pub listeners: Vec<Listening>,
}

impl WorkerSeed {
    /// A worker's seed with its listening sockets (at most [`MAX_LISTENERS`]) registered.
    pub fn new(
        index: usize,
        cfg: Arc<TransportConfig>,
        set: Arc<ShardSet>,
        poll: Poll,
        sockets: Vec<(std::net::TcpListener, Listener)>,
    ) -> std::io::Result<Self> {
        assert!(sockets.len() <= MAX_LISTENERS);
        let mut listeners = Vec::with_capacity(sockets.len());
        for (i, (socket, kind)) in sockets.into_iter().enumerate() {
            let mut socket = TcpListener::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(FIRST_LISTENER + i), Interest::READABLE)?;
            listeners.push(Listening {
                socket,
                kind,
                ready: true,
            });
        }
        Ok(WorkerSeed {
            index,
            cfg,
            set,
            poll,
            listeners,
        })
    }
}

/// A worker: its shard and its transport side.
pub(crate) struct Worker<A, K: Backend<P::Buf>, P: RecvBuffers> {
    pub(crate) shard: Shard<Socket<P::Buf, K::Conn>, A>,
    pub(crate) io: Io<K, P>,
    events: Option<Events>,
    /// Read once per loop turn: deadlines and idle accounting use it.
    clock: Instant,
    /// Where direct reads land, behind a connection's held bytes (and where held bytes meet a
    /// ring buffer's): one receive buffer plus the most a connection can hold.
    input: Box<[u8]>,
}

impl<A: App, K: Backend<P::Buf>, P: RecvBuffers> Worker<A, K, P> {
    pub fn new(seed: WorkerSeed, app: A, pool: P, backend: K) -> Self {
        let WorkerSeed {
            index,
            cfg,
            set,
            poll,
            listeners,
        } = seed;
        let now = Instant::now();
        let shard = Shard::new(index, app, set.clone(), cfg.max_connections, now);
        let limits = &shard.settings().limits;
        let held_max = (limits.inplace_frame_max + hioload_wsproto::frame::MAX_HEADER_LEN)
            .max(limits.max_head_bytes);
        // Allocated here, on the worker's pinned thread: NUMA-local by first touch.
        let input = vec![0u8; cfg.receive_buffer_size() + held_max].into_boxed_slice();
        Worker {
            shard,
            io: Io {
                index,
                set,
                poll,
                listeners,
                accept: accept::AcceptState::new(),
                turn: TurnOutput::new(),
                pool,
                backend,
                ready: Vec::with_capacity(1024),
                ready_spare: Vec::with_capacity(1024),
                next_serial: 0,
            },
            events: Some(Events::with_capacity(cfg.batch_size)),
            clock: now,
            input,
        }
    }

    /// Runs until the shard is done (stopped, every connection gone or the grace period over).
    pub fn run(self) {
        K::run(self)
    }

    /// How long the next wait may last.
    fn poll_timeout(&self) -> Option<Duration> {
        let io = &self.io;
        let accept_pending = io.listeners.iter().any(|l| l.ready) && io.accept.resume_at.is_none();
        if !io.ready.is_empty() || accept_pending {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let shard = self.shard.poll_timeout(now);
        if io.accept.resume_at.is_some() {
            let tick = hioload_wsproto::shard::TICK;
            return Some(shard.map_or(tick, |t| t.min(tick)));
        }
        shard
    }

    /// Starts a loop turn at `now`.
    fn begin_turn(&mut self, now: Instant) {
        self.clock = now;
        self.shard.begin_turn(now);
    }

    /// Acts on the readiness events of one poll.
    fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                Token(t) if t < FIRST_CONN => {
                    if let Some(l) = self.io.listeners.get_mut(t - FIRST_LISTENER) {
                        l.ready = true;
                    }
                }
                Token(t) => {
                    let slot = t - FIRST_CONN;
                    if event.is_writable() {
                        self.on_writable(slot);
                    }
                    let hangup = event.is_read_closed() || event.is_error();
                    if hangup {
                        if let Some(s) = self.shard.slot_mut(slot) {
                            s.io.hangup = true;
                        }
                    }
                    if event.is_readable() || hangup {
                        self.on_readable(slot);
                    }
                }
            }
        }
    }

    /// The rest of a loop turn, after the I/O events: accepts, connections with input left, and
    /// the shard's end of turn. Returns whether the worker is done.
    fn after_events(&mut self) -> bool {
        if self.io.listeners.iter().any(|l| l.ready) && !self.io.set.is_stopping() {
            self.accept_all();
        }
        self.drain_ready();
        let end = self.shard.end_turn(&mut self.io, self.clock);
        if end.ticked {
            self.io.backend.tick();
            self.io.pool.maintain(self.clock);
        }
        end.done
    }

    /// The socket can take more: send pending output, then the shard's verdicts (which may
    /// resume a reader paused by backpressure).
    fn on_writable(&mut self, slot: usize) {
        let Some(s) = self.shard.slot_mut(slot) else {
            return;
        };
        if s.conn.pending().is_empty() {
            return;
        }
        let flushed =
            hioload_wsproto::Wire::flush(&mut self.io.wire(slot, &mut s.io), s.conn.pending_mut());
        match flushed {
            Err(e) => self
                .shard
                .peer_gone(slot, Some(&e), &mut self.io, self.clock),
            Ok(()) => self.shard.after_output(slot, &mut self.io, self.clock),
        }
    }

    fn on_readable(&mut self, slot: usize) {
        let Some(s) = self.shard.slot(slot) else {
            return;
        };
        if !s.conn.read_paused() {
            self.want_input(slot);
        }
    }

    /// Reads the connection now (readiness, or a large frame read straight into its message
    /// buffer) or lets the backend bring its input (io_uring).
    fn want_input(&mut self, slot: usize) {
        let Some(s) = self.shard.slot_mut(slot) else {
            return;
        };
        let large = s.conn.expects_large();
        let result = match self.io.backend.want_input(slot, &mut s.io, large) {
            Ok(true) => {
                self.read_direct(slot);
                match self.shard.slot_mut(slot) {
                    Some(s) if !s.conn.read_paused() => {
                        let large = s.conn.expects_large();
                        self.io.backend.after_direct_read(slot, &mut s.io, large)
                    }
                    _ => Ok(()),
                }
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.shard
                .peer_gone(slot, Some(&e), &mut self.io, self.clock);
        }
    }

    fn drain_ready(&mut self) {
        if self.io.ready.is_empty() {
            return;
        }
        let mut list =
            std::mem::replace(&mut self.io.ready, std::mem::take(&mut self.io.ready_spare));
        for &(slot, serial) in &list {
            match self.shard.slot_mut(slot) {
                Some(s) if s.io.serial == serial => s.io.queued_ready = false,
                _ => continue,
            }
            self.on_readable(slot);
        }
        list.clear();
        self.io.ready_spare = list;
    }

    /// At the end: every connection left is released (open sessions reported 1006).
    fn close_all(&mut self) {
        self.shard.close_all(&mut self.io, Instant::now());
    }
}
