//! Turning measurements into the figures users read: a short text report or one line of JSON
//! (`--json`, what scripts/bench.sh parses).

use std::fmt::Write as _;
use std::time::Duration;

use crate::admin::BusyTime;
use crate::load::ThreadStats;
use crate::perfstat::SyscallRates;
use crate::procfs::CpuTime;

/// Everything one load run measured.
pub struct LoadReport {
    /// The load generator's network path: "kernel" (sockets) or "dpdk" (our stack).
    pub client_path: &'static str,
    pub addr: String,
    /// "websocket", "websocket-text", "websocket-deflate" (JSON-like text, `--deflate`) or "raw".
    pub framing: &'static str,
    pub connections: usize,
    pub size: usize,
    pub pipeline: usize,
    pub warmup: Duration,
    /// Measured window (wall clock).
    pub window: Duration,
    pub stats: ThreadStats,
    /// Server CPU time over the window, when its pid was given.
    pub server_cpu: Option<CpuTime>,
    /// This process's CPU time over the window.
    pub client_cpu: CpuTime,
    /// The server's syscall rates over the window (`--syscalls`).
    pub syscalls: Option<SyscallRates>,
    /// The DPDK server's busy time over the window (`--admin-addr`): its lcores' loop turns
    /// that received or sent packets.
    pub server_busy: Option<BusyTime>,
    /// The DPDK load generator's own busy time over the window (its lcore's turns that did
    /// work; near the window: the load generator is the limit).
    pub client_busy: Option<Duration>,
    /// How long opening (and upgrading) every connection took, before the warm-up.
    pub setup: Option<Duration>,
    /// Compressed-echo mode (`--deflate`): what the server agreed ("none" if it declined).
    pub extension: Option<String>,
}

impl LoadReport {
    pub fn msgs_per_s(&self) -> f64 {
        self.stats.messages as f64 / self.window.as_secs_f64()
    }

