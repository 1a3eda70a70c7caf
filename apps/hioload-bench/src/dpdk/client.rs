//! The load generator's client on our userspace stack: connections opened at a steady rate,
//! upgraded, then kept at P messages in flight each, every echoed byte checked — the kernel
//! mode's loop (`load`), with `Stack::poll` and its callbacks in place of epoll and sockets.
//!
//! One lcore polls every stack (one per source address, see `sources`) in turn; the stacks call
//! back into [`Client`] for each connection that opened, has bytes, got send room or is gone.
//! Received bytes are verified where they lie, in the connection's receive ring; new frames are
//! copied from the pattern's send ring into the connection's send ring, as much as fits. Time
//! is the TSC, read once per loop turn: latency is from the turn that sent a message to the turn
//! that received the last byte of its echo.
//!
//! A connection that fails during setup (refused, reset, upgrade refused) ends the run with that
//! error, as in kernel mode; one that fails under load counts as an error and the others carry
//! on. After the window every connection waits (up to a second) for its last echoes and closes
//! cleanly (a close frame, or a FIN with `--raw`).

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hioload_dpdk::{tsc, tsc_hz};
use hioload_stack::{CloseReason, Conn, ConnEvents, ConnId, PacketQueue, Stack};

use crate::connect::{check_upgrade_response, request_key, upgrade_request};
use crate::load::{self, ThreadStats};
use crate::pattern::{Framing, Pattern, CLOSE_FRAME};

/// Setup states, for the thread that times the window.
pub const SETUP_PENDING: u8 = 0;
/// Every connection is upgraded and the load runs.
pub const SETUP_READY: u8 = 1;
/// Setup failed; the run ends.
pub const SETUP_FAILED: u8 = 2;

/// Handshakes (TCP and upgrade) in progress at once, at most.
const MAX_HANDSHAKES: usize = 512;
/// Largest upgrade response head accepted.
const MAX_HEAD: usize = 8192;
/// How long connections get to finish their last echoes and close after the window.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server (its stack's address and port).
    pub server: SocketAddrV4,
    /// Request path of the upgrade.
    pub path: String,
    pub connections: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Connections opened per second.
    pub connect_rate: f64,
    /// Longest the setup (every connection opened and upgraded) may take.
    pub setup_timeout: Duration,
}

/// Shared with the thread that times the window.
pub struct Control {
    /// WARMUP, MEASURE or DONE (`load`).
    pub phase: AtomicU8,
    /// SETUP_PENDING, SETUP_READY or SETUP_FAILED.
    pub setup: AtomicU8,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            phase: AtomicU8::new(load::WARMUP),
            setup: AtomicU8::new(SETUP_PENDING),
        }
    }
}

/// What a run measured.
pub struct Outcome {
    /// Echoes and latency of the window, errors of the whole run.
    pub stats: ThreadStats,
    /// The lcore's time in turns that did work during the window.
    pub busy: Duration,
    /// How long opening and upgrading every connection took.
    pub setup: Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Running,
    /// Our close frame (or FIN) is out; the server's end is awaited.
    Closing,
    Finished,
    Failed,
}

/// One connection.
struct Tracked {
    id: ConnId,
    /// Connection number (order of opening), for messages and the request key.
    index: usize,
    state: State,
    /// Ring message this connection starts at.
    start: usize,
    issued: u64,
    /// Bytes queued for sending so far.
    sent: u64,
    /// Bytes received and verified so far.
    received: u64,
    /// TSC at which in-flight message `k` was issued, at `k % pipeline`.
    sent_at: Box<[u64]>,
}

/// Everything but the connections: what the callbacks read and count.
struct Run<'a> {
    pattern: &'a Pattern,
    pipeline: u64,
    server: SocketAddrV4,
    path: &'a str,
    stats: ThreadStats,
    /// The TSC at the start of the current turn.
    now: u64,
    ns_per_cycle: f64,
    /// Connections upgraded (or, raw, open).
    upgraded: usize,
    /// Connections neither finished nor failed.
    live: usize,
    setup_error: Option<String>,
    /// Messages are issued (after setup).
    loaded: bool,
    /// Echoes are counted (MEASURE).
    measuring: bool,
    /// After the window: no new messages; connections close once drained.
    draining: bool,
}

