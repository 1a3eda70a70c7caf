//! The session registry: which sessions exist, by id, in `session_shards` shards.
//!
//! A session's id names its owner (worker index in the top 16 bits), so routing a message needs
//! no lookup. The registry answers the questions the owner cannot answer for other threads: does
//! session N exist (so `Server::send_to` can say `NoSuchSession` at once), which sessions are
//! there (probes, admin tools). It is written at session open and close only — never per message
//! — and spread over shards by id, each a small mutex-protected map, so workers opening sessions
//! at the same time rarely meet on one lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// A live session as the registry knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Server-unique id.
    pub id: u64,
    /// Peer address.
    pub peer: SocketAddr,
    /// Owning worker.
    pub worker: usize,
}

pub(crate) struct Registry {
    shards: Box<[Mutex<HashMap<u64, SessionInfo>>]>,
}

impl Registry {
    /// `shards` must be a power of two (the config checks it).
    pub fn new(shards: usize) -> Registry {
        Registry {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, SessionInfo>> {
        // Serials are sequential per worker: mix the worker bits in so shards fill evenly.
        let h = (id ^ (id >> 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let idx = h as usize & (self.shards.len() - 1);
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, info: SessionInfo) {
        self.shard(info.id).insert(info.id, info);
    }

    pub fn remove(&self, id: u64) {
        self.shard(id).remove(&id);
    }

    pub fn contains(&self, id: u64) -> bool {
        self.shard(id).contains_key(&id)
    }

    pub fn snapshot(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_id_across_shards() {
        let r = Registry::new(4);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for worker in 0..3u64 {
            for serial in 0..10u64 {
                let id = (worker << 48) | serial;
                r.insert(SessionInfo {
                    id,
                    peer,
                    worker: worker as usize,
                });
            }
        }
        assert_eq!(r.snapshot().len(), 30);
        assert!(r.contains((2 << 48) | 9));
        r.remove((2 << 48) | 9);
        assert!(!r.contains((2 << 48) | 9));
        assert_eq!(r.snapshot().len(), 29);
        let used = r
            .shards
            .iter()
            .filter(|s| !s.lock().unwrap().is_empty())
            .count();
        assert!(used > 1, "ids spread over shards");
    }
}
