//! Topics (publish/subscribe) on both data paths, in the style of `conformance.rs`: every
//! scenario is one function, run against the kernel path (on the I/O backend `HIOLOAD_TEST_IO`
//! names; `scripts/test.sh` runs this file on io_uring and on epoll) and against the DPDK path
//! over net_tap, its clients in a network namespace. Clients are tungstenite (not ours) or raw
//! sockets; what the server did is read from its `/metrics` text and from the handler's record.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{parse_prometheus, sample};
use hioload_ws::{
    CloseCode, Config, Ctx, Handler, Message, Server, Subscription, UpgradeCtx, UpgradeRequest,
};
use tungstenite::{Error as WsError, Message as WsMessage, WebSocket};

// ---- the application under test ---------------------------------------------------------------

/// What the handler saw.
#[derive(Default)]
struct Record {
    /// (session, close code).
    closes: Vec<(u64, u16)>,
}

/// Subscribes at the upgrade's request (`?sub=a,b&policy=close&max=BYTES`), and answers text
/// commands: `sub:T` / `unsub:T` (then `ok`), `pub:T:TEXT`, `pubx:T:TEXT` (not to itself),
/// `burst:T:N:SIZE` (N binary messages of SIZE bytes, each starting with its 4-byte sequence
/// number).
#[derive(Default)]
struct TopicApp {
    record: Mutex<Record>,
    changed: Condvar,
}

struct Wanted(Vec<String>, Subscription);

impl TopicApp {
    fn wait_for(&self, what: &str, pred: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut r = self.record.lock().unwrap();
        while !pred(&r) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            r = self.changed.wait_timeout(r, left).unwrap().0;
        }
    }
}

impl Handler for TopicApp {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>, _: &mut UpgradeCtx<'_>) -> hioload_ws::Upgrade {
        let topics: Vec<String> = req
            .query_param("sub")
            .map(|s| s.split(',').map(String::from).collect())
            .unwrap_or_default();
        let mut sub = match req.query_param("policy") {
            Some("close") => Subscription::close(),
            _ => Subscription::skip(),
        };
        if let Some(max) = req.query_param("max") {
            sub = sub.max_buffered(max.parse().unwrap());
        }
        hioload_ws::Upgrade::Accept(hioload_ws::Accept::new().user_data(Wanted(topics, sub)))
    }
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        if let Some(Wanted(topics, sub)) = ctx.take_user_data::<Wanted>() {
            for t in topics {
                ctx.subscribe_with(&t, sub).unwrap();
            }
        }
        ctx.send_text("ready").unwrap();
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        let (cmd, rest) = t.split_once(':').unwrap();
        match cmd {
            "sub" => {
                ctx.subscribe(rest).unwrap();
                ctx.send_text("ok").unwrap();
            }
            "unsub" => {
                ctx.unsubscribe(rest);
                ctx.send_text("ok").unwrap();
            }
            "pub" | "pubx" => {
                let (topic, text) = rest.split_once(':').unwrap();
                let r = if cmd == "pub" {
                    ctx.publish(topic, Message::Text(text))
                } else {
                    ctx.publish_others(topic, Message::Text(text))
                };
                r.unwrap();
            }
            "burst" => {
                let mut it = rest.split(':');
                let topic = it.next().unwrap();
                let n: u32 = it.next().unwrap().parse().unwrap();
                let size: usize = it.next().unwrap().parse().unwrap();
                let mut buf = vec![0x33u8; size];
                for i in 0..n {
                    buf[..4].copy_from_slice(&i.to_be_bytes());
                    ctx.publish(topic, Message::Binary(&buf)).unwrap();
                }
                ctx.send_text("burst done").unwrap();
            }
            other => panic!("unknown command {other}"),
        }
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, _: &str) {
        self.record
            .lock()
            .unwrap()
            .closes
            .push((ctx.session_id(), code.0));
        self.changed.notify_all();
    }
}

// ---- a server of either data path ---------------------------------------------------------------

struct Target {
    server: Arc<Server>,
    app: Arc<TopicApp>,
    #[cfg(feature = "dpdk")]
    net: Option<common::dpdk::TapNet>,
}

fn start(cfg: Config) -> (Arc<Server>, Arc<TopicApp>) {
    let app = Arc::new(TopicApp::default());
    let server = Server::new(cfg).unwrap().with_shared_handler(app.clone());
    server.start().unwrap();
    (Arc::new(server), app)
}

