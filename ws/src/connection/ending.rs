//! The end of a connection: the peer gone, an ending we decide, leaving the Open phase (the
//! application's `on_close`, exactly once), finishing (our FIN, then the peer's), and settling
//! after anything that may have closed the session.

use std::time::Instant;

use tracing::debug;

use super::app::Bounds;
use super::{App, Connection, Phase, Release, SessionRef, ShardContext};
use crate::close::CloseCode;
use crate::session::State;
use crate::settings::Settings;

impl Connection {
    /// The peer closed its side (`error` `None`: end of stream) or the connection broke.
    /// A session still open is reported closed with 1006.
    pub fn peer_gone<A: App + ?Sized>(
        &mut self,
        error: Option<&std::io::Error>,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        let how = if error.is_some() {
            Release::Reset
        } else {
            Release::Close
        };
        match self.phase {
            Phase::Open(_) => {
                let reason = match error {
                    Some(_) => "connection reset",
                    None => "connection closed without a close frame",
                };
                debug!(peer = %self.peer, session = self.id, ?error, "{reason}");
                self.leave_open(cx, now, Some((CloseCode::ABNORMAL, reason)));
            }
            Phase::Handshake => {
                debug!(peer = %self.peer, ?error, "connection ended during the handshake")
            }
            Phase::Finishing { .. } | Phase::Ended(_) => {}
        }
        if !matches!(self.phase, Phase::Ended(_)) {
            self.phase = Phase::Ended(how);
        }
    }

    /// Ends the connection now (reset); an open session is reported closed with `code`.
    pub fn end<A: App + ?Sized>(
        &mut self,
        code: CloseCode,
        reason: &str,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        self.leave_open(cx, now, Some((code, reason)));
        self.phase = Phase::Ended(Release::Reset);
    }

    /// Leaves the Open phase (once): reports the close to the application unless it saw the
    /// peer's Close already (`report` `None`), and starts finishing.
    pub(super) fn leave_open<A: App + ?Sized>(
        &mut self,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
        report: Option<(CloseCode, &str)>,
    ) {
        if !matches!(self.phase, Phase::Open(_)) {
            return;
        }
        if let Some((code, reason)) = report {
            cx.app.on_close(
                &mut SessionRef::new(
                    self.id,
                    self.peer,
                    cx.shard,
                    cx.set,
                    None,
                    &mut self.data,
                    Bounds::of(cx.settings),
                ),
                code,
                reason,
            );
        }
        // After on_close, the session's state goes.
        self.data = Default::default();
        cx.counters().sessions.sub(1);
        self.finish(cx.settings, now);
    }

    /// Starts finishing: flush, FIN, discard input until the peer closes (close timeout).
    pub(super) fn finish(&mut self, settings: &Settings, now: Instant) {
        self.phase = Phase::Finishing { shut: false };
        self.timers.deadline = Some(now + settings.close_timeout);
        self.timers.message_since = None;
        self.held.clear();
    }

    /// After anything that may have closed the session: a closed session leaves Open; one that
    /// sent its Close gets the close timeout.
    pub fn settle<A: App + ?Sized>(&mut self, cx: &mut ShardContext<'_, A>, now: Instant) {
        let Phase::Open(session) = &self.phase else {
            return;
        };
        match session.state() {
            State::Closed => {
                self.leave_open(cx, now, Some((CloseCode::ABNORMAL, "session closed")))
            }
            State::Closing if self.timers.deadline.is_none() => {
                self.timers.deadline = Some(now + cx.settings.close_timeout);
            }
            _ => {}
        }
    }
}