/// The client: every connection of every stack.
struct Client<'a> {
    /// Per stack, per connection slot.
    slots: Vec<Vec<Option<Tracked>>>,
    run: Run<'a>,
}

/// The client as one stack's callbacks.
struct OnStack<'c, 'a> {
    client: &'c mut Client<'a>,
    stack: usize,
}

impl Run<'_> {
    fn end(&mut self, t: &mut Tracked, state: State) {
        if !matches!(t.state, State::Finished | State::Failed) {
            self.live -= 1;
        }
        t.state = state;
    }

    fn fail(&mut self, t: &mut Tracked, conn: &mut Conn<'_>, why: String) {
        if self.loaded {
            self.stats.fail_connection(t.index, why);
        } else if self.setup_error.is_none() {
            self.setup_error = Some(format!("connection {}: {why}", t.index));
        }
        conn.abort();
        self.end(t, State::Failed);
    }

    /// Tops `t` up to `pipeline` messages in flight after `done` echoes, stamping them.
    fn issue(&self, t: &mut Tracked, done: u64) {
        let target = done + self.pipeline;
        for k in t.issued..target {
            t.sent_at[(k % self.pipeline) as usize] = self.now;
        }
        t.issued = t.issued.max(target);
    }

    /// Queues issued frames while the send ring has room.
    fn flush(&self, t: &mut Tracked, conn: &mut Conn<'_>) {
        let p = self.pattern;
        let ring = (p.messages * p.send_len) as u64;
        let goal = t.issued * p.send_len as u64;
        while t.sent < goal {
            let pos = ((t.start * p.send_len) as u64 + t.sent) % ring;
            let len = goal - t.sent;
            let n = conn.send_slice(&p.send[pos as usize..(pos + len) as usize]);
            if n == 0 {
                break;
            }
            t.sent += n as u64;
        }
    }

    /// Once every issued message is echoed, starts the close: a close frame (WebSocket) or a FIN.
    fn close_if_drained(&mut self, t: &mut Tracked, conn: &mut Conn<'_>) {
        let p = self.pattern;
        if t.state != State::Running
            || t.sent != t.issued * p.send_len as u64
            || t.received != t.issued * p.echo_len as u64
        {
            return;
        }
        match p.framing {
            Framing::WebSocket(_) if conn.send_all(&[&CLOSE_FRAME]) => {}
            _ => conn.close(),
        }
        t.state = State::Closing;
    }

    /// The upgrade answer: a valid `101` makes the connection ready.
    fn upgrade_answer(&mut self, t: &mut Tracked, conn: &mut Conn<'_>) {
        let key = request_key(t.index);
        let mut outcome = Ok(false);
        conn.recv_with(|buf| match check_upgrade_response(buf, &key) {
            Ok(None) if buf.len() >= MAX_HEAD => {
                outcome = Err(format!(
                    "upgrade response head larger than {MAX_HEAD} bytes"
                ));
                0
            }
            Ok(None) => 0, // incomplete: the bytes stay in the ring for the next call
            Ok(Some(n)) if n < buf.len() => {
                outcome = Err(format!(
                    "{} unsolicited bytes after the 101 response",
                    buf.len() - n
                ));
                buf.len()
            }
            Ok(Some(n)) => {
                outcome = Ok(true);
                n
            }
            Err(e) => {
                outcome = Err(e);
                buf.len()
            }
        });
        match outcome {
            Ok(true) => {
                t.state = State::Running;
                self.upgraded += 1;
            }
            Ok(false) if conn.is_eof() => self.fail(
                t,
                conn,
                "the server closed the connection during the upgrade".into(),
            ),
            Ok(false) => {}
            Err(e) => self.fail(t, conn, e),
        }
    }

    /// Verifies what arrived, counts completed echoes and sends their successors.
    fn exchange(&mut self, t: &mut Tracked, conn: &mut Conn<'_>) {
        let p = self.pattern;
        let echo_len = p.echo_len as u64;
        let done_before = t.received / echo_len;
        let mut wrong = None;
        loop {
            let n = conn.recv_with(|buf| {
                if let Err(e) = p.verify(t.start, t.issued, &mut t.received, buf) {
                    wrong = Some(e);
                }
                buf.len()
            });
            if wrong.is_some() || n == 0 {
                break;
            }
        }
        if let Some(why) = wrong {
            return self.fail(t, conn, why);
        }
        let done = t.received / echo_len;
        if done > done_before && !self.draining {
            if self.measuring {
                for k in done_before..done {
                    let cycles = self
                        .now
                        .wrapping_sub(t.sent_at[(k % self.pipeline) as usize]);
                    let ns = (cycles as f64 * self.ns_per_cycle) as u64;
                    self.stats.latency.saturating_record(ns.max(1));
                }
                self.stats.messages += done - done_before;
            }
            self.issue(t, done);
        }
        self.flush(t, conn);
        if conn.is_eof() {
            return self.fail(t, conn, "the server closed the connection".into());
        }
        if self.draining {
            self.close_if_drained(t, conn);
        }
    }
}

