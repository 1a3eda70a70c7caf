//! The real `hioload-echo` binary: command line, start line, echo, and graceful SIGTERM with 100
//! connected clients.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{EchoProcess, BIN, UPGRADE};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

/// How long a log line may take to come.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// A running hioload-echo on 127.0.0.1:0.
struct Echo {
    process: EchoProcess,
    addr: SocketAddr,
    /// The admin listener's address, from the start log.
    admin: Option<SocketAddr>,
}

impl Echo {
    /// With `extra` flags; the admin listener on 127.0.0.1:0 unless they say otherwise (tests
    /// run at once: the default port would be taken by one of them only).
    fn start(extra: &[&str]) -> Echo {
        let own_admin = extra.contains(&"--admin-addr");
        Echo::launch(extra, !own_admin)
    }

    /// With `extra` flags and, unless they give one, the default admin address.
    fn start_default_admin(extra: &[&str]) -> Echo {
        Echo::launch(extra, false)
    }

    fn launch(extra: &[&str], admin_port_0: bool) -> Echo {
        let mut cmd = Command::new(BIN);
        // The I/O backend under test (scripts/test.sh runs these once per backend).
        let io = std::env::var("HIOLOAD_TEST_IO").unwrap_or_else(|_| "auto".into());
        cmd.args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-affinity"])
            .args(["--io", &io]);
        if admin_port_0 {
            cmd.args(["--admin-addr", "127.0.0.1:0"]);
        }
        cmd.args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Echo::spawn(cmd)
    }

    /// Spawns `cmd` (stderr piped) and waits for its start line and its control-plane line.
    fn spawn(cmd: Command) -> Echo {
        let mut process = EchoProcess::spawn(cmd);
        let line = process.next_line_with("listening on ws://", Duration::from_secs(20));
        assert!(
            line.contains("workers, kernel data path, ") || line.contains("1 worker, kernel"),
            "{line}"
        );
        if let Ok(io) = std::env::var("HIOLOAD_TEST_IO") {
            if io != "auto" {
                assert!(line.contains(&format!("{io} I/O")), "{line}");
            }
        }
        let rest = line.split("listening on ws://").nth(1).unwrap();
        let addr = rest.split('/').next().unwrap().parse().unwrap();
        let line = process.next_line_with("control plane: ", LOG_WAIT);
        let admin = line.contains("(admin listener").then(|| {
            line.split("http://")
                .nth(1)
                .and_then(|s| s.split('/').next())
                .unwrap()
                .parse()
                .unwrap()
        });
        Echo {
            process,
            addr,
            admin,
        }
    }
}

impl Deref for Echo {
    type Target = EchoProcess;
    fn deref(&self) -> &EchoProcess {
        &self.process
    }
}

impl DerefMut for Echo {
    fn deref_mut(&mut self) -> &mut EchoProcess {
        &mut self.process
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
    let status = echo.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}, beyond the grace period"
    );
    let log = echo.log_text();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
}

