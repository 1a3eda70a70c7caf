//! One lcore's WebSocket connections over its stack, from the upgrade request to the last FIN.
//!
//! The [`Driver`] is the stack's [`Handler`](hioload_stack::Handler): the stack calls it from inside
//! its poll loop for each connection that opened, has bytes, saw the peer's FIN or got send room,
//! and when a connection is gone. It mirrors the kernel transport's worker, phase for phase:
//! handshake (or a plain HTTP answer through the `HttpHandler` hook), session (events to the
//! application's `Handler`, panics caught and closed with 1011), and finishing (output drained,
//! FIN, input discarded), with the same timeouts and the same close codes.
//!
//! Input, the common case: the session parses straight in the socket's receive ring
//! (`Conn::recv_and_send` lends the ring's readable bytes and the send ring together); it unmasks
//! in place and hands out whole messages as slices of the ring, and its answers go straight into
//! the send ring. What it leaves unconsumed (an incomplete frame of at most `inplace_frame_max`
//! bytes) moves to the connection's small `held` buffer, as the session left it (partly
//! unmasked: the session relies on finding it unchanged), and is taken from the ring. That
//! buffer comes from the lcore's pool cache (DPDK memory of the lcore's socket, no lock) when
//! there is something to hold, and goes back as soon as it is consumed. While
//! bytes are held (and for the request head), the ring's bytes are copied behind them into the
//! lcore's receive buffer and parsed there, as the kernel path parses its read buffer. Output
//! that the send ring cannot take waits in the connection's pending output; then the connection
//! is not read until it drains (see `sink`).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hioload_stack::{CloseReason, Conn, ConnId, PacketQueue, Stack};
use hioload_wsproto::handshake::{self, Parsed};
use hioload_wsproto::session::{FrameSink, Outgoing};
use hioload_wsproto::{
    CloseCode, Event, HttpError, Limits, ProtocolError, SendError, Session, State,
};
use tracing::{debug, error, info};

use super::conn::{Phase, WsConn};
use super::shared::{Command, Shared, SLOT_BITS};
use super::sink::{drain, RingSink, SendTarget};
use crate::config::Backpressure;
use crate::control::Control;
use crate::handler::{Ctx, DeliverError, Handler, Message, OutMessage, SessionOps};
use crate::http::{write_response, HttpHandler};
use crate::pool::{PoolError, PooledBuf, WorkerCache};
use crate::registry::SessionInfo;
use crate::server::PathRoute;

/// Deadline resolution.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// Longest time between two idle sweeps.
const IDLE_SWEEP_MAX: Duration = Duration::from_secs(1);

/// What a driver needs from the server's configuration.
pub(super) struct DriverConfig {
    pub lcore_index: usize,
    pub limits: Limits,
    pub backpressure: Backpressure,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Ping a session that sent nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// After that ping, time it has to send anything before it is dropped (1006).
    pub pong_timeout: Duration,
    pub max_connections: usize,
    pub ring_bytes: usize,
}

/// The WebSocket side of one lcore.
pub(super) struct Driver {
    cfg: DriverConfig,
    handler: Arc<dyn Handler>,
    http: Arc<dyn HttpHandler>,
    route: Arc<PathRoute>,
    /// Answers `/metrics` and `/debug/probes` (unless they are on the admin address only).
    control_http: Option<Arc<Control>>,
    /// The session registry lives there.
    control: Arc<Control>,
    shared: Arc<Shared>,
    /// Inbox commands handled per loop turn at most.
    inbox_batch: usize,
    /// Indexed by the stack's dense connection slot.
    conns: Vec<Option<WsConn>>,
    /// The receive buffer: one whole receive ring.
    rbuf: Box<[u8]>,
    /// Where connections' held bytes go: this lcore's pool cache (so the driver stays on its lcore).
    held_pool: WorkerCache,
    http_response: Vec<u8>,
    watched: Vec<ConnId>,
    watched_spare: Vec<ConnId>,
    next_serial: u64,
    stopping: bool,
    /// The settings epoch this driver applied last.
    settings_epoch: u64,
    next_idle_sweep: Instant,
}

