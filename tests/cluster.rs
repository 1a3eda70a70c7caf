//! Topics across nodes through a real Redis: each test starts `redis-server` from the
//! distribution (scripts/setup.sh installs it) on a free loopback port, two hioload-ws servers
//! joined through it, and tungstenite clients; Redis is killed by its PID.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{parse_prometheus, sample};
use hioload_ws::cluster::resp::{Conn, RedisUrl, Value};
use hioload_ws::cluster::ClusterConfig;
use hioload_ws::{Config, Ctx, Handler, Message, Server};
use tungstenite::{Error as WsError, Message as WsMessage, WebSocket};

/// A `redis-server` of this test, on `port`; killed (by PID) on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = r.conn() {
                if c.call(&[b"PING"]).is_ok() {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> std::io::Result<Conn> {
        Conn::open(
            &RedisUrl::parse(&self.url()).unwrap(),
            Duration::from_secs(2),
            1 << 20,
        )
    }

    /// Nodes subscribed to topic `topic`'s channel (sharded pub/sub: Redis 7).
    fn subscribers(&self, topic: &str) -> i64 {
        let mut c = self.conn().unwrap();
        let channel = format!("hioload:{topic}");
        match c
            .call(&[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()])
            .unwrap()
        {
            Value::Array(Some(items)) => match items.get(1) {
                Some(Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn wait_subscribers(&self, topic: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.subscribers(topic) != n {
            assert!(
                Instant::now() < deadline,
                "Redis never saw {n} nodes subscribed to {topic}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (by its PID) and waits for it.
    fn kill(mut self) -> u16 {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `?sub=T` subscribes; `pub:T:TEXT` publishes.
struct Chat;

impl Handler for Chat {
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        ctx.send_text("ready").unwrap();
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        if let Some(topic) = t.strip_prefix("sub:") {
            ctx.subscribe(topic).unwrap();
            ctx.send_text("ok").unwrap();
        } else if let Some(rest) = t.strip_prefix("pub:") {
            let (topic, text) = rest.split_once(':').unwrap();
            ctx.publish_others(topic, Message::Text(text)).unwrap();
        }
    }
}

fn node(redis: &Redis) -> Arc<Server> {
    let cfg = Config {
        cluster: Some(ClusterConfig::redis(redis.url())),
        ..common::test_config()
    };
    let server = Server::new(cfg).unwrap().with_handler(Chat);
    server.start().unwrap();
    Arc::new(server)
}

fn metric(server: &Server, series: &str) -> f64 {
    sample(&parse_prometheus(&server.metrics_text()), series).unwrap_or(0.0)
}

fn metric_when(server: &Server, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = metric(server, series);
        if pred(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} stays at {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ws(addr: SocketAddr) -> WebSocket<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut ws = tungstenite::client::client(format!("ws://{addr}/ws"), s)
        .unwrap()
        .0;
    assert_eq!(text(&mut ws), "ready");
    ws
}

fn read(ws: &mut WebSocket<TcpStream>) -> Result<WsMessage, WsError> {
    ws.read()
}

fn text(ws: &mut WebSocket<TcpStream>) -> String {
    match read(ws).expect("a message") {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn subscriber(addr: SocketAddr, topic: &str) -> WebSocket<TcpStream> {
    let mut s = ws(addr);
    s.send(WsMessage::text(format!("sub:{topic}"))).unwrap();
    assert_eq!(text(&mut s), "ok");
    s
}

fn publish(p: &mut WebSocket<TcpStream>, topic: &str, range: std::ops::Range<u32>) {
    for i in range {
        p.send(WsMessage::text(format!("pub:{topic}:m{i}")))
            .unwrap();
    }
}

/// Reads `range`'s messages, in order, then nothing more within `quiet`.
fn expect(s: &mut WebSocket<TcpStream>, range: std::ops::Range<u32>, who: &str) {
    for i in range {
        assert_eq!(text(s), format!("m{i}"), "{who}: message {i}");
    }
}

fn nothing_more(s: &mut WebSocket<TcpStream>, quiet: Duration, who: &str) {
    s.get_ref().set_read_timeout(Some(quiet)).unwrap();
    match read(s) {
        Err(WsError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{who}: expected nothing more, got {other:?}"),
    }
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

/// A client on node A publishes; subscribers on A and on B get every message exactly once, in
/// order; each node holds one Redis subscription for the topic, whatever its number of
/// subscribers, and drops it when the last one leaves.
#[test]
fn two_nodes_deliver_each_message_once_in_order() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut on_a: Vec<_> = (0..2).map(|_| subscriber(addr_a, "news")).collect();
    let mut on_b: Vec<_> = (0..3).map(|_| subscriber(addr_b, "news")).collect();
    // One subscription per node, not per client.
    redis.wait_subscribers("news", 2);
    let mut publisher = ws(addr_a);
    publish(&mut publisher, "news", 0..200);
    for (i, s) in on_a.iter_mut().enumerate() {
        expect(s, 0..200, &format!("A{i}"));
    }
    for (i, s) in on_b.iter_mut().enumerate() {
        expect(s, 0..200, &format!("B{i}"));
    }
    for (i, s) in on_a.iter_mut().chain(on_b.iter_mut()).enumerate() {
        nothing_more(
            s,
            Duration::from_millis(if i == 0 { 500 } else { 20 }),
            "subscriber",
        );
    }
    nothing_more(&mut publisher, Duration::from_millis(20), "publisher");
    assert_eq!(metric(&a, "hioload_cluster_sent_total"), 200.0);
    assert_eq!(metric(&b, "hioload_cluster_received_total"), 200.0);
    // A's own messages came back from Redis and were dropped, not delivered twice.
    metric_when(&a, "hioload_cluster_own_echoes_total", |v| v == 200.0);
    assert_eq!(metric(&a, "hioload_cluster_received_total"), 0.0);
    assert_eq!(metric(&b, "hioload_cluster_channels"), 1.0);
    // B's subscribers leave: B drops its Redis subscription.
    drop(on_b);
    redis.wait_subscribers("news", 1);
    metric_when(&b, "hioload_cluster_channels", |v| v == 0.0);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Redis killed and restarted mid-test: both nodes keep serving their own subscribers, what A
/// published during the outage is counted as not sent (B's subscribers miss exactly those), and
/// delivery across nodes resumes after the nodes reconnect and resubscribe.
#[test]
fn delivery_resumes_after_redis_comes_back() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut sub_a = subscriber(addr_a, "ticks");
    let mut sub_b = subscriber(addr_b, "ticks");
    redis.wait_subscribers("ticks", 2);
    let mut publisher = ws(addr_a);

    publish(&mut publisher, "ticks", 0..20);
    expect(&mut sub_a, 0..20, "A before");
    expect(&mut sub_b, 0..20, "B before");

    // The outage.
    let port = redis.kill();
    metric_when(&a, "hioload_cluster_subscriber_up", |v| v == 0.0);
    metric_when(&b, "hioload_cluster_subscriber_up", |v| v == 0.0);
    publish(&mut publisher, "ticks", 20..40);
    // Local traffic goes on.
    expect(&mut sub_a, 20..40, "A during the outage");
    // What A could not send is counted: all 20 (the batch in flight when the connection
    // broke, then every publication while Redis was unreachable).
    let lost = metric_when(
        &a,
        "hioload_cluster_dropped_total{reason=\"disconnected\"}",
        |v| v >= 20.0,
    );
    assert_eq!(lost, 20.0, "A counts the 20 publications it could not send");
    assert!(metric(&a, "hioload_cluster_failures_total") >= 1.0);
    nothing_more(
        &mut sub_b,
        Duration::from_millis(300),
        "B during the outage",
    );

    // Redis comes back on the same port: both nodes reconnect and resubscribe.
    let redis = Redis::start_on(port);
    redis.wait_subscribers("ticks", 2);
    metric_when(&a, "hioload_cluster_publisher_up", |v| v == 1.0);
    publish(&mut publisher, "ticks", 40..60);
    expect(&mut sub_a, 40..60, "A after");
    // B missed exactly the outage's 20 messages: the next it gets is m40.
    expect(&mut sub_b, 40..60, "B after");
    nothing_more(&mut sub_b, Duration::from_millis(300), "B after");
    assert_eq!(metric(&a, "hioload_cluster_sent_total"), 40.0);
    assert_eq!(metric(&b, "hioload_cluster_received_total"), 40.0);
    assert!(
        metric(&a, "hioload_cluster_connects_total") >= 4.0,
        "both threads reconnected"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// An unreachable Redis at start is no error: the node serves its own subscribers and counts
/// what it cannot send.
#[test]
fn a_node_without_redis_serves_its_own_subscribers() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = Config {
        cluster: Some(ClusterConfig::redis(format!("redis://127.0.0.1:{port}"))),
        ..common::test_config()
    };
    let server = Server::new(cfg).unwrap().with_handler(Chat);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut s = subscriber(addr, "alone");
    let mut p = ws(addr);
    publish(&mut p, "alone", 0..10);
    expect(&mut s, 0..10, "local subscriber");
    metric_when(
        &server,
        "hioload_cluster_dropped_total{reason=\"disconnected\"}",
        |v| v == 10.0,
    );
    assert_eq!(metric(&server, "hioload_cluster_publisher_up"), 0.0);
    server.shutdown().unwrap();
    // A bad URL is a configuration error.
    let bad = Config {
        cluster: Some(ClusterConfig::redis("http://nope")),
        ..common::test_config()
    };
    assert!(Server::new(bad).is_err());
}
