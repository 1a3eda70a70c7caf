//! The real `hioload-echo` binary under an address-space limit (RLIMIT_AS 1 GiB) while 50
//! connections announce 16 MiB − 1 byte frames: a declared length is not memory, so the server
//! holds what arrived plus at most one 64 KiB reserve step per connection, stays alive and
//! echoes a fresh client within 1 s; and when each of them then sends 10 MiB of its frame, the
//! memory follows the bytes and the process still lives (an allocation it cannot have closes a
//! session with 1011, it never aborts the process). The attacks on the library, with many more
//! connections: `tests/hostile.rs` at the workspace root.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{EchoProcess, BIN, UPGRADE};

const AS_LIMIT: u64 = 1 << 30;
const ATTACKERS: usize = 50;
const ANNOUNCED: u64 = (16 << 20) - 1;

/// hioload-echo on 127.0.0.1:0 with its admin listener on 127.0.0.1:0, under RLIMIT_AS 1 GiB.
/// Returns the process, its WebSocket address and its admin address.
fn start_limited() -> (EchoProcess, SocketAddr, SocketAddr) {
    let io = std::env::var("HIOLOAD_TEST_IO").unwrap_or_else(|_| "auto".into());
    let mut cmd = Command::new(BIN);
    cmd.args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-affinity"])
        .args(["--io", &io, "--admin-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec; setrlimit is async-signal-safe and the
    // closure touches no memory the parent's other threads could hold locked.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: AS_LIMIT as libc::rlim_t,
                rlim_max: AS_LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = EchoProcess::spawn(cmd);
    let line = process.next_line_with("listening on ws://", Duration::from_secs(20));
    let addr = line
        .split("listening on ws://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let line = process.next_line_with("control plane: ", Duration::from_secs(10));
    let admin = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no admin listener: {line}"))
        .parse()
        .unwrap();
    (process, addr, admin)
}

/// The sum over workers of a `/metrics` family (samples `name{worker="…"} value`).
fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// (VmRSS, VmSize) of `pid`, in bytes.
fn vm(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            << 10
    };
    (field("VmRSS:"), field("VmSize:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// A raw session past its upgrade.
fn session(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(UPGRADE).unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "upgrade cut short");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

/// Connect, upgrade, echo: under 1 s. Returns the time taken.
fn fresh_echo(addr: SocketAddr, what: &str) -> Duration {
    let limit = Duration::from_secs(1);
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, limit)
        .unwrap_or_else(|e| panic!("{what}: a fresh client cannot connect: {e}"));
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .unwrap_or_else(|e| panic!("{what}: a fresh client's upgrade failed: {e}"));
    ws.send(tungstenite::Message::text("fresh")).unwrap();
    let reply = ws
        .read()
        .unwrap_or_else(|e| panic!("{what}: no echo ({e})"));
    let took = start.elapsed();
    assert_eq!(reply, tungstenite::Message::text("fresh"));
    assert!(took < limit, "{what}: a fresh client's echo took {took:?}");
    let _ = ws.close(None);
    took
}

/// Reads frames until a Close (within 10 s); returns its code.
fn close_code(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("a Close frame");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        if h[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Waits until `f` holds (polling every 50 ms), panicking with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The attacker has not been closed: nothing to read yet (no Close, no EOF, no reset).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = matches!(s.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
fn under_a_1_gib_address_space_limit_50_announced_16_mib_frames_do_not_kill_the_server() {
    let (mut echo, addr, admin) = start_limited();
    let pid = echo.child.id();
    let (rss_start, size_start) = vm(pid);

    // The 14-byte header announcing 16 MiB − 1 bytes, and 100 bytes of the payload.
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&ANNOUNCED.to_be_bytes());
    header.extend_from_slice(&mask);
    let payload = |from: usize, len: usize| -> Vec<u8> {
        (from..from + len).map(|i| 0xA5 ^ mask[i % 4]).collect()
    };
    const FEW: usize = 100;
    let mut attackers: Vec<TcpStream> = (0..ATTACKERS).map(|_| session(addr)).collect();
    for s in &mut attackers {
        let mut bytes = header.clone();
        bytes.extend_from_slice(&payload(0, FEW));
        s.write_all(&bytes).unwrap();
    }
    wait_until(
        Duration::from_secs(10),
        "the announcements under way",
        || metric(admin, "hioload_worker_memory_bytes") >= (ATTACKERS * FEW) as u64,
    );
    std::thread::sleep(Duration::from_millis(300));
    let took = fresh_echo(addr, "50 announced 16 MiB frames");
    let memory = metric(admin, "hioload_worker_memory_bytes");
    let (rss, size) = vm(pid);
    eprintln!(
        "binary under RLIMIT_AS 1 GiB, {ATTACKERS} × 16 MiB announced, {FEW} bytes each: memory \
         gauge {:.2} MiB; VmRSS {:.1} MiB (start {:.1}), VmSize {:.1} MiB (start {:.1}); fresh \
         echo {took:?}",
        mib(memory),
        mib(rss),
        mib(rss_start),
        mib(size),
        mib(size_start)
    );
    assert!(
        memory < (ATTACKERS as u64) * (200 << 10),
        "{:.2} MiB held for {ATTACKERS} announcements of {FEW} bytes",
        mib(memory)
    );
    assert!(
        echo.child.try_wait().unwrap().is_none(),
        "the server died: {}",
        echo.log_text()
    );
    for s in &mut attackers {
        assert!(still_open(s), "an attacker was closed");
    }

    // Each sends 10 MiB more of its frame (500 MiB in all, with the server's own ≈ 400 MiB of
    // address space: near the limit). The memory follows the bytes; an allocation the server
    // cannot have closes that session (1011, or 1009 over the memory budget), it does not abort
    // the process; the server lives and serves.
    const MORE: usize = 10 << 20;
    let more = payload(FEW, MORE);
    let start = Instant::now();
    let mut refused = 0;
    for s in &mut attackers {
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        if let Err(e) = s.write_all(&more) {
            assert!(
                echo.child.try_wait().unwrap().is_none(),
                "the server died while an attacker sent its bytes ({e}, after {:?}); log:\n{}",
                start.elapsed(),
                echo.log_text()
            );
            refused += 1;
        }
    }
    let sent = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        echo.child.try_wait().unwrap().is_none(),
        "the server died after {ATTACKERS} attackers sent {} MiB each; log:\n{}",
        MORE >> 20,
        echo.log_text()
    );
    let mut open = 0;
    let mut codes = Vec::new();
    for s in &mut attackers {
        if still_open(s) {
            open += 1;
        } else {
            codes.push(close_code(s));
        }
    }
    assert!(
        codes.iter().all(|c| [1009, 1011].contains(c)),
        "attackers closed with {codes:?} ({refused} writes failed)"
    );
    let arrived = (open * (FEW + MORE)) as u64;
    wait_until(Duration::from_secs(20), "the 10 MiB assembled", || {
        metric(admin, "hioload_worker_memory_bytes") >= arrived
    });
    std::thread::sleep(Duration::from_millis(300));
    let took = fresh_echo(addr, "50 announced 16 MiB frames, 10 MiB in");
    let memory = metric(admin, "hioload_worker_memory_bytes");
    let memory_closes = metric(admin, "hioload_memory_closes_total");
    let (rss, size) = vm(pid);
    eprintln!(
        "binary under RLIMIT_AS 1 GiB, 10 MiB more each (sent in {sent:?}): {open} attackers \
         open, closed with {codes:?}; memory gauge {:.2} MiB for {:.2} MiB arrived at the open \
         ones; memory closes {memory_closes}; VmRSS {:.1} MiB, VmSize {:.1} MiB; fresh echo \
         {took:?}",
        mib(memory),
        mib(arrived),
        mib(rss),
        mib(size)
    );
    assert!(
        // One reserve step (or an eighth of the bytes, if more) ahead of what arrived.
        memory <= arrived + arrived / 8 + (ATTACKERS as u64) * ((64 << 10) + (4 << 10) + 512),
        "{:.2} MiB held for {:.2} MiB arrived: more than one reserve step ahead",
        mib(memory),
        mib(arrived)
    );

    drop(attackers);
    wait_until(Duration::from_secs(10), "the attackers gone", || {
        metric(admin, "hioload_worker_connections") == 0
    });
    let took = fresh_echo(addr, "after the attack");
    let (rss, _) = vm(pid);
    eprintln!(
        "binary after the attack: memory gauge {} B; VmRSS {:.1} MiB; fresh echo {took:?}",
        metric(admin, "hioload_worker_memory_bytes"),
        mib(rss)
    );
    assert!(echo.child.try_wait().unwrap().is_none());
    echo.kill();
}
