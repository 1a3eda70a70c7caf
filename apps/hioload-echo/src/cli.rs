//! Command line: the flags, their parsing, and the split between DPDK EAL arguments and ours.
//!
//! EAL arguments follow the DPDK examples' convention: `hioload-echo -l 2-5 --vdev ... -- --addr
//! ...`, EAL first, ours after `--`. A build without the `dpdk` feature refuses them with a message
//! that says how to get a DPDK build, rather than a generic "unknown flag".

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hioload_ws::IoBackend;

const EXAMPLES: &str = "\
Examples:
  hioload-echo                                  # ws://127.0.0.1:8080/ws, 4 workers
  hioload-echo --addr 0.0.0.0:9001 --workers 2 --path /
  RUST_LOG=debug hioload-echo --max-message 64MiB --no-affinity

  hioload-echo --config /etc/hioload-echo.toml --admin-addr 127.0.0.1:9100

Try it:  wscat -c ws://127.0.0.1:8080/ws      (or: websocat ws://127.0.0.1:8080/ws)

Control plane (plain HTTP GET) on the admin listener: 127.0.0.1:9464 (this machine only)
unless --admin-addr says otherwise; not on the WebSocket port unless --control-on-main:
  curl http://127.0.0.1:9464/metrics          Prometheus text: sessions per worker, messages
                                              and bytes in/out, close codes, handler latency,
                                              handler panics, buffer pools, idle pings, uptime
  curl http://127.0.0.1:9464/debug/probes     JSON: active_sessions, worker_sessions, pool,
                                              uptime_seconds, config
The admin listener serves up to 16 connections at once, each with a 5 s deadline. If the
default port is busy, the server starts without it (with a warning); an address given with
--admin-addr or admin_listen in the file must be free. --admin-addr off: no admin listener.

