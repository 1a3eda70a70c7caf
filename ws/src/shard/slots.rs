//! A shard's slot bookkeeping: settling a connection after anything happened to it (release
//! if it ended, the watch list if it has a timer, its memory counted anew), releasing and
//! freeing slots, and lending a slot with the context its connection runs in.

use super::{Shard, Slot, Transport};
use crate::connection::{App, Release, ShardContext};

impl<T, A: App> Shard<T, A> {
    /// After anything happened to a connection: release it if it ended, else keep it in the
    /// watch list while it has a timer.
    pub(super) fn settle<X: Transport<Io = T>>(&mut self, slot: usize, x: &mut X) {
        let Some(s) = self.slot(slot) else {
            return;
        };
        match s.conn.ended() {
            Some(_) if s.released => {}
            Some(how) => self.release(slot, how, x),
            None => {
                self.update(slot);
                self.charge(slot);
            }
        }
    }

    /// Counts the connection's memory anew in the shard's total.
    pub(super) fn charge(&mut self, slot: usize) {
        if let Some(s) = self.slots[slot].as_mut() {
            let now = s.conn.memory();
            self.memory = self.memory - s.charged + now;
            s.charged = now;
        }
    }

    /// Puts a connection with a timer in the watch list.
    pub(super) fn update(&mut self, slot: usize) {
        if let Some(s) = self.slots[slot].as_mut() {
            if !s.watched && s.conn.has_timer() {
                s.watched = true;
                self.watched.push((slot, s.conn.id()));
            }
        }
    }

    pub(super) fn release<X: Transport<Io = T>>(&mut self, slot: usize, how: Release, x: &mut X) {
        self.unsubscribe_slot(slot);
        let Some(Slot {
            mut conn,
            io,
            watched,
            charged,
            ..
        }) = self.slots[slot].take()
        else {
            return;
        };
        self.memory -= charged;
        match x.release(slot, io, conn.pending_mut(), how) {
            Some(io) => {
                self.slots[slot] = Some(Slot {
                    conn,
                    io,
                    watched,
                    released: true,
                    charged: 0,
                })
            }
            None => self.slot_freed(slot),
        }
    }

    pub(super) fn free_slot(&mut self, slot: usize) {
        self.unsubscribe_slot(slot);
        if let Some(s) = self.slots[slot].take() {
            self.memory -= s.charged;
            self.slot_freed(slot);
        }
    }

    pub(super) fn slot_freed(&mut self, slot: usize) {
        self.free.push(slot);
        self.live -= 1;
        self.counters().connections.sub(1);
    }

    /// A slot and the context its connection runs in.
    pub(super) fn split(&mut self, slot: usize) -> Option<(&mut Slot<T>, ShardContext<'_, A>)> {
        let s = self.slots.get_mut(slot)?.as_mut()?;
        let cx = ShardContext {
            app: &self.app,
            settings: &self.settings,
            set: &self.set,
            shard: self.index,
            http: &mut self.http,
            log: &mut self.log,
        };
        Some((s, cx))
    }
}