impl Target {
    /// The kernel path on loopback, two workers.
    fn kernel() -> Target {
        let (server, app) = start(common::test_config());
        Target {
            server,
            app,
            #[cfg(feature = "dpdk")]
            net: None,
        }
    }

    /// The DPDK path over net_tap, one lcore.
    #[cfg(feature = "dpdk")]
    fn dpdk() -> Target {
        let net = common::dpdk::TapNet::create('t');
        let (server, app) = start(net.config("0@0", 256));
        net.attach_tap();
        Target {
            server,
            app,
            net: Some(net),
        }
    }

    /// Runs `f` as a client of the server (inside the namespace on the DPDK path).
    fn client<R: Send + 'static>(&self, f: impl FnOnce(SocketAddr) -> R + Send + 'static) -> R {
        let addr = self.server.local_addr().unwrap();
        #[cfg(feature = "dpdk")]
        if let Some(net) = &self.net {
            return net.in_ns(move || f(addr));
        }
        std::thread::spawn(move || f(addr)).join().unwrap()
    }

    /// The value of `series` in `/metrics`, once `pred` holds for it (the workers report their
    /// topics every half second); panics after 10 s.
    fn metric_when(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = sample(&parse_prometheus(&self.server.metrics_text()), series).unwrap_or(0.0);
            if pred(v) {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self.server.metrics_text();
                let topics: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("hioload_topic"))
                    .collect();
                panic!(
                    "{series} is {v}, never what was expected; topic metrics:\n{}",
                    topics.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---- client side ------------------------------------------------------------------------------

fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    for _ in 0..1000 {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
    panic!("interrupted 1000 times")
}

/// A tungstenite client of `/ws?{query}`, after the server's "ready".
fn ws(addr: SocketAddr, query: &str) -> WebSocket<TcpStream> {
    ws_with(addr, query, None)
}

/// [`ws`] with a small receive buffer (a client that will not keep up).
fn ws_with(addr: SocketAddr, query: &str, rcvbuf: Option<usize>) -> WebSocket<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(size) = rcvbuf {
        sock.set_recv_buffer_size(size).unwrap();
    }
    retry(|| sock.connect_timeout(&addr.into(), Duration::from_secs(10))).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut ws = tungstenite::client::client(format!("ws://{addr}/ws?{query}"), s)
        .expect("handshake")
        .0;
    assert_eq!(text(&mut ws), "ready");
    ws
}

fn read(ws: &mut WebSocket<TcpStream>) -> Result<WsMessage, WsError> {
    for _ in 0..1000 {
        match ws.read() {
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
    panic!("interrupted 1000 times")
}

fn text(ws: &mut WebSocket<TcpStream>) -> String {
    match read(ws).expect("a message") {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn command(ws: &mut WebSocket<TcpStream>, cmd: &str) {
    ws.send(WsMessage::text(cmd)).unwrap();
}

/// Nothing arrives within `wait` (the socket's read timeout is set to it).
fn nothing_within(ws: &mut WebSocket<TcpStream>, wait: Duration) {
    ws.get_ref().set_read_timeout(Some(wait)).unwrap();
    match read(ws) {
        Err(WsError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

// ---- scenarios --------------------------------------------------------------------------------

/// Subscribers on every worker get each message published to their topic once, in the
/// publisher's order; a session not subscribed gets nothing; `publish_others` skips the
/// publisher; `Server::publish` (any thread) reaches them too.
fn published_messages_reach_every_subscriber_once_in_order(t: &Target) {
    let server = t.server.clone();
    t.client(move |addr| {
        // Four subscribers: on two workers, the connections land on both.
        let mut subs: Vec<_> = (0..4).map(|_| ws(addr, "sub=room")).collect();
        let mut other = ws(addr, "sub=elsewhere");
        let mut publisher = ws(addr, "sub=room");
        for i in 0..50 {
            command(&mut publisher, &format!("pubx:room:m{i}"));
        }
        for (n, s) in subs.iter_mut().enumerate() {
            for i in 0..50 {
                assert_eq!(text(s), format!("m{i}"), "subscriber {n}, message {i}");
            }
        }
        // The publisher itself (subscribed, but excluded) and the other topic got nothing; a
        // plain publish reaches the publisher too.
        command(&mut publisher, "pub:room:to-all");
        assert_eq!(text(&mut publisher), "to-all");
        for s in subs.iter_mut() {
            assert_eq!(text(s), "to-all");
        }
        server
            .publish("room", Message::Text("from-server"))
            .unwrap();
        for s in subs.iter_mut() {
            assert_eq!(text(s), "from-server");
        }
        assert_eq!(text(&mut publisher), "from-server");
        nothing_within(&mut other, Duration::from_millis(300));
        for s in subs.iter_mut() {
            nothing_within(s, Duration::from_millis(50));
        }
        // A subscription made in a callback holds for what is published after it.
        command(&mut other, "sub:room");
        assert_eq!(text(&mut other), "ok");
        command(&mut publisher, "pubx:room:late");
        assert_eq!(text(&mut other), "late");
        for s in subs.iter_mut() {
            assert_eq!(text(s), "late");
        }
    });
    // 50 + 3 publications, each delivered to 4 subscribers (+ 2 to the publisher, + 1 to the
    // latecomer).
    t.metric_when("hioload_topic_deliveries_total", |v| v >= 4.0 * 53.0 + 3.0);
}

/// Subscribers leave the index when they unsubscribe or close; a topic without subscribers is
/// gone from `/metrics` and `/debug/probes`.
fn unsubscribe_and_close_remove_subscribers(t: &Target) {
    let series = "hioload_topic_subscribers{topic=\"leaving\"}";
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (step_tx, step_rx) = std::sync::mpsc::channel::<u32>();
    let client = move |addr: SocketAddr| {
        let mut a = ws(addr, "sub=leaving");
        let b = ws(addr, "sub=leaving,second");
        let mut c = ws(addr, "sub=leaving");
        step_tx.send(1).unwrap();
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        command(&mut a, "unsub:leaving");
        assert_eq!(text(&mut a), "ok");
        step_tx.send(2).unwrap();
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        drop(b); // gone without a close handshake
        step_tx.send(3).unwrap();
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        c.close(None).unwrap();
        let _ = read(&mut c); // its close comes back
        step_tx.send(4).unwrap();
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    };
    std::thread::scope(|scope| {
        // Dropped if this thread panics, so that the client stops waiting for it.
        let tx = tx;
        let addr = t.server.local_addr().unwrap();
        let h = scope.spawn(move || {
            #[cfg(feature = "dpdk")]
            if let Some(net) = &t.net {
                return net.in_ns(move || client(addr));
            }
            client(addr)
        });
        assert_eq!(step_rx.recv_timeout(Duration::from_secs(20)).unwrap(), 1);
        t.metric_when(series, |v| v == 3.0);
        t.metric_when("hioload_topic_subscribers{topic=\"second\"}", |v| v == 1.0);
        assert!(t
            .server
            .probes_json()
            .contains("{\"topic\":\"leaving\",\"subscribers\":3,"));
        tx.send(()).unwrap();
        assert_eq!(step_rx.recv_timeout(Duration::from_secs(20)).unwrap(), 2);
        t.metric_when(series, |v| v == 2.0);
        tx.send(()).unwrap();
        assert_eq!(step_rx.recv_timeout(Duration::from_secs(20)).unwrap(), 3);
        t.metric_when(series, |v| v == 1.0);
        // `second` lost its only subscriber: gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.server.metrics_text().contains("topic=\"second\"") {
            assert!(Instant::now() < deadline, "topic `second` still reported");
            std::thread::sleep(Duration::from_millis(50));
        }
        tx.send(()).unwrap();
        assert_eq!(step_rx.recv_timeout(Duration::from_secs(20)).unwrap(), 4);
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.server.metrics_text().contains("topic=\"leaving\"") {
            assert!(Instant::now() < deadline, "topic `leaving` still reported");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!t.server.probes_json().contains("\"leaving\""));
        assert_eq!(t.server.topics().topics, 0);
        assert_eq!(t.server.topics().subscriptions, 0);
        tx.send(()).unwrap();
        h.join().unwrap();
    });
}

/// A burst to three subscribers: one reads (it gets every message, in order), one does not read
/// and skips (what it gets plus what was counted as skipped is exactly the burst), one does not
/// read and is closed with 1008 (counted). Nothing is lost without a count.
fn slow_subscribers_follow_their_policy(t: &Target) {
    // 12.5 MiB: more than the kernel's socket buffers of a peer that does not read take.
    const N: u32 = 400;
    const SIZE: usize = 32 << 10;
    // Node totals: a topic's own series lasts while it has subscribers on a worker (the closed
    // subscriber may have been its worker's last).
    let skipped_series = "hioload_topic_slow_total{reason=\"skipped\"}";
    let closed_series = "hioload_topic_slow_total{reason=\"closed\"}";
    let closes_before = t.app.record.lock().unwrap().closes.len();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<u64>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<u32>();
    std::thread::scope(|scope| {
        // Dropped if this thread panics, so that the client stops waiting for it.
        let go_tx = go_tx;
        let addr = t.server.local_addr().unwrap();
        let client = move |addr: SocketAddr| {
            // The fast one may buffer the whole burst (under the hard bound, 32 MiB); the slow
            // ones count as slow past 64 KiB.
            let mut fast = ws(addr, &format!("sub=burst&max={}", 30 << 20));
            let mut skipper = ws_with(addr, "sub=burst&max=65536", Some(4096));
            let mut closer = ws_with(addr, "sub=burst&max=65536&policy=close", Some(4096));
            let mut publisher = ws(addr, "");
            command(&mut publisher, &format!("burst:burst:{N}:{SIZE}"));
            assert_eq!(text(&mut publisher), "burst done");
            for i in 0..N {
                match read(&mut fast).unwrap() {
                    WsMessage::Binary(b) => {
                        assert_eq!(b.len(), SIZE);
                        assert_eq!(u32::from_be_bytes(b[..4].try_into().unwrap()), i);
                    }
                    other => panic!("{other:?}"),
                }
            }
            // The main thread reads the skip count once the burst is over.
            let skipped = go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            let mut got = 0u32;
            let mut last: Option<u32> = None;
            while u64::from(got) + skipped < u64::from(N) {
                match read(&mut skipper).unwrap() {
                    WsMessage::Binary(b) => {
                        let seq = u32::from_be_bytes(b[..4].try_into().unwrap());
                        assert!(last.is_none_or(|l| seq > l), "in order");
                        last = Some(seq);
                        got += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            nothing_within(&mut skipper, Duration::from_millis(300));
            // The closed one: its connection ends (a Close 1008 it may not reach, or a reset).
            closer
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut ended = false;
            for _ in 0..(N + 10) {
                match read(&mut closer) {
                    Ok(WsMessage::Binary(_)) => continue,
                    Ok(WsMessage::Close(Some(f))) => {
                        assert_eq!(u16::from(f.code), 1008);
                        ended = true;
                        break;
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
            assert!(ended, "the slow subscriber with policy close was closed");
            done_tx.send(got).unwrap();
        };
        let h = scope.spawn(move || {
            #[cfg(feature = "dpdk")]
            if let Some(net) = &t.net {
                return net.in_ns(move || client(addr));
            }
            client(addr)
        });
        // The burst is over once the fast subscriber has all of it delivered; the counts
        // settle at the next report.
        t.metric_when("hioload_topic_published_total{topic=\"burst\"}", |v| {
            v >= f64::from(N)
        });
        let closed = t.metric_when(closed_series, |v| v >= 1.0);
        assert_eq!(closed, 1.0, "one subscriber closed");
        let skipped = t.metric_when(skipped_series, |v| v > 0.0);
        std::thread::sleep(Duration::from_millis(600)); // one more report: the count is final
        let skipped2 = t.metric_when(skipped_series, |v| v > 0.0);
        assert_eq!(skipped, skipped2, "the skip count settled");
        go_tx.send(skipped as u64).unwrap();
        let got = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            u64::from(got) + skipped as u64,
            u64::from(N),
            "received + skipped = published"
        );
        assert!(got > 0, "the skipper got the start of the burst");
        h.join().unwrap();
    });
    t.app.wait_for("the slow subscriber's on_close", |r| {
        r.closes[closes_before..].iter().any(|c| c.1 == 1008)
    });
    assert_eq!(
        t.metric_when("hioload_topic_slow_total{reason=\"closed\"}", |v| v >= 1.0),
        1.0
    );
}

// ---- the kernel path: a server per scenario ---------------------------------------------------

macro_rules! kernel_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let t = Target::kernel();
            super::$name(&t);
        }
    )*};
}

mod kernel {
    kernel_tests!(
        published_messages_reach_every_subscriber_once_in_order,
        unsubscribe_and_close_remove_subscribers,
        slow_subscribers_follow_their_policy,
    );
    use super::Target;
}

// ---- the DPDK path: every scenario on one server (one EAL per process) -------------------------

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_path_passes_every_topic_scenario() {
    let t = Target::dpdk();
    published_messages_reach_every_subscriber_once_in_order(&t);
    unsubscribe_and_close_remove_subscribers(&t);
    slow_subscribers_follow_their_policy(&t);
}
