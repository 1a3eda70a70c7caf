//! The real `hioload-echo` binary: command line, start line, echo, and graceful SIGTERM with 100
//! connected clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

const BIN: &str = env!("CARGO_BIN_EXE_hioload-echo");

/// A running hioload-echo on 127.0.0.1:0; stderr is drained in the background.
struct Echo {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Echo {
    fn start(extra: &[&str]) -> Echo {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-affinity"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no start line within 20 s");
            let line = log
                .recv_timeout(left)
                .expect("hioload-echo exited before its start line");
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                assert!(
                    line.contains("2 workers") && line.contains("kernel data path"),
                    "{line}"
                );
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        Echo { child, addr, log }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, still running.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit; returns its exit status and the time taken.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "hioload-echo did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .unwrap()
        .0
}

#[test]
fn sigterm_with_100_clients_closes_each_with_1001_and_exits_0() {
    let mut echo = Echo::start(&["--grace-period", "5"]);
    let mut clients: Vec<_> = (0..100).map(|_| client(echo.addr)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let sent = Instant::now();
    echo.signal(libc::SIGTERM);
    for ws in &mut clients {
        match ws.read().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
        match ws.read() {
            Err(WsError::ConnectionClosed) => {}
            Err(e) => panic!("close handshake: {e}"),
            Ok(m) => panic!("unexpected {m:?}"),
        }
    }
    let (status, _) = echo.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}, beyond the grace period"
    );
    let log = echo.log_lines().join("\n");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
}

#[test]
fn sigint_with_a_client_that_never_answers_exits_0_at_the_end_of_the_grace_period() {
    let mut echo = Echo::start(&["--grace-period", "1"]);
    let mut silent = TcpStream::connect(echo.addr).unwrap();
    silent
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    echo.signal(libc::SIGINT);
    let (status, _) = echo.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?} for a 1 s grace period"
    );
}

#[test]
fn echoes_on_its_path_and_404s_elsewhere() {
    let echo = Echo::start(&["--path", "/echo"]);
    let stream = TcpStream::connect(echo.addr).unwrap();
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://{}/echo", echo.addr), stream).unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::text("Hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("Hello"));
    let stream = TcpStream::connect(echo.addr).unwrap();
    match tungstenite::client::client(format!("ws://{}/ws", echo.addr), stream) {
        Err(tungstenite::HandshakeError::Failure(WsError::Http(resp))) => {
            assert_eq!(resp.status(), 404)
        }
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn eal_arguments_are_refused_by_a_build_without_dpdk() {
    if cfg!(feature = "dpdk") {
        return; // that build takes them
    }
    for args in [
        &["-l", "2-5", "--", "--addr", "127.0.0.1:0"][..],
        &["--vdev=net_tap0"][..],
        &["-l", "2"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no DPDK support"), "{err}");
        assert!(
            err.contains("cargo build --release -p hioload-echo --features dpdk"),
            "{err}"
        );
        assert!(err.contains("libdpdk-dev"), "{err}");
    }
}

#[test]
fn help_explains_every_flag_with_an_example() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--workers",
        "--path",
        "--max-message",
        "--max-frame",
        "--batch-size",
        "--no-affinity",
        "--grace-period",
        "--backpressure-bytes",
        "--backpressure-timeout",
        "--handshake-timeout",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing"));
        assert!(
            line.len() > flag.len() + 20,
            "{flag} is not explained: {line}"
        );
    }
    assert!(
        help.contains("Examples:") && help.contains("wscat -c ws://127.0.0.1:8080/ws"),
        "{help}"
    );
}

#[test]
fn an_invalid_value_is_reported_by_its_name() {
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("num_workers") && err.contains("got 0"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--max-message", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-message"));
}

#[test]
fn a_busy_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["--addr", &addr, "--no-affinity"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot bind {addr}")), "{err}");
}
