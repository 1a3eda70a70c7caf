//! Helpers shared by the facade's integration tests: a server on 127.0.0.1:0 with a recording
//! echo handler, a `tungstenite` client (not ours), and a minimal raw client for what a
//! well-behaved client library will not do (fragments by hand, bad requests, resets mid-frame).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hioload_ws::{
    Accept, CloseCode, Config, Ctx, Handler, Message, Rejection, SendStatus, Server, Upgrade,
    UpgradeCtx, UpgradeError, UpgradeRequest,
};
use tungstenite::WebSocket;

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod tls;

/// A config for tests: loopback, port 0, two workers, no pinning (the machine is shared).
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        num_workers: 2,
        cpu_affinity: false,
        io_backend: test_io_backend(),
        ..Config::default()
    }
}

/// The kernel I/O backend under test: `HIOLOAD_TEST_IO` (`auto`, `poll`, `io-uring`; default
/// `auto`). scripts/test.sh runs the kernel-path tests once per backend.
pub fn test_io_backend() -> hioload_ws::IoBackend {
    match std::env::var("HIOLOAD_TEST_IO") {
        Ok(name) => name.parse().expect("HIOLOAD_TEST_IO"),
        Err(_) => hioload_ws::IoBackend::Auto,
    }
}

/// What the server's handler saw.
#[derive(Default)]
pub struct Record {
    pub opened: usize,
    /// The user name in each opened session's user data, as `on_open` saw it.
    pub opened_users: Vec<Option<String>>,
    pub closes: Vec<(u64, u16, String)>,
    /// The user name in each closed session's user data (`None`: it had none).
    pub close_users: Vec<Option<String>>,
    /// What completing each deferred upgrade returned.
    pub deferred: Vec<Result<(), UpgradeError>>,
    /// `on_drain` calls.
    pub drains: usize,
    /// Statuses of the `flood-until-backpressure` sends: how many were `Queued`, then whether
    /// the last was `Backpressure`.
    pub flood: Option<(usize, bool)>,
    /// The session that asked for the flood.
    pub flood_session: Option<u64>,
}

/// A session's user data in the tests: the name given at the upgrade (`?user=NAME`).
pub struct User(pub String);

/// Echoes every message; `close-me <code>` makes the server close with that code, `panic` panics,
/// `flood` is answered with 64 binary messages of 64 KiB (4 MiB) in one turn,
/// `flood-until-backpressure` with 16 KiB messages until a send reports backpressure (then
/// `drained` when `on_drain` comes), `whoami` with the session's user name. Upgrades: `?reject`
/// is refused with 401, a `WWW-Authenticate` header and a body; `?user=NAME` is accepted with
/// `User(NAME)` as user data (and the subprotocol `chat` when offered); `?defer=MS` is decided
/// `MS` ms later from another thread (accepted, or with `&deny` refused with 403). Records opens,
/// closes (with the user), deferred completions, drains.
#[derive(Default)]
pub struct RecordingEcho {
    pub record: Mutex<Record>,
    pub changed: Condvar,
    /// Itself, for the threads that complete deferred upgrades (set by `start_echo`).
    pub me: std::sync::OnceLock<std::sync::Weak<RecordingEcho>>,
}

impl RecordingEcho {
    /// Waits until `pred` holds for the record (or panics after `timeout`).
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
        while !pred(&rec) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "timed out waiting for {what}; closes so far: {:?}",
                        rec.closes
                    )
                });
            rec = self.changed.wait_timeout(rec, left).unwrap().0;
        }
    }

    pub fn close_codes(&self) -> Vec<u16> {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closes
            .iter()
            .map(|c| c.1)
            .collect()
    }
}

impl RecordingEcho {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn self_arc(&self) -> Option<Arc<RecordingEcho>> {
        self.me.get()?.upgrade()
    }
}

