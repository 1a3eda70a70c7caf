//! hioload-bench: a WebSocket load generator that verifies every echo.
//!
//! It opens C connections (upgraded over HTTP/1.1, or plain TCP with `--raw`), keeps P messages of
//! S bytes in flight on each, and after a warm-up measures echoes per second, round-trip latency
//! and — given the server's pid — the server's CPU time per echo, the figure that stays comparable
//! on a noisy machine. Every echoed byte is compared with what was sent.
//!
//! Its own ceiling is what it reaches against `raw-tcp-echo` (apps/bench-peers) with `--raw`: the
//! same bytes over TCP with nothing behind them; scripts/bench.sh prints that row in every table.
//!
//! DPDK mode (feature `dpdk`; EAL arguments, then `--`, then ours, as hioload-echo takes them):
//! the clients run on our userspace stack instead of kernel sockets, and the server's cost per
//! echo is its lcores' busy time, read from its admin listener (`--admin-addr`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use hioload_bench::connect::{self, Target};
use hioload_bench::load::ThreadStats;
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::report::LoadReport;
use hioload_bench::window::{self, Measured, WindowSpec};
use hioload_bench::wire::DataKind;
use hioload_bench::{admin, idle, load};

/// DPDK mode, in `--help` of a build that has it.
#[cfg(feature = "dpdk")]
const DPDK_HELP: &str = "
DPDK mode (this build has it):
  hioload-bench [EAL options] -- [options]
EAL options come first and go to DPDK as they are; ours follow `--`. The clients then run on
our userspace TCP stack (one lcore: give one with -l), not on kernel sockets. --addr is the
server stack's IPv4 address and port; --local-ip is ours (more addresses follow it, one per
50,000 connections, or --source-addrs); --admin-addr reads the server's busy time per echo
(its lcores' loop turns that did work) from its /metrics. --threads and --idle-connections do
not apply. Needs root and hugepages (echo 1024 > /proc/sys/vm/nr_hugepages).
Example, against hioload-echo over net_memif (the server creates the socket: start it first):
  hioload-echo -l 1 --no-pci --in-memory --file-prefix=srv \\
      --vdev=net_memif0,role=server,socket=/tmp/m/memif.sock,socket-abstract=no \\
      -- --addr 198.18.0.2:8080 --admin-addr 127.0.0.1:9464
  hioload-bench -l 0 --no-pci --in-memory --file-prefix=cli \\
      --vdev=net_memif0,role=client,socket=/tmp/m/memif.sock,socket-abstract=no \\
      -- --addr 198.18.0.2:8080 --admin-addr 127.0.0.1:9464 -c 100 -s 20
scripts/bench-dpdk.sh runs both, pinned, beside the kernel path.";
#[cfg(not(feature = "dpdk"))]
const DPDK_HELP: &str = "
DPDK mode (EAL options, `--`, then ours) needs a build with it:
  cargo build --release -p hioload-bench --features dpdk";

/// WebSocket echo load generator: C connections × S-byte messages, P in flight per connection,
/// every echo verified byte for byte.
#[derive(Parser, Debug)]
#[command(version, after_help = after_help())]
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
    /// Compressed echo: offer permessage-deflate as browsers do (`permessage-deflate;
    /// client_max_window_bits`), send JSON-like text messages of --size bytes, compressed as the
    /// server agreed (plain text if it declined), inflate every echo and compare it with what was
    /// sent; also reports the frame bytes on the wire per message each way.
    #[arg(long, conflicts_with_all = ["raw", "text", "idle_connections"])]
    deflate: bool,
    /// No WebSocket: send the same bytes over plain TCP and expect them back unchanged
    /// (for a raw TCP echo server; the load generator's own ceiling).
    #[arg(long)]
    raw: bool,
    /// Source addresses to spread connections over: 127.0.0.1..N (0 = one per 20,000
    /// connections); in DPDK mode --local-ip and the addresses after it (0 = one per 50,000).
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// Instead of a load: open this many connections, one echo each, then idle; report the growth of
    /// the server's RSS per connection (needs --server-pid).
    #[arg(long, requires = "server_pid")]
    idle_connections: Option<usize>,
    /// Idle mode: seconds to wait before reading the server's RSS again.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// The server's admin listener (hioload-echo --admin-addr): with a DPDK server, read its
    /// lcores' busy time from /metrics before and after the window, and report it per echo.
    #[arg(long, value_name = "IP:PORT")]
    admin_addr: Option<SocketAddr>,
    /// Print one line of JSON instead of text.
    #[arg(long)]
    json: bool,

    /// DPDK mode: our stack's (first) IPv4 address, in the server's subnet.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "IPV4", default_value = "198.18.0.1")]
    local_ip: std::net::Ipv4Addr,
    /// DPDK mode: prefix length of the subnet we share with the server.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "PREFIX", default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=32))]
    netmask: u8,
    /// DPDK mode: connections opened per second (steady rate; at most 512 handshakes at once).
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "N", default_value_t = 20_000.0)]
    connect_rate: f64,
    /// DPDK mode: seconds the setup (every connection open and upgraded) may take
    /// [default: 10 + 2 × connections / --connect-rate].
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "SECS")]
    setup_timeout: Option<f64>,
    /// DPDK mode: receive and send ring bytes per connection [default: sized for -p × -s,
    /// 4 KiB to 256 KiB].
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    ring_bytes: Option<usize>,
    /// DPDK mode: the port, by DPDK name (net_memif0, 0000:01:00.0); default: the first.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "NAME")]
    dpdk_port: Option<String>,
}

