//! Per-shard counters: written by their shard only, read by the control plane.
//!
//! Each shard's counters sit on cache lines of their own; a counter has one writer, so it is
//! updated with a plain relaxed load and store (no read-modify-write), and readers sum them.
//! The buffer-cache counters are copied out by the shard at its tick (every 100 ms while it
//! runs).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::assembly::AssemblyStats;
use crate::deflate::DeflateStats;
use crate::output_cache::OutputCacheStats;

/// A counter on its own cache line, written by one shard, summed by readers.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct PaddedCounter(AtomicUsize);

impl PaddedCounter {
    /// Adds `n` (single writer: no read-modify-write needed).
    pub fn add(&self, n: usize) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Subtracts `n` (single writer).
    pub fn sub(&self, n: usize) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    /// Sets a gauge (single writer).
    pub fn set(&self, n: usize) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's figures.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Open sessions.
    pub sessions: PaddedCounter,
    /// Connections (any phase).
    pub connections: PaddedCounter,
    /// Inbox messages whose session was gone when they arrived.
    pub undelivered: PaddedCounter,
    /// Pings sent to idle sessions.
    pub idle_pings: PaddedCounter,
    /// Sessions dropped because they did not answer an idle ping.
    pub idle_drops: PaddedCounter,
    /// Reads deferred because no receive buffer could be had (kernel transport).
    pub buffer_waits: PaddedCounter,
    /// Receive buffers lent to the kernel's io_uring ring (gauge; kernel transport).
    pub ring_buffers: PaddedCounter,
    /// Bytes the shard's connections hold (held input, assembly, pending output; gauge).
    pub memory: PaddedCounter,
    /// Connections refused at the connection cap.
    pub connections_refused: PaddedCounter,
    /// Connections closed because the server's memory budget was exceeded.
    pub budget_closes: PaddedCounter,
    /// Connections closed because memory for their input could not be had.
    pub memory_closes: PaddedCounter,
    /// Sessions closed because a message was not completed within `message_timeout`.
    pub message_timeouts: PaddedCounter,
    /// Sessions closed because their peer did not read (backpressure timeout, hard bound).
    pub backpressure_closes: PaddedCounter,
    /// Sessions closed for a protocol error of the peer.
    pub protocol_errors: PaddedCounter,
    /// TLS handshakes completed.
    pub tls_handshakes: PaddedCounter,
    /// TLS connections ended because their peer's input was refused (bad records, a failed
    /// handshake, plain HTTP on the TLS port).
    pub tls_failures: PaddedCounter,
    /// Half-open TCP connections the transport evicted to admit new SYNs (a SYN flood
    /// defence; DPDK stack only, the kernel path leaves SYN floods to the kernel).
    pub tcp_half_open_evicted: PaddedCounter,
    /// TCP handshakes the transport gave up on (DPDK stack only).
    pub tcp_handshake_timeouts: PaddedCounter,
    /// SYNs the transport dropped for want of room (DPDK stack only).
    pub tcp_syn_dropped: PaddedCounter,
    /// The shard's buffer-cache counters, as of its last tick.
    pub caches: CacheCounters,
}

/// A copy of one shard's buffer-cache counters (its output cache and its thread's message
/// assembly cache). Plain relaxed stores: the fields of one snapshot may come from two
/// consecutive ticks.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct CacheCounters {
    output: [AtomicU64; 10],
    assembly: [AtomicU64; 8],
    deflate: [AtomicU64; 9],
}

