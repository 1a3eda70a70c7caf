//! [`Metrics`]: what went through the handler, counted per worker and summed when read.
//!
//! Each worker writes only its own block of counters (one cache-line-aligned `WorkerMetrics`,
//! plain relaxed load + store: a single writer needs no read-modify-write), so counting costs a
//! few stores and no contention. A scrape of `/metrics` sums the blocks. Counted: messages and
//! bytes in (whole messages) and out (sent through `Ctx`), sessions opened and closed, closes
//! by code, and the time the layers below spend in `on_message` (a fixed-bucket histogram).
//!
//! Timing takes two clock reads (vDSO, no system call, but some 25-50 ns each on a VM: more than
//! all the counting), so by default one message in 16 per worker is timed, the first one
//! included; [`Metrics::time_every`] changes that (1: every message). The histogram's `_count`
//! is the number of timed messages. `benches/middleware.rs` prints the cost per message.
//!
//! Blocks are allocated at [`crate::Handler::on_start`]; a `Metrics` used outside a server (or
//! before start) counts nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::Middleware;
use crate::control::prometheus;
use crate::handler::{
    CloseCode, Ctx, DeliverError, Handler, Message, OutMessage, SendError, SendStatus, SessionOps,
    SessionState, State,
};

/// Upper bounds of the latency buckets, in nanoseconds (`+Inf` is implied).
const BUCKETS_NS: [u64; 12] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// Close codes counted by name: 1000..=1015; others are counted as "other".
const CODES: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct WorkerMetrics {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    close_codes: [AtomicU64; CODES + 1],
    latency: [AtomicU64; BUCKETS_NS.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// Adds `n` to a counter that only the calling worker writes.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Sums of every worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Whole messages received.
    pub messages_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// Messages sent through `Ctx`.
    pub messages_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed.
    pub sessions_closed: u64,
    /// Closes by code: `(code, count)` for 1000..=1015 with a non-zero count, then `(0, n)` for
    /// any other code.
    pub close_codes: Vec<(u16, u64)>,
    /// Handler latency: cumulative counts per bucket bound (ns; `u64::MAX` = +Inf).
    pub latency_buckets: Vec<(u64, u64)>,
    /// Total handler time, ns.
    pub latency_sum_ns: u64,
}

/// Counts messages, bytes, sessions, close codes and handler latency.
#[derive(Clone)]
pub struct Metrics {
    workers: Arc<OnceLock<Box<[WorkerMetrics]>>>,
    /// Time one message in this many (a power of two), per worker.
    time_mask: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            workers: Arc::default(),
            time_mask: 15,
        }
    }
}

impl Metrics {
    /// The metrics layer, timing one message in 16. Clones share their counters (keep one to
    /// read them).
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Times one message in `n` (rounded up to a power of two; 1 = every message).
    pub fn time_every(mut self, n: u64) -> Metrics {
        self.time_mask = n.max(1).next_power_of_two() - 1;
        self
    }

    fn block(&self, worker: usize) -> Option<&WorkerMetrics> {
        let blocks = self.workers.get()?;
        blocks.get(worker % blocks.len())
    }

    /// The counters summed over all workers.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut s = MetricsSnapshot::default();
        let Some(blocks) = self.workers.get() else {
            return s;
        };
        let mut codes = [0u64; CODES + 1];
        let mut buckets = [0u64; BUCKETS_NS.len() + 1];
        for w in blocks.iter() {
            s.messages_in += w.messages_in.load(Relaxed);
            s.bytes_in += w.bytes_in.load(Relaxed);
            s.messages_out += w.messages_out.load(Relaxed);
            s.bytes_out += w.bytes_out.load(Relaxed);
            s.sessions_opened += w.opened.load(Relaxed);
            s.sessions_closed += w.closed.load(Relaxed);
            s.latency_sum_ns += w.latency_sum_ns.load(Relaxed);
            for (sum, c) in codes.iter_mut().zip(&w.close_codes) {
                *sum += c.load(Relaxed);
            }
            for (sum, c) in buckets.iter_mut().zip(&w.latency) {
                *sum += c.load(Relaxed);
            }
        }
        s.close_codes = codes[..CODES]
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (1000 + i as u16, n))
            .collect();
        if codes[CODES] > 0 {
            s.close_codes.push((0, codes[CODES]));
        }
        let mut cumulative = 0;
        s.latency_buckets = buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                cumulative += n;
                (BUCKETS_NS.get(i).copied().unwrap_or(u64::MAX), cumulative)
            })
            .collect();
        s
    }
}

/// Counts what the layers below send through their `Ctx`.
struct CountingOps<'a, 'b> {
    inner: &'a mut (dyn SessionOps + 'b),
    block: &'a WorkerMetrics,
}

impl CountingOps<'_, '_> {
    fn count(
        &self,
        result: Result<SendStatus, SendError>,
        len: usize,
    ) -> Result<SendStatus, SendError> {
        if result.is_ok() {
            add(&self.block.messages_out, 1);
            add(&self.block.bytes_out, len as u64);
        }
        result
    }
}

