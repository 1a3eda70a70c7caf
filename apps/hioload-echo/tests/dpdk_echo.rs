//! `hioload-echo` in DPDK mode, end to end: the real binary on a real EAL with a net_tap port
//! whose kernel side the test moves into a network namespace it creates (198.18.0.1/24 there,
//! the userspace stack at 198.18.0.2), and real WebSocket clients (tungstenite on kernel sockets)
//! on threads that entered that namespace.
//!
//! Every test starts its own server process (one EAL per process), so the tests may run in
//! parallel threads (`cargo test`) or processes (`cargo nextest`). Root is needed (hugepages,
//! tap devices, namespaces). The servers sleep 100 µs when idle so that parallel tests share the
//! CPUs; every wait is bounded.

#![cfg(feature = "dpdk")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::host::{allowed_cpus, free_hugepages, Netns};
use support::{EchoProcess, BIN, UPGRADE};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message, WebSocket};

const STACK: &str = "198.18.0.2:8080";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A DPDK-mode hioload-echo with its namespace; killed (by pid) and cleaned up on drop.
struct DpdkEcho {
    process: EchoProcess,
    ns: Netns,
    /// The EAL's `--file-prefix` (its runtime directory under /var/run/dpdk).
    prefix: String,
}

impl DpdkEcho {
    /// Starts the server with `app_args` after `--` and waits for its start line; then moves the
    /// tap's kernel side into a fresh namespace as 198.18.0.1/24.
    fn start(app_args: &[&str]) -> DpdkEcho {
        DpdkEcho::start_with_lcores(1, app_args)
    }

