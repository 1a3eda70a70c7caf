//! The end of a shard's loop turn, after the transport's I/O: the stop (listener closed, Close
//! 1001 to every session, the grace period), the inbox (sends by id, broadcasts), the tick
//! (deadlines of the watch list, every [`TICK`]), the idle sweep.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{slot_of, Command, Shard, Transport, TurnEnd, IDLE_SWEEP_MAX, INBOX_BATCH, TICK};
use crate::assembly;
use crate::close::CloseCode;
use crate::connection::{App, Idle};
use crate::log_limit::LogCause;

/// Most connections one shard closes per tick to get back under the memory budget.
const BUDGET_CLOSES_PER_TICK: usize = 64;

impl<T, A: App> Shard<T, A> {
    /// The rest of a loop turn, after the transport's I/O: stop, the inbox, deadlines (every
    /// [`TICK`]), the idle sweep.
    pub fn end_turn<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) -> TurnEnd {
        if self.stop_deadline.is_none() && self.set.is_stopping() {
            self.begin_shutdown(x, now);
        }
        self.apply_topic_ops();
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
        self.counters()
            .caches
            .publish_deflate(crate::deflate::stats());
        self.report_topics(now);
        self.counters().memory.set(self.memory);
        if self.set.memory() > self.settings.memory_budget {
            self.enforce_budget(x, now);
        }
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
                    let mut wire = x.wire(slot, &mut s.io);
                    s.conn.handle_timeout(now, &mut wire, &mut cx);
                    // A graceful close (finishing) sends its FIN once nothing is pending.
                    let resume = s.conn.after_output(&mut wire, cx.settings, now);
                    drop(wire);
                    super::after_verdicts(s, &mut cx, x, slot, now, resume);
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

    /// The server holds more than its memory budget: closes this shard's largest holders until
    /// the shard is back under its share of the budget (the other shards do the same at their
    /// ticks), at most [`BUDGET_CLOSES_PER_TICK`] per tick. A holder of input (a message in
    /// assembly) gets 1009, a holder of output (a slow reader) 1008.
    fn enforce_budget<X: Transport<Io = T>>(&mut self, x: &mut X, now: Instant) {
        let share = self.settings.memory_budget / self.set.len().max(1);
        for _ in 0..BUDGET_CLOSES_PER_TICK {
            if self.memory <= share {
                break;
            }
            let largest = (0..self.slots.len())
                .filter_map(|i| Some((i, self.slot(i)?)))
                .filter(|(_, s)| !s.released && s.conn.ended().is_none())
                .max_by_key(|(_, s)| s.charged)
                .map(|(i, s)| (i, s.charged));
            let Some((slot, held)) = largest.filter(|&(_, held)| held > 0) else {
                break;
            };
            let Some((s, mut cx)) = self.split(slot) else {
                break;
            };
            let (code, reason) = if s.conn.memory_is_output() {
                (CloseCode::POLICY_VIOLATION, "output over the memory budget")
            } else if s.conn.memory_is_codec() {
                (
                    CloseCode::POLICY_VIOLATION,
                    "compression state over the memory budget",
                )
            } else {
                (CloseCode::MESSAGE_TOO_BIG, "message over the memory budget")
            };
            cx.set.counters(cx.shard).budget_closes.add(1);
            if cx.log.allow(LogCause::Memory, now) {
                warn!(peer = %s.conn.peer(), session = s.conn.id(), held,
                    budget = cx.settings.memory_budget,
                    "server over its memory budget: closing the largest holder with {}", code.0);
            }
            let mut wire = x.wire(slot, &mut s.io);
            if s.conn.memory_is_output() {
                // Its peer does not read: reset, and the output goes with it.
                s.conn.close_now(code, reason, &mut wire, &mut cx, now);
            } else {
                // A sender: it sees the code; the message it was assembling goes now.
                s.conn
                    .close_and_finish(code, reason, &mut wire, &mut cx, now);
                s.conn.after_output(&mut wire, cx.settings, now);
            }
            drop(wire);
            self.settle(slot, x);
        }
        self.counters().memory.set(self.memory);
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
                Command::Upgrade(id, decision) => {
                    let slot = slot_of(id);
                    if self.slot(slot).is_some_and(|s| s.conn.id() == id) {
                        self.complete_upgrade(slot, *decision, x, now);
                    }
                }
                Command::Publish(p) => self.deliver_publication(&p, x, now),
                Command::Broadcast(msg) => {
                    // Compressed once for the worker's sessions (permessage-deflate, shared).
                    crate::deflate::with_broadcast(msg.bytes(), || {
                        for slot in 0..self.slots.len() {
                            if self.slot(slot).is_some_and(|s| s.conn.has_session()) {
                                self.with_output(slot, x, now, |conn, wire| {
                                    conn.deliver(&msg, wire)
                                });
                            }
                        }
                    });
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
