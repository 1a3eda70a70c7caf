//! A connection's timers: the phase deadline (handshake, close handshake, finishing), the
//! backpressure clock (output above the soft bound), the message deadline (a message or frame
//! started must be complete within `message_timeout`, however slowly it trickles), and the idle
//! timer (quiet sessions get a ping; no answer within `pong_timeout` ends them). The shard's watch list polls
//! [`Connection::poll_timeout`] at its tick; the idle timer is swept (see `crate::shard`).

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{through_tls, App, Connection, Idle, Phase, Release, ShardContext, Wire, WireSink};
use crate::close::CloseCode;
use crate::log_limit::LogCause;
use crate::session::State;
use crate::settings::Settings;

impl Connection {
    /// When the next deadline of this connection falls due (`None`: no timer armed; the idle
    /// timer is swept by the shard, see [`Connection::idle_check`]).
    pub fn poll_timeout(&self, settings: &Settings) -> Option<Instant> {
        let stuck = self
            .timers
            .over_soft_since
            .map(|t| t + settings.backpressure.timeout);
        let slow = self
            .timers
            .message_since
            .map(|t| t + settings.message_timeout);
        [self.timers.deadline, stuck, slow]
            .into_iter()
            .flatten()
            .min()
    }

    /// Acts on the deadlines that have passed at `now`: a peer that kept its output above the
    /// soft bound for the backpressure timeout (or above the hard bound at all) gets Close 1008
    /// and is reset; so does a peer that did not complete a message within `message_timeout`;
    /// a handshake, close handshake or finishing that took too long ends (an open session is
    /// reported closed with 1006).
    pub fn handle_timeout<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        now: Instant,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
    ) {
        through_tls!(self, wire, |wire| self.timeout_on(now, wire, cx))
    }

    fn timeout_on<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        now: Instant,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
    ) {
        let bp = &cx.settings.backpressure;
        if self
            .timers
            .over_soft_since
            .is_some_and(|since| now.duration_since(since) >= bp.timeout)
        {
            let (soft, timeout) = (bp.soft_bytes, bp.timeout);
            cx.counters().backpressure_closes.add(1);
            if cx.log.allow(LogCause::Time, now) {
                info!(
                    peer = %self.peer, session = self.id, pending = self.pending.len(),
                    "peer does not read: output above {soft} bytes for {timeout:?} (or above the hard bound); closing with 1008"
                );
            }
            self.close_now(
                CloseCode::POLICY_VIOLATION,
                "output not drained",
                wire,
                cx,
                now,
            );
            return;
        }
        if self
            .timers
            .message_since
            .is_some_and(|since| now.duration_since(since) >= cx.settings.message_timeout)
        {
            cx.counters().message_timeouts.add(1);
            if cx.log.allow(LogCause::Time, now) {
                info!(
                    peer = %self.peer, session = self.id,
                    "message not completed within {:?}; closing with 1008",
                    cx.settings.message_timeout
                );
            }
            self.close_and_finish(
                CloseCode::POLICY_VIOLATION,
                "message too slow",
                wire,
                cx,
                now,
            );
            return;
        }
        if !self.timers.deadline.is_some_and(|d| now >= d) {
            return;
        }
        match self.phase {
            Phase::Handshake => {
                debug!(peer = %self.peer, "handshake timed out");
                self.phase = Phase::Ended(Release::Reset);
            }
            Phase::Open(_) => {
                debug!(peer = %self.peer, session = self.id, "close handshake timed out");
                self.end(CloseCode::ABNORMAL, "close handshake timed out", cx, now);
            }
            Phase::Finishing { .. } => self.phase = Phase::Ended(Release::Reset),
            Phase::Ended(_) => {}
        }
    }

    /// Whether the shard's watch list must keep this connection (a deadline is armed).
    pub fn has_timer(&self) -> bool {
        !matches!(self.phase, Phase::Ended(_))
            && (self.timers.deadline.is_some()
                || self.timers.over_soft_since.is_some()
                || self.timers.message_since.is_some())
    }

    /// Sends Close `code` if the session is open, reports the close with `code`, and finishes
    /// gracefully: what is pending goes out, then our FIN; input is discarded until the peer
    /// closes, within `close_timeout`. For peers that still read (so that they see the code).
    pub fn close_and_finish<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        code: CloseCode,
        reason: &str,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        through_tls!(self, wire, |wire| self.send_close(code, reason, wire));
        self.leave_open(cx, now, Some((code, reason)));
    }

    /// Sends Close `code` if the session is open (best effort: what the wire takes now), then
    /// ends the connection with a reset (the session is reported closed with `code`).
    pub fn close_now<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        code: CloseCode,
        reason: &str,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        through_tls!(self, wire, |wire| self.send_close(code, reason, wire));
        self.end(code, reason, cx, now);
    }

    /// Queues Close `code` if the session is open and hands the wire what it takes now.
    fn send_close<W: Wire + ?Sized>(&mut self, code: CloseCode, reason: &str, wire: &mut W) {
        if let Phase::Open(session) = &mut self.phase {
            let mut sink = WireSink {
                wire: &mut *wire,
                pending: &mut self.pending,
            };
            let _ = session.outgoing(&mut sink).close(code, reason);
            let _ = wire.flush(&mut self.pending);
        }
    }

    /// The idle timer: a session that sent nothing for `idle` is due a ping; one that sent
    /// nothing within `pong_timeout` of our ping is ended here (1006: no close handshake).
    pub fn idle_check<A: App + ?Sized>(
        &mut self,
        now: Instant,
        idle: Duration,
        cx: &mut ShardContext<'_, A>,
    ) -> Idle {
        let Phase::Open(session) = &self.phase else {
            return Idle::No;
        };
        if session.state() != State::Open {
            return Idle::No;
        }
        let pong_timeout = cx.settings.pong_timeout;
        if let Some(at) = self.timers.ping_sent {
            if self.timers.last_input > at {
                self.timers.ping_sent = None;
            } else if now.duration_since(at) >= pong_timeout {
                if cx.log.allow(LogCause::Time, now) {
                    info!(peer = %self.peer, session = self.id,
                        "no answer to the idle ping within {pong_timeout:?}; dropping the connection");
                }
                self.end(CloseCode::ABNORMAL, "no answer to ping", cx, now);
                return Idle::Dropped;
            } else {
                return Idle::No;
            }
        }
        if now.duration_since(self.timers.last_input) >= idle {
            Idle::Ping
        } else {
            Idle::No
        }
    }

    /// Sends the idle ping that [`Connection::idle_check`] asked for.
    pub fn ping_idle<W: Wire + ?Sized>(&mut self, wire: &mut W, now: Instant) {
        through_tls!(self, wire, |wire| self.ping_on(wire, now))
    }

    fn ping_on<W: Wire + ?Sized>(&mut self, wire: &mut W, now: Instant) {
        if let Phase::Open(session) = &mut self.phase {
            let mut sink = WireSink {
                wire,
                pending: &mut self.pending,
            };
            let _ = session.outgoing(&mut sink).ping(b"idle");
            self.timers.ping_sent = Some(now);
        }
    }
}