fn after_help() -> String {
    format!(
        "\
Examples:
  hioload-bench --addr 127.0.0.1:9000 -c 100 -s 20 --server-pid $(pidof hioload-echo)
  hioload-bench --addr 127.0.0.1:9000 -c 100 -s 20 -p 16 --json
  hioload-bench --addr 127.0.0.1:9003 --raw -c 100 -s 20      # ceiling: raw-tcp-echo peer
  hioload-bench --addr 127.0.0.1:9000 --deflate -c 10 -s 16K  # compressed echo (JSON-like text)
  hioload-bench --addr 127.0.0.1:9000 --idle-connections 10000 --server-pid PID
{DPDK_HELP}"
    )
}

/// The command line split at `--`: EAL arguments before it (DPDK mode), ours after it (program
/// name first); without `--`, everything is ours (kernel mode).
fn split_eal(argv: Vec<OsString>) -> (Option<Vec<String>>, Vec<OsString>) {
    let mut it = argv.into_iter();
    let program = it.next().unwrap_or_else(|| OsString::from("hioload-bench"));
    let rest: Vec<OsString> = it.collect();
    let mut ours = vec![program];
    match rest.iter().position(|a| a == "--") {
        Some(pos) => {
            let eal = rest[..pos]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            ours.extend(rest[pos + 1..].iter().cloned());
            (Some(eal), ours)
        }
        None => {
            ours.extend(rest);
            (None, ours)
        }
    }
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
    let (eal, ours) = split_eal(std::env::args_os().collect());
    let args = Args::parse_from(ours);
    match run(&args, eal) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("hioload-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, eal: Option<Vec<String>>) -> Result<ExitCode, String> {
    let framing = match (args.raw, args.text || args.deflate) {
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
    let duration = seconds("duration", args.duration)?;
    let warmup = seconds("warmup", args.warmup)?;
    if duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    if let Some(addr) = args.admin_addr {
        // Fail now, not after the setup and warm-up.
        admin::read_busy(addr)?;
    }
    let spec = WindowSpec {
        warmup,
        duration,
        server_pid: args.server_pid,
        syscalls: args.syscalls,
        admin: args.admin_addr,
    };

    let pattern = || -> Result<Arc<Pattern>, String> {
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
        Ok(Arc::new(Pattern::new(framing, args.size, ring)))
    };

    let mut extension = None;
    let (client_path, ran) = match eal {
        Some(_) if args.deflate => {
            return Err("--deflate is not available in DPDK mode".into());
        }
        Some(eal) => ("dpdk", run_dpdk(args, eal, &*pattern()?, &spec)?),
        None => {
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
            if args.deflate {
                let (ran, agreed) = run_kernel_deflate(args, &target, &spec)?;
                extension = Some(agreed);
                ("kernel", ran)
            } else {
                ("kernel", run_kernel(args, &target, pattern()?, &spec)?)
            }
        }
    };
    let Ran {
        stats,
        measured,
        client_busy,
        setup,
    } = ran;

    let report = LoadReport {
        client_path,
        addr: args.addr.to_string(),
        framing: match framing {
            Framing::Raw => "raw",
            Framing::WebSocket(DataKind::Binary) => "websocket",
            Framing::WebSocket(DataKind::Text) if args.deflate => "websocket-deflate",
            Framing::WebSocket(DataKind::Text) => "websocket-text",
        },
        connections,
        size: args.size,
        pipeline: args.pipeline,
        warmup,
        window: measured.window,
        stats,
        server_cpu: measured.server_cpu,
        client_cpu: measured.client_cpu,
        syscalls: measured.syscalls,
        server_busy: measured.server_busy,
        client_busy,
        setup: Some(setup),
        extension,
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

/// What a load run gives the report.
struct Ran {
    stats: ThreadStats,
    measured: Measured,
    /// DPDK mode: the load generator lcore's busy time in the window.
    client_busy: Option<Duration>,
    /// How long opening (and upgrading) every connection took.
    setup: Duration,
}

/// Kernel mode: connections opened one by one, then `--threads` epoll loops under load while
/// this thread times the window.
fn run_kernel(
    args: &Args,
    target: &Target,
    pattern: Arc<Pattern>,
    spec: &WindowSpec,
) -> Result<Ran, String> {
    let connections = args.connections;
    let started = std::time::Instant::now();
    let mut per_thread: Vec<Vec<(usize, std::net::TcpStream)>> =
        (0..args.threads).map(|_| Vec::new()).collect();
    for i in 0..connections {
        let stream = target
            .open(i)
            .map_err(|e| format!("connection {i} of {connections}: {e}"))?;
        per_thread[i % args.threads].push((i, stream));
    }
    let setup = started.elapsed();

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
    let measured = window::measure(spec, &phase);
    let mut stats = ThreadStats::new();
    for t in threads {
        let s = t
            .join()
            .map_err(|_| "a load thread panicked".to_string())?
            .map_err(|e| format!("load thread: {e}"))?;
        stats.merge(s);
    }
    Ok(Ran {
        stats,
        measured: measured?,
        client_busy: None,
        setup,
    })
}

/// Compressed echo (`--deflate`): connections opened offering permessage-deflate, then
/// `--threads` loops of [`hioload_bench::deflate_load`] under load. Also returns what the server
/// agreed ("none" if it declined; the first connection's answer, which every other must match).
fn run_kernel_deflate(
    args: &Args,
    target: &Target,
    spec: &WindowSpec,
) -> Result<(Ran, String), String> {
    use hioload_bench::deflate::{self, TextRing};
    let connections = args.connections;
    let ring = Arc::new(TextRing::new(
        args.size,
        deflate::ring_messages(args.pipeline, args.size),
    ));
    let started = std::time::Instant::now();
    let mut per_thread: Vec<Vec<_>> = (0..args.threads).map(|_| Vec::new()).collect();
    let mut first = None;
    for i in 0..connections {
        let (stream, answer) = target
            .open_offering(i, Some(deflate::OFFER))
            .map_err(|e| format!("connection {i} of {connections}: {e}"))?;
        let agreed = deflate::parse_answer(answer.as_deref())
            .map_err(|e| format!("connection {i} of {connections}: {e}"))?;
        match &first {
            None => first = Some(agreed),
            Some(a) if *a != agreed => {
                return Err(format!(
                    "connection {i} agreed {agreed:?}, connection 0 {a:?}: one server, one answer expected"
                ))
            }
            Some(_) => {}
        }
        per_thread[i % args.threads].push((i, stream, agreed));
    }
    let setup = started.elapsed();
    let described = first.flatten().map_or("none".to_string(), |a| a.describe());

    let phase = Arc::new(AtomicU8::new(load::WARMUP));
    let threads: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, streams)| {
            let (ring, phase, pipeline) = (ring.clone(), phase.clone(), args.pipeline);
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    hioload_bench::deflate_load::run_thread(streams, ring, pipeline, phase)
                })
                .expect("spawn load thread")
        })
        .collect();
    let measured = window::measure(spec, &phase);
    let mut stats = ThreadStats::new();
    for t in threads {
        let s = t
            .join()
            .map_err(|_| "a load thread panicked".to_string())?
            .map_err(|e| format!("load thread: {e}"))?;
        stats.merge(s);
    }
    Ok((
        Ran {
            stats,
            measured: measured?,
            client_busy: None,
            setup,
        },
        described,
    ))
}

