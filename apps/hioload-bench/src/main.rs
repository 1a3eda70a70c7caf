//! hioload-bench: a WebSocket load generator that verifies every echo.
//!
//! It opens C connections (upgraded over HTTP/1.1, or plain TCP with `--raw`), keeps P messages of
//! S bytes in flight on each, and after a warm-up measures echoes per second, round-trip latency
//! and — given the server's pid — the server's CPU time per echo, the figure that stays comparable
//! on a noisy machine. Every echoed byte is compared with what was sent.
//!
//! Its own ceiling is what it reaches against `raw-tcp-echo` (apps/bench-peers) with `--raw`: the
//! same bytes over TCP with nothing behind them; scripts/bench.sh prints that row in every table.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use hioload_bench::connect::{self, Target};
use hioload_bench::load::ThreadStats;
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::report::LoadReport;
use hioload_bench::wire::DataKind;
use hioload_bench::{idle, load, perfstat, procfs};

/// WebSocket echo load generator: C connections × S-byte messages, P in flight per connection,
/// every echo verified byte for byte.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Examples:
  hioload-bench --addr 127.0.0.1:9000 -c 100 -s 20 --server-pid $(pidof hioload-echo)
  hioload-bench --addr 127.0.0.1:9000 -c 100 -s 20 -p 16 --json
  hioload-bench --addr 127.0.0.1:9003 --raw -c 100 -s 20      # ceiling: raw-tcp-echo peer
  hioload-bench --addr 127.0.0.1:9000 --idle-connections 10000 --server-pid PID"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// Request path of the upgrade.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Connections.
    #[arg(short, long, default_value_t = 100)]
    connections: usize,
    /// Payload bytes per message (suffixes K/KiB and M/MiB allowed: 16K).
    #[arg(short, long, default_value = "20", value_parser = parse_size)]
    size: usize,
    /// Messages in flight per connection (1 = strict ping-pong).
    #[arg(short, long, default_value_t = 1)]
    pipeline: usize,
    /// Measured seconds.
    #[arg(short, long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(short, long, default_value_t = 2.0)]
    warmup: f64,
    /// Load threads (each with its own epoll); 1 leaves the other cores to the server.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server pid: report its CPU time per echo (/proc/PID/stat utime + stime over the window).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also count the server's syscalls per echo over the window (runs `perf stat`; needs
    /// --server-pid and Linux perf).
    #[arg(long, requires = "server_pid")]
    syscalls: bool,
    /// Send text frames (ASCII payload) instead of binary ones.
    #[arg(long, conflicts_with = "raw")]
    text: bool,
    /// No WebSocket: send the same bytes over plain TCP and expect them back unchanged
    /// (for a raw TCP echo server; the load generator's own ceiling).
    #[arg(long)]
    raw: bool,
    /// Source addresses 127.0.0.1..N to spread connections over (0 = one per 20,000 connections).
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// Instead of a load: open this many connections, one echo each, then idle; report the growth of
    /// the server's RSS per connection (needs --server-pid).
    #[arg(long, requires = "server_pid")]
    idle_connections: Option<usize>,
    /// Idle mode: seconds to wait before reading the server's RSS again.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Print one line of JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        _ => return Err(format!("unknown size unit in {s:?} (use K or M)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    if (0.0..1e6).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("--{name} must be a number of seconds ≥ 0, not {v}"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("hioload-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let framing = match (args.raw, args.text) {
        (true, _) => Framing::Raw,
        (false, true) => Framing::WebSocket(DataKind::Text),
        (false, false) => Framing::WebSocket(DataKind::Binary),
    };
    let connections = args.idle_connections.unwrap_or(args.connections);
    if connections == 0 {
        return Err("at least one connection is needed".into());
    }
    if args.size == 0 || args.size > 64 * 1024 * 1024 {
        return Err(format!("--size must be 1 B ..= 64 MiB, not {}", args.size));
    }
    if args.pipeline == 0 || args.pipeline > 65_536 {
        return Err(format!(
            "--pipeline must be 1..=65536, not {}",
            args.pipeline
        ));
    }
    if args.threads == 0 || args.threads > connections {
        return Err(format!(
            "--threads must be 1..=connections ({connections}), not {}",
            args.threads
        ));
    }
    let target = Target {
        addr: args.addr,
        path: args.path.clone(),
        framing,
        sources: Target::sources_for(&args.addr, connections, args.source_addrs)?,
    };
    connect::raise_fd_limit(connections as u64 + 64)?;

    if let Some(count) = args.idle_connections {
        let pid = args.server_pid.expect("clap requires --server-pid");
        idle::run(
            &target,
            count,
            args.size,
            pid,
            seconds("settle", args.settle)?,
            args.json,
        )?;
        return Ok(ExitCode::SUCCESS);
    }

    let duration = seconds("duration", args.duration)?;
    let warmup = seconds("warmup", args.warmup)?;
    if duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    let ring = Pattern::ring_messages(args.pipeline, args.size);
    let ring_bytes = ring as u64 * (2 * args.size as u64 + 64) * 3;
    if ring_bytes > 2 << 30 {
        return Err(format!(
            "--pipeline {} × --size {} needs {} MiB of message rings; too much",
            args.pipeline,
            args.size,
            ring_bytes >> 20
        ));
    }
    let pattern = Arc::new(Pattern::new(framing, args.size, ring));

    let mut per_thread: Vec<Vec<(usize, std::net::TcpStream)>> =
        (0..args.threads).map(|_| Vec::new()).collect();
    for i in 0..connections {
        let stream = target
            .open(i)
            .map_err(|e| format!("connection {i} of {connections}: {e}"))?;
        per_thread[i % args.threads].push((i, stream));
    }

    let phase = Arc::new(AtomicU8::new(load::WARMUP));
    let threads: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, streams)| {
            let (pattern, phase, pipeline) = (pattern.clone(), phase.clone(), args.pipeline);
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || load::run_thread(streams, pattern, pipeline, phase))
                .expect("spawn load thread")
        })
        .collect();

    let server_cpu = |pid: u32| {
        procfs::process_cpu(pid)
            .map_err(|e| format!("reading the CPU time of server pid {pid}: {e}"))
    };
    std::thread::sleep(warmup);
    let server_start = args.server_pid.map(server_cpu).transpose()?;
    let client_start = procfs::own_cpu();
    let counter = match (args.syscalls, args.server_pid) {
        (true, Some(pid)) => Some(perfstat::SyscallCounter::start(pid)?),
        _ => None,
    };
    let start = Instant::now();
    phase.store(load::MEASURE, Ordering::Relaxed);
    std::thread::sleep(duration);
    phase.store(load::DONE, Ordering::Relaxed);
    let window = start.elapsed();
    let client_cpu = procfs::own_cpu().since(client_start);
    let server_end = args.server_pid.map(server_cpu).transpose()?;
    let syscalls = counter.map(|c| c.stop()).transpose()?;

    let mut stats = ThreadStats::new();
    for t in threads {
        let s = t
            .join()
            .map_err(|_| "a load thread panicked".to_string())?
            .map_err(|e| format!("load thread: {e}"))?;
        stats.merge(s);
    }
    let report = LoadReport {
        addr: args.addr.to_string(),
        framing: match framing {
            Framing::Raw => "raw",
            Framing::WebSocket(DataKind::Binary) => "websocket",
            Framing::WebSocket(DataKind::Text) => "websocket-text",
        },
        connections,
        size: args.size,
        pipeline: args.pipeline,
        warmup,
        window,
        stats,
        server_cpu: server_start.zip(server_end).map(|(a, b)| b.since(a)),
        client_cpu,
        syscalls,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(if report.stats.errors > 0 || report.stats.messages == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("20"), Ok(20));
        assert_eq!(parse_size("16K"), Ok(16384));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("1G").is_err());
        assert!(parse_size("k").is_err());
    }
}
