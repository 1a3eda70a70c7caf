//! Held input on the DPDK data path comes from the lcores' pools, over DPDK memory: a frame split
//! across two segments is echoed intact; while its first part waits, a pool buffer is in use (in
//! `Server::pool_stats` and in `/debug/probes`); once the connection is gone, none is.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hioload_ws::{Config, Ctx, DataPath, DpdkConfig, Handler, Message, Server};

const STACK: &str = "198.18.0.2:8080";

struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keeps the tap PMD's SIGIO (the EAL runs in this process) away from this thread.
fn block_sigio() {
    // SAFETY: a zeroed sigset_t is valid for sigemptyset; pthread_sigmask changes this thread's
    // mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

struct Cleanup {
    ns: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// A masked binary frame carrying `payload` (at most 65535 bytes).
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Waits (at most 5 s) until `cond` holds; returns whether it did.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The `"in_use"` of the `"pool"` member of `/debug/probes`.
fn probe_in_use(server: &Server) -> u64 {
    let probes: serde_json::Value = serde_json::from_str(&server.probes_json()).unwrap();
    probes["pool"]["in_use"]
        .as_u64()
        .expect("pool.in_use in /debug/probes")
}

#[test]
fn a_frame_split_across_segments_is_held_in_a_pool_buffer_and_echoed_intact() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (hugepages, tap, netns)"
    );
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let pid = std::process::id();
    let (tap, ns, prefix) = (
        format!("hlh{pid}"),
        format!("hioload-h{pid}"),
        format!("hlh-{pid}"),
    );
    let _cleanup = Cleanup {
        ns: ns.clone(),
        prefix: prefix.clone(),
    };
    run("ip", &["netns", "add", &ns]);
    let mut eal: Vec<String> = ["--no-pci", "--no-telemetry", "--in-memory", "--lcores=0@0"]
        .map(String::from)
        .into();
    eal.push(format!("--file-prefix={prefix}"));
    eal.push(format!("--vdev=net_tap0,iface={tap}"));
    let mut dpdk = DpdkConfig::new(eal);
    dpdk.idle_sleep = Duration::from_micros(100);
    dpdk.max_connections = 256;
    let cfg = Config {
        listen: STACK.parse().unwrap(),
        data_path: DataPath::Dpdk(dpdk),
        ..Config::default()
    };
    let server = Arc::new(Server::new(cfg).unwrap().with_handler(Echo));
    server.start().expect("the DPDK path starts");
    run("ip", &["link", "set", &tap, "netns", &ns]);
    run(
        "ip",
        &["-n", &ns, "addr", "add", "198.18.0.1/24", "dev", &tap],
    );
    run("ip", &["-n", &ns, "link", "set", &tap, "up"]);

    // The lcore's pool: DPDK memory of its socket, warmed at start, nothing in use.
    let stats = server.pool_stats().expect("running");
    assert_eq!(stats.nodes.len(), 1, "{stats:?}");
    let node = &stats.nodes[0];
    assert!(
        node.reserved_bytes > 0,
        "one slab taken at start: {stats:?}"
    );
    assert_eq!(node.bound_bytes, node.reserved_bytes, "hugepage memory");
    assert_eq!(stats.in_use(), 0);
    // /metrics reports the same pool.
    let metrics = server.metrics_text();
    let label = format!("hioload_pool_reserved_bytes{{node=\"{}\"}}", node.node);
    let reserved: f64 = metrics
        .lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{label} in /metrics:\n{metrics}"));
    assert_eq!(reserved as usize, node.reserved_bytes);

    let path = format!("/var/run/netns/{ns}");
    let outside = server.clone();
    let (held_in_stats, held_in_probe, echoed, after_close) = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        block_sigio();
        // SAFETY: setns with a valid namespace fd moves only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let stream = TcpStream::connect(STACK).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (mut ws, _) = tungstenite::client::client(format!("ws://{STACK}/ws"), stream).unwrap();
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let frame = masked_frame(&payload);
        // First the header and part of the payload: the session cannot finish the frame, so
        // the driver holds it.
        ws.get_mut().write_all(&frame[..1200]).unwrap();
        let held_in_stats = eventually(|| outside.pool_stats().unwrap().in_use() == 1);
        let held_in_probe = probe_in_use(&outside);
        std::thread::sleep(Duration::from_millis(50));
        ws.get_mut().write_all(&frame[1200..]).unwrap();
        let echoed = ws.read().unwrap();
        // The frame is done: its buffer went back.
        let back = eventually(|| outside.pool_stats().unwrap().in_use() == 0);
        assert!(back, "held buffer given back once the frame completed");
        // Hold another partial frame, then close the connection under it.
        ws.get_mut().write_all(&frame[..500]).unwrap();
        assert!(eventually(|| outside.pool_stats().unwrap().in_use() == 1));
        drop(ws);
        let after_close = eventually(|| outside.pool_stats().unwrap().in_use() == 0);
        (
            held_in_stats,
            held_in_probe,
            echoed.into_data(),
            after_close,
        )
    })
    .join()
    .unwrap();
    assert!(
        held_in_stats,
        "a pool buffer in use while the partial frame waits"
    );
    assert_eq!(held_in_probe, 1, "and /debug/probes says so");
    let expected: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(&echoed[..], &expected[..], "echoed intact");
    assert!(
        after_close,
        "no buffer in use after the connection closed: {:?}",
        server.pool_stats()
    );
    let stats = server.pool_stats().unwrap();
    assert!(stats.hits() + stats.misses() >= 3, "{stats:?}");
    server.shutdown().unwrap();
    // After the stop the slabs went back to DPDK (before the EAL was cleaned up).
    let stats = server.pool_stats().unwrap();
    assert_eq!(stats.in_use(), 0);
    assert_eq!(stats.nodes[0].reserved_bytes, 0, "{stats:?}");
}