/// What every lcore's driver shares with the others and the server.
#[derive(Clone)]
pub(super) struct Services {
    pub handler: Arc<dyn Handler>,
    pub http: Arc<dyn HttpHandler>,
    pub route: Arc<PathRoute>,
    /// Answers `/metrics` and `/debug/probes` (unless they are on the admin address only).
    pub control_http: Option<Arc<Control>>,
    pub control: Arc<Control>,
    pub shared: Arc<Shared>,
}

impl Driver {
    /// A driver for one lcore; make it on that lcore (`held_pool` is its cache).
    pub fn new(cfg: DriverConfig, services: Services, held_pool: WorkerCache) -> Driver {
        let Services {
            handler,
            http,
            route,
            control_http,
            control,
            shared,
        } = services;
        Driver {
            held_pool,
            conns: (0..cfg.max_connections).map(|_| None).collect(),
            rbuf: vec![0u8; cfg.ring_bytes + held_max(&cfg.limits)].into_boxed_slice(),
            http_response: Vec::with_capacity(1024),
            watched: Vec::new(),
            watched_spare: Vec::new(),
            next_serial: 0,
            stopping: false,
            settings_epoch: 0,
            next_idle_sweep: Instant::now() + IDLE_SWEEP_MAX,
            cfg,
            handler,
            http,
            route,
            control_http,
            control,
            shared,
            inbox_batch: 1024,
        }
    }

    // ---- input -------------------------------------------------------------------------------

    /// Reads and processes what the receive ring holds, unless the send ring is full.
    fn read(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn) {
        if conn.recv_queue() > 0 {
            ws.last_input = Instant::now();
        }
        // The ring holds at most `ring_bytes`, and nothing arrives during this loop: it ends.
        while ws.out.is_empty() && conn.recv_queue() > 0 {
            if ws.held.is_none() && session_open(&ws.phase) {
                // The common case: parse in the ring. After a wrap, or with a partial frame
                // held back, the bytes go through the receive buffer below instead.
                if !self.feed_in_ring(conn, ws) {
                    return;
                }
                continue;
            }
            // The held bytes go first; their buffer goes back to the pool.
            let held = ws.held.take().map_or(0, |buf| {
                self.rbuf[..buf.len()].copy_from_slice(&buf);
                buf.len()
            });
            let filled = held + conn.recv_slice(&mut self.rbuf[held..]);
            let consumed = match &ws.phase {
                Phase::Handshake => self.handshake(conn, ws, filled),
                Phase::Open(s) if s.state() != State::Closed => self.feed(conn, ws, 0, filled),
                Phase::Open(_) | Phase::Finishing { .. } => filled, // discarded
            };
            // After a failed or finished session nothing more is parsed.
            let consumed = match &ws.phase {
                Phase::Open(s) if s.state() != State::Closed => consumed,
                Phase::Handshake => consumed,
                _ => filled,
            };
            let rest = &self.rbuf[consumed..filled];
            if rest.len() > held_max(&self.cfg.limits) {
                // The protocol layer consumes whole frames larger than `inplace_frame_max`.
                error!(peer = %ws.peer, "{} bytes of unconsumed input; closing", rest.len());
                self.end_now(
                    conn,
                    ws,
                    CloseCode::INTERNAL_ERROR,
                    "receive buffer overflow",
                );
                return;
            }
            if let Err(e) = hold(
                &self.held_pool,
                held_max(&self.cfg.limits),
                &mut ws.held,
                rest,
            ) {
                self.held_unavailable(conn, ws, e);
                return;
            }
        }
        if conn.is_eof() {
            self.peer_finished(ws);
        }
    }

