//! The end of a shard's loop turn, after the transport's I/O: the stop (listener closed, Close
//! 1001 to every session, the grace period), the inbox (sends by id, broadcasts), the tick
//! (deadlines of the watch list, every [`TICK`]), the idle sweep.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{slot_of, Command, Shard, Transport, TurnEnd, IDLE_SWEEP_MAX, INBOX_BATCH, TICK};
use crate::assembly;
use crate::close::CloseCode;
use crate::connection::{App, Idle};

impl<T, A: App> Shard<T, A> {
    /// The rest of a loop turn, after the transport's I/O: stop, the inbox, deadlines (every
    /// [`TICK`]), the idle sweep.
    pub fn end_turn<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) -> TurnEnd {
        if self.stop_deadline.is_none() && self.set.is_stopping() {
            self.begin_shutdown(x, now);
        }
        if !self.set.inbox(self.index).is_empty() {
            self.run_inbox(x, now);
        }
        let mut end = TurnEnd::default();
        if now >= self.next_tick {
            self.tick(x, now);
            self.next_tick = now + TICK;
            end.ticked = true;
        }
        if now >= self.next_idle_sweep {
            self.idle_sweep(x, now);
            self.next_idle_sweep = now + self.idle_sweep_period();
        }
        end.done = match self.stop_deadline {
            Some(deadline) => now >= deadline || self.all_finished(),
            None => false,
        };
        end
    }

    fn tick<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        self.counters()
            .caches
            .publish(x.output_cache_stats(), assembly::stats());
        let mut list =
            std::mem::replace(&mut self.watched, std::mem::take(&mut self.watched_spare));
        for &(slot, id) in &list {
            let keep = {
                let Some((s, mut cx)) = self.split(slot) else {
                    continue;
                };
                if s.conn.id() != id {
                    continue;
                }
                if s.conn
                    .poll_timeout(cx.settings)
                    .is_some_and(|due| due <= now)
                {
                    s.conn
                        .handle_timeout(now, &mut x.wire(slot, &mut s.io), &mut cx);
                }
                let keep = s.conn.ended().is_none() && s.conn.has_timer();
                s.watched = keep;
                keep
            };
            if keep {
                self.watched.push((slot, id));
            } else {
                self.settle(slot, x);
            }
        }
        list.clear();
        self.watched_spare = list;
    }

    pub(super) fn idle_sweep_period(&self) -> Duration {
        match self.settings.idle_timeout {
            Some(idle) => IDLE_SWEEP_MAX
                .min(idle / 4)
                .min(self.settings.pong_timeout / 4)
                .max(TICK),
            None => IDLE_SWEEP_MAX,
        }
    }

    /// Pings sessions quiet for `idle_timeout`; drops those that did not answer (1006).
    fn idle_sweep<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        let Some(idle) = self.settings.idle_timeout else {
            return;
        };
        for slot in 0..self.slots.len() {
            let verdict = match self.split(slot) {
                Some((s, mut cx)) => s.conn.idle_check(now, idle, &mut cx),
                None => continue,
            };
            match verdict {
                Idle::No => {}
                Idle::Dropped => {
                    self.counters().idle_drops.add(1);
                    self.settle(slot, x);
                }
                Idle::Ping => {
                    self.counters().idle_pings.add(1);
                    self.with_output(slot, x, now, |conn, wire| conn.ping_idle(wire, now));
                }
            }
        }
    }

    /// Runs the commands other threads queued (sends by id, broadcasts), a bounded batch.
    fn run_inbox<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        let set = self.set.clone();
        let inbox = set.inbox(self.index);
        for _ in 0..INBOX_BATCH {
            let Some(cmd) = inbox.pop() else {
                return;
            };
            match cmd {
                Command::Send(id, msg) => {
                    let slot = slot_of(id);
                    let live = self.slot(slot).is_some_and(|s| s.conn.id() == id);
                    let sent = live
                        && self.with_output(slot, x, now, |conn, wire| conn.deliver(&msg, wire))
                            == Some(true);
                    if !sent {
                        self.counters().undelivered.add(1);
                    }
                }
                Command::Broadcast(msg) => {
                    for slot in 0..self.slots.len() {
                        if self.slot(slot).is_some_and(|s| s.conn.has_session()) {
                            self.with_output(slot, x, now, |conn, wire| conn.deliver(&msg, wire));
                        }
                    }
                }
            }
        }
    }

    // ---- stop ---------------------------------------------------------------------------------

    fn begin_shutdown<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        self.stop_deadline = Some(now + self.settings.shutdown_grace);
        x.stop_listening();
        let mut closing = 0;
        for slot in 0..self.slots.len() {
            if self.slot(slot).is_none() {
                continue;
            }
            if self.with_output(slot, x, now, |conn, wire| conn.begin_shutdown(wire)) == Some(true)
            {
                closing += 1;
            }
        }
        info!(
            worker = self.index,
            sessions = closing,
            "stopping: listener closed, close 1001 sent"
        );
    }

    /// Whether every connection has completed its close: nothing is left but the peers' FINs,
    /// which the exit does not need.
    fn all_finished(&self) -> bool {
        self.live == 0 || self.slots.iter().flatten().all(|s| s.conn.is_finished())
    }

    /// At the end of the grace period (or when the transport stops for good): every session
    /// still open is reported closed (1006) and every connection released.
    pub fn close_all<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        for slot in 0..self.slots.len() {
            let Some((s, mut cx)) = self.split(slot) else {
                continue;
            };
            if s.conn.ended().is_some() {
                continue; // released already; the transport forgets it when it is gone
            }
            if s.conn.is_finished() {
                s.conn.peer_gone(None, &mut cx, now); // our FIN is out: let it go gracefully
            } else {
                s.conn
                    .end(CloseCode::ABNORMAL, "server stopped", &mut cx, now);
            }
            self.settle(slot, x);
        }
        debug!(worker = self.index, "worker stopped");
    }
}