#[test]
fn sigint_with_a_client_that_never_answers_exits_0_at_the_end_of_the_grace_period() {
    let mut echo = Echo::start(&["--grace-period", "1"]);
    let mut silent = TcpStream::connect(echo.addr).unwrap();
    silent.write_all(UPGRADE).unwrap();
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    echo.signal(libc::SIGINT);
    let status = echo.wait_exit(Duration::from_secs(10));
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
        "--idle-timeout",
        "--admin-addr",
        "--control-on-main",
        "--config",
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
    for needle in ["/metrics", "/debug/probes", "SIGHUP", "max_message_size"] {
        assert!(help.contains(needle), "--help does not mention {needle}");
    }
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

#[test]
fn out_of_file_descriptors_drops_new_connections_with_a_log_line_and_recovers() {
    use std::os::unix::process::CommandExt;
    // One worker: with several, one may take the descriptor another just released for its
    // accept-and-close, and that other then backs off until a descriptor frees.
    let mut cmd = Command::new(BIN);
    let io = std::env::var("HIOLOAD_TEST_IO").unwrap_or_else(|_| "auto".into());
    cmd.args(["--addr", "127.0.0.1:0", "--workers", "1", "--no-affinity"])
        .args(["--io", &io, "--admin-addr", "off"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches no other state.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut echo = Echo::spawn(cmd);
    let mut open = Vec::new();
    let mut dropped = 0;
    for _ in 0..100 {
        let mut s = TcpStream::connect(echo.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(UPGRADE);
        let mut head = [0u8; 12];
        match s.read_exact(&mut head) {
            Ok(()) => {
                assert_eq!(&head, b"HTTP/1.1 101");
                open.push(s);
            }
            Err(e) => {
                // Closed at once, not left hanging until the read timeout.
                assert_ne!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock,
                    "connection left hanging"
                );
                dropped += 1;
            }
        }
    }
    assert!(
        open.len() >= 20 && dropped >= 20,
        "{} open, {dropped} dropped",
        open.len()
    );
    let cpu_before = cpu_seconds(echo.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = cpu_seconds(echo.child.id()) - cpu_before;
    assert!(
        idle_cpu < 0.2,
        "the server spins while out of descriptors: {idle_cpu} s CPU in 1 s"
    );

    drop(open);
    std::thread::sleep(Duration::from_millis(300));
    let mut ws = client(echo.addr);
    ws.send(Message::text("back")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("back"));
    let log = echo.log_text();
    assert!(log.contains("raise RLIMIT_NOFILE"), "{log}");
    drop(ws);
    echo.signal(libc::SIGTERM);
    assert!(echo.wait_exit(Duration::from_secs(10)).success());
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

// ---- control plane and hot reload --------------------------------------------------------------

/// `GET path` on `addr`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("a response head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A config file in the test's temporary directory, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("hioload-echo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = ConfigFile(dir.join(name));
        f.write(text);
        f
    }
    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn expect_close(ws: &mut tungstenite::WebSocket<TcpStream>, code: CloseCode) {
    match ws.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, code),
        other => panic!("expected close {code:?}, got {other:?}"),
    }
}

#[test]
fn sighup_lowers_the_max_message_size_of_a_running_server_without_dropping_connections() {
    let file = ConfigFile::new(
        "reload.toml",
        "log_level = \"info\"\n[limits]\nmax_message_size = \"64KiB\"\n",
    );
    let mut echo = Echo::start(&["--config", file.path()]);
    let mut open_before = client(echo.addr);
    let mut bystander = client(echo.addr);
    let ten_k = Message::binary(vec![5u8; 10_000]);
    open_before.send(ten_k.clone()).unwrap();
    assert_eq!(open_before.read().unwrap(), ten_k, "accepted under 64 KiB");

    file.write("log_level = \"info\"\n[limits]\nmax_message_size = \"4KiB\"\n");
    echo.signal(libc::SIGHUP);
    let line = echo.next_line_with("configuration reloaded", LOG_WAIT);
    assert!(line.contains("max_message_size=4096"), "{line}");

    // On the connection that was open before the reload: the same message is now too big.
    open_before.send(ten_k.clone()).unwrap();
    expect_close(&mut open_before, CloseCode::Size);
    // And on a new connection.
    let mut after = client(echo.addr);
    after.send(ten_k).unwrap();
    expect_close(&mut after, CloseCode::Size);
    // The other connection was not dropped.
    bystander.send(Message::text("still open")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("still open"));
    let (status, body) = http_get(echo.admin.unwrap(), "/debug/probes");
    assert_eq!(status, 200);
    assert!(body.contains("\"max_message_size\":4096"), "{body}");
}

#[test]
fn sighup_with_an_invalid_file_is_rejected_and_the_old_settings_stay() {
    let file = ConfigFile::new("invalid.toml", "[limits]\nmax_message_size = \"64KiB\"\n");
    let mut echo = Echo::start(&["--config", file.path()]);
    let mut ws = client(echo.addr);
    let ten_k = Message::binary(vec![6u8; 10_000]);

    for (text, says) in [
        ("[limits]\nmax_message_size = [\n", "invalid.toml"),
        ("[limits]\nmax_mesage_size = 100\n", "max_mesage_size"),
        (
            "[limits]\nmax_message_size = 10\n",
            "limits.max_message_size",
        ),
        (
            "log_level = \"info,=[\"\n[limits]\nmax_message_size = 4096\n",
            "log_level",
        ),
    ] {
        file.write(text);
        echo.signal(libc::SIGHUP);
        let line = echo.next_line_with("configuration rejected", LOG_WAIT);
        assert!(line.contains(says), "{says:?} not in {line}");
        ws.send(ten_k.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), ten_k, "the old 64 KiB limit stays");
    }

    // A restart-only change is applied as far as it can be and logged.
    file.write("workers = 8\n[limits]\nmax_message_size = \"64KiB\"\n");
    echo.signal(libc::SIGHUP);
    let line = echo.next_line_with("after a restart", LOG_WAIT);
    assert!(line.contains("num_workers"), "{line}");
    ws.send(ten_k.clone()).unwrap();
    assert_eq!(ws.read().unwrap(), ten_k);
}

#[test]
fn metrics_and_probes_are_served_on_the_admin_address() {
    let echo = Echo::start(&["--admin-addr", "127.0.0.1:0"]);
    // The admin listener's port is in the start log.
    let admin = echo.admin.expect("the start log names the admin address");
    assert_ne!(admin, echo.addr);
    let mut ws = client(echo.addr);
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).unwrap();
        ws.read().unwrap();
    }
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.lines().any(|l| l == "hioload_messages_in_total 5"),
        "{body}"
    );
    assert!(
        body.lines().any(|l| l == "hioload_sessions_active 1"),
        "{body}"
    );
    assert!(body.contains("hioload_pool_buffers_in_use{node="), "{body}");
    let (status, body) = http_get(admin, "/debug/probes");
    assert_eq!(status, 200);
    assert!(body.starts_with("{\"active_sessions\":1,"), "{body}");
    assert_eq!(
        http_get(echo.addr, "/metrics").0,
        404,
        "not on the WebSocket address"
    );
    assert_eq!(http_get(echo.addr, "/debug/probes").0, 404);
}

