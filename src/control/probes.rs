//! `GET /debug/probes`: a JSON object with one member per probe — the built-in
//! `active_sessions`, `worker_sessions`, `buffer_caches`, `pool`, `topics`, `uptime_seconds`, `config` —
//! and every probe an application registers with [`crate::Server::register_probe`].
//!
//! What rendering it waits on: the built-in probes read counters the workers publish (atomics
//! in the shard set, the pools' counters under the pools' cache registry lock, which a worker
//! takes only when its cache is created or retired) and the configuration in force (a mutex a
//! reload holds for a moment). Nothing waits for a worker's turn, and nothing here runs on a
//! worker unless the request came in on the WebSocket listener (`control_on_main`).
//!
//! Registered probes are application code, of unknown cost, called on the thread that renders
//! the answer, outside any lock (the list is cloned first). On the admin listener that is the
//! connection's own thread: a slow probe delays that answer only, not another scrape (each has
//! its own thread) and never a worker. On the WebSocket listener the thread is a worker, whose
//! other sessions would wait: there, registered probes are left out and only the built-in
//! ones are served.

use std::fmt::Write;
use std::sync::Arc;

use hioload_wsproto::WorkerStats;

use super::{json, Control, ProbeFn};
use crate::config::Config;

/// What a probe reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeValue {
    /// An integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
    /// Raw JSON, inserted as is (must be valid JSON).
    Json(String),
}

macro_rules! probe_from {
    ($($t:ty => $v:ident as $as:ty),*) => {$(
        impl From<$t> for ProbeValue {
            fn from(v: $t) -> ProbeValue {
                ProbeValue::$v(v as $as)
            }
        }
    )*};
}
probe_from!(i32 => Int as i64, i64 => Int as i64, u32 => UInt as u64, u64 => UInt as u64,
    usize => UInt as u64, f32 => Float as f64, f64 => Float as f64);

impl From<bool> for ProbeValue {
    fn from(v: bool) -> ProbeValue {
        ProbeValue::Bool(v)
    }
}
impl From<String> for ProbeValue {
    fn from(v: String) -> ProbeValue {
        ProbeValue::Text(v)
    }
}
impl From<&str> for ProbeValue {
    fn from(v: &str) -> ProbeValue {
        ProbeValue::Text(v.to_string())
    }
}

impl ProbeValue {
    fn write_json(&self, out: &mut String) {
        match self {
            ProbeValue::Int(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::UInt(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::Float(v) => json::number(out, *v),
            ProbeValue::Bool(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::Text(s) => json::string(out, s),
            ProbeValue::Json(raw) => out.push_str(raw),
        }
    }
}

impl Control {
    /// Every probe, as one JSON object.
    pub fn probes_json(&self) -> String {
        self.render_probes(true)
    }

    /// The built-in probes as one JSON object, with the registered ones when `registered`.
    pub(super) fn render_probes(&self, registered: bool) -> String {
        let mut out = String::with_capacity(2048);
        out.push('{');
        let mut first = true;
        let mut member = |out: &mut String, name: &str, value: &dyn Fn(&mut String)| {
            if !first {
                out.push(',');
            }
            first = false;
            json::string(out, name);
            out.push(':');
            value(out);
        };
        let rt = self.runtime.get();
        let stats = rt.map(|rt| rt.path.stats());
        let workers = stats
            .as_ref()
            .map(|s| s.workers.clone())
            .unwrap_or_default();
        member(&mut out, "active_sessions", &|out| {
            let _ = write!(out, "{}", workers.iter().map(|w| w.sessions).sum::<usize>());
        });
        member(&mut out, "worker_sessions", &|out| {
            out.push('[');
            for (i, w) in workers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", w.sessions);
            }
            out.push(']');
        });
        member(&mut out, "buffer_caches", &|out| match rt {
            Some(_) => buffer_caches_json(out, &workers),
            None => out.push_str("null"),
        });
        member(&mut out, "pool", &|out| match &stats {
            Some(stats) => {
                let s = &stats.pools;
                let _ = write!(
                    out,
                    "{{\"in_use\":{},\"hits\":{},\"misses\":{},\"exhausted\":{},\"nodes\":[",
                    s.in_use(),
                    s.hits(),
                    s.misses(),
                    s.exhausted()
                );
                for (i, n) in s.nodes.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(
                        out,
                        "{{\"node\":{},\"in_use\":{},\"reserved_bytes\":{},\"bound_bytes\":{},\"budget_bytes\":{}}}",
                        n.node,
                        n.in_use(),
                        n.reserved_bytes,
                        n.bound_bytes,
                        n.budget_bytes
                    );
                }
                out.push_str("]}");
            }
            None => out.push_str("null"),
        });
        member(&mut out, "topics", &|out| match rt {
            Some(rt) => super::topics::topics_json(out, &rt.path.shards().topics().snapshot()),
            None => out.push_str("null"),
        });
        member(&mut out, "uptime_seconds", &|out| {
            json::number(out, self.started.elapsed().as_secs_f64())
        });
        let cfg = self.config();
        member(&mut out, "config", &|out| config_json(out, &cfg));
        let probes: Vec<(String, Arc<ProbeFn>)> = if registered {
            self.probes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            Vec::new()
        };
        for (name, probe) in probes {
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe()))
                .unwrap_or_else(|_| ProbeValue::Text("probe panicked".into()));
            member(&mut out, &name, &|out| value.write_json(out));
        }
        out.push('}');
        out
    }
}

