//! The facade's session services over the DPDK data path, in process: a `Server` with
//! `DataPath::Dpdk` on a net_tap port (its kernel side in a namespace this test creates, clients
//! on threads that entered it), two lcores sharing the port. Checks the registry, messages sent by
//! session id and broadcasts across lcores (from a handler and from outside), the control plane's
//! counters, a settings reload, and the graceful stop.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use hioload_ws::{Config, Ctx, DataPath, DpdkConfig, Handler, Message, Server};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message as WsMessage, WebSocket};

const STACK: &str = "198.18.0.2:8080";

/// `id?` answers `<id> <worker>`; `to:<id>:<text>` sends text to a session; `all:<text>`
/// broadcasts; anything else is echoed.
struct Router;

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

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `read`, retried when the tap PMD's signal interrupts it (the EAL runs in this process).
fn read(ws: &mut WebSocket<TcpStream>) -> Result<WsMessage, WsError> {
    loop {
        match ws.read() {
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn text(ws: &mut WebSocket<TcpStream>) -> String {
    match read(ws).unwrap() {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn client() -> WebSocket<TcpStream> {
    let stream = loop {
        match TcpStream::connect_timeout(&STACK.parse().unwrap(), Duration::from_secs(10)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tungstenite::client::client(format!("ws://{STACK}/ws"), stream)
        .unwrap()
        .0
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

#[test]
fn sessions_send_by_id_and_broadcast_across_lcores_over_the_userspace_stack() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (hugepages, tap, netns)"
    );
    let pid = std::process::id();
    let (tap, ns, prefix) = (
        format!("hls{pid}"),
        format!("hioload-s{pid}"),
        format!("hls-{pid}"),
    );
    let _cleanup = Cleanup {
        ns: ns.clone(),
        prefix: prefix.clone(),
    };
    run("ip", &["netns", "add", &ns]);
    let mut eal: Vec<String> = [
        "--no-pci",
        "--no-telemetry",
        "--in-memory",
        "--lcores=0@0,1@0",
    ]
    .map(String::from)
    .into();
    eal.push(format!("--file-prefix={prefix}"));
    eal.push(format!("--vdev=net_tap0,iface={tap}"));
    let mut dpdk = DpdkConfig::new(eal);
    dpdk.idle_sleep = Duration::from_micros(100);
    dpdk.max_connections = 1024;
    let cfg = Config {
        listen: STACK.parse().unwrap(),
        data_path: DataPath::Dpdk(dpdk),
        ..Config::default()
    };
    let server = Server::new(cfg).unwrap().with_handler(Router);
    server.start().expect("the DPDK path starts");
    run("ip", &["link", "set", &tap, "netns", &ns]);
    run(
        "ip",
        &["-n", &ns, "addr", "add", "198.18.0.1/24", "dev", &tap],
    );
    run("ip", &["-n", &ns, "link", "set", &tap, "up"]);

    let server = std::sync::Arc::new(server);
    let outside = server.clone();
    let path = format!("/var/run/netns/{ns}");
    let (ids, workers) = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        block_sigio();
        // SAFETY: setns with a valid namespace fd moves only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut clients: Vec<_> = (0..40).map(|_| client()).collect();
        let mut ids = Vec::new();
        let mut workers = Vec::new();
        for ws in &mut clients {
            ws.send(WsMessage::text("id?")).unwrap();
            let answer = text(ws);
            let (id, worker) = answer.split_once(' ').unwrap();
            ids.push(id.parse::<u64>().unwrap());
            workers.push(worker.parse::<usize>().unwrap());
        }
        // The registry knows every session; the control plane counts them per lcore.
        assert_eq!(outside.sessions().len(), 40);
        assert_eq!(outside.session_count(), 40);
        let probes = outside.probes_json();
        assert!(probes.contains("\"active_sessions\":40"), "{probes}");
        // By id, from a session to one on (possibly) another lcore.
        let target = workers
            .iter()
            .position(|&w| w != workers[0])
            .expect("sessions on both lcores");
        clients[0]
            .send(WsMessage::text(format!("to:{}:psst", ids[target])))
            .unwrap();
        assert_eq!(text(&mut clients[target]), "psst");
        // From outside, by id.
        outside
            .send_to(ids[5], Message::Text("from outside"))
            .unwrap();
        assert_eq!(text(&mut clients[5]), "from outside");
        // Broadcast from a session reaches every session, on both lcores.
        clients[3]
            .send(WsMessage::text("all:hello everyone"))
            .unwrap();
        for ws in &mut clients {
            assert_eq!(text(ws), "hello everyone");
        }
        // Broadcast from outside.
        assert_eq!(
            outside.broadcast(Message::Text("news")).unwrap(),
            2,
            "both lcores queued it"
        );
        for ws in &mut clients {
            assert_eq!(text(ws), "news");
        }
        // A reload lowers the message limit of open sessions, on both lcores (applied at the
        // next deadline tick, every 100 ms).
        let mut lower = outside.config();
        lower.limits.max_message_size = 1000;
        outside.reload(lower).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        clients[0].send(WsMessage::text("x".repeat(2000))).unwrap();
        match read(&mut clients[0]).unwrap() {
            WsMessage::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
            other => panic!("expected close 1009 after the reload, got {other:?}"),
        }
        let small = clients.len() - 1;
        clients[small]
            .send(WsMessage::text("x".repeat(900)))
            .unwrap();
        assert_eq!(text(&mut clients[small]), "x".repeat(900));
        let mut clients = clients.split_off(1);
        // The graceful stop: 1001 to everyone.
        outside.stop();
        for ws in &mut clients {
            match read(ws).unwrap() {
                WsMessage::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
        (ids, workers)
    })
    .join()
    .unwrap();
    server.wait().unwrap();
    assert_eq!(ids.len(), 40);
    assert!(
        workers.contains(&0) && workers.contains(&1),
        "sessions on both lcores: {workers:?}"
    );
    assert_eq!(server.session_count(), 0);
}
