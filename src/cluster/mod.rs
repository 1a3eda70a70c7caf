//! Many nodes joined through Redis pub/sub (`cluster.redis = "redis://…"`): a topic's
//! publications reach the subscribers of every node.
//!
//! **One subscription per node per topic, not per client.** A node subscribes to a topic's
//! channel (`{prefix}{topic}`) while it has local subscribers of the topic (the shard set's
//! interest: a topic's first subscriber on any worker, and its last leaving, change it), with
//! `SSUBSCRIBE` (sharded pub/sub) where the server offers it (Redis 7 and later), else
//! `SUBSCRIBE`. Publications made on the node go to its own subscribers directly and to Redis
//! (`SPUBLISH`/`PUBLISH`) in an envelope naming the node; a node drops what it receives from
//! itself, so its subscribers get each message exactly once.
//!
//! **Why a small RESP client on threads of its own**, not the `redis` crate: the link needs
//! five commands and the subscriber's message stream, with a read timeout that loses nothing
//! of a partly read reply and bounded lengths (`resp.rs`, 300 lines, no dependency); and it must
//! never run on a worker: a worker only pushes a publication into a bounded ring (a full ring
//! drops it, counted) and wakes the publisher thread. The `redis` crate's blocking client would
//! have been just as well off its own threads but brings a dependency tree larger than this
//! module, and its pub/sub connection cannot be polled with a timeout for interest changes
//! without a second mechanism. An async client on the workers' loops would put Redis's latency
//! and failures on the data path.
//!
//! Two threads: the **publisher** (one connection: `PUBLISH`es pipelined in batches of up to
//! 256, then their replies) and the **subscriber** (one connection in subscribed mode, polled
//! every 50 ms: new interest is subscribed, lost interest unsubscribed, messages are handed to
//! the workers as local publications). **When Redis goes away** the node keeps serving its own
//! subscribers; the link logs it once per outage, counts what could not be sent (the batch in
//! flight, and every publication made while disconnected: `hioload_cluster_dropped_total`),
//! reconnects with exponential backoff (100 ms to 5 s) and resubscribes to the node's
//! interest. No queue grows: the ring is bounded (`cluster.queue`).

pub mod resp;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hioload_wsproto::{Message, Publication, ShardSet};
use tracing::{info, warn};

use resp::{Conn, RedisUrl, Value};

/// How a node joins the others (`Config::cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis server: `redis://[:password@]host:port`.
    pub redis: String,
    /// Prefix of the channel names (default `"hioload:"`): topic `room` is channel
    /// `hioload:room`.
    pub channel_prefix: String,
    /// Publications waiting for the publisher thread at most (default 65,536); more are dropped
    /// and counted.
    pub queue: usize,
}

impl ClusterConfig {
    /// Through the Redis server at `url`, with the default prefix and queue.
    pub fn redis(url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            redis: url.into(),
            channel_prefix: "hioload:".into(),
            queue: 65_536,
        }
    }

    /// Checks the URL and the queue size.
    pub fn validate(&self) -> Result<(), String> {
        RedisUrl::parse(&self.redis)?;
        if self.queue == 0 {
            return Err("cluster.queue must be at least 1".into());
        }
        Ok(())
    }
}

/// The link's counters (`/metrics`: `hioload_cluster_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Publications sent to Redis (acknowledged).
    pub sent: AtomicU64,
    /// Publications received from other nodes and delivered to local subscribers.
    pub received: AtomicU64,
    /// Publications of this node that Redis echoed back (dropped: delivered locally already).
    pub own_echoes: AtomicU64,
    /// Not sent: the ring was full.
    pub dropped_queue_full: AtomicU64,
    /// Not sent: Redis was unreachable, or the connection broke with them in flight.
    pub dropped_disconnected: AtomicU64,
    /// Received but undeliverable (not our envelope, or text that is not UTF-8).
    pub malformed: AtomicU64,
    /// Connections made (both threads), the first ones included.
    pub connects: AtomicU64,
    /// Connection attempts that failed, and connections that broke.
    pub failures: AtomicU64,
    /// 1 while the publisher is connected.
    pub publisher_up: AtomicU64,
    /// 1 while the subscriber is connected.
    pub subscriber_up: AtomicU64,
    /// Channels the node is subscribed to.
    pub channels: AtomicU64,
}