#[test]
fn by_default_the_admin_listener_is_on_loopback_9464_and_the_websocket_port_serves_no_metrics() {
    // No --admin-addr: 127.0.0.1:9464, or, when that port is taken on this machine, a warning
    // and no admin listener (the server runs all the same).
    let mut echo = Echo::start_default_admin(&[]);
    match echo.admin {
        Some(admin) => {
            assert_eq!(admin, "127.0.0.1:9464".parse().unwrap());
            assert!(admin.ip().is_loopback());
            assert_eq!(http_get(admin, "/metrics").0, 200);
        }
        None => {
            let log = echo.log_text();
            assert!(
                log.contains("cannot bind the default admin address 127.0.0.1:9464"),
                "{log}"
            );
            assert!(log.contains("control plane: off"), "{log}");
        }
    }
    assert_eq!(http_get(echo.addr, "/metrics").0, 404);
    assert_eq!(http_get(echo.addr, "/debug/probes").0, 404);
    let mut ws = client(echo.addr);
    ws.send(Message::text("still an echo server")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still an echo server"));
}

#[test]
fn control_on_main_serves_metrics_and_probes_on_the_websocket_port_too() {
    let echo = Echo::start(&["--control-on-main"]);
    let admin = echo.admin.expect("the admin listener stays");
    let mut ws = client(echo.addr);
    ws.send(Message::text("m")).unwrap();
    ws.read().unwrap();
    for addr in [echo.addr, admin] {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{addr}");
        assert!(
            body.lines().any(|l| l == "hioload_messages_in_total 1"),
            "{body}"
        );
        let (status, body) = http_get(addr, "/debug/probes");
        assert_eq!(status, 200, "{addr}");
        assert!(body.contains("\"control_on_main\":true"), "{body}");
    }
    assert_eq!(http_get(echo.addr, "/other").0, 404);
}

/// A stalled log sink (stderr is a pipe nobody reads) never stalls service: log lines are
/// dropped and counted, and fresh clients are served within a second.
#[test]
fn a_stalled_log_pipe_drops_lines_and_never_stalls_the_workers() {
    use std::io::BufRead;
    let io = std::env::var("HIOLOAD_TEST_IO").unwrap_or_else(|_| "auto".into());
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-affinity"])
        .args(["--io", &io, "--admin-addr", "127.0.0.1:0"])
        // Debug: a line or more per connection.
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let kill = scopeguard(pid);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut addr, mut admin) = (None, None);
    let mut line = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    while (addr.is_none() || admin.is_none()) && Instant::now() < until {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("listening on ws://").nth(1) {
            addr = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if line.contains("control plane: ") {
            admin = line
                .split("http://")
                .nth(1)
                .and_then(|s| s.split('/').next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
        }
    }
    let (addr, admin): (SocketAddr, SocketAddr) = (addr.unwrap(), admin.unwrap());
    // From here on nobody reads stderr: the pipe (64 KiB) fills up.

    // 3,000 bad requests: each gets a 400 and a debug line or two, more than the pipe and the
    // log queue (2,048 lines) hold.
    for _ in 0..3_000 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // Service goes on: a fresh client's echo within a second.
    let started = Instant::now();
    let mut ws = client(addr);
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "echo took {took:?}");
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let dropped: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("hioload_log_lines_dropped_total "))
        .expect("the log-drop counter is exported")
        .parse()
        .unwrap();
    assert!(dropped > 0, "lines were dropped, not waited for");
    drop(kill);
    let _ = child.wait();
}

/// Kills `pid` (SIGKILL) when dropped, so that a failed assertion leaves no process behind.
fn scopeguard(pid: u32) -> impl Drop {
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: plain kill(2) on a child we spawned.
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
    Kill(pid)
}