impl ConnEvents for OnStack<'_, '_> {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let Client { slots, run } = &mut *self.client;
        let Some(t) = slots[self.stack]
            .get_mut(conn.id().index())
            .and_then(Option::as_mut)
            .filter(|t| t.id == conn.id())
        else {
            conn.abort(); // not one of ours
            return;
        };
        match run.pattern.framing {
            Framing::WebSocket(_) => {
                let host = run.server.to_string();
                let request = upgrade_request(run.path, &host, &request_key(t.index));
                if conn.send_all(&[request.as_bytes()]) {
                    t.state = State::Upgrading;
                } else {
                    run.fail(
                        t,
                        conn,
                        "the upgrade request does not fit the send ring".into(),
                    );
                }
            }
            Framing::Raw => {
                t.state = State::Running;
                run.upgraded += 1;
            }
        }
    }

    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        let Client { slots, run } = &mut *self.client;
        let Some(t) = slots[self.stack]
            .get_mut(conn.id().index())
            .and_then(Option::as_mut)
            .filter(|t| t.id == conn.id())
        else {
            conn.recv_with(|b| b.len());
            return;
        };
        match t.state {
            State::Upgrading => run.upgrade_answer(t, conn),
            State::Running if run.loaded => run.exchange(t, conn),
            State::Running => {
                // Upgraded, load not started: the server has nothing to say.
                let mut extra = 0;
                conn.recv_with(|b| {
                    extra = b.len();
                    b.len()
                });
                if extra > 0 {
                    run.fail(
                        t,
                        conn,
                        format!("{extra} unsolicited bytes before any message"),
                    );
                } else if conn.is_eof() {
                    run.fail(t, conn, "the server closed the connection".into());
                }
            }
            State::Closing => {
                // The server's close frame (and anything before it): read and ignored.
                while conn.recv_with(|b| b.len()) > 0 {}
                if conn.is_eof() {
                    conn.close();
                }
            }
            State::Connecting | State::Finished | State::Failed => {
                while conn.recv_with(|b| b.len()) > 0 {}
            }
        }
    }

    fn on_close(&mut self, id: ConnId, reason: CloseReason) {
        let stack = self.stack;
        let Client { slots, run } = &mut *self.client;
        let Some(slot) = slots[stack].get_mut(id.index()) else {
            return;
        };
        if !matches!(slot, Some(t) if t.id == id) {
            return;
        }
        let Some(mut t) = slot.take() else { return };
        let how = match reason {
            CloseReason::Graceful => "closed",
            CloseReason::Reset => "reset",
        };
        match t.state {
            State::Connecting if run.setup_error.is_none() => {
                run.setup_error = Some(format!(
                    "connection {}: the TCP handshake with {} failed (refused, or no answer): \
                     is hioload-echo serving that address and port?",
                    t.index, run.server
                ));
            }
            State::Upgrading if run.setup_error.is_none() => {
                run.setup_error = Some(format!(
                    "connection {}: the server {how} the connection during the upgrade",
                    t.index
                ));
            }
            State::Running => {
                run.stats
                    .fail_connection(t.index, format!("the server {how} the connection"));
            }
            _ => {}
        }
        let state = if t.state == State::Closing {
            State::Finished
        } else {
            State::Failed
        };
        run.end(&mut t, state);
    }
}