    /// Parses the request head in `rbuf[..n]`; returns the bytes consumed.
    fn handshake(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn, n: usize) -> usize {
        let peer = ws.peer;
        let mut sink = RingSink {
            ring: &mut *conn,
            out: &mut ws.out,
        };
        let head_len = match handshake::parse_request(&self.rbuf[..n], &self.cfg.limits) {
            // Heads over `max_head_bytes` are rejected (431), so what is held stays small.
            Parsed::Partial => return 0,
            Parsed::Reject(err) => {
                reject(&mut sink, peer, &err);
                None
            }
            Parsed::Http(req) => {
                self.http_response.clear();
                let http = &*self.http;
                let response = &mut self.http_response;
                let answered = self
                    .control_http
                    .as_ref()
                    .is_some_and(|c| c.answer(&req, response));
                if !answered
                    && catch_unwind(AssertUnwindSafe(|| http.handle(&req, peer, response))).is_err()
                {
                    error!(%peer, path = req.path, "HTTP handler panicked; answering 500");
                    response.clear();
                    write_response(
                        response,
                        500,
                        "Internal Server Error",
                        "text/plain; charset=utf-8",
                        b"internal error\n",
                    );
                }
                debug!(%peer, method = req.method, path = req.path, "plain HTTP request answered");
                sink.write(&self.http_response);
                None
            }
            Parsed::Upgrade(req) => {
                let mut response = [0u8; 512];
                let (len, decision) = handshake::respond(&req, &*self.route, &mut response);
                sink.write(&response[..len]);
                match decision {
                    Ok(()) => Some(req.head_len),
                    Err(err) => {
                        debug!(%peer, path = req.path, status = err.status, "upgrade refused: {}", err.reason);
                        None
                    }
                }
            }
        };
        let Some(head_len) = head_len else {
            // Answered: give the peer the close timeout to read the answer and close.
            ws.phase = Phase::Finishing { fin: false };
            ws.deadline = Some(Instant::now() + self.cfg.close_timeout);
            return n;
        };

        // The session starts; bytes after the head are already frames.
        ws.phase = Phase::Open(Session::new(self.cfg.limits.clone()));
        ws.deadline = None;
        let lcore = self.shared.lcore(self.cfg.lcore_index);
        lcore.sessions.fetch_add(1, Ordering::Relaxed);
        self.control.registry.insert(SessionInfo {
            id: ws.session_id,
            peer,
            worker: self.cfg.lcore_index,
        });
        if let Phase::Open(session) = &mut ws.phase {
            let mut out = session.outgoing(&mut sink);
            let mut ops = SessionRef {
                id: ws.session_id,
                peer,
                lcore: self.cfg.lcore_index,
                shared: &self.shared,
                out: Some(&mut out),
            };
            call(&*self.handler, &mut ops, "on_open", |h, ctx| h.on_open(ctx));
        }
        if n > head_len {
            self.feed(conn, ws, head_len, n)
        } else {
            head_len
        }
    }

    /// Runs the session over `rbuf[start..end]`; returns the offset up to which it consumed.
    fn feed(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn, start: usize, end: usize) -> usize {
        let Phase::Open(session) = &mut ws.phase else {
            return end;
        };
        let env = Env {
            handler: &*self.handler,
            shared: &self.shared,
            lcore: self.cfg.lcore_index,
            id: ws.session_id,
            peer: ws.peer,
        };
        let mut sink = RingSink {
            ring: &mut *conn,
            out: &mut ws.out,
        };
        let (result, reported) = env.receive(session, &mut self.rbuf[start..end], &mut sink);
        self.after_receive(ws, result, reported, start, end)
    }

    /// Runs the session straight over the receive ring's readable bytes, answering into the send
    /// ring (no copy of ours); what it leaves unconsumed moves to `held`. Returns false when the
    /// connection had to be ended.
    fn feed_in_ring(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn) -> bool {
        let held_max = held_max(&self.cfg.limits);
        let mut outcome = None;
        let mut held_error = None;
        conn.recv_and_send(|rx, tx| {
            let Phase::Open(session) = &mut ws.phase else {
                return rx.len();
            };
            let env = Env {
                handler: &*self.handler,
                shared: &self.shared,
                lcore: self.cfg.lcore_index,
                id: ws.session_id,
                peer: ws.peer,
            };
            let mut sink = RingSink {
                ring: tx,
                out: &mut ws.out,
            };
            let (result, reported) = env.receive(session, rx, &mut sink);
            if let Ok(consumed) = result {
                let rest = &rx[consumed..];
                if rest.len() <= held_max && session_open(&ws.phase) {
                    // As the session left it.
                    if let Err(e) = hold(&self.held_pool, held_max, &mut ws.held, rest) {
                        held_error = Some(e);
                    }
                }
            }
            outcome = Some((result, reported, rx.len()));
            rx.len()
        });
        let Some((result, reported, len)) = outcome else {
            return true;
        };
        let consumed = self.after_receive(ws, result, reported, 0, len);
        if let Some(e) = held_error.filter(|_| session_open(&ws.phase)) {
            self.held_unavailable(conn, ws, e);
            return false;
        }
        if len - consumed > held_max && session_open(&ws.phase) {
            error!(peer = %ws.peer, "{} bytes of unconsumed input; closing", len - consumed);
            self.end_now(
                conn,
                ws,
                CloseCode::INTERNAL_ERROR,
                "receive buffer overflow",
            );
            return false;
        }
        true
    }