impl Handler for RecordingEcho {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        if req.query_param("reject").is_some() {
            return Upgrade::Reject(
                Rejection::new(401, "token required\n").header("WWW-Authenticate", "Token"),
            );
        }
        let mut accept = Accept::new();
        if let Some(user) = req.query_param("user") {
            accept = accept.user_data(User(user.to_string()));
        }
        if req.offered_protocols().any(|p| p == "chat") {
            accept = accept.protocol("chat");
        }
        if let Some(ms) = req.query_param("defer") {
            let ms: u64 = ms.parse().unwrap();
            let deny = req.query_param("deny").is_some();
            let pending = ctx.defer();
            let rec = self.self_arc();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                let result = if deny {
                    pending.reject(Rejection::new(403, "not today\n"))
                } else {
                    pending.accept(accept)
                };
                if let Some(rec) = rec {
                    rec.record().deferred.push(result);
                    rec.changed.notify_all();
                }
            });
            return Upgrade::Deferred;
        }
        Upgrade::Accept(accept)
    }
    fn on_drain(&self, ctx: &mut Ctx<'_>) {
        let mut rec = self.record();
        rec.drains += 1;
        // Only the session that asked for the flood hears of it (other tests echo large
        // messages and expect nothing else).
        let flooding = rec.flood_session == Some(ctx.session_id());
        drop(rec);
        self.changed.notify_all();
        if flooding {
            let _ = ctx.send_text("drained");
        }
    }
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let user = ctx.user_data::<User>().map(|u| u.0.clone());
        let mut rec = self.record();
        rec.opened += 1;
        rec.opened_users.push(user);
        drop(rec);
        self.changed.notify_all();
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            if let Some(code) = t.strip_prefix("close-me ") {
                ctx.close(CloseCode(code.parse().unwrap()), "requested")
                    .unwrap();
                return;
            }
            if t == "panic" {
                panic!("handler panic requested by the test");
            }
            if t == "whoami" {
                let name = ctx
                    .user_data::<User>()
                    .map_or("nobody".to_string(), |u| u.0.clone());
                ctx.send_text(&name).unwrap();
                return;
            }
            if t == "flood-until-backpressure" {
                let chunk = vec![0x5au8; 16 << 10];
                let mut queued = 0;
                let mut backpressure = false;
                for _ in 0..4096 {
                    match ctx.send_binary(&chunk) {
                        Ok(SendStatus::Queued) => queued += 1,
                        Ok(SendStatus::Backpressure) => {
                            backpressure = true;
                            break;
                        }
                        Err(e) => panic!("a send was refused: {e:?}"),
                    }
                }
                assert!(ctx.buffered_amount() > 0, "output is buffered");
                let mut rec = self.record();
                rec.flood = Some((queued, backpressure));
                rec.flood_session = Some(ctx.session_id());
                drop(rec);
                self.changed.notify_all();
                return;
            }
            if t == "flood" {
                let chunk = vec![0x5au8; 64 << 10];
                for _ in 0..64 {
                    let _ = ctx.send_binary(&chunk);
                }
                return;
            }
        }
        ctx.send(msg).unwrap();
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        assert!(
            ctx.send_text("too late").is_err(),
            "sends are refused after the close"
        );
        let user = ctx.user_data::<User>().map(|u| u.0.clone());
        let mut rec = self.record();
        rec.closes
            .push((ctx.session_id(), code.0, reason.to_string()));
        rec.close_users.push(user);
        drop(rec);
        self.changed.notify_all();
    }
}

/// `id?` answers `<id> <worker>`; `to:<id>:<text>` sends text to session id; `all:<text>`
/// broadcasts; anything else is echoed.
pub struct Router;

impl Handler for Router {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(t) = msg else {
            let _ = ctx.send(msg);
            return;
        };
        if t == "id?" {
            let _ = ctx.send_text(&format!("{} {}", ctx.session_id(), ctx.worker()));
        } else if let Some(rest) = t.strip_prefix("to:") {
            let (id, text) = rest.split_once(':').unwrap();
            if let Err(e) = ctx.send_to(id.parse().unwrap(), Message::Text(text)) {
                let _ = ctx.send_text(&format!("error: {e}"));
            }
        } else if let Some(text) = t.strip_prefix("all:") {
            ctx.broadcast(Message::Text(text)).unwrap();
        } else {
            let _ = ctx.send(msg);
        }
    }
}

/// Starts a server with a recording echo handler.
pub fn start_echo(cfg: Config) -> (Server, Arc<RecordingEcho>) {
    let rec = Arc::new(RecordingEcho::default());
    let _ = rec.me.set(Arc::downgrade(&rec));
    let server = Server::new(cfg).unwrap().with_shared_handler(rec.clone());
    server.start().unwrap();
    (server, rec)
}

/// Starts a server with a recording echo handler and connects a client to its `/ws`.
pub fn start_echo_with_client(cfg: Config) -> (Server, Arc<RecordingEcho>, WebSocket<TcpStream>) {
    let (server, rec) = start_echo(cfg);
    let ws = client(server.local_addr().unwrap(), "/ws");
    (server, rec, ws)
}

/// A tungstenite client connected to `ws://addr{path}`.
pub fn client(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) =
        tungstenite::client::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Waits until `f` is true, polling; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- raw client ------------------------------------------------------------------------------

/// Sends `request` and returns the response head (up to the blank line).
pub fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut s);
    (s, head)
}

pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "response head cut short ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}

pub fn upgrade_request(path: &str, version: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A raw connection past a successful handshake.
pub fn raw_ws(addr: SocketAddr) -> TcpStream {
    let (s, head) = raw_request(addr, &upgrade_request("/ws", "13", KEY));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame: (fin, opcode with the RSV bits above it, payload).
pub fn read_frame_rsv(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
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
    (h[0] & 0x80 != 0, h[0] & 0x7f, payload)
}

/// Reads one server frame: (fin, opcode, payload). Server frames must be unmasked.
pub fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let (fin, opcode, payload) = read_frame_rsv(s);
    (fin, opcode & 0x0f, payload)
}

/// Reads until the server closes the TCP connection, which must be a clean close (FIN, not a
/// reset) with nothing more sent.
pub fn expect_eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("a clean TCP close");
    assert!(rest.is_empty(), "unexpected bytes before EOF: {rest:?}");
}

/// Default wait for the server to react.
pub const T: Duration = Duration::from_secs(10);

// ---- control plane ---------------------------------------------------------------------------

/// `GET path` over a fresh loopback connection: (status, head, body). The server closes after.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, head.to_string(), body.to_string())
}

/// Parses Prometheus text (format 0.0.4) strictly: every line is a `# HELP`/`# TYPE` comment or a
/// `name{labels} value` sample whose family was typed before. Returns (name with labels, value).
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it
                .next()
                .unwrap_or_else(|| panic!("TYPE without kind: {line}"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "family typed twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "bad line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        samples.push((series.to_string(), v));
    }
    samples
}

/// The value of the sample `series` (name with labels, as written), if present.
pub fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}