Configuration file (--config FILE, TOML, every key optional; values in the file win over
flags). SIGHUP re-reads it and applies, without dropping a connection: log_level, [limits]
(max_message_size, max_frame_size, max_headers), [backpressure], handshake_timeout,
close_timeout, shutdown_grace, idle_timeout, pong_timeout, message_timeout, max_connections,
memory_budget. Changes to listen, admin_listen
(IP:PORT or \"off\"), control_on_main, path, workers, ring_capacity, batch_size, cpu_affinity,
io_backend, session_shards, inplace_frame_max and max_head_bytes are logged as needing a
restart. An invalid file is rejected with an error line and the running configuration stays.
Example:
  log_level = \"info\"
  idle_timeout = 60
  [limits]
  max_message_size = \"1MiB\"

SIGINT/SIGTERM stop the server gracefully: it stops accepting, sends Close 1001 to every
session, waits up to --grace-period for the close handshakes, and exits 0.
Logs go to stderr; RUST_LOG sets the level (default info) unless the file sets log_level.";

/// DPDK mode, printed by `--help` of a build with the `dpdk` feature.
#[cfg(feature = "dpdk")]
const DPDK_HELP: &str = "
DPDK mode (this build has it):
  hioload-echo [EAL options] -- [options]
EAL options come first and go to DPDK as they are; ours follow `--`. Without `--` (no EAL
options) the kernel data path serves, as in a build without DPDK. In DPDK mode --addr is the
userspace stack's own IPv4 address and port (it answers ARP and ping for it); --netmask and
--gateway place it in its subnet; --workers, --batch-size, --io and --no-affinity do not apply
(the lcores come from -l). Needs hugepages (echo 1024 > /proc/sys/vm/nr_hugepages) and root.
Common EAL options:
  -l 0-3                        lcores: each polls its own queue pair of the port
  --vdev=net_tap0,iface=hl0     a TAP device as the port (its kernel side is the peer)
  -a 0000:01:00.0               allow this PCI NIC (bound to vfio-pci: scripts/bind-nic.sh)
  --no-pci                      use no PCI NIC (virtual devices only)
  --in-memory                   no shared runtime files (several instances at once)
Example:
  hioload-echo -l 0-1 --no-pci --vdev=net_tap0,iface=hl0 -- --addr 198.18.0.2:8080 --netmask 24
  (then, on the kernel side: ip addr add 198.18.0.1/24 dev hl0; ip link set hl0 up)";
#[cfg(not(feature = "dpdk"))]
const DPDK_HELP: &str = "";

/// WebSocket echo server: every text message comes back as text, every binary message as binary.
/// Requests for other paths get 404.
#[derive(Parser, Debug, Clone)]
#[command(name = "hioload-echo", version = version_line(), after_help = const_format_help())]
pub struct Args {
    /// Address to listen on. The default serves this machine only; use 0.0.0.0:PORT to accept
    /// connections from elsewhere. Port 0 picks a free port (printed at start).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Worker threads, each with its own event loop and listener (SO_REUSEPORT).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub workers: usize,

    /// Path that is upgraded to WebSocket; other paths get 404.
    #[arg(long, value_name = "PATH", default_value = "/ws")]
    pub path: String,

    /// Largest message accepted (sum of its fragments); larger ones are closed with 1009.
    /// Accepts K/KiB, M/MiB, G/GiB suffixes (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_message: usize,

    /// Largest frame payload accepted; larger frames are closed with 1009.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_frame: usize,

    /// Most readiness events handled per wait of the event loop.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub batch_size: usize,

    /// How workers talk to the kernel: io-uring (Linux 6.1+: receives complete on a ring and
    /// small replies go out with its wait, no recv/send/epoll_wait system call per message), poll
    /// (epoll/kqueue/IOCP readiness), or auto (io-uring where the kernel and its seccomp policy
    /// allow it, else poll).
    #[arg(long = "io", value_name = "BACKEND", default_value = "auto", value_parser = parse_io)]
    pub io_backend: IoBackend,

    /// Do not pin workers to CPUs (pinning is on by default, Linux only).
    #[arg(long)]
    pub no_affinity: bool,

    /// Seconds sessions get to finish their close handshake on shutdown.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub grace_period: Duration,

    /// Pending output per connection above which it is not read until the peer catches up;
    /// a connection that stays above it for --backpressure-timeout is closed with 1008, and one
    /// that goes above 32 MiB (or 4x this, if larger) is closed at once.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub backpressure_bytes: usize,

    /// Seconds a connection may stay above --backpressure-bytes before it is closed (1008).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub backpressure_timeout: Duration,

    /// Most connections held at once, in any phase; more are closed as soon as they are
    /// accepted (counted in hioload_connections_refused_total, logged at most 10 lines/s).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most bytes all connections together may hold in partial frames and heads, messages
    /// being assembled and unsent output; over it the largest holders are closed (1009 for
    /// input, 1008 for output; hioload_budget_closes_total).
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub memory_budget: usize,

    /// Seconds a client has to complete a message (or frame) once its first byte arrived,
    /// however slowly the rest trickles in; then Close 1008.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub message_timeout: Duration,

    /// permessage-deflate (RFC 7692): off; shared (no context takeover either way: no
    /// compressor state per connection, the default); dedicated or dedicated:N (context
    /// takeover where the client allows it, a compressor and an inflater per session, kept in
    /// a per-worker pool when sessions end; windows of at most 2^N bytes, N in 9..15, default
    /// 15; measured: ~330 KiB per session at 15, ~210 KiB at 10, counted against
    /// --memory-budget). Messages inflate within --max-message (1009 past it).
    #[arg(long, value_name = "MODE", default_value = "shared")]
    pub deflate: hioload_ws::DeflateMode,

    /// Messages shorter than this go out uncompressed when permessage-deflate is on.
    #[arg(long, value_name = "BYTES", default_value = "1KiB", value_parser = parse_bytes)]
    pub deflate_threshold: usize,

    /// TLS (wss://): the certificate chain, PEM (end-entity first). With --tls-key, the server
    /// speaks TLS on --addr (TLS only), or on --tls-addr if given (then --addr stays plain).
    /// SIGHUP re-reads the certificate and key files: new handshakes use them, open sessions
    /// stay; files that do not load are refused with an error line and the old ones stay.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: the private key of --tls-cert, PEM (PKCS#8, RSA or EC).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS: serve wss:// on this second address, beside plain ws:// on --addr.
    #[arg(long, value_name = "IP:PORT", requires = "tls_cert")]
    pub tls_addr: Option<SocketAddr>,

    /// TLS: another certificate for clients that ask for HOST (SNI); repeatable. Clients that
    /// name no host, or another one, get --tls-cert.
    #[arg(long, value_name = "HOST=CERT,KEY", value_parser = parse_sni, requires = "tls_cert")]
    pub tls_sni: Vec<(String, hioload_ws::CertFiles)>,

    /// Seconds a client has to send a complete upgrade request.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Seconds of silence after which a session is pinged; a session that then sends nothing
    /// for 30 s more is dropped. 0 turns idle pings off.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub idle_timeout: Duration,

    /// Admin listener: serves /metrics and /debug/probes on this address, apart from the
    /// WebSocket port [default: 127.0.0.1:9464, this machine only; if that port is busy the
    /// server starts without it]. Keep it private (loopback or an internal network): it shows
    /// the configuration and gauges. off: no admin listener.
    #[arg(long, value_name = "IP:PORT|off", value_parser = parse_admin_addr)]
    pub admin_addr: Option<AdminAddr>,

    /// Also serve /metrics and /debug/probes on --addr, the WebSocket port (off by default:
    /// there they get 404 like any other path that is not the WebSocket path).
    #[arg(long)]
    pub control_on_main: bool,

    /// TOML configuration file; re-read on SIGHUP (see below).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// DPDK mode: the stack's subnet, as a prefix length (24) or a mask (255.255.255.0).
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "PREFIX|MASK", default_value = "24", value_parser = parse_netmask)]
    pub netmask: u8,

    /// DPDK mode: default gateway, to reach clients outside the subnet (default: none).
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "IPV4")]
    pub gateway: Option<std::net::Ipv4Addr>,

    /// DPDK mode: microseconds an lcore sleeps after a poll that received nothing
    /// (0 = pure busy poll, lowest latency, one core at 100%).
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub idle_sleep_us: u64,

    /// DPDK mode: TCP connection slots per lcore in the userspace stack (each holds two rings
    /// of --stack-ring-bytes in hugepages, reserved at start); --max-connections still caps the
    /// whole server.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub stack_connections: usize,

    /// DPDK mode: bytes of each connection's receive ring and of its send ring in the userspace
    /// stack (4KiB..16MiB). Larger rings take messages larger than a ring in fewer passes and
    /// keep more in flight (TCP window), at N x 2 x this much hugepage memory per lcore.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "BYTES", default_value = "16KiB", value_parser = parse_bytes)]
    pub stack_ring_bytes: usize,

    /// DPDK mode: the port to serve on, by DPDK name (net_tap0, 0000:01:00.0); default: the first.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "NAME")]
    pub dpdk_port: Option<String>,
}