    /// No pool buffer for a connection's held bytes (the pool is at its limit): the connection
    /// cannot go on without losing input, so it ends (1011), logged.
    fn held_unavailable(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn, e: PoolError) {
        error!(peer = %ws.peer, "no buffer for a partial frame: {e}; closing");
        self.end_now(conn, ws, CloseCode::INTERNAL_ERROR, "buffer pool exhausted");
    }

    /// Records what a `receive` reported; returns the offset up to which the input is consumed
    /// (all of it after a protocol error).
    fn after_receive(
        &mut self,
        ws: &mut WsConn,
        result: Result<usize, ProtocolError>,
        reported: bool,
        start: usize,
        end: usize,
    ) -> usize {
        ws.reported |= reported;
        match result {
            Ok(consumed) => start + consumed,
            Err(err) => {
                info!(peer = %ws.peer, session = ws.session_id, code = err.code.0, "protocol error: {}; closing", err.reason);
                self.report(ws, err.code, err.reason);
                end
            }
        }
    }

    /// The peer sent its FIN and every byte before it was read.
    fn peer_finished(&mut self, ws: &mut WsConn) {
        match ws.phase {
            Phase::Handshake => {
                debug!(peer = %ws.peer, "connection ended during the handshake");
                ws.phase = Phase::Finishing { fin: false };
            }
            Phase::Open(_) => {
                if ws.has_live_session() {
                    debug!(peer = %ws.peer, session = ws.session_id, "connection closed without a close frame");
                }
                self.report(
                    ws,
                    CloseCode::ABNORMAL,
                    "connection closed without a close frame",
                );
                self.leave_open(ws);
            }
            Phase::Finishing { .. } => {}
        }
        if ws.deadline.is_none() {
            ws.deadline = Some(Instant::now() + self.cfg.close_timeout);
        }
    }

    // ---- state -------------------------------------------------------------------------------

    /// Calls `on_close` once per session.
    fn report(&mut self, ws: &mut WsConn, code: CloseCode, reason: &str) {
        if ws.has_live_session() {
            ws.reported = true;
            // An ended session has no outgoing half: every send is refused.
            let mut ops = SessionRef::<dyn FrameSink> {
                id: ws.session_id,
                peer: ws.peer,
                lcore: self.cfg.lcore_index,
                shared: &self.shared,
                out: None,
            };
            call(&*self.handler, &mut ops, "on_close", |h, ctx| {
                h.on_close(ctx, code, reason)
            });
        }
    }

    /// Ends the session phase (counted once) and starts finishing.
    fn leave_open(&mut self, ws: &mut WsConn) {
        if matches!(ws.phase, Phase::Open(_)) {
            let lcore = self.shared.lcore(self.cfg.lcore_index);
            lcore.sessions.fetch_sub(1, Ordering::Relaxed);
            self.control.registry.remove(ws.session_id);
            ws.phase = Phase::Finishing { fin: false };
            ws.deadline = Some(Instant::now() + self.cfg.close_timeout);
        }
    }

    /// Updates phase, deadlines, backpressure and our FIN after anything changed a connection.
    fn after_turn(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn) {
        if let Phase::Open(session) = &ws.phase {
            let state = session.state();
            if ws.reported || state == State::Closed {
                self.report(ws, CloseCode::ABNORMAL, "session closed");
                self.leave_open(ws);
            } else if state == State::Closing && ws.deadline.is_none() {
                ws.deadline = Some(Instant::now() + self.cfg.close_timeout);
            }
        }
        if ws.out.len() > self.cfg.backpressure.hard_bytes {
            ws.over_hard_since.get_or_insert_with(Instant::now);
        } else {
            ws.over_hard_since = None;
        }
        if let Phase::Finishing { fin } = &mut ws.phase {
            if !*fin && ws.out.is_empty() {
                conn.close(); // FIN after what the send ring holds
                *fin = true;
            }
        }
        if ws.needs_watch() && !ws.watched {
            ws.watched = true;
            self.watched.push(ws.id);
        }
    }

    // ---- deadlines ---------------------------------------------------------------------------