/// DPDK mode: the scenario on our stack (`hioload_bench::dpdk`).
#[cfg(feature = "dpdk")]
fn run_dpdk(
    args: &Args,
    eal_args: Vec<String>,
    pattern: &Pattern,
    spec: &WindowSpec,
) -> Result<Ran, String> {
    use hioload_bench::dpdk::{self, client::ClientConfig, DpdkOptions};
    let server = match args.addr {
        SocketAddr::V4(a) if !a.ip().is_loopback() && !a.ip().is_unspecified() => a,
        other => {
            return Err(format!(
                "in DPDK mode --addr is the server stack's IPv4 address and port (e.g. \
                 198.18.0.2:8080), not {other}"
            ))
        }
    };
    if args.threads != 1 {
        return Err(
            "--threads does not apply in DPDK mode (one lcore runs every connection)".into(),
        );
    }
    if args.idle_connections.is_some() {
        return Err("--idle-connections is not available in DPDK mode".into());
    }
    if !(args.connect_rate > 0.0 && args.connect_rate.is_finite()) {
        return Err(format!(
            "--connect-rate must be > 0, not {}",
            args.connect_rate
        ));
    }
    let setup_timeout = match args.setup_timeout {
        Some(v) => seconds("setup-timeout", v)?,
        None => Duration::from_secs_f64(10.0 + 2.0 * args.connections as f64 / args.connect_rate),
    };
    let opts = DpdkOptions {
        eal_args,
        port: args.dpdk_port.clone(),
        local_ip: args.local_ip,
        prefix_len: args.netmask,
        sources: args.source_addrs,
        ring_bytes: args.ring_bytes.unwrap_or(0),
        client: ClientConfig {
            server,
            path: args.path.clone(),
            connections: args.connections,
            pipeline: args.pipeline,
            connect_rate: args.connect_rate,
            setup_timeout,
        },
    };
    let (outcome, measured) = dpdk::run(&opts, pattern, spec)?;
    Ok(Ran {
        stats: outcome.stats,
        measured,
        client_busy: Some(outcome.busy),
        setup: outcome.setup,
    })
}