/// `buffer_caches`: per worker, `{"assembly":{...},"output":{...}}` (as of its last tick).
fn buffer_caches_json(out: &mut String, workers: &[WorkerStats]) {
    out.push('[');
    for (i, w) in workers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (a, o) = (&w.assembly_cache, &w.output_cache);
        out.push_str("{\"assembly\":");
        json_counts(
            out,
            &[
                ("borrowed", a.borrowed),
                ("hits", a.hits),
                ("misses", a.misses),
                ("grown", a.grown),
                ("returned", a.returned),
                ("freed", a.freed),
                ("cached_buffers", a.cached_buffers as u64),
                ("cached_bytes", a.cached_bytes as u64),
            ],
        );
        out.push_str(",\"output\":");
        json_counts(
            out,
            &[
                ("borrowed", o.borrowed),
                ("hits", o.hits),
                ("misses", o.misses),
                ("returned", o.returned),
                ("freed", o.freed),
                ("cached_buffers", o.cached_buffers as u64),
                ("cached_bytes", o.cached_bytes as u64),
                ("small_borrowed", o.small_borrowed),
                ("small_misses", o.small_misses),
                ("small_cached", o.small_cached as u64),
            ],
        );
        out.push('}');
    }
    out.push(']');
}

/// A JSON object of named counts (names are plain identifiers: no escaping needed).
fn json_counts(out: &mut String, counts: &[(&str, u64)]) {
    out.push('{');
    for (i, (name, value)) in counts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":{value}");
    }
    out.push('}');
}

/// The configuration in force, as JSON (durations in seconds).
fn config_json(out: &mut String, c: &Config) {
    out.push('{');
    out.push_str("\"listen\":");
    json::string(out, &c.listen.to_string());
    out.push_str(",\"admin_listen\":");
    match c.admin_listen {
        Some(a) => json::string(out, &a.to_string()),
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"control_on_main\":{}", c.control_on_main);
    out.push_str(",\"path\":");
    json::string(out, &c.path);
    let _ = write!(
        out,
        ",\"num_workers\":{},\"ring_capacity\":{},\"batch_size\":{},\"cpu_affinity\":{},\"session_shards\":{}",
        c.num_workers, c.ring_capacity, c.batch_size, c.cpu_affinity, c.session_shards
    );
    let l = &c.limits;
    let _ = write!(
        out,
        ",\"limits\":{{\"max_frame_size\":{},\"max_message_size\":{},\"max_head_bytes\":{},\"max_headers\":{},\"inplace_frame_max\":{}}}",
        l.max_frame_size, l.max_message_size, l.max_head_bytes, l.max_headers, l.inplace_frame_max
    );
    let b = &c.backpressure;
    let _ = write!(
        out,
        ",\"backpressure\":{{\"soft_bytes\":{},\"hard_bytes\":{},\"timeout\":{}}}",
        b.soft_bytes,
        b.hard_bytes,
        b.timeout.as_secs_f64()
    );
    let _ = write!(
        out,
        ",\"handshake_timeout\":{},\"close_timeout\":{},\"shutdown_grace\":{},\"pong_timeout\":{},\"idle_timeout\":",
        c.handshake_timeout.as_secs_f64(),
        c.close_timeout.as_secs_f64(),
        c.shutdown_grace.as_secs_f64(),
        c.pong_timeout.as_secs_f64()
    );
    match c.idle_timeout {
        Some(d) => json::number(out, d.as_secs_f64()),
        None => out.push_str("null"),
    }
    out.push('}');
}
