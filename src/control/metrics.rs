//! `GET /metrics`: the Prometheus text format, rendered from one snapshot of the data path's
//! counters ([`crate::data_path::PathStats`]): per-worker families, both buffer caches of every
//! worker, the buffer pools per node and size class, uptime and reloads, on the DPDK path the
//! lcores' busy time (`crate::dpdk`'s `busy` module), and whatever the handler chain writes ([`crate::Handler::write_metrics`]). Every family is a row of a table
//! (name, type, help, the field it reads).

use crate::pool::{ClassStats, PoolStats};
use hioload_wsproto::WorkerStats;
use std::sync::atomic::Ordering;

use super::{prometheus, Control};

impl Control {
    /// Every metric, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        prometheus::gauge(
            &mut out,
            "hioload_uptime_seconds",
            "Seconds since the server was created.",
            self.started.elapsed().as_secs_f64(),
        );
        prometheus::counter(
            &mut out,
            "hioload_config_reloads_total",
            "Configuration reloads applied.",
            self.reloads.load(Ordering::Relaxed),
        );
        let Some(rt) = self.runtime.get() else {
            return out;
        };
        let stats = rt.path.stats();
        let workers = &stats.workers;
        prometheus::gauge(
            &mut out,
            "hioload_sessions_active",
            "Open WebSocket sessions.",
            workers.iter().map(|w| w.sessions).sum::<usize>() as f64,
        );
        type Field = fn(&WorkerStats) -> usize;
        let per_worker: [(&str, &str, &str, Field); 19] = [
            (
                "hioload_worker_sessions",
                "gauge",
                "Open sessions per worker.",
                |w| w.sessions,
            ),
            (
                "hioload_worker_connections",
                "gauge",
                "TCP connections per worker (any phase).",
                |w| w.connections,
            ),
            (
                "hioload_undelivered_total",
                "counter",
                "Sends by id whose session had ended.",
                |w| w.undelivered,
            ),
            (
                "hioload_idle_pings_total",
                "counter",
                "Pings sent to idle sessions.",
                |w| w.idle_pings,
            ),
            (
                "hioload_idle_drops_total",
                "counter",
                "Idle sessions dropped for not answering a ping.",
                |w| w.idle_drops,
            ),
            (
                "hioload_buffer_waits_total",
                "counter",
                "io_uring ring refills deferred for want of a pool buffer (to the next tick).",
                |w| w.buffer_waits,
            ),
            (
                "hioload_worker_memory_bytes",
                "gauge",
                "Bytes held by the worker's connections: held input, message assembly, pending output (the memory budget counts these).",
                |w| w.memory,
            ),
            (
                "hioload_connections_refused_total",
                "counter",
                "Connections refused at max_connections.",
                |w| w.connections_refused,
            ),
            (
                "hioload_budget_closes_total",
                "counter",
                "Connections closed because the server was over its memory budget.",
                |w| w.budget_closes,
            ),
            (
                "hioload_memory_closes_total",
                "counter",
                "Connections closed because memory for their input could not be had.",
                |w| w.memory_closes,
            ),
            (
                "hioload_message_timeouts_total",
                "counter",
                "Sessions closed (1008) for not completing a message within message_timeout.",
                |w| w.message_timeouts,
            ),
            (
                "hioload_backpressure_closes_total",
                "counter",
                "Sessions closed (1008) because their peer did not read its output.",
                |w| w.backpressure_closes,
            ),
            (
                "hioload_protocol_errors_total",
                "counter",
                "Sessions closed for a protocol error of the peer.",
                |w| w.protocol_errors,
            ),
            (
                "hioload_tls_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                |w| w.tls_handshakes,
            ),
            (
                "hioload_tls_failures_total",
                "counter",
                "TLS connections ended because the peer's input was refused (failed handshake, bad record, plain HTTP on the TLS port).",
                |w| w.tls_failures,
            ),
            (
                "hioload_tcp_half_open_evicted_total",
                "counter",
                "DPDK stack: half-open connections evicted to admit new SYNs (SYN-flood defence).",
                |w| w.tcp_half_open_evicted,
            ),
            (
                "hioload_tcp_handshake_timeouts_total",
                "counter",
                "DPDK stack: TCP handshakes given up on.",
                |w| w.tcp_handshake_timeouts,
            ),
            (
                "hioload_tcp_syn_dropped_total",
                "counter",
                "DPDK stack: SYNs dropped for want of room.",
                |w| w.tcp_syn_dropped,
            ),
            (
                "hioload_ring_buffers",
                "gauge",
                "Receive buffers lent to the kernel's io_uring ring (0 with the poll backend).",
                |w| w.ring_buffers,
            ),
        ];
        for (name, kind, help, field) in per_worker {
            prometheus::header(&mut out, name, kind, help);
            for (i, w) in workers.iter().enumerate() {
                prometheus::sample(
                    &mut out,
                    name,
                    &[("worker", &i.to_string())],
                    field(w) as f64,
                );
            }
        }
        // The DPDK lcores' busy time (the DPDK path is the one without a kernel I/O backend).
        #[cfg(feature = "dpdk")]
        if rt.path.io_backend().is_none() {
            crate::dpdk::write_busy_metrics(&mut out);
        }
        buffer_cache_metrics(&mut out, workers);
        deflate_metrics(&mut out, workers);
        pool_metrics(&mut out, &stats.pools);
        super::topics::topic_metrics(&mut out, &rt.path.shards().topics().snapshot());
        if let Some(cluster) = &rt.cluster {
            super::topics::cluster_metrics(&mut out, cluster.stats());
        }
        rt.handler.write_metrics(&mut out);
        out
    }
}