struct Shared {
    cfg: ClusterConfig,
    url: RedisUrl,
    set: Arc<ShardSet>,
    node: u64,
    ring: ArrayQueue<Arc<Publication>>,
    stop: AtomicBool,
    stats: ClusterStats,
    /// The publisher thread sleeps (parked): a push must wake it.
    pub_sleeping: AtomicBool,
    threads: Mutex<Vec<Thread>>,
    max_bulk: usize,
}

/// The running link (see the module documentation).
pub struct Cluster {
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &self.shared.cfg.redis)
            .finish_non_exhaustive()
    }
}

/// Envelope: node id (8 bytes, big endian), kind (`t` text, `b` binary), payload.
const ENVELOPE: usize = 9;

impl Cluster {
    /// Starts the link for the shards of `set` (installs the publication and interest hooks);
    /// `max_message` bounds what is accepted from Redis. Redis need not be up: the threads
    /// connect when it is.
    pub fn start(
        set: Arc<ShardSet>,
        cfg: ClusterConfig,
        max_message: usize,
    ) -> Result<Arc<Cluster>, String> {
        let url = RedisUrl::parse(&cfg.redis)?;
        let node = node_id();
        let shared = Arc::new(Shared {
            ring: ArrayQueue::new(cfg.queue.max(1)),
            cfg,
            url,
            set: set.clone(),
            node,
            stop: AtomicBool::new(false),
            stats: ClusterStats::default(),
            pub_sleeping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            max_bulk: max_message + ENVELOPE,
        });
        let s = shared.clone();
        let hooked = set.on_publish(Box::new(move |p: &Arc<Publication>| s.forward(p)));
        if !hooked {
            return Err("a cluster link is already installed".into());
        }
        let mut handles = Vec::new();
        for (name, run) in [
            ("hioload-cluster-pub", publisher as fn(&Shared)),
            ("hioload-cluster-sub", subscriber as fn(&Shared)),
        ] {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run(&s))
                .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
            shared.threads.lock().unwrap().push(h.thread().clone());
            handles.push(h);
        }
        let s = shared.clone();
        set.topics().watch(Box::new(move || {
            // The subscriber thread is the second one.
            if let Some(t) = s.threads.lock().unwrap_or_else(|e| e.into_inner()).get(1) {
                t.unpark();
            }
        }));
        info!(redis = %shared.cfg.redis, node = format!("{node:016x}"), "cluster link started");
        Ok(Arc::new(Cluster {
            shared,
            handles: Mutex::new(handles),
        }))
    }

    /// The link's counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// This node's id in envelopes.
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// Stops both threads (within about 100 ms, or a Redis timeout) and waits for them.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.shared.threads.lock().unwrap().iter() {
            t.unpark();
        }
        for h in self.handles.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn node_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    // Process id and time: distinct for every node of a deployment.
    let mut x = t ^ (u64::from(std::process::id()) << 40) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

