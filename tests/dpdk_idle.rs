//! Idle sessions on the DPDK data path, in process: a session that sends nothing for
//! `idle_timeout` gets a ping; one that answers stays, one that does not is dropped after
//! `pong_timeout` and reported closed with 1006. Counted in `/debug/probes`' workers.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hioload_ws::{CloseCode, Config, Ctx, DataPath, DpdkConfig, Handler, Message, Server};
use tungstenite::Message as WsMessage;

const STACK: &str = "198.18.0.2:8080";

/// Echoes; records close codes.
struct Echo {
    closes: Arc<Mutex<Vec<u16>>>,
}

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
    fn on_close(&self, _ctx: &mut Ctx<'_>, code: CloseCode, _reason: &str) {
        self.closes.lock().unwrap().push(code.0);
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

#[test]
fn an_idle_session_is_pinged_and_one_that_never_answers_is_dropped_with_1006() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (hugepages, tap, netns)"
    );
    let pid = std::process::id();
    let (tap, ns, prefix) = (
        format!("hli{pid}"),
        format!("hioload-i{pid}"),
        format!("hli-{pid}"),
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
        idle_timeout: Some(Duration::from_millis(800)),
        pong_timeout: Duration::from_millis(800),
        ..Config::default()
    };
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = Arc::new(Server::new(cfg).unwrap().with_handler(Echo {
        closes: closes.clone(),
    }));
    server.start().expect("the DPDK path starts");
    run("ip", &["link", "set", &tap, "netns", &ns]);
    run(
        "ip",
        &["-n", &ns, "addr", "add", "198.18.0.1/24", "dev", &tap],
    );
    run("ip", &["-n", &ns, "link", "set", &tap, "up"]);

    let path = format!("/var/run/netns/{ns}");
    let outside = server.clone();
    let (pinged, still_served, silent_dropped_after) = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        block_sigio();
        // SAFETY: setns with a valid namespace fd moves only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        // A responsive client (tungstenite answers pings when it reads).
        let stream = TcpStream::connect(STACK).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (mut ws, _) = tungstenite::client::client(format!("ws://{STACK}/ws"), stream).unwrap();
        // A silent one: upgrades, then never sends anything (not even the pong).
        let mut silent = TcpStream::connect(STACK).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        silent
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let start = Instant::now();
        // The responsive one sees the ping (and answers it), twice over the silent one's life.
        let mut pinged = 0;
        while start.elapsed() < Duration::from_millis(2500) {
            match ws.read() {
                Ok(WsMessage::Ping(p)) if &p[..] == b"idle" => pinged += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("responsive client: {e}"),
            }
        }
        ws.send(WsMessage::text("still here")).unwrap();
        let still_served = ws.read().unwrap();
        // The silent one: its 101, the ping, then the connection ends (reset).
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match silent.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let dropped_after = start.elapsed();
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            got.ends_with(b"\x89\x04idle"),
            "the silent client got the ping last"
        );
        drop(outside);
        (pinged, still_served, dropped_after)
    })
    .join()
    .unwrap();
    assert!(pinged >= 1, "the responsive client was pinged");
    assert_eq!(still_served, WsMessage::text("still here"));
    assert!(
        silent_dropped_after >= Duration::from_millis(1400)
            && silent_dropped_after < Duration::from_secs(5),
        "dropped after {silent_dropped_after:?} (idle 0.8 s + pong 0.8 s)"
    );
    assert!(
        closes.lock().unwrap().contains(&1006),
        "{:?}",
        closes.lock().unwrap()
    );
    let probes = server.probes_json();
    let workers = server.worker_stats().unwrap();
    assert!(
        workers[0].idle_pings >= 2 && workers[0].idle_drops == 1,
        "{workers:?}\n{probes}"
    );
    server.shutdown().unwrap();
}