/// The admin listener's address when `--admin-addr` is not given: loopback, so that the control
/// plane is private to this machine unless asked otherwise (9464: a port commonly used for
/// Prometheus exporters).
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// `--admin-addr`: an address, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

/// Parses `--admin-addr` as the config file's `admin_listen`: `IP:PORT` or `off`.
pub fn parse_admin_addr(s: &str) -> Result<AdminAddr, String> {
    hioload_ws::config_file::parse_admin_listen(s).map(AdminAddr)
}

/// The text after the flags: examples, then the DPDK mode (in a DPDK build).
/// `--version`: the crate version and the data paths this build carries (`kernel` or
/// `dpdk+kernel`), so that a binary says whether it can run DPDK mode.
fn version_line() -> &'static str {
    let line = format!(
        "{} (data paths: {})",
        env!("CARGO_PKG_VERSION"),
        hioload_ws::BUILD_PATHS
    );
    // Built once per process, when the command line is parsed.
    Box::leak(line.into_boxed_str())
}

fn const_format_help() -> String {
    format!("{EXAMPLES}\n{DPDK_HELP}")
}

/// Parses a prefix length (`24`) or a dotted netmask (`255.255.255.0`).
#[cfg(feature = "dpdk")]
pub fn parse_netmask(s: &str) -> Result<u8, String> {
    if let Ok(n) = s.parse::<u8>() {
        return if (1..=32).contains(&n) {
            Ok(n)
        } else {
            Err(format!("prefix length {n} is not in 1..=32"))
        };
    }
    let mask: std::net::Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is neither a prefix length nor a netmask"))?;
    let bits = u32::from(mask);
    let n = bits.leading_ones();
    if n == 0 || bits.checked_shl(n).unwrap_or(0) != 0 {
        return Err(format!("{s} is not a contiguous netmask"));
    }
    Ok(n as u8)
}

