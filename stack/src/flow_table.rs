//! Exact 4-tuple → connection slot lookup: open addressing, linear probing, no tombstones.
//!
//! Sized once (a power of two, at least twice the connection limit, so probes stay short) and
//! never resized: lookups, inserts and removals allocate nothing. Removal shifts the following
//! entries of the probe run back instead of leaving tombstones, so a long-running server with
//! constant churn keeps short probe sequences.

use crate::flow::mix;

const EMPTY: u32 = u32::MAX;

pub(crate) struct FlowTable {
    keys: Box<[u64]>,
    slots: Box<[u32]>,
    mask: usize,
    len: usize,
}

impl FlowTable {
    /// A table for up to `max` entries.
    pub(crate) fn new(max: usize) -> FlowTable {
        let cap = (max * 2).next_power_of_two().max(16);
        FlowTable {
            keys: vec![0; cap].into_boxed_slice(),
            slots: vec![EMPTY; cap].into_boxed_slice(),
            mask: cap - 1,
            len: 0,
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        mix(key) as usize & self.mask
    }

    /// The slot stored for `key`.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        let mut i = self.home(key);
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if self.keys[i] == key {
                return Some(slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Store `slot` for `key` (replacing an existing entry).
    pub(crate) fn insert(&mut self, key: u64, slot: u32) {
        assert!(
            slot != EMPTY && self.len < self.slots.len() / 2,
            "flow table over its sizing"
        );
        let mut i = self.home(key);
        loop {
            if self.slots[i] == EMPTY {
                self.len += 1;
                break;
            }
            if self.keys[i] == key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        self.keys[i] = key;
        self.slots[i] = slot;
    }

    /// Remove `key`; returns its slot.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let mut i = self.home(key);
        loop {
            if self.slots[i] == EMPTY {
                return None;
            }
            if self.keys[i] == key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let removed = self.slots[i];
        self.slots[i] = EMPTY;
        self.len -= 1;
        // Backward shift: move later entries of the run into the hole when their home allows.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            if self.slots[j] == EMPTY {
                return Some(removed);
            }
            let home = self.home(self.keys[j]);
            // The entry at j may move to `hole` unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.keys[hole] = self.keys[j];
                self.slots[hole] = self.slots[j];
                self.slots[j] = EMPTY;
                hole = j;
            }
        }
    }

    /// Entries stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matches_a_hashmap_under_churn() {
        let mut table = FlowTable::new(512);
        let mut model = HashMap::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        for step in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 1500; // small key space: many collisions, inserts and removals
            if model.len() < 500 && (x >> 40) % 3 != 0 {
                table.insert(key, step);
                model.insert(key, step);
            } else {
                assert_eq!(table.remove(key), model.remove(&key));
            }
            assert_eq!(table.len(), model.len());
            let probe = (x >> 20) % 1500;
            assert_eq!(table.get(probe), model.get(&probe).copied(), "step {step}");
        }
        for (k, v) in &model {
            assert_eq!(table.get(*k), Some(*v));
        }
    }
}