    /// Echoed payload MiB per second (one direction).
    pub fn mib_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64 / (1024.0 * 1024.0)
    }

    fn per_msg_us(&self, cpu: Duration) -> Option<f64> {
        (self.stats.messages > 0).then(|| cpu.as_secs_f64() * 1e6 / self.stats.messages as f64)
    }

    /// Server syscalls per echo: the total and the broken-out ones.
    fn syscalls_per_msg(&self) -> Option<(f64, Vec<(&'static str, f64)>)> {
        let rates = self.syscalls.as_ref()?;
        let msgs = self.msgs_per_s();
        (msgs > 0.0).then(|| {
            (
                rates.total / msgs,
                rates.by_name.iter().map(|(n, r)| (*n, r / msgs)).collect(),
            )
        })
    }

    /// Compressed-echo mode: frame bytes per message sent, and per echo received.
    fn wire_per_msg(&self) -> (Option<f64>, Option<f64>) {
        let st = &self.stats;
        let out =
            (st.wire_out_messages > 0).then(|| st.wire_out as f64 / st.wire_out_messages as f64);
        let inn = (st.messages > 0).then(|| st.wire_in as f64 / st.messages as f64);
        (out, inn)
    }

    fn cpu_percent(&self, cpu: Duration) -> f64 {
        100.0 * cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    fn latency_us(&self, quantile: f64) -> f64 {
        self.stats.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} connections × {} B, {} in flight each, {} → {}; {:.1} s measured after {:.1} s warm-up",
            self.connections,
            self.size,
            self.pipeline,
            self.framing,
            self.addr,
            self.window.as_secs_f64(),
            self.warmup.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  echoes      {} ({:.0} msgs/s, {:.2} MiB/s of payload)",
            self.stats.messages,
            self.msgs_per_s(),
            self.mib_per_s()
        );
        if self.stats.messages > 0 {
            let _ = writeln!(
                s,
                "  round trip  p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs",
                self.latency_us(0.5),
                self.latency_us(0.99),
                self.latency_us(0.999),
                self.stats.latency.max() as f64 / 1000.0
            );
        }
        if let Some(setup) = self.setup {
            let _ = writeln!(
                s,
                "  setup       {} connections {} in {:.2} s ({:.0}/s)",
                self.connections,
                if self.framing == "raw" {
                    "opened"
                } else {
                    "opened and upgraded"
                },
                setup.as_secs_f64(),
                self.connections as f64 / setup.as_secs_f64().max(1e-9)
            );
        }
        if let Some(ext) = &self.extension {
            let (out, inn) = self.wire_per_msg();
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                s,
                "  deflate     agreed: {ext}; bytes on the wire per message {} sent, {} echoed \
                 (frames, headers included; payload {} B)",
                f(out),
                f(inn),
                self.size
            );
        }
        let _ = writeln!(s, "  errors      {}", self.stats.errors);
        for text in &self.stats.error_texts {
            let _ = writeln!(s, "    {text}");
        }
        if let Some(cpu) = self.server_cpu {
            let us = |d| self.per_msg_us(d).map_or("-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "  server CPU  {:.1} % of a core, {} µs per echo (user {}, system {})",
                self.cpu_percent(cpu.total()),
                us(cpu.total()),
                us(cpu.user),
                us(cpu.system)
            );
        }
        if let Some(busy) = self.server_busy {
            let us = |d| self.per_msg_us(d).map_or("-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "  server busy {} µs per echo, {:.1} % of the window on {} lcore(s) (TSC time of \
                 its loop turns that received or sent packets)",
                us(busy.busy),
                self.cpu_percent(busy.busy),
                busy.lcores
            );
            if let Some(had) = busy.had_cpu {
                let _ = writeln!(
                    s,
                    "  server lcore had its CPU {:.1} % of the time{}",
                    100.0 * had,
                    if had < 0.99 {
                        " (other threads took the rest: the busy time reads high)"
                    } else {
                        ""
                    }
                );
            }
            if self.server_cpu.is_some() {
                let _ = writeln!(
                    s,
                    "  server turns {} µs per echo (all loop turns, idle sleeps left out: compare \
                     with server CPU)",
                    us(busy.turns)
                );
            }
        }
        if let Some((total, by_name)) = self.syscalls_per_msg() {
            let parts: Vec<String> = by_name.iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
            let _ = writeln!(
                s,
                "  server syscalls per echo  {total:.2} ({})",
                parts.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "  client CPU  {:.1} % of a core, {} µs per echo (this load generator)",
            self.cpu_percent(self.client_cpu.total()),
            self.per_msg_us(self.client_cpu.total())
                .map_or("-".into(), |v| format!("{v:.2}"))
        );
        if let Some(busy) = self.client_busy {
            let _ = writeln!(
                s,
                "  client busy {:.1} % of the window, {} µs per echo (its lcore's turns that did work)",
                self.cpu_percent(busy),
                self.per_msg_us(busy)
                    .map_or("-".into(), |v| format!("{v:.2}"))
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"client_path\":\"{}\",\"addr\":\"{}\",\"framing\":\"{}\",\"connections\":{},\"size\":{},\"pipeline\":{},\
             \"warmup_s\":{:.3},\"window_s\":{:.3},\"messages\":{},\"msgs_per_s\":{:.1},\"mib_per_s\":{:.3},",
            self.client_path,
            self.addr,
            self.framing,
            self.connections,
            self.size,
            self.pipeline,
            self.warmup.as_secs_f64(),
            self.window.as_secs_f64(),
            self.stats.messages,
            self.msgs_per_s(),
            self.mib_per_s()
        );
        let lat = |q| {
            if self.stats.messages > 0 {
                format!("{:.1}", self.latency_us(q))
            } else {
                "null".into()
            }
        };
        let _ = write!(
            s,
            "\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{}}},",
            lat(0.5),
            lat(0.99),
            lat(0.999)
        );
        let _ = write!(s, "\"errors\":{},\"error_texts\":[", self.stats.errors);
        for (i, text) in self.stats.error_texts.iter().enumerate() {
            let _ = write!(s, "{}\"{}\"", if i > 0 { "," } else { "" }, escape(text));
        }
        let _ = write!(
            s,
            "],\"server_cpu_percent\":{},\"server_cpu_us_per_msg\":{},\"server_user_us_per_msg\":{},\
             \"server_sys_us_per_msg\":{},\"client_cpu_percent\":{:.1},\"client_cpu_us_per_msg\":{}",
            opt(self.server_cpu.map(|c| self.cpu_percent(c.total()))),
            opt(self.server_cpu.and_then(|c| self.per_msg_us(c.total()))),
            opt(self.server_cpu.and_then(|c| self.per_msg_us(c.user))),
            opt(self.server_cpu.and_then(|c| self.per_msg_us(c.system))),
            self.cpu_percent(self.client_cpu.total()),
            opt(self.per_msg_us(self.client_cpu.total()))
        );
        let busy = self.server_busy;
        let _ = write!(
            s,
            ",\"server_busy_us_per_msg\":{},\"server_busy_percent\":{},\"server_turn_us_per_msg\":{},\
             \"server_lcores\":{},\"server_lcore_cpu_percent\":{},\"client_busy_us_per_msg\":{},\"client_busy_percent\":{}",
            opt(busy.and_then(|b| self.per_msg_us(b.busy))),
            opt(busy.map(|b| self.cpu_percent(b.busy))),
            opt(busy.and_then(|b| self.per_msg_us(b.turns))),
            busy.map_or("null".into(), |b| b.lcores.to_string()),
            opt(busy.and_then(|b| b.had_cpu).map(|h| 100.0 * h)),
            opt(self.client_busy.and_then(|b| self.per_msg_us(b))),
            opt(self.client_busy.map(|b| self.cpu_percent(b))),
        );
        let _ = write!(
            s,
            ",\"setup_s\":{},\"setup_per_s\":{}",
            opt(self.setup.map(|d| d.as_secs_f64())),
            opt(self
                .setup
                .map(|d| self.connections as f64 / d.as_secs_f64().max(1e-9))),
        );
        if let Some(ext) = &self.extension {
            let (out, inn) = self.wire_per_msg();
            let _ = write!(
                s,
                ",\"wire_out_bytes_per_msg\":{},\"wire_in_bytes_per_msg\":{},\"extension\":\"{}\"",
                opt(out),
                opt(inn),
                escape(ext)
            );
        }
        if let Some((total, by_name)) = self.syscalls_per_msg() {
            let _ = write!(
                s,
                ",\"server_syscalls_per_msg\":{total:.3},\"server_syscalls\":{{"
            );
            for (i, (n, v)) in by_name.iter().enumerate() {
                let _ = write!(s, "{}\"{n}\":{v:.3}", if i > 0 { "," } else { "" });
            }
            s.push('}');
        }
        s.push('}');
        s
    }
}