/// Byte counts on the command line read as in the config file (`64KiB`, `16MiB`, …).
pub use hioload_ws::config_file::parse_bytes;

/// `--io`: auto, poll or io-uring.
pub fn parse_io(s: &str) -> Result<IoBackend, String> {
    s.trim().parse()
}

/// Parses seconds, fractions allowed (`5`, `0.5`).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// Flags that only DPDK's EAL takes.
const EAL_FLAGS: &[&str] = &[
    "-l",
    "-c",
    "-n",
    "-a",
    "-b",
    "-m",
    "--lcores",
    "--vdev",
    "--allow",
    "--block",
    "--file-prefix",
    "--no-huge",
    "--no-pci",
    "--in-memory",
    "--huge-dir",
    "--socket-mem",
    "--proc-type",
    "--iova-mode",
    "--main-lcore",
    "--log-level",
    "--no-shconf",
    "--legacy-mem",
];

fn is_eal_flag(arg: &str) -> bool {
    EAL_FLAGS.iter().any(|f| {
        arg == *f
            || arg.strip_prefix(f).is_some_and(|rest| {
                // `--vdev=x`, `-l2-5`; but not our own long flags that merely share a prefix.
                if f.starts_with("--") {
                    rest.starts_with('=')
                } else {
                    !rest.is_empty() && !f.starts_with("--")
                }
            })
    })
}

/// The command line split into EAL arguments and ours (program name first in `ours`).
#[derive(Debug, PartialEq, Eq)]
pub struct SplitArgs {
    /// EAL arguments (before `--`, or EAL-only flags found without `--`).
    pub eal: Vec<String>,
    /// Our arguments, program name first.
    pub ours: Vec<OsString>,
    /// Whether the command line had a `--` separator.
    pub separated: bool,
}

/// Splits `argv` at `--` (EAL before, ours after). Without `--`, EAL-only flags anywhere are
/// collected as EAL arguments too, so that the caller can refuse them clearly.
pub fn split_eal(argv: Vec<OsString>) -> SplitArgs {
    let mut it = argv.into_iter();
    let program = it.next().unwrap_or_else(|| OsString::from("hioload-echo"));
    let rest: Vec<OsString> = it.collect();
    if let Some(pos) = rest.iter().position(|a| a == "--") {
        let eal = rest[..pos]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut ours = vec![program];
        ours.extend(rest[pos + 1..].iter().cloned());
        return SplitArgs {
            eal,
            ours,
            separated: true,
        };
    }
    let eal: Vec<String> = rest
        .iter()
        .map(|a| a.to_string_lossy())
        .filter(|a| is_eal_flag(a))
        .map(|a| a.into_owned())
        .collect();
    let mut ours = vec![program];
    ours.extend(rest);
    SplitArgs {
        eal,
        ours,
        separated: false,
    }
}