impl SessionOps for CountingOps<'_, '_> {
    fn session_id(&self) -> u64 {
        self.inner.session_id()
    }
    fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr()
    }
    fn worker(&self) -> usize {
        self.inner.worker()
    }
    fn state(&self) -> State {
        self.inner.state()
    }
    fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError> {
        let r = self.inner.send_text(text);
        self.count(r, text.len())
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError> {
        let r = self.inner.send_binary(data);
        self.count(r, data.len())
    }
    fn buffered_amount(&self) -> usize {
        self.inner.buffered_amount()
    }
    fn state_slot(&mut self) -> &mut Option<SessionState> {
        self.inner.state_slot()
    }
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.inner.ping(payload)
    }
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.inner.close(code, reason)
    }
    fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.inner.send_to(id, msg)
    }
    fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.inner.broadcast(msg)
    }
    fn subscribe(
        &mut self,
        topic: &str,
        sub: hioload_wsproto::Subscription,
    ) -> Result<(), hioload_wsproto::TopicError> {
        self.inner.subscribe(topic, sub)
    }
    fn unsubscribe(&mut self, topic: &str) {
        self.inner.unsubscribe(topic)
    }
    fn publish(
        &mut self,
        topic: &str,
        msg: Message<'_>,
        exclude_self: bool,
    ) -> Result<usize, hioload_wsproto::TopicOrDeliverError> {
        self.inner.publish(topic, msg, exclude_self)
    }
}

impl Middleware for Metrics {
    fn on_start(&self, workers: usize) {
        let _ = self.workers.set(
            (0..workers.max(1))
                .map(|_| WorkerMetrics::default())
                .collect(),
        );
    }

    fn on_open(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        let Some(block) = self.block(ctx.worker()) else {
            return next.on_open(ctx);
        };
        add(&block.opened, 1);
        let mut ops = CountingOps {
            inner: ctx.ops(),
            block,
        };
        next.on_open(&mut Ctx::new(&mut ops));
    }

    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        let Some(block) = self.block(ctx.worker()) else {
            return next.on_message(ctx, msg);
        };
        let seen = block.messages_in.load(Relaxed);
        add(&block.messages_in, 1);
        add(&block.bytes_in, msg.len() as u64);
        let mut ops = CountingOps {
            inner: ctx.ops(),
            block,
        };
        if seen & self.time_mask != 0 {
            return next.on_message(&mut Ctx::new(&mut ops), msg);
        }
        let start = Instant::now();
        next.on_message(&mut Ctx::new(&mut ops), msg);
        let ns = start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let bucket = BUCKETS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BUCKETS_NS.len());
        add(&block.latency[bucket], 1);
        add(&block.latency_sum_ns, ns);
    }

    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str, next: &dyn Handler) {
        if let Some(block) = self.block(ctx.worker()) {
            add(&block.closed, 1);
            let slot = match code.0 {
                c @ 1000..=1015 => (c - 1000) as usize,
                _ => CODES,
            };
            add(&block.close_codes[slot], 1);
        }
        next.on_close(ctx, code, reason);
    }

    fn write_metrics(&self, out: &mut String) {
        let s = self.snapshot();
        prometheus::counter(
            out,
            "hioload_messages_in_total",
            "Whole messages received.",
            s.messages_in,
        );
        prometheus::counter(
            out,
            "hioload_bytes_in_total",
            "Payload bytes of the messages received.",
            s.bytes_in,
        );
        prometheus::counter(
            out,
            "hioload_messages_out_total",
            "Messages sent by handlers through their Ctx.",
            s.messages_out,
        );
        prometheus::counter(
            out,
            "hioload_bytes_out_total",
            "Payload bytes of the messages sent by handlers.",
            s.bytes_out,
        );
        prometheus::counter(
            out,
            "hioload_sessions_opened_total",
            "Sessions opened.",
            s.sessions_opened,
        );
        prometheus::counter(
            out,
            "hioload_sessions_closed_total",
            "Sessions closed.",
            s.sessions_closed,
        );
        prometheus::header(
            out,
            "hioload_session_close_codes_total",
            "counter",
            "Sessions closed, by close code (other: outside 1000-1015).",
        );
        for (code, n) in &s.close_codes {
            let label = if *code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            prometheus::sample(
                out,
                "hioload_session_close_codes_total",
                &[("code", &label)],
                *n as f64,
            );
        }
        prometheus::header(
            out,
            "hioload_handler_latency_seconds",
            "histogram",
            "Time spent in on_message by the handler layers below Metrics (a sample of the messages: see time_every).",
        );
        for (bound, n) in &s.latency_buckets {
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1e9)
            };
            prometheus::sample(
                out,
                "hioload_handler_latency_seconds_bucket",
                &[("le", &le)],
                *n as f64,
            );
        }
        prometheus::sample(
            out,
            "hioload_handler_latency_seconds_sum",
            &[],
            s.latency_sum_ns as f64 / 1e9,
        );
        let count = s.latency_buckets.last().map_or(0, |b| b.1);
        prometheus::sample(
            out,
            "hioload_handler_latency_seconds_count",
            &[],
            count as f64,
        );
    }
}
