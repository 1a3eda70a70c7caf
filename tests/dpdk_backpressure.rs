//! Backpressure on the DPDK data path, in process: a handler that answers one request with far
//! more than the peer reads. The output the send ring cannot take waits in the connection's
//! pending output; above `backpressure.hard_bytes` for `backpressure.timeout` the session is
//! closed with 1008 and the connection reset, while other sessions are served on.
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

const STACK: &str = "198.18.0.2:8080";

/// `flood` is answered with 64 messages of 64 KiB (4 MiB); anything else is echoed. Records
/// the close codes.
struct Flood {
    closes: Arc<Mutex<Vec<u16>>>,
}

impl Handler for Flood {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg == Message::Text("flood") {
            let chunk = vec![0x5au8; 64 << 10];
            for _ in 0..64 {
                let _ = ctx.send_binary(&chunk);
            }
        } else {
            let _ = ctx.send(msg);
        }
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

/// Keeps the tap PMD's SIGIO (the EAL runs in this process) away from this thread, so that its
/// blocking socket calls are not interrupted.
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

/// Retries a blocking call interrupted by the tap PMD's signal (the EAL runs in this process).
fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn upgrade() -> TcpStream {
    let mut s = retry(|| TcpStream::connect(STACK)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        retry(|| s.read_exact(&mut byte)).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// A masked text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(text.as_bytes());
    f
}

#[test]
fn a_peer_that_does_not_read_a_flood_is_closed_with_1008_and_others_are_served() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (hugepages, tap, netns)"
    );
    let pid = std::process::id();
    let (tap, ns, prefix) = (
        format!("hlb{pid}"),
        format!("hioload-b{pid}"),
        format!("hlb-{pid}"),
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
    let mut cfg = Config {
        listen: STACK.parse().unwrap(),
        data_path: DataPath::Dpdk(dpdk),
        ..Config::default()
    };
    cfg.backpressure.soft_bytes = 64 << 10;
    cfg.backpressure.hard_bytes = 256 << 10;
    cfg.backpressure.timeout = Duration::from_secs(1);
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = Server::new(cfg).unwrap().with_handler(Flood {
        closes: closes.clone(),
    });
    server.start().expect("the DPDK path starts");
    run("ip", &["link", "set", &tap, "netns", &ns]);
    run(
        "ip",
        &["-n", &ns, "addr", "add", "198.18.0.1/24", "dev", &tap],
    );
    run("ip", &["-n", &ns, "link", "set", &tap, "up"]);

    let path = format!("/var/run/netns/{ns}");
    let (ended_after, read_before_end, echoed) = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        block_sigio();
        // SAFETY: setns with a valid namespace fd moves only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut slow = upgrade();
        // A small receive buffer, and no reading: the flood stays on the server.
        let small: libc::c_int = 16 << 10;
        // SAFETY: setsockopt on our own socket with a valid int.
        unsafe {
            libc::setsockopt(
                slow.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        slow.write_all(&text_frame("flood")).unwrap();
        let sent = Instant::now();
        // Another session is served meanwhile.
        let mut other = upgrade();
        other.write_all(&text_frame("hi")).unwrap();
        let mut echo = [0u8; 4];
        retry(|| other.read_exact(&mut echo)).unwrap();
        // Wait past the backpressure timeout, then read what arrived until the reset or close.
        std::thread::sleep(Duration::from_millis(2500));
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match retry(|| slow.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        (sent.elapsed(), total, echo)
    })
    .join()
    .unwrap();
    assert_eq!(&echoed, b"\x81\x02hi", "the other session was served");
    assert!(
        read_before_end < 4 << 20,
        "the 4 MiB flood did not all arrive: {read_before_end} bytes"
    );
    assert!(ended_after < Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !closes.lock().unwrap().contains(&1008) {
        assert!(
            Instant::now() < deadline,
            "no 1008 close: {:?}",
            closes.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown().unwrap();
}