/// The refusal printed by a build without DPDK when EAL arguments are given.
#[cfg(not(feature = "dpdk"))]
pub fn no_dpdk_message(eal: &[String]) -> String {
    format!(
        "error: DPDK EAL arguments given ({}), but this build of hioload-echo has no DPDK support \
         (data paths: {}).\n\
         \n\
         To build with DPDK (needs DPDK >= 22.11 development files):\n\
         \x20   sudo apt-get install -y libdpdk-dev libclang-dev pkg-config\n\
         \x20   cargo build --release -p hioload-echo --features dpdk\n\
         \n\
         To run on the kernel data path instead, drop the EAL arguments and the `--`:\n\
         \x20   hioload-echo --addr 127.0.0.1:8080\n",
        eal.join(" "),
        hioload_ws::BUILD_PATHS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn version_names_the_data_paths_of_this_build() {
        let out = Args::try_parse_from(["hioload-echo", "--version"])
            .unwrap_err()
            .to_string();
        let expected = if cfg!(feature = "dpdk") {
            "(data paths: dpdk+kernel)"
        } else {
            "(data paths: kernel)"
        };
        assert!(out.contains(expected), "--version printed {out:?}");
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("12parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn eal_arguments_before_double_dash_are_split_off() {
        let s = split_eal(argv("echo -l 2-5 --vdev net_tap0 -- --addr 127.0.0.1:1"));
        assert_eq!(s.eal, vec!["-l", "2-5", "--vdev", "net_tap0"]);
        assert_eq!(s.ours, argv("echo --addr 127.0.0.1:1"));
    }

    #[test]
    fn eal_flags_without_double_dash_are_detected() {
        assert_eq!(
            split_eal(argv("echo -l 2-5 --addr 1.2.3.4:5")).eal,
            vec!["-l"]
        );
        assert_eq!(split_eal(argv("echo -l2-5")).eal, vec!["-l2-5"]);
        assert_eq!(
            split_eal(argv("echo --vdev=net_tap0")).eal,
            vec!["--vdev=net_tap0"]
        );
        assert!(
            split_eal(argv("echo --addr 127.0.0.1:1 --workers 2 --no-affinity"))
                .eal
                .is_empty()
        );
        assert!(split_eal(argv("echo -- --addr 127.0.0.1:1")).eal.is_empty());
    }

    #[test]
    fn the_control_plane_is_private_by_default() {
        let a = Args::try_parse_from(argv("echo")).unwrap();
        assert_eq!(a.admin_addr, None, "not given: DEFAULT_ADMIN_ADDR, soft");
        assert!(!a.control_on_main, "not on the WebSocket port");
        assert!(DEFAULT_ADMIN_ADDR.ip().is_loopback());
        assert_eq!(DEFAULT_ADMIN_ADDR.to_string(), "127.0.0.1:9464");
        let a = Args::try_parse_from(argv("echo --admin-addr off")).unwrap();
        assert_eq!(a.admin_addr, Some(AdminAddr(None)));
        assert!(Args::try_parse_from(argv("echo --admin-addr nowhere")).is_err());
    }

    #[test]
    fn every_flag_parses() {
        let a = Args::try_parse_from(argv(
            "echo --addr 127.0.0.1:0 --workers 2 --path / --max-message 1M --max-frame 64K --batch-size 32 \
             --no-affinity --grace-period 1.5 --backpressure-bytes 256K --backpressure-timeout 2 --handshake-timeout 3 \
             --idle-timeout 0 --admin-addr 127.0.0.1:9100 --control-on-main --config /tmp/x.toml",
        ))
        .unwrap();
        assert_eq!(a.workers, 2);
        assert_eq!(a.max_message, 1 << 20);
        assert_eq!(a.max_frame, 64 << 10);
        assert_eq!(a.grace_period, Duration::from_millis(1500));
        assert!(a.no_affinity);
        assert_eq!(a.idle_timeout, Duration::ZERO);
        assert_eq!(
            a.admin_addr,
            Some(AdminAddr(Some("127.0.0.1:9100".parse().unwrap())))
        );
        assert!(a.control_on_main);
        assert_eq!(a.config, Some(PathBuf::from("/tmp/x.toml")));
    }
}

fn parse_sni(s: &str) -> Result<(String, hioload_ws::CertFiles), String> {
    let (host, files) = s
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=CERT,KEY, got {s:?}"))?;
    let (cert, key) = files
        .split_once(',')
        .ok_or_else(|| format!("expected HOST=CERT,KEY, got {s:?}"))?;
    if host.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(format!("expected HOST=CERT,KEY, got {s:?}"));
    }
    Ok((
        host.to_string(),
        hioload_ws::CertFiles {
            cert: cert.into(),
            key: key.into(),
        },
    ))
}