impl Shared {
    /// On a worker (or any publishing thread): never blocks.
    fn forward(&self, p: &Arc<Publication>) {
        if self.ring.push(p.clone()).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.pub_sleeping.load(Ordering::Acquire) {
            if let Some(t) = self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first()
            {
                t.unpark();
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d` unless stopped (woken by `stop`).
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
    }

    fn channel(&self, topic: &str) -> Vec<u8> {
        let mut c = self.cfg.channel_prefix.as_bytes().to_vec();
        c.extend_from_slice(topic.as_bytes());
        c
    }

    /// Connects; `Ok(sharded)`: whether the server has sharded pub/sub (Redis 7+).
    fn connect(&self, which: &str) -> io::Result<(Conn, bool)> {
        let mut c = Conn::open(&self.url, Duration::from_secs(2), self.max_bulk)?;
        let info = c.call(&[b"INFO", b"server"])?;
        let sharded = info
            .bytes()
            .and_then(|b| {
                let text = String::from_utf8_lossy(b);
                let v = text
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))?
                    .split('.')
                    .next()?
                    .trim()
                    .parse::<u32>()
                    .ok()?;
                Some(v >= 7)
            })
            .unwrap_or(false);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        info!(redis = %self.cfg.redis, which, sharded, "cluster: connected to Redis");
        Ok((c, sharded))
    }
}

/// Tracks one thread's outage: logged once when it starts and once when it ends.
struct Outage {
    since: Option<Instant>,
    backoff: Duration,
}

impl Outage {
    fn new() -> Outage {
        Outage {
            since: None,
            backoff: Duration::from_millis(100),
        }
    }
    fn failed(&mut self, s: &Shared, which: &str, e: &io::Error) -> Duration {
        s.stats.failures.fetch_add(1, Ordering::Relaxed);
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(redis = %s.cfg.redis, which, "cluster: Redis unreachable ({e}); local traffic goes on, retrying with backoff");
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        wait
    }
    fn recovered(&mut self, s: &Shared, which: &str) {
        if let Some(since) = self.since.take() {
            info!(redis = %s.cfg.redis, which, outage_s = since.elapsed().as_secs_f64(), "cluster: Redis back");
        }
        self.backoff = Duration::from_millis(100);
    }
}

/// The publisher thread: the ring to Redis, in pipelined batches.
fn publisher(s: &Shared) {
    let mut outage = Outage::new();
    let mut batch: Vec<Arc<Publication>> = Vec::with_capacity(256);
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut envelope: Vec<u8> = Vec::new();
    while !s.stopping() {
        let (mut conn, sharded) = match s.connect("publisher") {
            Ok(c) => c,
            Err(e) => {
                let wait = outage.failed(s, "publisher", &e);
                // What was published meanwhile cannot be sent: counted, not kept.
                let mut lost = 0;
                while s.ring.pop().is_some() {
                    lost += 1;
                }
                s.stats
                    .dropped_disconnected
                    .fetch_add(lost, Ordering::Relaxed);
                s.pause(wait);
                continue;
            }
        };
        outage.recovered(s, "publisher");
        s.stats.publisher_up.store(1, Ordering::Relaxed);
        let cmd: &[u8] = if sharded { b"SPUBLISH" } else { b"PUBLISH" };
        loop {
            if s.stopping() {
                break;
            }
            while batch.len() < 256 {
                match s.ring.pop() {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            if batch.is_empty() {
                s.pub_sleeping.store(true, Ordering::Release);
                if s.ring.is_empty() {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                s.pub_sleeping.store(false, Ordering::Release);
                continue;
            }
            out.clear();
            for p in &batch {
                envelope.clear();
                envelope.extend_from_slice(&s.node.to_be_bytes());
                envelope.push(if p.is_text() { b't' } else { b'b' });
                envelope.extend_from_slice(p.payload());
                resp::encode(&mut out, &[cmd, &s.channel(p.topic()), &envelope]);
            }
            let result = conn.write_all(&out).and_then(|()| {
                for _ in 0..batch.len() {
                    match conn.read()? {
                        Some(Value::Int(_)) => {
                            s.stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Value::Error(e)) => return Err(io::Error::other(e)),
                        Some(_) => return Err(io::Error::other("unexpected reply to PUBLISH")),
                        None => return Err(io::ErrorKind::TimedOut.into()),
                    }
                }
                Ok(())
            });
            let sent = batch.len();
            batch.clear();
            if let Err(e) = result {
                // The batch may or may not have reached Redis: counted as not sent.
                s.stats
                    .dropped_disconnected
                    .fetch_add(sent as u64, Ordering::Relaxed);
                let wait = outage.failed(s, "publisher", &e);
                s.stats.publisher_up.store(0, Ordering::Relaxed);
                s.pause(wait);
                break;
            }
        }
        s.stats.publisher_up.store(0, Ordering::Relaxed);
    }
}

/// The subscriber thread: the node's interest as channel subscriptions, messages to the
/// workers.
fn subscriber(s: &Shared) {
    let mut outage = Outage::new();
    while !s.stopping() {
        let (mut conn, sharded) = match s.connect("subscriber").and_then(|(c, sharded)| {
            c.set_read_timeout(Duration::from_millis(50))
                .map(|()| (c, sharded))
        }) {
            Ok(c) => c,
            Err(e) => {
                let wait = outage.failed(s, "subscriber", &e);
                s.pause(wait);
                continue;
            }
        };
        outage.recovered(s, "subscriber");
        s.stats.subscriber_up.store(1, Ordering::Relaxed);
        let (sub, unsub, kind): (&[u8], &[u8], &[u8]) = if sharded {
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"smessage")
        } else {
            (b"SUBSCRIBE", b"UNSUBSCRIBE", b"message")
        };
        let mut subscribed: HashSet<Vec<u8>> = HashSet::new();
        let mut generation = None;
        let result: io::Result<()> = (|| loop {
            if s.stopping() {
                return Ok(());
            }
            let now = s.set.topics().generation();
            if generation != Some(now) {
                generation = Some(now);
                let want: HashSet<Vec<u8>> = s
                    .set
                    .topics()
                    .interest()
                    .iter()
                    .map(|t| s.channel(t))
                    .collect();
                let mut out = Vec::new();
                for c in want.difference(&subscribed) {
                    resp::encode(&mut out, &[sub, c]);
                }
                for c in subscribed.difference(&want) {
                    resp::encode(&mut out, &[unsub, c]);
                }
                if !out.is_empty() {
                    conn.write_all(&out)?;
                }
                subscribed = want;
                s.stats
                    .channels
                    .store(subscribed.len() as u64, Ordering::Relaxed);
            }
            // Messages until the read times out (then interest is looked at again).
            while let Some(v) = conn.read()? {
                if let Value::Array(Some(items)) = &v {
                    if items.len() == 3 && items[0].bytes() == Some(kind) {
                        deliver(s, items[1].bytes(), items[2].bytes());
                    }
                }
                if s.stopping() {
                    return Ok(());
                }
            }
        })();
        s.stats.subscriber_up.store(0, Ordering::Relaxed);
        s.stats.channels.store(0, Ordering::Relaxed);
        if let Err(e) = result {
            let wait = outage.failed(s, "subscriber", &e);
            s.pause(wait);
        }
    }
}

/// A message from Redis to this node's subscribers (unless this node sent it).
fn deliver(s: &Shared, channel: Option<&[u8]>, data: Option<&[u8]>) {
    let topic = channel
        .and_then(|c| c.strip_prefix(s.cfg.channel_prefix.as_bytes()))
        .and_then(|t| std::str::from_utf8(t).ok());
    let (Some(topic), Some(data)) = (topic, data) else {
        s.stats.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if data.len() < ENVELOPE {
        s.stats.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let node = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    if node == s.node {
        s.stats.own_echoes.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let payload = &data[ENVELOPE..];
    let msg = match data[8] {
        b't' => match std::str::from_utf8(payload) {
            Ok(t) => Message::Text(t),
            Err(_) => {
                s.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        b'b' => Message::Binary(payload),
        _ => {
            s.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    s.stats.received.fetch_add(1, Ordering::Relaxed);
    let _ = s
        .set
        .publish_local(Arc::new(Publication::new(topic, msg, None)), None);
}
