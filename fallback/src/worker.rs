//! One worker: a thread that owns a poll instance, a listener and every connection it accepted,
//! and runs them to completion. Nothing here is shared with other workers except the stop flag
//! and a session counter, so the loop takes no lock.
//!
//! A loop turn, top to bottom:
//! 1. wait for up to `batch_size` readiness events (no timeout unless a deadline or ready work);
//! 2. per connection event: flush pending output if writable, then read: each read goes into a
//!    pooled buffer, is parsed in place (handshake or frames), the service is called, and the
//!    replies are sent at the end of that read with one vectored send;
//! 3. accept new connections; read connections that still have input (read budget, resumed
//!    after backpressure);
//! 4. run the inbox (sends by id and broadcasts from other threads), if it has anything;
//! 5. every 100 ms, check the deadlines of the few connections that have one; every second (or
//!    a quarter of `idle_timeout`), ping the sessions that went quiet and drop those that did not
//!    answer the last ping.
//!
//! Settings (limits, timeouts, backpressure bounds) are the worker's own `Arc<Settings>`, replaced
//! at the top of a turn when the shared epoch says a reload happened (one relaxed load per turn).

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hioload_wsproto::handshake::{self, Parsed};
use hioload_wsproto::session::State;
use hioload_wsproto::{CloseCode, Event, HttpError, Session};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, error, info, warn};

use crate::config::{receive_buffer_size, Settings, TransportConfig};
use crate::conn::{Connection, Phase};
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::service::{Conn, Ended, Service};
use crate::shared::{Command, OutMessage, Shared};
use crate::sys::{self, ReserveFd};
use crate::turn::TurnOutput;

#[cfg(target_os = "linux")]
mod uring_loop;

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Reads per connection per turn before others get their turn.
const READ_ROUNDS: usize = 4;
/// Accepts per turn before connections get their turn.
const ACCEPT_BATCH: usize = 256;
/// Deadline resolution.
const TICK: Duration = Duration::from_millis(100);
/// Pause of accepting after an error the reserve descriptor could not absorb.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// io_uring: turns up to this size are sent through the ring (one copy, no system call); larger
/// ones go out at once with a vectored `sendmsg` straight from the receive buffer (no copy).
const RING_SEND_MAX: usize = 8 << 10;
/// io_uring: capacity of the send arena (a loop turn's ring sends, back to back).
const SEND_ARENA: usize = 512 << 10;

/// One ring send of a loop turn: `send_arena[start..start + len]` for the connection in `idx`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct RingSend {
    idx: usize,
    id: u64,
    start: usize,
    len: usize,
}

/// Idle sweeps happen at most this often.
const IDLE_SWEEP_MAX: Duration = Duration::from_secs(1);
/// Inbox commands run per turn at most (the rest wait for the next turn).
const INBOX_BATCH: usize = 1024;

/// A worker before its thread runs: everything that can fail is done (listener registered).
pub(crate) struct WorkerSeed {
    index: usize,
    cfg: Arc<TransportConfig>,
    shared: Arc<Shared>,
    poll: Poll,
    listener: TcpListener,
}

impl WorkerSeed {
    pub fn new(
        index: usize,
        cfg: Arc<TransportConfig>,
        shared: Arc<Shared>,
        poll: Poll,
        listener: std::net::TcpListener,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(WorkerSeed {
            index,
            cfg,
            shared,
            poll,
            listener,
        })
    }

    /// Size of the receive buffers this worker needs.
    pub fn receive_buffer_size(&self) -> usize {
        self.cfg.receive_buffer_size()
    }
}

pub(crate) struct Worker<S: Service> {
    index: usize,
    settings: Arc<Settings>,
    epoch: u64,
    service: Arc<S>,
    shared: Arc<Shared>,
    poll: Poll,
    events: Option<Events>,
    listener: Option<TcpListener>,
    listener_ready: bool,
    accept_resume_at: Option<Instant>,
    reserve: ReserveFd,
    last_fd_warning: Option<Instant>,
    dropped_for_fds: u64,
    conns: Vec<Option<Connection<<S::Buffers as RecvBuffers>::Buf>>>,
    free_slots: Vec<usize>,
    live: usize,
    /// Session id -> slot, for sends by id.
    by_id: HashMap<u64, usize>,
    pool: S::Buffers,
    buf_size: usize,
    /// Connections that could not get a receive buffer; retried at the next tick.
    starved: Vec<(usize, u64)>,
    turn: TurnOutput,
    http_response: Vec<u8>,
    ready: Vec<(usize, u64)>,
    ready_spare: Vec<(usize, u64)>,
    watched: Vec<(usize, u64)>,
    watched_spare: Vec<(usize, u64)>,
    /// Read once per loop turn.
    clock: Instant,
    next_tick: Instant,
    next_idle_sweep: Instant,
    next_serial: u64,
    stop_deadline: Option<Instant>,
    /// The io_uring backend's ring and provided buffers; `None`: readiness (mio) for reads too.
    #[cfg(target_os = "linux")]
    uring: Option<crate::uring::Uring<<S::Buffers as RecvBuffers>::Buf>>,
    /// io_uring: this loop turn's ring sends, each a range of `send_arena`.
    ring_sends: Vec<RingSend>,
    /// io_uring: the bytes of this loop turn's ring sends, back to back; cleared once their
    /// completions are taken. Fixed capacity: a turn that does not fit is sent directly.
    send_arena: Vec<u8>,
    /// Small turns are sent through the io_uring ring (`uring.is_some()`, kept apart so that it
    /// can be read while a connection is borrowed).
    sends_through_ring: bool,
    /// io_uring: the pool had no buffer for the ring; tried again at the next tick.
    ring_refill_waits: bool,
}