/// A build without DPDK refuses EAL arguments, saying how to get a DPDK build.
#[cfg(not(feature = "dpdk"))]
fn run_dpdk(
    _args: &Args,
    eal_args: Vec<String>,
    _pattern: &Pattern,
    _spec: &WindowSpec,
) -> Result<Ran, String> {
    Err(format!(
        "DPDK EAL arguments given ({}), but this build of hioload-bench has no DPDK mode; build it \
         with: cargo build --release -p hioload-bench --features dpdk (needs libdpdk-dev >= 22.11, \
         libclang-dev, pkg-config). Without `--` and EAL arguments it runs on kernel sockets.",
        eal_args.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_arguments_come_before_the_separator() {
        let argv = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        let (eal, ours) = split_eal(argv("hioload-bench -l 0 --vdev=net_memif0 -- -c 5"));
        assert_eq!(
            eal,
            Some(vec!["-l".into(), "0".into(), "--vdev=net_memif0".into()])
        );
        assert_eq!(ours, argv("hioload-bench -c 5"));
        let (eal, ours) = split_eal(argv("hioload-bench -c 5 --json"));
        assert_eq!(eal, None);
        assert_eq!(ours, argv("hioload-bench -c 5 --json"));
        // Our flags parse after the separator.
        let args = Args::try_parse_from(argv("hioload-bench -c 7 -s 1K -p 2")).unwrap();
        assert_eq!((args.connections, args.size, args.pipeline), (7, 1024, 2));
    }

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