    /// As `start`, with `lcores` lcores (all on one CPU: the tests need no spare cores).
    fn start_with_lcores(lcores: usize, app_args: &[&str]) -> DpdkEcho {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "DPDK tests need root (hugepages, tap, netns)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tap = format!("hle{:x}{n}", pid & 0xfffff);
        let prefix = format!("hle-{pid}-{n}");
        let cpus = allowed_cpus();
        let cpu = cpus[n % cpus.len()];
        let mut eal = vec![
            "--no-pci".to_string(),
            "--no-telemetry".into(),
            format!("--file-prefix={prefix}"),
            format!(
                "--lcores={}",
                (0..lcores)
                    .map(|l| format!("{l}@{cpu}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!("--vdev=net_tap0,iface={tap}"),
        ];
        if free_hugepages() >= 256 {
            eal.push("--in-memory".into());
        } else {
            eal.extend([
                "--no-huge".into(),
                "--no-shconf".into(),
                "-m".into(),
                "512".into(),
            ]);
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&eal)
            .arg("--")
            .args([
                "--addr",
                STACK,
                "--netmask",
                "24",
                "--idle-sleep-us",
                "100",
                "--stack-connections",
                "2048",
                // Tests run at once: each its own admin port.
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(app_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let process = EchoProcess::spawn(cmd);
        let ns = Netns::named(format!("hioload-e{pid}-{n}"));
        let mut echo = DpdkEcho {
            process,
            ns,
            prefix,
        };
        echo.wait_for_line(
            "listening on ws://198.18.0.2:8080/ws (dpdk data path",
            Duration::from_secs(60),
        );
        echo.ns.attach_tap(&tap, "198.18.0.1/24");
        echo
    }

    fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        self.process.wait_for_line(needle, limit)
    }

    fn log_text(&mut self) -> String {
        self.process.log_text()
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    fn in_ns<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.ns.run_inside(f)
    }

    fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(limit)
    }
}

impl Drop for DpdkEcho {
    fn drop(&mut self) {
        self.process.kill(); // before its namespace goes (dropped after this)
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// A WebSocket client to the stack (call inside the namespace).
fn client(path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&STACK.parse().unwrap(), Duration::from_secs(10))
        .expect("connect to the stack");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tungstenite::client::client_with_config(format!("ws://{STACK}{path}"), stream, Some(config))
        .expect("WebSocket handshake")
        .0
}

fn normal_close() -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }
}

/// Reads until the close handshake completes; returns the peer's close code.
fn expect_close(ws: &mut WebSocket<TcpStream>) -> CloseCode {
    let code = match ws.read().expect("a close frame") {
        Message::Close(Some(f)) => f.code,
        other => panic!("expected a close frame, got {other:?}"),
    };
    match ws.read() {
        Err(WsError::ConnectionClosed) => code,
        other => panic!("close handshake not completed: {other:?}"),
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn text_binary_and_plain_http_over_the_userspace_stack() {
    let mut echo = DpdkEcho::start(&["--control-on-main"]);
    echo.wait_for_line("MAC", Duration::from_secs(1));
    let start_log = echo.log_text();
    for what in [
        "DPDK port 0 net_tap0 (driver net_tap): MAC ",
        "link ",
        "queue(s)",
        "NUMA socket",
        "polling lcores 0(socket",
    ] {
        assert!(
            start_log.contains(what),
            "start log lacks {what:?}:\n{start_log}"
        );
    }
    let (text, binary, empty, [probes, metrics, other]) = echo.in_ns(|| {
        let mut ws = client("/ws");
        ws.send(Message::text("Hello")).unwrap();
        let text = ws.read().unwrap();
        let payload = pattern(1, 3000);
        ws.send(Message::binary(payload.clone())).unwrap();
        let binary = ws.read().unwrap() == Message::binary(payload);
        ws.send(Message::binary(Vec::new())).unwrap();
        let empty = ws.read().unwrap() == Message::binary(Vec::new());
        // Requests that are no upgrade go to the control plane (--control-on-main) and the
        // HTTP hook (404 by default), on the same userspace port, while the session above is
        // open.
        let http = ["/debug/probes", "/metrics", "/nothing-here"].map(|path| {
            let mut s = TcpStream::connect(STACK).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        });
        // Client-initiated close: our 1000 comes back, then the server closes TCP.
        ws.close(Some(normal_close())).unwrap();
        assert_eq!(expect_close(&mut ws), CloseCode::Normal);
        (text, binary, empty, http)
    });
    assert_eq!(text, Message::text("Hello"));
    assert!(binary, "3000 binary bytes came back intact");
    assert!(empty, "an empty message comes back");
    assert!(
        probes.starts_with("HTTP/1.1 200 OK\r\n")
            && probes.contains("\"active_sessions\":1,")
            && probes.contains("\"worker_sessions\":[1]"),
        "{probes}"
    );
    assert!(
        metrics.starts_with("HTTP/1.1 200 OK\r\n")
            && metrics.contains("\nhioload_sessions_active 1\n"),
        "{metrics}"
    );
    assert!(
        other.starts_with("HTTP/1.1 404 Not Found\r\n") && other.ends_with("not found\n"),
        "{other}"
    );
}

#[test]
fn a_16_mib_message_comes_back_intact() {
    let echo = DpdkEcho::start(&[]);
    let ok = echo.in_ns(|| {
        let mut ws = client("/ws");
        let payload = pattern(16, 16 << 20);
        ws.send(Message::binary(payload.clone())).unwrap();
        let back = ws.read().unwrap();
        let ok = back.len() == payload.len() && back.into_data()[..] == payload[..];
        ws.close(Some(normal_close())).unwrap();
        expect_close(&mut ws);
        ok
    });
    assert!(ok, "the 16 MiB message came back byte for byte");
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn a_thousand_concurrent_sessions_echo_every_byte() {
    raise_fd_limit();
    let mut echo = DpdkEcho::start(&[]);
    let checked = echo.in_ns(|| {
        let mut clients: Vec<_> = (0..1000).map(|_| client("/ws")).collect();
        // All 1000 open at once; each sends a message of its own length and content.
        for (i, ws) in clients.iter_mut().enumerate() {
            let msg = pattern(i as u64 + 100, 64 + (i * 37) % 4000);
            if i % 2 == 0 {
                ws.send(Message::binary(msg)).unwrap();
            } else {
                let text: String = msg.iter().map(|b| (b'a' + b % 26) as char).collect();
                ws.send(Message::text(text)).unwrap();
            }
        }
        let mut bytes = 0usize;
        for (i, ws) in clients.iter_mut().enumerate() {
            let msg = pattern(i as u64 + 100, 64 + (i * 37) % 4000);
            let got = ws.read().unwrap();
            if i % 2 == 0 {
                assert_eq!(got, Message::binary(msg.clone()), "client {i}");
            } else {
                let text: String = msg.iter().map(|b| (b'a' + b % 26) as char).collect();
                assert_eq!(got, Message::text(text), "client {i}");
            }
            bytes += msg.len();
        }
        for ws in &mut clients {
            ws.close(Some(normal_close())).unwrap();
        }
        for ws in &mut clients {
            assert_eq!(expect_close(ws), CloseCode::Normal);
        }
        bytes
    });
    let expect: usize = (0..1000).map(|i| 64 + (i * 37) % 4000).sum();
    assert_eq!(checked, expect);
    echo.signal(libc::SIGTERM);
    assert!(echo.wait_exit(Duration::from_secs(15)).success());
    let log = echo.log_text();
    assert!(
        log.contains("accepted=1000 closed=1000"),
        "every connection closed at exit:\n{log}"
    );
}

#[test]
fn the_server_closes_with_1009_and_completes_the_handshake() {
    let echo = DpdkEcho::start(&["--max-message", "1KiB"]);
    let (code, after) = echo.in_ns(|| {
        let mut ws = client("/ws");
        ws.send(Message::binary(vec![7u8; 1000])).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(vec![7u8; 1000]));
        ws.send(Message::binary(vec![7u8; 2000])).unwrap();
        let code = expect_close(&mut ws); // tungstenite answers the close; the server then FINs
                                          // The server is still serving others.
        let mut other = client("/ws");
        other.send(Message::text("still here")).unwrap();
        (code, other.read().unwrap())
    });
    assert_eq!(
        code,
        CloseCode::Size,
        "a message over --max-message is closed with 1009"
    );
    assert_eq!(after, Message::text("still here"));
}

#[test]
fn sigterm_with_clients_connected_closes_each_with_1001_and_exits_0() {
    let mut echo = DpdkEcho::start(&["--grace-period", "5"]);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let clients = echo.ns.spawn_inside(move || {
        let mut clients: Vec<_> = (0..50).map(|_| client("/ws")).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("hello {i}"))).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
        }
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
        clients
            .iter_mut()
            .map(|ws| {
                let code = expect_close(ws);
                // Then the server's FIN: end of stream, not a read timeout or a reset.
                let mut rest = [0u8; 16];
                let fin = matches!(ws.get_mut().read(&mut rest), Ok(0));
                (code, fin)
            })
            .collect::<Vec<_>>()
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("clients connected");
    echo.wait_for_line("listening", Duration::from_secs(1));
    echo.signal(libc::SIGTERM);
    go_tx.send(()).unwrap();
    let ends = clients.join().unwrap();
    assert!(
        ends.iter().all(|&(_, fin)| fin),
        "every client saw the server's FIN: {ends:?}"
    );
    let codes: Vec<_> = ends.iter().map(|&(code, _)| code).collect();
    assert!(
        codes.iter().all(|&c| c == CloseCode::Away),
        "every client got 1001: {codes:?}"
    );
    let status = echo.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let log = echo.log_text();
    assert!(
        log.contains("SIGTERM: stopping") && log.contains("close 1001 sent worker=0 sessions=50"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn no_usable_port_is_a_clear_error() {
    let prefix = format!("hle-noport-{}", std::process::id());
    let out = Command::new(BIN)
        .args([
            "--no-pci",
            "--no-telemetry",
            "--no-huge",
            "--no-shconf",
            "-m",
            "128",
        ])
        .arg(format!("--file-prefix={prefix}"))
        .args(["--", "--addr", STACK])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no usable port: DPDK found no Ethernet port"),
        "{err}"
    );
    assert!(err.contains("--vdev"), "says how to give one: {err}");
}

#[test]
fn help_explains_the_eal_half_and_ours() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "hioload-echo [EAL options] -- [options]",
        "Without `--`",
        "--vdev=net_tap0,iface=hl0",
        "--netmask <PREFIX|MASK>",
        "--gateway <IPV4>",
        "--idle-sleep-us <N>",
        "--stack-connections <N>",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// A masked client frame (binary, FIN) with a 1 KiB payload.
fn masked_frame(payload: &[u8; 1024], key: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x82, 0x80 | 126, 0x04, 0x00];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn set_buffer(stream: &TcpStream, opt: i32, bytes: i32) {
    // SAFETY: setsockopt on our own socket with a valid int option.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn a_client_that_does_not_read_is_held_back_and_later_gets_every_byte() {
    let echo = DpdkEcho::start(&[]);
    let (written, frames, other, intact) = echo.in_ns(|| {
        let mut s = TcpStream::connect(STACK).unwrap();
        set_buffer(&s, libc::SO_RCVBUF, 32 << 10);
        set_buffer(&s, libc::SO_SNDBUF, 32 << 10);
        s.write_all(UPGRADE).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        // Write 1 KiB messages without reading any echo, until nothing more is taken for 1 s.
        s.set_nonblocking(true).unwrap();
        let payload_of =
            |i: usize| -> [u8; 1024] { std::array::from_fn(|k| (i * 7 + k * 13 % 251) as u8) };
        let (mut frames, mut written, mut pending) = (0usize, 0usize, Vec::new());
        let mut stalled_since = None;
        while written < (64 << 20) {
            if pending.is_empty() {
                pending = masked_frame(&payload_of(frames), [1, 2, 3, (frames % 256) as u8]);
            }
            match s.write(&pending) {
                Ok(n) => {
                    written += n;
                    pending.drain(..n);
                    if pending.is_empty() {
                        frames += 1;
                    }
                    stalled_since = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        // The server still serves others meanwhile.
        let mut ws = client("/ws");
        ws.send(Message::text("still served")).unwrap();
        let other = ws.read().unwrap();
        // Now read: every echo arrives intact; then the rest of the partial message can go.
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut intact = 0;
        let mut read_echo = |i: usize, s: &mut TcpStream| {
            let mut h = [0u8; 4];
            s.read_exact(&mut h).unwrap();
            assert_eq!(h, [0x82, 126, 0x04, 0x00], "echo header of message {i}");
            let mut p = [0u8; 1024];
            s.read_exact(&mut p).unwrap();
            if p == payload_of(i) {
                intact += 1;
            }
        };
        for i in 0..frames {
            read_echo(i, &mut s);
        }
        if !pending.is_empty() {
            s.write_all(&pending).unwrap();
            read_echo(frames, &mut s);
            frames += 1;
        }
        (written, frames, other, intact)
    });
    println!("the client could write {written} bytes ({frames} messages) before TCP held it back");
    assert!(
        written < 4 << 20,
        "a peer that does not read is held back by the windows: {written} bytes taken"
    );
    assert_eq!(other, Message::text("still served"));
    assert_eq!(intact, frames, "every held-back message was echoed intact");
}

#[test]
fn two_lcores_share_the_port_and_each_session_lives_on_one() {
    let mut echo = DpdkEcho::start_with_lcores(2, &[]);
    let log = echo.wait_for_line("polling lcores", Duration::from_secs(1));
    assert!(
        log.contains("polling lcores 0(socket 0), 1(socket 0)"),
        "{log}"
    );
    let checked = echo.in_ns(|| {
        let mut clients: Vec<_> = (0..200).map(|_| client("/ws")).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::binary(pattern(i as u64, 100 + i)))
                .unwrap();
        }
        for (i, ws) in clients.iter_mut().enumerate() {
            assert_eq!(
                ws.read().unwrap(),
                Message::binary(pattern(i as u64, 100 + i)),
                "client {i}"
            );
        }
        for ws in &mut clients {
            ws.close(Some(normal_close())).unwrap();
            assert_eq!(expect_close(ws), CloseCode::Normal);
        }
        clients.len()
    });
    assert_eq!(checked, 200);
    echo.signal(libc::SIGTERM);
    assert!(echo.wait_exit(Duration::from_secs(15)).success());
    let log = echo.log_text();
    let accepted: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("stopped") && l.contains("accepted="))
        .map(|l| {
            l.split("accepted=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(accepted.len(), 2, "both lcores report: {log}");
    assert_eq!(
        accepted.iter().sum::<u64>(),
        200,
        "each session on exactly one lcore: {log}"
    );
    assert!(
        accepted.iter().all(|&a| a > 0),
        "both lcores own sessions: {log}"
    );
}

#[test]
fn a_client_that_never_completes_its_request_is_dropped_after_the_handshake_timeout() {
    let echo = DpdkEcho::start(&["--handshake-timeout", "1"]);
    let (took, got, served) = echo.in_ns(|| {
        let mut s = TcpStream::connect(STACK).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finished
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let got = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        };
        let took = start.elapsed();
        let mut ws = client("/ws");
        ws.send(Message::text("after")).unwrap();
        (took, got, ws.read().unwrap())
    });
    assert_eq!(got, 0, "closed without an answer");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "dropped after {took:?} for a 1 s handshake timeout"
    );
    assert_eq!(served, Message::text("after"));
}
