//! The server's busy time, read from its `/metrics` (the admin listener, `--admin-addr` of
//! hioload-echo): on the DPDK path a polling lcore is at 100 % CPU whatever the load, so the
//! server's cost per echo is the TSC time of its loop turns that did work
//! (`hioload_dpdk_busy_cycles_total`, summed over its lcores, over `hioload_dpdk_tsc_hz`), read
//! before and after the measured window. The admin listener is on the kernel side even in DPDK
//! mode, so this is a plain blocking HTTP GET on loopback, off the measured loop.
//!
//! TSC time counts time the CPU was taken from the lcore as its own, so the server also exports
//! its lcores' thread CPU time, sampled with the TSC: the share of that time the lcores actually
//! had their CPU says whether the busy figure can be trusted (near 100 %) or reads high.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting to the admin listener and reading its answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/metrics` answer read.
const MAX_ANSWER: usize = 4 << 20;

/// The DPDK lcores' counters at one moment.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct BusyCounters {
    /// TSC cycles of turns that received or sent packets, all lcores.
    pub busy_cycles: f64,
    /// TSC cycles of all turns (idle sleeps left out), all lcores.
    pub turn_cycles: f64,
    /// TSC cycles per second.
    pub tsc_hz: f64,
    /// Polling lcores.
    pub lcores: usize,
    /// The lcores' thread CPU time (s) at their last samples, and the TSC of those samples
    /// (summed over lcores); zero from a server that does not export them.
    pub cpu_seconds: f64,
    pub cpu_sampled_cycles: f64,
}

/// The server's busy time over a window.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct BusyTime {
    /// Time in turns that did work, all lcores.
    pub busy: Duration,
    /// Time in turns, busy or not (without idle sleeps), all lcores.
    pub turns: Duration,
    /// Polling lcores.
    pub lcores: usize,
    /// The share of the time between the CPU samples that the lcores had their CPU (1.0: never
    /// preempted); `None` when the server does not sample it.
    pub had_cpu: Option<f64>,
}

impl BusyCounters {
    /// The busy time from `earlier` to `self`.
    pub fn since(&self, earlier: &BusyCounters) -> BusyTime {
        let secs = |c: f64| Duration::from_secs_f64((c / self.tsc_hz.max(1.0)).max(0.0));
        let sampled = (self.cpu_sampled_cycles - earlier.cpu_sampled_cycles) / self.tsc_hz.max(1.0);
        BusyTime {
            busy: secs(self.busy_cycles - earlier.busy_cycles),
            turns: secs(self.turn_cycles - earlier.turn_cycles),
            lcores: self.lcores,
            had_cpu: (sampled > 0.0).then(|| (self.cpu_seconds - earlier.cpu_seconds) / sampled),
        }
    }
}

/// Reads the busy counters from the admin listener at `addr`.
pub fn read_busy(addr: SocketAddr) -> Result<BusyCounters, String> {
    let text = get_metrics(addr).map_err(|e| {
        format!("reading http://{addr}/metrics (the server's admin listener, --admin-addr): {e}")
    })?;
    parse_busy(&text).ok_or_else(|| {
        format!(
            "http://{addr}/metrics has no hioload_dpdk_busy_cycles_total: is it hioload-echo in DPDK mode?"
        )
    })
}

/// `GET /metrics`, the body.
fn get_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER as u64).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("answered {status:?}")));
    }
    Ok(body.to_string())
}

/// The busy counters in a Prometheus text answer; `None` without any busy sample.
pub fn parse_busy(text: &str) -> Option<BusyCounters> {
    let mut c = BusyCounters::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        match name {
            "hioload_dpdk_busy_cycles_total" => {
                c.busy_cycles += value;
                c.lcores += 1;
                seen = true;
            }
            "hioload_dpdk_turn_cycles_total" => c.turn_cycles += value,
            "hioload_dpdk_lcore_cpu_seconds_total" => c.cpu_seconds += value,
            "hioload_dpdk_lcore_cpu_sampled_cycles" => c.cpu_sampled_cycles += value,
            "hioload_dpdk_tsc_hz" => c.tsc_hz = value,
            _ => {}
        }
    }
    (seen && c.tsc_hz > 0.0).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP hioload_dpdk_tsc_hz TSC cycles per second.
# TYPE hioload_dpdk_tsc_hz gauge
hioload_dpdk_tsc_hz 2000000000
# TYPE hioload_dpdk_busy_cycles_total counter
hioload_dpdk_busy_cycles_total{worker=\"0\",lcore=\"1\"} 3000000000
hioload_dpdk_busy_cycles_total{worker=\"1\",lcore=\"2\"} 1000000000
hioload_dpdk_turn_cycles_total{worker=\"0\",lcore=\"1\"} 8000000000
hioload_dpdk_turn_cycles_total{worker=\"1\",lcore=\"2\"} 8000000000
hioload_dpdk_busy_turns_total{worker=\"0\",lcore=\"1\"} 77
hioload_dpdk_lcore_cpu_seconds_total{worker=\"0\",lcore=\"1\"} 3.5
hioload_dpdk_lcore_cpu_seconds_total{worker=\"1\",lcore=\"2\"} 3.5
hioload_dpdk_lcore_cpu_sampled_cycles{worker=\"0\",lcore=\"1\"} 8000000000
hioload_dpdk_lcore_cpu_sampled_cycles{worker=\"1\",lcore=\"2\"} 8000000000
hioload_sessions_active 3
";

    #[test]
    fn busy_counters_sum_over_lcores() {
        let c = parse_busy(SAMPLE).unwrap();
        assert_eq!(c.busy_cycles, 4e9);
        assert_eq!(c.turn_cycles, 16e9);
        assert_eq!(c.lcores, 2);
        assert_eq!((c.cpu_seconds, c.cpu_sampled_cycles), (7.0, 16e9));
        let before = BusyCounters {
            busy_cycles: 2e9,
            turn_cycles: 12e9,
            cpu_seconds: 3.0,
            cpu_sampled_cycles: 8e9,
            ..c
        };
        let t = c.since(&before);
        assert_eq!(t.busy, Duration::from_secs(1));
        assert_eq!(t.turns, Duration::from_secs(2));
        // 4 s of CPU over 2 × 2 s between the samples: never preempted.
        assert_eq!(t.had_cpu, Some(1.0));
        assert_eq!(parse_busy("hioload_sessions_active 3\n"), None);
    }

    /// Against a one-shot HTTP server on loopback: the answer is read, and a 404 is an error.
    #[test]
    fn reads_metrics_over_http() {
        let serve = |answer: String| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                s.write_all(answer.as_bytes()).unwrap();
            });
            addr
        };
        let ok = serve(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SAMPLE}",
            SAMPLE.len()
        ));
        assert_eq!(read_busy(ok).unwrap().busy_cycles, 4e9);
        let missing = serve("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n".into());
        let e = read_busy(missing).unwrap_err();
        assert!(e.contains("404"), "{e}");
    }
}