/// The buffer pools: per node and size class (classes never used are left out), and the bytes
/// each node took from the system.
fn pool_metrics(out: &mut String, pools: &PoolStats) {
    type Field = fn(&ClassStats) -> u64;
    let per_class: [(&str, &str, &str, Field); 6] = [
        (
            "hioload_pool_buffers_in_use",
            "gauge",
            "Pool buffers handed out and not returned.",
            |c| c.in_use,
        ),
        (
            "hioload_pool_buffers_allocated",
            "gauge",
            "Pool buffers carved from system memory.",
            |c| c.allocated,
        ),
        (
            "hioload_pool_hits_total",
            "counter",
            "Pool gets served from free buffers.",
            |c| c.hits,
        ),
        (
            "hioload_pool_misses_total",
            "counter",
            "Pool gets that needed fresh memory.",
            |c| c.misses,
        ),
        (
            "hioload_pool_exhausted_total",
            "counter",
            "Pool gets that found the class at its limit.",
            |c| c.exhausted,
        ),
        (
            "hioload_pool_trimmed_bytes_total",
            "counter",
            "Bytes of pool buffers that stayed free given back to the system (the buffers stay).",
            |c| c.trimmed_bytes,
        ),
    ];
    for (name, kind, help, field) in per_class {
        prometheus::header(out, name, kind, help);
        for node in &pools.nodes {
            let node_label = node.node.to_string();
            for class in &node.classes {
                let size = class.size.to_string();
                prometheus::sample(
                    out,
                    name,
                    &[("node", &node_label), ("size", &size)],
                    field(class) as f64,
                );
            }
        }
    }
    let name = "hioload_pool_reserved_bytes";
    prometheus::header(out, name, "gauge", "Bytes the pool took from the system.");
    for node in &pools.nodes {
        prometheus::sample(
            out,
            name,
            &[("node", &node.node.to_string())],
            node.reserved_bytes as f64,
        );
    }
}

/// Both large-buffer caches of every worker (as of its last tick): common families labelled
/// `worker` and `cache` (`assembly`: message assembly; `output`: staging and pending output),
/// plus what only one of them has.
fn buffer_cache_metrics(out: &mut String, workers: &[WorkerStats]) {
    type Field = fn(&CacheFigures) -> u64;
    let families: [(&str, &str, &str, Field); 7] = [
        (
            "hioload_buffer_cache_borrowed_total",
            "counter",
            "Large buffers a worker's cache handed out.",
            |c| c.borrowed,
        ),
        (
            "hioload_buffer_cache_hits_total",
            "counter",
            "Large buffers handed out from the cache with enough capacity (no allocation).",
            |c| c.hits,
        ),
        (
            "hioload_buffer_cache_misses_total",
            "counter",
            "Large buffers that had to be allocated or grown.",
            |c| c.misses,
        ),
        (
            "hioload_buffer_cache_returned_total",
            "counter",
            "Buffers given back and kept.",
            |c| c.returned,
        ),
        (
            "hioload_buffer_cache_freed_total",
            "counter",
            "Buffers freed: beyond the cache's bounds, evicted for a larger one, or trimmed.",
            |c| c.freed,
        ),
        (
            "hioload_buffer_cache_free_buffers",
            "gauge",
            "Free large buffers the cache holds.",
            |c| c.free_buffers,
        ),
        (
            "hioload_buffer_cache_free_bytes",
            "gauge",
            "Free large capacity the cache holds, in bytes.",
            |c| c.free_bytes,
        ),
    ];
    for (name, kind, help, field) in families {
        prometheus::header(out, name, kind, help);
        for (i, w) in workers.iter().enumerate() {
            let worker = i.to_string();
            for (cache, figures) in CacheFigures::of(w) {
                let labels = [("worker", worker.as_str()), ("cache", cache)];
                prometheus::sample(out, name, &labels, field(&figures) as f64);
            }
        }
    }
    type Only = fn(&WorkerStats) -> u64;
    let only: [(&str, &str, &str, Only); 4] = [
        (
            "hioload_assembly_buffers_grown_total",
            "counter",
            "Borrowed assembly buffers that had to grow (a fragmented message outgrew it).",
            |w| w.assembly_cache.grown,
        ),
        (
            "hioload_output_small_buffers_borrowed_total",
            "counter",
            "Small (64 KiB) pending-output buffers handed out.",
            |w| w.output_cache.small_borrowed,
        ),
        (
            "hioload_output_small_buffers_misses_total",
            "counter",
            "Small pending-output buffers that had to be allocated.",
            |w| w.output_cache.small_misses,
        ),
        (
            "hioload_output_small_buffers_free",
            "gauge",
            "Free small pending-output buffers held.",
            |w| w.output_cache.small_cached as u64,
        ),
    ];
    for (name, kind, help, field) in only {
        prometheus::header(out, name, kind, help);
        for (i, w) in workers.iter().enumerate() {
            prometheus::sample(out, name, &[("worker", &i.to_string())], field(w) as f64);
        }
    }
}