    /// Acts on the deadlines that passed (call every [`TICK`]).
    pub fn tick<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>, now: Instant) {
        if let Some((settings, epoch)) = self.shared.settings_since(self.settings_epoch) {
            self.settings_epoch = epoch;
            self.apply(&settings);
        }
        if now >= self.next_idle_sweep {
            self.idle_sweep(stack, now);
            self.next_idle_sweep = now + self.idle_sweep_period();
        }
        let mut list =
            std::mem::replace(&mut self.watched, std::mem::take(&mut self.watched_spare));
        for &id in &list {
            let idx = id.index();
            let Some(mut ws) = self.conns[idx].take_if(|ws| ws.id == id) else {
                continue;
            };
            if let Some(mut conn) = stack.conn(id) {
                self.check_deadlines(&mut conn, &mut ws, now);
            }
            if ws.needs_watch() {
                self.watched.push(id);
            } else {
                ws.watched = false;
            }
            self.conns[idx] = Some(ws);
        }
        list.clear();
        self.watched_spare = list;
    }

    fn check_deadlines(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn, now: Instant) {
        let bp = &self.cfg.backpressure;
        if ws
            .over_hard_since
            .is_some_and(|since| now.duration_since(since) >= bp.timeout)
        {
            info!(
                peer = %ws.peer, session = ws.session_id, pending = ws.out.len(),
                "peer does not read: output above {} bytes for {:?}; closing with 1008", bp.hard_bytes, bp.timeout
            );
            if let Phase::Open(session) = &mut ws.phase {
                let mut sink = RingSink {
                    ring: &mut *conn,
                    out: &mut ws.out,
                };
                let _ = session
                    .outgoing(&mut sink)
                    .close(CloseCode::POLICY_VIOLATION, "output not drained");
            }
            self.end_now(conn, ws, CloseCode::POLICY_VIOLATION, "output not drained");
            return;
        }
        if !ws.deadline.is_some_and(|d| now >= d) {
            return;
        }
        match ws.phase {
            Phase::Handshake => debug!(peer = %ws.peer, "handshake timed out"),
            Phase::Open(_) => {
                debug!(peer = %ws.peer, session = ws.session_id, "close handshake timed out")
            }
            Phase::Finishing { .. } => {}
        }
        self.end_now(conn, ws, CloseCode::ABNORMAL, "close handshake timed out");
    }

    /// Reports `code` if the session is live and resets the connection; the stack's `on_close`
    /// removes it.
    fn end_now(&mut self, conn: &mut Conn<'_>, ws: &mut WsConn, code: CloseCode, reason: &str) {
        self.report(ws, code, reason);
        self.leave_open(ws);
        ws.phase = Phase::Finishing { fin: true };
        ws.deadline = None;
        ws.over_hard_since = None;
        conn.abort();
    }

    // ---- messages from elsewhere ------------------------------------------------------------

    /// Sends what other threads queued for this lcore's sessions (call once per loop turn).
    pub fn deliver<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>) {
        let shared = self.shared.clone();
        let lcore = shared.lcore(self.cfg.lcore_index);
        for _ in 0..self.inbox_batch {
            let Some(command) = lcore.inbox.pop() else {
                return;
            };
            match command {
                Command::Send(id, msg) => {
                    let slot = (id & ((1 << SLOT_BITS) - 1)) as usize;
                    let live = self
                        .conns
                        .get(slot)
                        .and_then(Option::as_ref)
                        .is_some_and(|ws| {
                            ws.session_id == id && matches!(ws.phase, Phase::Open(_))
                        });
                    if !live || !self.send_owned(stack, slot, &msg) {
                        lcore.undelivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Command::Broadcast(msg) => {
                    for slot in 0..self.conns.len() {
                        if matches!(
                            self.conns[slot].as_ref().map(|ws| &ws.phase),
                            Some(Phase::Open(_))
                        ) {
                            self.send_owned(stack, slot, &msg);
                        }
                    }
                }
            }
        }
    }

    /// Sends `msg` on the open session in `slot`; false if it could not be sent.
    fn send_owned<Q: PacketQueue>(
        &mut self,
        stack: &mut Stack<Q>,
        slot: usize,
        msg: &OutMessage,
    ) -> bool {
        let Some(mut ws) = self.conns[slot].take() else {
            return false;
        };
        let mut sent = false;
        if let Some(mut conn) = stack.conn(ws.id) {
            if let Phase::Open(session) = &mut ws.phase {
                let mut sink = RingSink {
                    ring: &mut conn,
                    out: &mut ws.out,
                };
                let mut out = session.outgoing(&mut sink);
                sent = match msg {
                    OutMessage::Text(t) => out.send_text(t),
                    OutMessage::Binary(b) => out.send_binary(b),
                }
                .is_ok();
            }
            self.after_turn(&mut conn, &mut ws);
        }
        self.conns[slot] = Some(ws);
        sent
    }

    // ---- stop --------------------------------------------------------------------------------

    /// Applies reloaded settings: limits (but the two that size buffers) to new and open
    /// sessions, backpressure bounds and timeouts from now on.
    fn apply(&mut self, settings: &hioload_fallback::Settings) {
        let mut limits = settings.limits.clone();
        limits.inplace_frame_max = self.cfg.limits.inplace_frame_max;
        limits.max_head_bytes = self.cfg.limits.max_head_bytes;
        for ws in self.conns.iter_mut().flatten() {
            if let Phase::Open(session) = &mut ws.phase {
                session.set_limits(limits.clone());
            }
        }
        self.cfg.limits = limits;
        self.cfg.backpressure = settings.backpressure.clone();
        self.cfg.handshake_timeout = settings.handshake_timeout;
        self.cfg.close_timeout = settings.close_timeout;
        self.cfg.shutdown_grace = settings.shutdown_grace;
        self.cfg.idle_timeout = settings.idle_timeout;
        self.cfg.pong_timeout = settings.pong_timeout;
        self.next_idle_sweep = Instant::now() + self.idle_sweep_period();
        debug!(lcore = self.cfg.lcore_index, "reloaded settings applied");
    }

    fn idle_sweep_period(&self) -> Duration {
        match self.cfg.idle_timeout {
            Some(idle) => IDLE_SWEEP_MAX
                .min(idle / 4)
                .min(self.cfg.pong_timeout / 4)
                .max(TICK),
            None => IDLE_SWEEP_MAX,
        }
    }

    /// Pings sessions that sent nothing for `idle_timeout`; drops those that sent nothing within
    /// `pong_timeout` of our ping (reported as 1006: no close handshake took place).
    fn idle_sweep<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>, now: Instant) {
        let Some(idle) = self.cfg.idle_timeout else {
            return;
        };
        let pong_timeout = self.cfg.pong_timeout;
        let shared = self.shared.clone();
        let counters = shared.lcore(self.cfg.lcore_index);
        for slot in 0..self.conns.len() {
            let due = match self.conns[slot].as_mut() {
                Some(ws) if session_open(&ws.phase) && !ws.reported => match ws.ping_sent {
                    Some(at) if ws.last_input > at => {
                        ws.ping_sent = None;
                        false
                    }
                    Some(at) => now.duration_since(at) >= pong_timeout,
                    None => now.duration_since(ws.last_input) >= idle,
                },
                _ => false,
            };
            if !due {
                continue;
            }
            let mut ws = self.conns[slot].take().expect("checked above");
            if let Some(mut conn) = stack.conn(ws.id) {
                if ws.ping_sent.is_some() {
                    info!(peer = %ws.peer, session = ws.session_id,
                        "no answer to the idle ping within {pong_timeout:?}; dropping the connection");
                    counters.idle_drops.fetch_add(1, Ordering::Relaxed);
                    self.end_now(&mut conn, &mut ws, CloseCode::ABNORMAL, "no answer to ping");
                } else if let Phase::Open(session) = &mut ws.phase {
                    let mut sink = RingSink {
                        ring: &mut conn,
                        out: &mut ws.out,
                    };
                    let _ = session.outgoing(&mut sink).ping(b"idle");
                    ws.ping_sent = Some(now);
                    counters.idle_pings.fetch_add(1, Ordering::Relaxed);
                    self.after_turn(&mut conn, &mut ws);
                }
            }
            self.conns[slot] = Some(ws);
        }
    }

    /// The grace period of a stop, as last configured.
    pub fn shutdown_grace(&self) -> Duration {
        self.cfg.shutdown_grace
    }

    /// Sends Close 1001 to every open session and resets connections still in their handshake.
    pub fn begin_shutdown<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>) -> usize {
        self.stopping = true;
        let mut closing = 0;
        for idx in 0..self.conns.len() {
            let Some(mut ws) = self.conns[idx].take() else {
                continue;
            };
            if let Some(mut conn) = stack.conn(ws.id) {
                match &mut ws.phase {
                    Phase::Handshake => {
                        self.end_now(&mut conn, &mut ws, CloseCode::ABNORMAL, "server stopped")
                    }
                    Phase::Open(session) if session.state() == State::Open => {
                        let mut sink = RingSink {
                            ring: &mut conn,
                            out: &mut ws.out,
                        };
                        let _ = session
                            .outgoing(&mut sink)
                            .close(CloseCode::GOING_AWAY, "server shutting down");
                        closing += 1;
                        self.after_turn(&mut conn, &mut ws);
                    }
                    _ => {}
                }
            }
            self.conns[idx] = Some(ws);
        }
        closing
    }

    /// Whether every connection has finished its close: nothing is left but FIN exchanges.
    pub fn all_finished(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .all(|ws| matches!(ws.phase, Phase::Finishing { fin: true }))
    }

    /// At the end of the grace period: reports 1006 for the sessions still open and resets them.
    pub fn close_all<Q: PacketQueue>(&mut self, stack: &mut Stack<Q>) {
        for idx in 0..self.conns.len() {
            let Some(mut ws) = self.conns[idx].take() else {
                continue;
            };
            let finished = matches!(ws.phase, Phase::Finishing { fin: true });
            match stack.conn(ws.id) {
                Some(mut conn) if !finished => {
                    self.end_now(&mut conn, &mut ws, CloseCode::ABNORMAL, "server stopped")
                }
                Some(_) => {}
                None => {
                    self.report(&mut ws, CloseCode::ABNORMAL, "server stopped");
                    self.leave_open(&mut ws);
                }
            }
            self.conns[idx] = Some(ws);
        }
    }

    /// Connections the driver still tracks.
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }
}