impl CacheCounters {
    /// Publishes the thread's permessage-deflate counters: 9 relaxed stores.
    pub fn publish_deflate(&self, d: DeflateStats) {
        let v = [
            d.sessions,
            d.messages_in,
            d.bytes_in,
            d.bytes_inflated,
            d.messages_out,
            d.bytes_raw_out,
            d.bytes_out,
            d.messages_plain_out,
            d.broadcast_reuses,
        ];
        for (cell, v) in self.deflate.iter().zip(v) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// The last published permessage-deflate counters.
    pub fn deflate_snapshot(&self) -> DeflateStats {
        let [sessions, messages_in, bytes_in, bytes_inflated, messages_out, bytes_raw_out, bytes_out, messages_plain_out, broadcast_reuses] =
            self.deflate.each_ref().map(|c| c.load(Ordering::Relaxed));
        DeflateStats {
            sessions,
            messages_in,
            bytes_in,
            bytes_inflated,
            messages_out,
            bytes_raw_out,
            bytes_out,
            messages_plain_out,
            broadcast_reuses,
        }
    }

    /// Publishes both caches' counters: 18 relaxed stores, no lock, no allocation.
    pub fn publish(&self, output: OutputCacheStats, assembly: AssemblyStats) {
        let o = output;
        let out = [
            o.borrowed,
            o.hits,
            o.misses,
            o.returned,
            o.freed,
            o.cached_buffers as u64,
            o.cached_bytes as u64,
            o.small_borrowed,
            o.small_misses,
            o.small_cached as u64,
        ];
        let a = assembly;
        let asm = [
            a.borrowed,
            a.hits,
            a.misses,
            a.grown,
            a.returned,
            a.freed,
            a.cached_buffers as u64,
            a.cached_bytes as u64,
        ];
        for (cell, v) in self.output.iter().zip(out) {
            cell.store(v, Ordering::Relaxed);
        }
        for (cell, v) in self.assembly.iter().zip(asm) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// The last published counters.
    pub fn snapshot(&self) -> (OutputCacheStats, AssemblyStats) {
        let o = self.output.each_ref().map(|c| c.load(Ordering::Relaxed));
        let [borrowed, hits, misses, returned, freed, cached_buffers, cached_bytes, ..] = o;
        let [.., small_borrowed, small_misses, small_cached] = o;
        let output = OutputCacheStats {
            borrowed,
            hits,
            misses,
            returned,
            freed,
            cached_buffers: cached_buffers as usize,
            cached_bytes: cached_bytes as usize,
            small_borrowed,
            small_misses,
            small_cached: small_cached as usize,
        };
        let [borrowed, hits, misses, grown, returned, freed, cached_buffers, cached_bytes] =
            self.assembly.each_ref().map(|c| c.load(Ordering::Relaxed));
        let assembly = AssemblyStats {
            borrowed,
            hits,
            misses,
            grown,
            returned,
            freed,
            cached_buffers: cached_buffers as usize,
            cached_bytes: cached_bytes as usize,
        };
        (output, assembly)
    }
}

/// A snapshot of one worker's counters (one worker per shard, on either data path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Open WebSocket sessions.
    pub sessions: usize,
    /// TCP connections (handshaking, open or finishing).
    pub connections: usize,
    /// Messages sent by id whose session had ended when they arrived.
    pub undelivered: usize,
    /// Pings sent to sessions idle for `idle_timeout`.
    pub idle_pings: usize,
    /// Sessions dropped for not answering an idle ping within `pong_timeout`.
    pub idle_drops: usize,
    /// Reads deferred because no receive buffer could be had (kernel transport).
    pub buffer_waits: usize,
    /// Receive buffers lent to the kernel's io_uring provided-buffer ring, waiting for data
    /// (taken from the buffer pool, so counted there as in use; 0 elsewhere).
    pub ring_buffers: usize,
    /// Bytes the worker's connections hold: held input, message assembly, pending output.
    pub memory: usize,
    /// Connections refused at the connection cap (`max_connections`).
    pub connections_refused: usize,
    /// Connections closed because the server's memory budget was exceeded.
    pub budget_closes: usize,
    /// Connections closed because memory for their input could not be had.
    pub memory_closes: usize,
    /// Sessions closed because a message was not completed within `message_timeout`.
    pub message_timeouts: usize,
    /// Sessions closed because their peer did not read (backpressure).
    pub backpressure_closes: usize,
    /// Sessions closed for a protocol error of the peer.
    pub protocol_errors: usize,
    /// Half-open TCP connections evicted to admit new SYNs (DPDK stack; 0 on the kernel path).
    /// TLS handshakes completed.
    pub tls_handshakes: usize,
    /// TLS connections ended because their peer's input was refused.
    pub tls_failures: usize,
    pub tcp_half_open_evicted: usize,
    /// TCP handshakes given up on (DPDK stack; 0 on the kernel path).
    pub tcp_handshake_timeouts: usize,
    /// SYNs dropped for want of room (DPDK stack; 0 on the kernel path).
    pub tcp_syn_dropped: usize,
    /// The worker's cache of large output buffers, as of its last tick (every 100 ms).
    pub output_cache: OutputCacheStats,
    /// The worker thread's cache of message-assembly buffers, as of its last tick.
    pub assembly_cache: AssemblyStats,
    /// The worker thread's permessage-deflate counters, as of its last tick.
    pub deflate: DeflateStats,
}

impl ShardCounters {
    /// A snapshot of these counters.
    pub fn snapshot(&self) -> WorkerStats {
        let (output_cache, assembly_cache) = self.caches.snapshot();
        WorkerStats {
            sessions: self.sessions.get(),
            connections: self.connections.get(),
            undelivered: self.undelivered.get(),
            idle_pings: self.idle_pings.get(),
            idle_drops: self.idle_drops.get(),
            buffer_waits: self.buffer_waits.get(),
            ring_buffers: self.ring_buffers.get(),
            memory: self.memory.get(),
            connections_refused: self.connections_refused.get(),
            budget_closes: self.budget_closes.get(),
            memory_closes: self.memory_closes.get(),
            message_timeouts: self.message_timeouts.get(),
            backpressure_closes: self.backpressure_closes.get(),
            protocol_errors: self.protocol_errors.get(),
            tls_handshakes: self.tls_handshakes.get(),
            tls_failures: self.tls_failures.get(),
            tcp_half_open_evicted: self.tcp_half_open_evicted.get(),
            tcp_handshake_timeouts: self.tcp_handshake_timeouts.get(),
            tcp_syn_dropped: self.tcp_syn_dropped.get(),
            output_cache,
            assembly_cache,
            deflate: self.caches.deflate_snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_cache_counters_read_back_field_for_field() {
        let counters = CacheCounters::default();
        let output = OutputCacheStats {
            borrowed: 1,
            hits: 2,
            misses: 3,
            returned: 4,
            freed: 5,
            cached_buffers: 6,
            cached_bytes: 7,
            small_borrowed: 8,
            small_misses: 9,
            small_cached: 10,
        };
        let assembly = AssemblyStats {
            borrowed: 11,
            hits: 12,
            misses: 13,
            grown: 14,
            returned: 15,
            freed: 16,
            cached_buffers: 17,
            cached_bytes: 18,
        };
        counters.publish(output, assembly);
        assert_eq!(counters.snapshot(), (output, assembly));
    }
}