/// Runs the client over `stacks` (one per source address, polled in turn on this thread):
/// opens and upgrades `cfg.connections` connections, reports SETUP_READY in `control`, loads
/// them until `control.phase` is DONE, drains and closes them. `link_up` reads the port's link
/// (for the diagnosis of a setup that does not complete).
pub fn run<Q: PacketQueue>(
    stacks: &mut [Stack<Q>],
    pattern: &Pattern,
    cfg: &ClientConfig,
    control: &Control,
    link_up: &dyn Fn() -> Option<bool>,
) -> Result<Outcome, String> {
    let result = run_inner(stacks, pattern, cfg, control, link_up);
    if result.is_err() {
        control.setup.store(SETUP_FAILED, Ordering::Release);
    }
    result
}

fn run_inner<Q: PacketQueue>(
    stacks: &mut [Stack<Q>],
    pattern: &Pattern,
    cfg: &ClientConfig,
    control: &Control,
    link_up: &dyn Fn() -> Option<bool>,
) -> Result<Outcome, String> {
    assert!(!stacks.is_empty() && cfg.pipeline > 0);
    let mut client = Client {
        slots: stacks
            .iter()
            .map(|s| (0..s.config().max_connections).map(|_| None).collect())
            .collect(),
        run: Run {
            pattern,
            pipeline: cfg.pipeline as u64,
            server: cfg.server,
            path: &cfg.path,
            stats: ThreadStats::new(),
            now: tsc(),
            ns_per_cycle: 1e9 / tsc_hz().max(1) as f64,
            upgraded: 0,
            live: 0,
            setup_error: None,
            loaded: false,
            measuring: false,
            draining: false,
        },
    };

    // Setup: connections at a steady rate, a bounded number of handshakes at a time.
    let started = Instant::now();
    let deadline = started + cfg.setup_timeout;
    let mut opened = 0usize;
    while client.run.upgraded < cfg.connections {
        let now = Instant::now();
        if now >= deadline {
            return Err(diagnose(stacks, cfg, &client.run, opened, link_up));
        }
        let due = ((now - started).as_secs_f64() * cfg.connect_rate) as usize + 1;
        while opened < due.min(cfg.connections) && opened - client.run.upgraded < MAX_HANDSHAKES {
            let s = opened % stacks.len();
            let id = stacks[s].connect(cfg.server).map_err(|e| {
                format!(
                    "connection {opened} of {}: {e} (from {})",
                    cfg.connections,
                    stacks[s].config().ip
                )
            })?;
            client.slots[s][id.index()] = Some(Tracked {
                id,
                index: opened,
                state: State::Connecting,
                start: opened % pattern.messages,
                issued: 0,
                sent: 0,
                received: 0,
                sent_at: vec![0; cfg.pipeline].into_boxed_slice(),
            });
            client.run.live += 1;
            opened += 1;
        }
        client.run.now = tsc();
        poll_all(stacks, &mut client);
        if let Some(e) = client.run.setup_error.take() {
            return Err(e);
        }
    }
    let setup = started.elapsed();

    // Load: P messages on every connection, then echoes answered as they come back.
    client.run.loaded = true;
    client.run.now = tsc();
    for (s, stack) in stacks.iter_mut().enumerate() {
        let Client { slots, run } = &mut client;
        for t in slots[s].iter_mut().flatten() {
            if let Some(mut conn) = stack.conn(t.id) {
                run.issue(t, 0);
                run.flush(t, &mut conn);
            }
        }
    }
    control.setup.store(SETUP_READY, Ordering::Release);

    let mut busy = 0u64;
    let mut drain_deadline = None;
    loop {
        match control.phase.load(Ordering::Relaxed) {
            load::MEASURE if !client.run.measuring => {
                client.run.measuring = true;
                client.run.stats.messages = 0;
                client.run.stats.latency.reset();
                busy = 0;
            }
            load::DONE if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + DRAIN_TIME);
                client.run.draining = true;
                for (s, stack) in stacks.iter_mut().enumerate() {
                    let Client { slots, run } = &mut client;
                    for t in slots[s].iter_mut().flatten() {
                        if let Some(mut conn) = stack.conn(t.id) {
                            run.close_if_drained(t, &mut conn);
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(deadline) = drain_deadline {
            if client.run.live == 0 || Instant::now() >= deadline {
                break;
            }
        }
        let t0 = tsc();
        client.run.now = t0;
        let sent_before: u64 = stacks.iter().map(|s| s.stats().io.tx_packets).sum();
        let received = poll_all(stacks, &mut client);
        if client.run.measuring && !client.run.draining {
            let sent: u64 = stacks.iter().map(|s| s.stats().io.tx_packets).sum();
            if received > 0 || sent != sent_before {
                busy += tsc().wrapping_sub(t0);
            }
        }
    }

    // What did not finish in time is reset; the resets leave in the next turns. With the link
    // down (the peer is gone) that is an error of every such connection: nothing came back.
    let link_down = link_up() == Some(false);
    for (s, stack) in stacks.iter_mut().enumerate() {
        let Client { slots, run } = &mut client;
        for t in slots[s].iter_mut().flatten() {
            if !matches!(t.state, State::Finished | State::Failed) {
                if link_down {
                    run.stats.fail_connection(
                        t.index,
                        "unanswered at the end: the port's link is down (the server is gone?)"
                            .into(),
                    );
                }
                if let Some(mut conn) = stack.conn(t.id) {
                    conn.abort();
                }
                run.end(t, State::Failed);
            }
        }
    }
    let settle = Instant::now() + Duration::from_millis(100);
    while Instant::now() < settle {
        poll_all(stacks, &mut client);
    }
    Ok(Outcome {
        stats: client.run.stats,
        busy: Duration::from_secs_f64(busy as f64 / tsc_hz().max(1) as f64),
        setup,
    })
}

/// One turn of every stack.
fn poll_all<Q: PacketQueue>(stacks: &mut [Stack<Q>], client: &mut Client<'_>) -> usize {
    let mut received = 0;
    for (stack, s) in stacks.iter_mut().enumerate() {
        received += s.poll(&mut OnStack {
            client: &mut *client,
            stack,
        });
    }
    received
}

/// Why the setup did not complete in time, as far as the stacks can tell.
fn diagnose<Q: PacketQueue>(
    stacks: &[Stack<Q>],
    cfg: &ClientConfig,
    run: &Run<'_>,
    opened: usize,
    link_up: &dyn Fn() -> Option<bool>,
) -> String {
    let secs = cfg.setup_timeout.as_secs_f64();
    let rx: u64 = stacks.iter().map(|s| s.stats().io.rx_packets).sum();
    let established: u64 = stacks.iter().map(|s| s.stats().accepted).sum();
    let server = cfg.server;
    if link_up() == Some(false) {
        return format!(
            "setup incomplete after {secs:.0} s: the port's link is down (for net_memif: the \
             other process, the memif server, is gone or never connected)"
        );
    }
    if rx == 0 {
        return format!(
            "setup incomplete after {secs:.0} s: nothing came back from {server}, not even an \
             ARP answer: is hioload-echo serving {} (its --addr) at the other end of the port, \
             in the same subnet as our --local-ip?",
            server.ip()
        );
    }
    if established == 0 {
        return format!(
            "setup incomplete after {secs:.0} s: no TCP connection to {server} was established \
             ({opened} attempted): is the port right?"
        );
    }
    format!(
        "setup incomplete after {secs:.0} s: {} of {} connections upgraded ({established} \
         TCP connections established, {opened} attempted); raise --setup-timeout or lower \
         --connect-rate",
        run.upgraded, cfg.connections
    )
}