impl hioload_stack::Handler for Driver {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let id = conn.id();
        if self.stopping {
            conn.abort(); // accepted from the backlog after the listener closed
            return;
        }
        let serial = self.next_serial & ((1 << (48 - SLOT_BITS)) - 1);
        let session_id =
            ((self.cfg.lcore_index as u64) << 48) | (serial << SLOT_BITS) | id.index() as u64;
        self.next_serial += 1;
        let lcore = self.shared.lcore(self.cfg.lcore_index);
        lcore.connections.fetch_add(1, Ordering::Relaxed);
        let peer = SocketAddr::V4(conn.remote());
        let mut ws = WsConn::new(
            id,
            session_id,
            peer,
            Instant::now() + self.cfg.handshake_timeout,
        );
        ws.watched = true;
        self.watched.push(id);
        self.conns[id.index()] = Some(ws);
    }

    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        let id = conn.id();
        let Some(mut ws) = self.conns[id.index()].take_if(|ws| ws.id == id) else {
            // Not ours (reset at stop): discard what arrives.
            consume(conn, usize::MAX);
            return;
        };
        drain(conn, &mut ws.out);
        self.read(conn, &mut ws);
        self.after_turn(conn, &mut ws);
        self.conns[id.index()] = Some(ws);
    }

    fn on_close(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut ws) = self.conns[id.index()].take_if(|ws| ws.id == id) else {
            return;
        };
        let lcore = self.shared.lcore(self.cfg.lcore_index);
        lcore.connections.fetch_sub(1, Ordering::Relaxed);
        let why = match reason {
            CloseReason::Reset => "connection reset",
            CloseReason::Graceful => "connection closed without a close frame",
        };
        if ws.has_live_session() {
            debug!(peer = %ws.peer, session = ws.session_id, "{why}");
        }
        self.report(&mut ws, CloseCode::ABNORMAL, why);
        self.leave_open(&mut ws);
    }
}