/// permessage-deflate, per worker (as of its last tick).
fn deflate_metrics(out: &mut String, workers: &[WorkerStats]) {
    type Field = fn(&WorkerStats) -> u64;
    let families: [(&str, &str, Field); 9] = [
        (
            "hioload_deflate_sessions_total",
            "Sessions that negotiated permessage-deflate.",
            |w| w.deflate.sessions,
        ),
        (
            "hioload_deflate_messages_received_total",
            "Compressed messages received and inflated.",
            |w| w.deflate.messages_in,
        ),
        (
            "hioload_deflate_received_bytes_total",
            "Bytes of compressed messages as received.",
            |w| w.deflate.bytes_in,
        ),
        (
            "hioload_deflate_inflated_bytes_total",
            "Bytes of compressed messages once inflated.",
            |w| w.deflate.bytes_inflated,
        ),
        (
            "hioload_deflate_messages_sent_total",
            "Messages sent compressed.",
            |w| w.deflate.messages_out,
        ),
        (
            "hioload_deflate_input_bytes_total",
            "Bytes of messages sent compressed, before compression.",
            |w| w.deflate.bytes_raw_out,
        ),
        (
            "hioload_deflate_sent_bytes_total",
            "Bytes of messages sent compressed, as sent.",
            |w| w.deflate.bytes_out,
        ),
        (
            "hioload_deflate_messages_sent_plain_total",
            "Messages sent uncompressed in sessions with permessage-deflate (under the threshold, or compression did not pay).",
            |w| w.deflate.messages_plain_out,
        ),
        (
            "hioload_deflate_broadcast_reuses_total",
            "Compressed sends that reused the compression of the same broadcast (compressed once per worker).",
            |w| w.deflate.broadcast_reuses,
        ),
    ];
    for (name, help, field) in families {
        prometheus::header(out, name, "counter", help);
        for (i, w) in workers.iter().enumerate() {
            prometheus::sample(out, name, &[("worker", &i.to_string())], field(w) as f64);
        }
    }
}

/// What the two caches of a worker have in common.
struct CacheFigures {
    borrowed: u64,
    hits: u64,
    misses: u64,
    returned: u64,
    freed: u64,
    free_buffers: u64,
    free_bytes: u64,
}

impl CacheFigures {
    /// A worker's two caches, by their `cache` label.
    fn of(w: &WorkerStats) -> [(&'static str, CacheFigures); 2] {
        let (a, o) = (&w.assembly_cache, &w.output_cache);
        [
            (
                "assembly",
                CacheFigures {
                    borrowed: a.borrowed,
                    hits: a.hits,
                    misses: a.misses,
                    returned: a.returned,
                    freed: a.freed,
                    free_buffers: a.cached_buffers as u64,
                    free_bytes: a.cached_bytes as u64,
                },
            ),
            (
                "output",
                CacheFigures {
                    borrowed: o.borrowed,
                    hits: o.hits,
                    misses: o.misses,
                    returned: o.returned,
                    freed: o.freed,
                    free_buffers: o.cached_buffers as u64,
                    free_bytes: o.cached_bytes as u64,
                },
            ),
        ]
    }
}