/// JSON string escaping for error texts.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_figures() {
        let mut stats = ThreadStats::new();
        stats.messages = 1000;
        stats.latency.record(50_000).unwrap();
        stats.error_texts.push("connection 1: \"bad\"".into());
        stats.errors = 1;
        let r = LoadReport {
            client_path: "kernel",
            addr: "127.0.0.1:1".into(),
            framing: "websocket",
            connections: 10,
            size: 20,
            pipeline: 1,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(2),
            stats,
            server_cpu: Some(CpuTime {
                user: Duration::from_millis(4),
                system: Duration::from_millis(6),
            }),
            client_cpu: CpuTime {
                user: Duration::from_millis(5),
                system: Duration::from_millis(15),
            },
            syscalls: Some(SyscallRates {
                total: 1000.0,
                by_name: vec![("read", 500.0)],
            }),
            server_busy: Some(BusyTime {
                busy: Duration::from_millis(4),
                turns: Duration::from_millis(9),
                lcores: 1,
                had_cpu: Some(0.5),
            }),
            client_busy: Some(Duration::from_millis(1000)),
            setup: Some(Duration::from_millis(20)),
            extension: None,
        };
        let j = r.json();
        assert!(j.contains("\"msgs_per_s\":500.0"), "{j}");
        assert!(
            j.contains("\"server_cpu_us_per_msg\":10.000,\"server_user_us_per_msg\":4.000"),
            "{j}"
        );
        assert!(j.contains("\"server_sys_us_per_msg\":6.000"), "{j}");
        assert!(j.contains("\"client_cpu_us_per_msg\":20.000"), "{j}");
        assert!(j.contains("\"p50\":50.0"), "{j}");
        assert!(j.contains("connection 1: \\\"bad\\\""), "{j}");
        assert!(
            j.contains("\"server_syscalls_per_msg\":2.000,\"server_syscalls\":{\"read\":1.000}}"),
            "{j}"
        );
        assert!(
            j.contains("\"server_busy_us_per_msg\":4.000,\"server_busy_percent\":0.200,\"server_turn_us_per_msg\":9.000,\"server_lcores\":1,\"server_lcore_cpu_percent\":50.000"),
            "{j}"
        );
        assert!(
            j.contains("\"client_busy_us_per_msg\":1000.000,\"client_busy_percent\":50.000"),
            "{j}"
        );
        assert!(
            j.contains("\"setup_s\":0.020,\"setup_per_s\":500.000"),
            "{j}"
        );
        assert!(!j.contains("wire_out_bytes_per_msg"), "{j}");
        let text = r.text();
        assert!(text.contains("500 msgs/s"));
        assert!(
            text.contains("server busy 4.00 µs per echo, 0.2 % of the window on 1 lcore(s)"),
            "{text}"
        );
        assert!(
            text.contains("server lcore had its CPU 50.0 % of the time (other threads"),
            "{text}"
        );
        assert!(!text.contains("deflate"), "{text}");
    }

    #[test]
    fn deflate_runs_report_bytes_on_the_wire() {
        let mut stats = ThreadStats::new();
        stats.messages = 4;
        stats.wire_in = 1000;
        stats.wire_out_messages = 5;
        stats.wire_out = 1500;
        let r = LoadReport {
            client_path: "kernel",
            addr: "127.0.0.1:1".into(),
            framing: "websocket-deflate",
            connections: 1,
            size: 1024,
            pipeline: 1,
            warmup: Duration::ZERO,
            window: Duration::from_secs(1),
            stats,
            server_cpu: None,
            client_cpu: CpuTime::default(),
            syscalls: None,
            server_busy: None,
            client_busy: None,
            setup: None,
            extension: Some("permessage-deflate; server_no_context_takeover".into()),
        };
        let j = r.json();
        assert!(
            j.contains("\"wire_out_bytes_per_msg\":300.000,\"wire_in_bytes_per_msg\":250.000,\"extension\":\"permessage-deflate; server_no_context_takeover\""),
            "{j}"
        );
        assert!(
            r.text()
                .contains("bytes on the wire per message 300.0 sent, 250.0 echoed"),
            "{}",
            r.text()
        );
    }
}