/// Most bytes a connection holds back between reads: an incomplete in-place frame (with its
/// largest header) or an incomplete request head.
pub(super) fn held_max(limits: &Limits) -> usize {
    (limits.inplace_frame_max + 14).max(limits.max_head_bytes)
}

/// Puts `bytes` (nothing, or at most `size`) in `held`, taking a buffer of `size` from `pool`
/// first if it has none. Leaves `held` empty when there is nothing to hold.
pub(super) fn hold(
    pool: &WorkerCache,
    size: usize,
    held: &mut Option<PooledBuf>,
    bytes: &[u8],
) -> Result<(), PoolError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let buf = match held {
        Some(buf) => buf,
        None => held.insert(pool.get(size, None)?),
    };
    buf.extend_from_slice(bytes)
        .expect("held bytes are bounded by held_max, the buffer's size");
    Ok(())
}

/// Whether the phase is a session that still parses input.
fn session_open(phase: &Phase) -> bool {
    matches!(phase, Phase::Open(s) if s.state() != State::Closed)
}

/// What a session's `receive` needs to call the application.
struct Env<'a> {
    handler: &'a dyn Handler,
    shared: &'a Shared,
    lcore: usize,
    id: u64,
    peer: SocketAddr,
}

impl Env<'_> {
    /// Runs `session` over `input`, calling the handler for each message and for the peer's
    /// close; returns the session's result and whether `on_close` was called.
    fn receive<S: FrameSink + ?Sized>(
        &self,
        session: &mut Session,
        input: &mut [u8],
        sink: &mut S,
    ) -> (Result<usize, ProtocolError>, bool) {
        let mut reported = false;
        let result = session.receive(input, sink, |event, out| {
            let mut ops = SessionRef {
                id: self.id,
                peer: self.peer,
                lcore: self.lcore,
                shared: self.shared,
                out: Some(out),
            };
            match event {
                Event::Text(t) => call(self.handler, &mut ops, "on_message", |h, ctx| {
                    h.on_message(ctx, Message::Text(t))
                }),
                Event::Binary(b) => call(self.handler, &mut ops, "on_message", |h, ctx| {
                    h.on_message(ctx, Message::Binary(b))
                }),
                Event::Close(code, reason) => {
                    let code = code.unwrap_or(CloseCode::NO_STATUS);
                    call(self.handler, &mut ops, "on_close", |h, ctx| {
                        h.on_close(ctx, code, reason)
                    });
                    reported = true;
                }
                Event::Ping(_) | Event::Pong(_) => {}
            }
        });
        (result, reported)
    }
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