fn read_once(stream: &mut mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sys::recv_nonblocking(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl<S: Service> Worker<S> {
    pub fn new(seed: WorkerSeed, service: Arc<S>, mut pool: S::Buffers) -> Self {
        let WorkerSeed {
            index,
            cfg,
            shared,
            poll,
            listener,
        } = seed;
        #[cfg(target_os = "linux")]
        let uring = match cfg.io {
            crate::config::IoBackend::IoUring => {
                use std::os::fd::AsRawFd;
                let buffers = cfg.uring_buffers;
                match crate::uring::Uring::new(buffers, poll.as_raw_fd(), || pool.take()) {
                    Ok(ring) => Some(ring),
                    Err(e) => {
                        error!(
                            worker = index,
                            "cannot set up io_uring: {e}; this worker uses epoll"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let (settings, epoch) = shared.settings();
        #[cfg(target_os = "linux")]
        let sends_through_ring = uring.is_some();
        #[cfg(not(target_os = "linux"))]
        let sends_through_ring = false;
        let now = Instant::now();
        Worker {
            index,
            events: Some(Events::with_capacity(cfg.batch_size)),
            buf_size: cfg.receive_buffer_size(),
            settings,
            epoch,
            service,
            shared,
            poll,
            listener: Some(listener),
            listener_ready: true,
            accept_resume_at: None,
            reserve: ReserveFd::new(),
            last_fd_warning: None,
            dropped_for_fds: 0,
            conns: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
            by_id: HashMap::with_capacity(1024),
            pool,
            starved: Vec::with_capacity(64),
            turn: TurnOutput::new(),
            http_response: Vec::with_capacity(1024),
            // Sized up front: growing them on a first busy turn would allocate mid-run.
            ready: Vec::with_capacity(1024),
            ready_spare: Vec::with_capacity(1024),
            watched: Vec::with_capacity(256),
            watched_spare: Vec::with_capacity(256),
            clock: now,
            next_tick: now + TICK,
            next_idle_sweep: now + IDLE_SWEEP_MAX,
            next_serial: 0,
            stop_deadline: None,
            #[cfg(target_os = "linux")]
            uring,
            ring_sends: Vec::with_capacity(1024),
            send_arena: Vec::with_capacity(if sends_through_ring { SEND_ARENA } else { 0 }),
            sends_through_ring,
            ring_refill_waits: false,
        }
    }

    /// Runs until `stop` has been asked and every connection is gone (or the grace period ended).
    pub fn run(mut self) {
        #[cfg(target_os = "linux")]
        if self.uring.is_some() {
            return self.run_uring();
        }
        loop {
            let timeout = self.poll_timeout();
            let mut events = self.events.take().expect("events are put back every turn");
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                self.events = Some(events);
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(worker = self.index, "poll failed: {e}; the worker stops");
                break;
            }
            // One clock read per turn: deadlines and idle accounting use it.
            self.clock = Instant::now();
            if self.shared.epoch() != self.epoch {
                self.apply_settings();
            }
            self.dispatch(&events);
            self.events = Some(events);
            if self.after_events() {
                break;
            }
        }
        self.close_all();
    }

    /// Acts on the readiness events of one poll.
    pub(crate) fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.listener_ready = true,
                WAKER => {}
                Token(t) => {
                    let idx = t - FIRST_CONN;
                    if event.is_writable() {
                        self.on_writable(idx);
                    }
                    let hangup = event.is_read_closed() || event.is_error();
                    if hangup {
                        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                            conn.hangup = true;
                        }
                    }
                    if event.is_readable() || hangup {
                        self.on_readable(idx);
                    }
                }
            }
        }
    }

    /// The rest of a loop turn, after the I/O events: shutdown, accepts, connections with input
    /// left, the inbox, deadlines and idle sweeps. Returns whether the worker is done.
    pub(crate) fn after_events(&mut self) -> bool {
        if self.stop_deadline.is_none() && self.shared.stopping.load(Ordering::Acquire) {
            self.begin_shutdown();
        }
        if self.listener_ready {
            self.accept_all();
        }
        self.drain_ready();
        if !self.shared.inboxes[self.index].is_empty() {
            self.run_inbox();
        }
        let now = self.clock;
        if now >= self.next_tick {
            self.tick(now);
            self.next_tick = now + TICK;
        }
        if now >= self.next_idle_sweep {
            self.idle_sweep(now);
            self.next_idle_sweep = now + self.idle_sweep_period();
        }
        match self.stop_deadline {
            Some(deadline) => now >= deadline || self.all_finished(),
            None => false,
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let accept_pending =
            self.listener_ready && self.listener.is_some() && self.accept_resume_at.is_none();
        if !self.ready.is_empty() || accept_pending || !self.shared.inboxes[self.index].is_empty() {
            Some(Duration::ZERO)
        } else if !self.watched.is_empty()
            || !self.starved.is_empty()
            || self.stop_deadline.is_some()
            || self.accept_resume_at.is_some()
        {
            Some(TICK)
        } else if self.settings.idle_timeout.is_some()
            && self.shared.workers[self.index].sessions.get() > 0
        {
            Some(
                self.next_idle_sweep
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            )
        } else {
            None
        }
    }

    // ---- settings ----------------------------------------------------------------------------

    /// Takes the settings published by a reload; open sessions get the new limits. The receive
    /// buffer size was fixed at start: limits that would change it keep their old values (the
    /// facade refuses such reloads and says a restart is needed).
    fn apply_settings(&mut self) {
        let (new, epoch) = self.shared.settings();
        self.epoch = epoch;
        let mut settings = (*new).clone();
        if receive_buffer_size(&settings.limits) > self.buf_size {
            settings.limits.inplace_frame_max = self.settings.limits.inplace_frame_max;
            settings.limits.max_head_bytes = self.settings.limits.max_head_bytes;
        }
        for conn in self.conns.iter_mut().flatten() {
            if let Phase::Open(session) = &mut conn.phase {
                session.set_limits(settings.limits.clone());
            }
        }
        self.settings = Arc::new(settings);
        self.next_idle_sweep = Instant::now() + self.idle_sweep_period();
        debug!(worker = self.index, epoch, "settings reloaded");
    }

    // ---- accepting -------------------------------------------------------------------------

    fn accept_all(&mut self) {
        if let Some(at) = self.accept_resume_at {
            if Instant::now() < at {
                return;
            }
            self.accept_resume_at = None;
            // Another worker may have taken the descriptor this one released: take one back.
            self.reserve.restore();
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_connection(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if sys::is_transient_accept_error(&e) => {}
                Err(e) if sys::is_fd_exhaustion(&e) && self.reserve.is_held() => {
                    // Free the reserve, take the connection off the queue and close it, so that the
                    // listener stops being readable; tell the operator (at most once a second).
                    // (Linux reports EMFILE even when the queue is empty: then we are done.)
                    self.reserve.release();
                    let next = listener.accept();
                    let peer = next.as_ref().ok().map(|(_, peer)| *peer);
                    let empty = matches!(&next, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
                    drop(next);
                    self.reserve.restore();
                    if let Some(peer) = peer {
                        self.dropped_for_fds += 1;
                        self.warn_fd_exhaustion(&e, Some(peer));
                    } else if empty {
                        self.listener_ready = false;
                        return;
                    }
                }
                Err(e) => {
                    if sys::is_fd_exhaustion(&e) {
                        self.warn_fd_exhaustion(&e, None);
                    } else {
                        warn!(
                            worker = self.index,
                            "accept failed: {e}; pausing accepts for 100 ms"
                        );
                    }
                    self.accept_resume_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn warn_fd_exhaustion(&mut self, e: &io::Error, peer: Option<std::net::SocketAddr>) {
        let now = Instant::now();
        if self
            .last_fd_warning
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_fd_warning = Some(now);
            warn!(
                worker = self.index,
                dropped_total = self.dropped_for_fds,
                "accept: {e}; dropping new connections ({}), raise RLIMIT_NOFILE (ulimit -n)",
                peer.map_or_else(
                    || "none left to drop".to_string(),
                    |p| format!("last from {p}")
                )
            );
        }
    }

    fn add_connection(&mut self, mut stream: mio::net::TcpStream, peer: std::net::SocketAddr) {
        if let Err(e) = sys::prepare_accepted(&stream) {
            debug!(%peer, "dropping accepted connection: {e}");
            return;
        }
        #[cfg(target_os = "linux")]
        if self.uses_uring() {
            if let Err(e) = sys::set_blocking(&stream) {
                debug!(%peer, "dropping accepted connection: {e}");
                return;
            }
        }
        let idx = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let token = Token(idx + FIRST_CONN);
        // With io_uring, reads are completions: the poll only tells when a full socket drains
        // (and about errors, which it always reports).
        let interest = if self.uses_uring() {
            Interest::WRITABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
            warn!(%peer, "cannot register connection: {e}");
            self.free_slots.push(idx);
            return;
        }
        let id = ((self.index as u64) << 48) | (self.next_serial & ((1 << 48) - 1));
        self.next_serial += 1;
        let now = Instant::now();
        let deadline = now + self.settings.handshake_timeout;
        self.conns[idx] = Some(Connection::new(stream, peer, id, deadline, now));
        self.by_id.insert(id, idx);
        self.live += 1;
        self.shared.workers[self.index].connections.add(1);
        self.watch(idx);
        if self.uses_uring() {
            self.arm_recv(idx);
        }
    }

    /// Whether reads go through io_uring.
    fn uses_uring(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.uring.is_some();
        #[cfg(not(target_os = "linux"))]
        return false;
    }

    /// Gives a receive buffer back: to the io_uring ring if it lacks one, else to the pool.
    fn give_buf(&mut self, buf: <S::Buffers as RecvBuffers>::Buf) {
        #[cfg(target_os = "linux")]
        let buf = match self.uring.as_mut() {
            Some(uring) => match uring.give_buffer(buf) {
                None => return,
                Some(buf) => buf,
            },
            None => buf,
        };
        self.pool.give(buf);
    }

    // ---- readiness ---------------------------------------------------------------------------

    fn on_writable(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.out.is_empty() {
            return;
        }
        if let Err(e) = flush_or_wait(&mut self.turn, conn) {
            self.peer_gone(idx, Some(e));
            return;
        }
        self.after_output(idx);
    }

    /// After pending output went out: a connection that backpressure paused is read again once
    /// its pending output is back under the soft bound; then its state is updated.
    fn after_output(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_mut() {
            if conn.read_paused && conn.out.len() <= self.settings.backpressure.soft_bytes {
                conn.read_paused = false;
                self.queue_ready(idx);
            }
        }
        self.after_turn(idx);
    }

    fn on_readable(&mut self, idx: usize) {
        let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) else {
            return;
        };
        if !conn.read_paused {
            self.read_conn(idx);
        }
    }

    fn queue_ready(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_mut() {
            if !conn.queued_ready {
                conn.queued_ready = true;
                self.ready.push((idx, conn.id));
            }
        }
    }

    fn drain_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let mut list = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for &(idx, id) in &list {
            match self.conns[idx].as_mut() {
                Some(conn) if conn.id == id => conn.queued_ready = false,
                _ => continue,
            }
            self.on_readable(idx);
        }
        list.clear();
        self.ready_spare = list;
    }

    /// Reads and processes until the socket is drained, the read budget is spent, or backpressure
    /// pauses the connection.
    fn read_conn(&mut self, idx: usize) {
        #[cfg(target_os = "linux")]
        if self.uring.is_some() {
            // Completions bring the input: make sure a receive is armed.
            self.arm_recv(idx);
            return;
        }
        self.read_direct(idx);
    }

    /// `read_conn` with `recv` system calls: the readiness path, and the io_uring path's way
    /// to read when its ring has no buffer left (into the connection's own held buffer).
    fn read_direct(&mut self, idx: usize) {
        for _ in 0..READ_ROUNDS {
            let Some(conn) = self.conns[idx].as_mut() else {
                return;
            };
            if conn.read_paused {
                return;
            }
            let mut buf = match conn.rbuf.take() {
                Some(buf) => buf,
                None => match self.pool.take() {
                    Some(buf) => buf,
                    None => {
                        // No buffer to be had: stop reading this one, retry at the next tick.
                        conn.read_paused = true;
                        self.starved.push((idx, conn.id));
                        self.shared.workers[self.index].buffer_waits.add(1);
                        return;
                    }
                },
            };
            let held = conn.held;
            let space = buf.as_slice().len() - held;
            match read_once(&mut conn.stream, &mut buf.as_mut_slice()[held..]) {
                Ok(0) => {
                    conn.held = 0;
                    self.give_buf(buf);
                    self.peer_gone(idx, None);
                    return;
                }
                Ok(n) => {
                    conn.last_input = self.clock;
                    self.process_input(idx, buf, held + n);
                    // A short read emptied the socket, and anything arriving later (data, FIN,
                    // RST) brings a new edge; unless the FIN or RST is already here: then read on
                    // until the read reports it.
                    let hangup = self.conns[idx].as_ref().map_or(true, |c| c.hangup);
                    if cfg!(target_os = "linux") && n < space && !hangup {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if held > 0 {
                        conn.rbuf = Some(buf);
                    } else {
                        self.give_buf(buf);
                    }
                    return;
                }
                Err(e) => {
                    conn.held = 0;
                    self.give_buf(buf);
                    self.peer_gone(idx, Some(e));
                    return;
                }
            }
        }
        self.queue_ready(idx);
    }

    // ---- one read's worth of protocol --------------------------------------------------------

    fn process_input(
        &mut self,
        idx: usize,
        mut buf: <S::Buffers as RecvBuffers>::Buf,
        filled: usize,
    ) {
        let keep = match self.conns[idx].as_ref().map(|c| &c.phase) {
            Some(Phase::Handshake) => self.handshake(idx, &mut buf, filled),
            Some(Phase::Open(_)) => self.feed_session(idx, &mut buf, 0, filled),
            Some(Phase::Finishing { .. }) | None => 0..0, // discarded
        };
        self.end_turn(idx, buf, keep);
    }

    /// Parses the request head; returns the input range to keep for the next read.
    fn handshake(
        &mut self,
        idx: usize,
        buf: &mut <S::Buffers as RecvBuffers>::Buf,
        filled: usize,
    ) -> Range<usize> {
        let conn = self.conns[idx].as_mut().expect("live connection");
        let peer = conn.peer;
        let mut upgraded_at = None;
        match handshake::parse_request(&buf.as_slice()[..filled], &self.settings.limits) {
            Parsed::Partial if filled < buf.as_slice().len() => return 0..filled,
            Parsed::Partial => {
                let err = HttpError {
                    status: 431,
                    reason: "request header fields too large",
                };
                reject(&mut self.turn, conn, &err);
            }
            Parsed::Reject(err) => reject(&mut self.turn, conn, &err),
            Parsed::Http(req) => {
                self.http_response.clear();
                self.service.on_http(&req, peer, &mut self.http_response);
                debug!(%peer, method = req.method, path = req.path, "plain HTTP request answered");
                self.turn.push_bytes(&self.http_response);
                conn.phase = Phase::Finishing { shut: false };
            }
            Parsed::Upgrade(req) => {
                let mut response = [0u8; 512];
                let (n, decision) =
                    handshake::respond(&req, self.service.upgrade_policy(), &mut response);
                self.turn.push_bytes(&response[..n]);
                match decision {
                    Ok(()) => upgraded_at = Some(req.head_len),
                    Err(err) => {
                        debug!(%peer, path = req.path, status = err.status, "upgrade refused: {}", err.reason);
                        conn.phase = Phase::Finishing { shut: false };
                    }
                }
            }
        }
        let Some(head_len) = upgraded_at else {
            // Answered with an error or a plain HTTP response: give the peer the close timeout to
            // read it and close.
            conn.deadline = Some(Instant::now() + self.settings.close_timeout);
            return 0..0;
        };

        // The session starts; bytes after the head are already frames.
        conn.phase = Phase::Open(Session::new(self.settings.limits.clone()));
        conn.deadline = None;
        self.shared.workers[self.index].sessions.add(1);
        let (id, worker) = (conn.id, self.index);
        if let Phase::Open(session) = &mut conn.phase {
            let mut sink = self.turn.sink(&[]);
            let mut out = session.outgoing(&mut sink);
            self.service
                .on_open(&mut Conn::new(id, peer, worker, &self.shared, &mut out));
        }
        if filled > head_len {
            self.feed_session(idx, buf, head_len, filled)
        } else {
            0..0
        }
    }

    /// Runs the session over `buf[start..filled]`; returns the input range to keep.
    fn feed_session(
        &mut self,
        idx: usize,
        buf: &mut <S::Buffers as RecvBuffers>::Buf,
        start: usize,
        filled: usize,
    ) -> Range<usize> {
        let conn = self.conns[idx].as_mut().expect("live connection");
        let Phase::Open(session) = &mut conn.phase else {
            return 0..0;
        };
        let (id, peer, worker) = (conn.id, conn.peer, self.index);
        let service = &*self.service;
        let shared = &*self.shared;
        let mut reported = false;
        let result = {
            let mut sink = self.turn.sink(buf.as_slice());
            session.receive(
                &mut buf.as_mut_slice()[start..filled],
                &mut sink,
                |event, out| {
                    let mut c = Conn::new(id, peer, worker, shared, out);
                    match event {
                        Event::Close(code, reason) => {
                            service.on_close(&mut c, code.unwrap_or(CloseCode::NO_STATUS), reason);
                            reported = true;
                        }
                        other => service.on_event(&mut c, other),
                    }
                },
            )
        };
        conn.reported |= reported;
        match result {
            Ok(consumed) => start + consumed..filled,
            Err(err) => {
                info!(%peer, session = id, code = err.code.0, "protocol error: {}; closing", err.reason);
                if !conn.reported {
                    conn.reported = true;
                    service.on_close(
                        &mut Conn::new(id, peer, worker, shared, &mut Ended),
                        err.code,
                        err.reason,
                    );
                }
                0..0
            }
        }
    }

    /// Ends a read: sends this turn's output, keeps `buf[keep]` for the next read, updates state.
    fn end_turn(
        &mut self,
        idx: usize,
        mut buf: <S::Buffers as RecvBuffers>::Buf,
        keep: Range<usize>,
    ) {
        let Some(conn) = self.conns[idx].as_mut() else {
            self.turn.clear();
            self.give_buf(buf);
            return;
        };
        let sent = if self.turn.is_empty() {
            Ok(0)
        } else if conn.send_queued {
            // A ring send of earlier output is queued: this waits behind it (sent at its
            // completion), in order.
            self.turn.stage_into(&mut conn.out, buf.as_slice());
            Ok(0)
        } else if self.sends_through_ring
            && conn.out.is_empty()
            && self.turn.len() <= RING_SEND_MAX
            && self.send_arena.capacity() - self.send_arena.len() >= self.turn.len()
        {
            // io_uring: a small turn is copied into the send arena and goes out with the loop
            // turn's submission, beside every other connection's (no send system call).
            let start = self.send_arena.len();
            self.turn.move_into(&mut self.send_arena, buf.as_slice());
            conn.send_queued = true;
            self.ring_sends.push(RingSend {
                idx,
                id: conn.id,
                start,
                len: self.send_arena.len() - start,
            });
            Ok(0)
        } else {
            self.turn.flush(&conn.stream, &mut conn.out, buf.as_slice())
        };
        let kept = keep.len();
        let buf_len = buf.as_slice().len();
        let peer = conn.peer;
        if kept == 0 {
            conn.held = 0;
            self.give_buf(buf);
        } else {
            buf.as_mut_slice().copy_within(keep, 0);
            conn.held = kept;
            conn.rbuf = Some(buf);
        }
        if let Err(e) = sent {
            self.peer_gone(idx, Some(e));
            return;
        }
        if kept == buf_len {
            // The protocol layer must consume whole frames larger than `inplace_frame_max`.
            error!(%peer, "receive buffer full of unconsumed input ({kept} bytes); closing");
            self.end_abnormally(idx, CloseCode::INTERNAL_ERROR, "receive buffer overflow");
            return;
        }
        self.after_turn(idx);
    }

    /// Updates phase, deadlines and backpressure after anything changed a connection.
    fn after_turn(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let mut watch = false;
        if let Phase::Open(session) = &conn.phase {
            let state = session.state();
            if conn.reported || state == State::Closed {
                if !conn.reported {
                    conn.reported = true;
                    let (id, peer) = (conn.id, conn.peer);
                    self.service.on_close(
                        &mut Conn::new(id, peer, self.index, &self.shared, &mut Ended),
                        CloseCode::ABNORMAL,
                        "session closed",
                    );
                }
                self.shared.workers[self.index].sessions.sub(1);
                conn.phase = Phase::Finishing { shut: false };
                conn.deadline = Some(Instant::now() + self.settings.close_timeout);
                watch = true;
            } else if state == State::Closing && conn.deadline.is_none() {
                conn.deadline = Some(Instant::now() + self.settings.close_timeout);
                watch = true;
            }
        }
        let pending = conn.out.len();
        let bp = &self.settings.backpressure;
        if pending > bp.soft_bytes {
            conn.read_paused = true;
        }
        if pending > bp.hard_bytes {
            if conn.over_hard_since.is_none() {
                conn.over_hard_since = Some(Instant::now());
                watch = true;
            }
        } else {
            conn.over_hard_since = None;
        }
        if let Phase::Finishing { shut } = &mut conn.phase {
            // Not before a queued ring send has taken our last bytes out.
            if !*shut && conn.out.is_empty() && !conn.send_queued {
                let _ = conn.stream.shutdown(Shutdown::Write);
                *shut = true;
                conn.read_paused = false;
            }
        }
        if watch {
            self.watch(idx);
        }
    }

    // ---- endings ----------------------------------------------------------------------------

    /// The peer closed or reset the connection (or a send failed).
    fn peer_gone(&mut self, idx: usize, err: Option<io::Error>) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.has_live_session() {
            let reason = match &err {
                Some(_) => "connection reset",
                None => "connection closed without a close frame",
            };
            debug!(peer = %conn.peer, session = conn.id, error = ?err, "{reason}");
            self.end_abnormally(idx, CloseCode::ABNORMAL, reason);
        } else {
            if matches!(conn.phase, Phase::Handshake) {
                debug!(peer = %conn.peer, error = ?err, "connection ended during the handshake");
            }
            self.drop_conn(idx);
        }
    }

    /// Reports `code` to the service if the session is live, then drops the connection.
    fn end_abnormally(&mut self, idx: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.has_live_session() {
            conn.reported = true;
            let (id, peer) = (conn.id, conn.peer);
            self.service.on_close(
                &mut Conn::new(id, peer, self.index, &self.shared, &mut Ended),
                code,
                reason,
            );
            self.shared.workers[self.index].sessions.sub(1);
        }
        self.drop_conn(idx);
    }

    fn drop_conn(&mut self, idx: usize) {
        let Some(mut conn) = self.conns[idx].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        #[cfg(target_os = "linux")]
        if conn.recv_armed {
            // The ring holds the socket open until its receive ends: end it now.
            if let Some(uring) = self.uring.as_mut() {
                if let Err(e) = uring.cancel_recv(idx, crate::uring::tag_of(conn.id)) {
                    error!(worker = self.index, "cannot cancel a receive: {e}");
                }
            }
        }
        if let Some(buf) = conn.rbuf.take() {
            self.give_buf(buf);
        }
        self.turn.release(&mut conn.out);
        self.by_id.remove(&conn.id);
        self.free_slots.push(idx);
        self.live -= 1;
        self.shared.workers[self.index].connections.sub(1);
    }

    // ---- deadlines --------------------------------------------------------------------------

    fn watch(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_mut() {
            if !conn.watched {
                conn.watched = true;
                self.watched.push((idx, conn.id));
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.shared.publish_caches(self.index, &self.turn);
        self.ring_refill_waits = false;
        if !self.starved.is_empty() {
            // Connections that found no receive buffer: try them again.
            for (idx, id) in std::mem::take(&mut self.starved) {
                if let Some(conn) = self.conns[idx].as_mut().filter(|c| c.id == id) {
                    conn.read_paused = false;
                    self.queue_ready(idx);
                }
            }
        }
        let mut list =
            std::mem::replace(&mut self.watched, std::mem::take(&mut self.watched_spare));
        for &(idx, id) in &list {
            match self.conns[idx].as_ref() {
                Some(conn) if conn.id == id => {}
                _ => continue,
            }
            self.check_deadlines(idx, now);
            if let Some(conn) = self.conns[idx].as_mut() {
                if conn.needs_watch() {
                    self.watched.push((idx, id));
                } else {
                    conn.watched = false;
                }
            }
        }
        list.clear();
        self.watched_spare = list;
    }

    fn check_deadlines(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let bp_timeout = self.settings.backpressure.timeout;
        if conn
            .over_hard_since
            .is_some_and(|since| now.duration_since(since) >= bp_timeout)
        {
            self.close_stuck(idx);
            return;
        }
        if !conn.deadline.is_some_and(|d| now >= d) {
            return;
        }
        match &conn.phase {
            Phase::Handshake => {
                debug!(peer = %conn.peer, "handshake timed out");
                self.drop_conn(idx);
            }
            Phase::Open(_) => {
                debug!(peer = %conn.peer, session = conn.id, "close handshake timed out");
                self.end_abnormally(idx, CloseCode::ABNORMAL, "close handshake timed out");
            }
            Phase::Finishing { .. } => self.drop_conn(idx),
        }
    }

    /// A peer that has not drained its output for the backpressure timeout: close 1008.
    fn close_stuck(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let pending = conn.out.len();
        if let Phase::Open(session) = &mut conn.phase {
            let mut sink = self.turn.sink(&[]);
            let _ = session
                .outgoing(&mut sink)
                .close(CloseCode::POLICY_VIOLATION, "output not drained");
            let _ = flush_or_wait(&mut self.turn, conn);
        }
        info!(
            peer = %conn.peer, session = conn.id, pending,
            "peer does not read: output above {} bytes for {:?}; closing with 1008",
            self.settings.backpressure.hard_bytes, self.settings.backpressure.timeout
        );
        self.end_abnormally(idx, CloseCode::POLICY_VIOLATION, "output not drained");
    }

    // ---- inbox: sends by id and broadcasts ----------------------------------------------------

    fn run_inbox(&mut self) {
        for _ in 0..INBOX_BATCH {
            let Some(cmd) = self.shared.inboxes[self.index].pop() else {
                return;
            };
            match cmd {
                Command::Send(id, msg) => {
                    let delivered = match self.by_id.get(&id) {
                        Some(&idx) => self.deliver(idx, &msg),
                        None => false,
                    };
                    if !delivered {
                        self.shared.workers[self.index].undelivered.add(1);
                    }
                }
                Command::Broadcast(msg) => {
                    for idx in 0..self.conns.len() {
                        self.deliver(idx, &msg);
                    }
                }
            }
        }
    }

    /// Sends `msg` on the session in slot `idx`, if it is open; one write.
    fn deliver(&mut self, idx: usize, msg: &OutMessage) -> bool {
        let Some(conn) = self.conns[idx].as_mut() else {
            return false;
        };
        let Phase::Open(session) = &mut conn.phase else {
            return false;
        };
        if conn.reported || session.state() != State::Open {
            return false;
        }
        let mut sink = self.turn.sink(&[]);
        let mut out = session.outgoing(&mut sink);
        let sent = match msg {
            OutMessage::Text(t) => out.send_text(t),
            OutMessage::Binary(b) => out.send_binary(b),
        };
        if let Err(e) = flush_or_wait(&mut self.turn, conn) {
            self.peer_gone(idx, Some(e));
            return false;
        }
        self.after_turn(idx);
        sent.is_ok()
    }

    // ---- idle sessions ----------------------------------------------------------------------

    fn idle_sweep_period(&self) -> Duration {
        match self.settings.idle_timeout {
            Some(idle) => IDLE_SWEEP_MAX
                .min(idle / 4)
                .min(self.settings.pong_timeout / 4)
                .max(TICK),
            None => IDLE_SWEEP_MAX,
        }
    }

    /// Pings sessions that sent nothing for `idle_timeout`; drops those that sent nothing within
    /// `pong_timeout` of our ping (reported as 1006: no close handshake took place).
    fn idle_sweep(&mut self, now: Instant) {
        let Some(idle) = self.settings.idle_timeout else {
            return;
        };
        let pong_timeout = self.settings.pong_timeout;
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_mut() else {
                continue;
            };
            let Phase::Open(session) = &mut conn.phase else {
                continue;
            };
            if conn.reported || session.state() != State::Open {
                continue;
            }
            if let Some(at) = conn.ping_sent {
                if conn.last_input > at {
                    conn.ping_sent = None;
                } else if now.duration_since(at) >= pong_timeout {
                    info!(peer = %conn.peer, session = conn.id,
                        "no answer to the idle ping within {pong_timeout:?}; dropping the connection");
                    self.shared.workers[self.index].idle_drops.add(1);
                    self.end_abnormally(idx, CloseCode::ABNORMAL, "no answer to ping");
                    continue;
                } else {
                    continue;
                }
            }
            if now.duration_since(conn.last_input) >= idle {
                let mut sink = self.turn.sink(&[]);
                let _ = session.outgoing(&mut sink).ping(b"idle");
                conn.ping_sent = Some(now);
                self.shared.workers[self.index].idle_pings.add(1);
                if let Err(e) = flush_or_wait(&mut self.turn, conn) {
                    self.peer_gone(idx, Some(e));
                    continue;
                }
                self.after_turn(idx);
            }
        }
    }

    // ---- shutdown ---------------------------------------------------------------------------

    fn begin_shutdown(&mut self) {
        self.stop_deadline = Some(Instant::now() + self.settings.shutdown_grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.listener_ready = false;
        let mut closing = 0;
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_mut() else {
                continue;
            };
            match &mut conn.phase {
                Phase::Handshake => self.drop_conn(idx),
                Phase::Open(session) if session.state() == State::Open => {
                    let mut sink = self.turn.sink(&[]);
                    let _ = session
                        .outgoing(&mut sink)
                        .close(CloseCode::GOING_AWAY, "server shutting down");
                    if let Err(e) = flush_or_wait(&mut self.turn, conn) {
                        self.peer_gone(idx, Some(e));
                        continue;
                    }
                    closing += 1;
                    self.after_turn(idx);
                }
                _ => {}
            }
        }
        info!(
            worker = self.index,
            sessions = closing,
            "stopping: listener closed, close 1001 sent"
        );
    }

    /// Whether every connection has completed its close: nothing left to wait for but the peers'
    /// FINs, which the exit does not need.
    fn all_finished(&self) -> bool {
        self.live == 0
            || self
                .conns
                .iter()
                .flatten()
                .all(|c| matches!(c.phase, Phase::Finishing { shut: true }))
    }

    fn close_all(&mut self) {
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_some() {
                self.end_abnormally(idx, CloseCode::ABNORMAL, "server stopped");
            }
        }
        debug!(worker = self.index, "worker stopped");
    }
}

/// Sends the connection's pending output and this turn's, unless a ring send of earlier output is
/// queued: then this turn waits in the pending output, behind it (sent at its completion).
fn flush_or_wait<B>(turn: &mut TurnOutput, conn: &mut Connection<B>) -> io::Result<usize> {
    if conn.send_queued {
        turn.stage_into(&mut conn.out, &[]);
        Ok(0)
    } else {
        turn.flush(&conn.stream, &mut conn.out, &[])
    }
}

/// Queues an HTTP error answer and ends the connection after it.
fn reject<B>(turn: &mut TurnOutput, conn: &mut Connection<B>, err: &HttpError) {
    debug!(peer = %conn.peer, status = err.status, "handshake rejected: {}", err.reason);
    let mut response = [0u8; 256];
    let n = handshake::write_error_response(err, &mut response);
    turn.push_bytes(&response[..n]);
    conn.phase = Phase::Finishing { shut: false };
}