/// Queues an HTTP error answer.
fn reject<T: SendTarget + ?Sized>(sink: &mut RingSink<'_, T>, peer: SocketAddr, err: &HttpError) {
    debug!(%peer, status = err.status, "handshake rejected: {}", err.reason);
    let mut response = [0u8; 256];
    let n = handshake::write_error_response(err, &mut response);
    sink.write(&response[..n]);
}

/// Runs a handler callback; a panic closes the session with 1011 instead of killing the lcore.
fn call(
    handler: &dyn Handler,
    ops: &mut dyn SessionOps,
    what: &str,
    f: impl FnOnce(&dyn Handler, &mut Ctx<'_>),
) {
    let (id, peer) = (ops.session_id(), ops.peer_addr());
    let mut ctx = Ctx::new(ops);
    if catch_unwind(AssertUnwindSafe(|| f(handler, &mut ctx))).is_err() {
        error!(session = id, %peer, "handler panicked in {what}; closing the session with 1011");
        let _ = ctx.close(CloseCode::INTERNAL_ERROR, "internal error");
    }
}

/// A session lent to a callback: sends go through its `Outgoing` into the send ring; with no
/// `Outgoing` (the session has ended) every send is refused.
struct SessionRef<'o, 's, S: FrameSink + ?Sized> {
    id: u64,
    peer: SocketAddr,
    lcore: usize,
    shared: &'o Shared,
    out: Option<&'o mut Outgoing<'s, S>>,
}

impl<S: FrameSink + ?Sized> SessionOps for SessionRef<'_, '_, S> {
    fn session_id(&self) -> u64 {
        self.id
    }
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn worker(&self) -> usize {
        self.lcore
    }
    fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.shared.send_to(id, msg)
    }
    fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.shared.broadcast(msg)
    }
    fn state(&self) -> State {
        self.out.as_ref().map_or(State::Closed, |o| o.state())
    }
    fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.out.as_mut().ok_or(SendError::Closed)?.send_text(text)
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.out
            .as_mut()
            .ok_or(SendError::Closed)?
            .send_binary(data)
    }
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.out.as_mut().ok_or(SendError::Closed)?.ping(payload)
    }
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.out
            .as_mut()
            .ok_or(SendError::Closed)?
            .close(code, reason)
    }
}

