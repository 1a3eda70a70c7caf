//! Topics (publish/subscribe): a message published to a topic is framed once, shared
//! (reference-counted) by every shard and every subscriber, and delivered by each shard to its
//! own subscribers from its own index, with no lock and no allocation per subscriber.
//!
//! - **Publishing** ([`ShardSet::publish_topic`]): one [`Publication`] is built (the frame header and
//!   the payload in one buffer, once) and an `Arc` of it goes into every shard's inbox, behind
//!   whatever that shard already has queued. The inboxes are FIFO and a publisher pushes to them
//!   in turn, so each subscriber sees one publisher's messages to one topic in the order they were
//!   published. A shard whose inbox is full misses the publication: counted
//!   ([`TopicTotals::publish_drops`]), never silent.
//! - **The index** ([`ShardTopics`], one per shard, owned by its thread): topic name → the
//!   topic's subscribers (slot, session id, policy), and per slot the topics it is subscribed to
//!   with its position in each, so that unsubscribing (one topic or all of a closing session's)
//!   costs a swap-remove per subscription, never a scan of every topic.
//! - **Subscribing from a callback**: a callback holds its session, not its shard, so
//!   [`SessionRef::subscribe`](crate::SessionRef::subscribe) queues the change on the calling
//!   thread (a shard's thread). The shard applies the queued changes before it delivers anything
//!   from its inbox and at the end of each loop turn: a subscription made in a callback is in
//!   force for every publication that reaches the shard's inbox after that callback (so a
//!   callback that subscribes and then publishes hears its own publication).
//! - **Slow subscribers** ([`SlowPolicy`]): a subscriber whose buffered output is over its
//!   bound (default: the backpressure soft bound) when a publication reaches it is skipped (the
//!   message is not queued for it: counted per topic as `skipped`) or closed with 1008 (counted as
//!   `closed`), as its subscription says. Nothing is dropped without a count.
//! - **Unsubscribed on close**: when a connection leaves its slot, its subscriptions go.
//! - **Interest** ([`TopicBoard`]): how many shards have subscribers of each topic. A topic's
//!   first local subscriber and its last leaving change it, and wake whoever watches (the
//!   cluster link subscribes the node to a topic's channel on a broker only while the node has
//!   subscribers of it).
//!
//! Publications go out uncompressed, also to sessions that negotiated permessage-deflate (RFC 7692
//! lets a sender leave any message uncompressed): one frame for everyone is the point.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::close::CloseCode;
use crate::connection::{App, Message};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

use super::{shard_of, slot_of, Command, DeliverError, Shard, ShardSet, Transport};

/// Topic names are at most this long (bytes): they name broker channels and metric labels.
pub const MAX_TOPIC_LEN: usize = 200;

/// Per-topic series in `/metrics` and entries in the probes are given for at most this many
/// topics (those with the most subscribers); totals cover every topic.
pub const TOPIC_REPORT_MAX: usize = 100;

/// How often a shard publishes its topic statistics (for `/metrics` and the probes).
const STATS_PERIOD: Duration = Duration::from_millis(500);

/// What happens to a subscriber whose buffered output is over its bound when a publication
/// reaches it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum SlowPolicy {
    /// The publication is not queued for it, and counted as skipped (default): the subscriber
    /// misses messages while it is slow, and the count says how many.
    #[default]
    Skip,
    /// The session is closed with 1008 (and counted): a subscriber that must not miss anything
    /// is better gone than silently behind.
    Close,
}

/// How a session subscribes to a topic.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// What happens when the subscriber is slow.
    pub policy: SlowPolicy,
    /// Buffered output (bytes) above which the subscriber counts as slow; `None`: the
    /// backpressure soft bound (`backpressure.soft_bytes`) in force.
    pub max_buffered: Option<usize>,
}

impl Subscription {
    /// Skip and count while slow, bound at the soft bound (the default).
    pub fn skip() -> Subscription {
        Subscription::default()
    }
    /// Close with 1008 when slow, bound at the soft bound.
    pub fn close() -> Subscription {
        Subscription {
            policy: SlowPolicy::Close,
            max_buffered: None,
        }
    }
    /// The same policy with `bytes` as the bound.
    pub fn max_buffered(mut self, bytes: usize) -> Subscription {
        self.max_buffered = Some(bytes);
        self
    }
}

/// Why a topic operation was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// The topic name is empty or longer than [`MAX_TOPIC_LEN`].
    InvalidTopic,
    /// The session has ended (or is closing).
    Closed,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::InvalidTopic => "a topic name has 1 to 200 bytes",
            TopicError::Closed => "the session has ended",
        })
    }
}

impl std::error::Error for TopicError {}

/// Checks a topic name.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        Err(TopicError::InvalidTopic)
    } else {
        Ok(())
    }
}

/// One message published to a topic: framed once (header and payload in one buffer), shared
/// by every shard and subscriber it reaches.
pub struct Publication {
    topic: Box<str>,
    /// The whole frame: `header_len` bytes of header, then the payload.
    frame: Box<[u8]>,
    header_len: usize,
    text: bool,
    /// A session that does not get it (the publisher's own, when it asked so).
    exclude: Option<u64>,
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("topic", &self.topic)
            .field("len", &self.payload().len())
            .field("exclude", &self.exclude)
            .finish()
    }
}

impl Publication {
    /// `msg` for `topic`, framed now (one allocation), delivered to every subscriber but
    /// `exclude`. The topic name is not checked here ([`check_topic`]).
    pub fn new(topic: &str, msg: Message<'_>, exclude: Option<u64>) -> Publication {
        let (opcode, payload, text) = match msg {
            Message::Text(t) => (OpCode::Text, t.as_bytes(), true),
            Message::Binary(b) => (OpCode::Binary, b, false),
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let header_len = FrameHeader::server(opcode, true, payload.len()).encode(&mut head);
        let mut frame = Vec::with_capacity(header_len + payload.len());
        frame.extend_from_slice(&head[..header_len]);
        frame.extend_from_slice(payload);
        Publication {
            topic: topic.into(),
            frame: frame.into_boxed_slice(),
            header_len,
            text,
            exclude,
        }
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The frame header (server frame: unmasked, final, no RSV bits).
    pub fn header(&self) -> &[u8] {
        &self.frame[..self.header_len]
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.header_len..]
    }
    /// The whole frame, header then payload.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }
    /// The message (borrowed from the frame).
    pub fn message(&self) -> Message<'_> {
        if self.text {
            // The payload was a `&str`.
            Message::Text(std::str::from_utf8(self.payload()).unwrap_or_default())
        } else {
            Message::Binary(self.payload())
        }
    }
    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        self.text
    }
    /// The session that does not get it, if any.
    pub fn excluded(&self) -> Option<u64> {
        self.exclude
    }
}

// ---- changes queued by callbacks ----------------------------------------------------------------

/// A change a callback asked for, applied by the session's shard.
#[derive(Debug)]
enum Op {
    Subscribe(u64, Arc<str>, Subscription),
    Unsubscribe(u64, Arc<str>),
    UnsubscribeAll(u64),
}

impl Op {
    fn session(&self) -> u64 {
        match self {
            Op::Subscribe(id, ..) | Op::Unsubscribe(id, _) | Op::UnsubscribeAll(id) => *id,
        }
    }
}

thread_local! {
    /// Changes asked for by callbacks on this thread, not yet applied by their shard.
    static OPS: RefCell<Vec<Op>> = const { RefCell::new(Vec::new()) };
}

/// Queues a subscription of session `id` (applied by its shard before it delivers anything
/// else; see the module documentation).
pub(crate) fn queue_subscribe(id: u64, topic: &str, sub: Subscription) {
    OPS.with(|ops| ops.borrow_mut().push(Op::Subscribe(id, topic.into(), sub)));
}

/// Queues the end of session `id`'s subscription to `topic`.
pub(crate) fn queue_unsubscribe(id: u64, topic: &str) {
    OPS.with(|ops| ops.borrow_mut().push(Op::Unsubscribe(id, topic.into())));
}

/// Queues the end of every subscription of session `id`.
pub(crate) fn queue_unsubscribe_all(id: u64) {
    OPS.with(|ops| ops.borrow_mut().push(Op::UnsubscribeAll(id)));
}

// ---- a shard's index ----------------------------------------------------------------------------

/// One subscriber of a topic in a shard.
#[derive(Copy, Clone, Debug)]
struct Sub {
    slot: u32,
    id: u64,
    sub: Subscription,
}

/// One topic in a shard: its subscribers and its counts.
#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subs: Vec<Sub>,
    counts: TopicCounts,
}

/// What happened to a topic's publications in one shard (or summed over the shards).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// Publications that reached the shard's inbox with subscribers there.
    pub published: u64,
    /// Messages queued for subscribers.
    pub delivered: u64,
    /// Messages not queued for a slow subscriber (policy `Skip`).
    pub skipped: u64,
    /// Slow subscribers closed with 1008 (policy `Close`).
    pub closed: u64,
}

impl TopicCounts {
    fn add(&mut self, o: &TopicCounts) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.skipped += o.skipped;
        self.closed += o.closed;
    }
}

/// A shard's subscriber index (see the module documentation). Owned by the shard's thread.
#[derive(Debug, Default)]
pub struct ShardTopics {
    by_name: HashMap<Arc<str>, u32>,
    topics: Vec<Option<Topic>>,
    free: Vec<u32>,
    /// Per slot: (topic, position in its `subs`).
    by_slot: Vec<Vec<(u32, u32)>>,
    subscriptions: usize,
    /// Counts of every topic, including those that have gone.
    totals: TopicCounts,
    /// Scratch for applying queued changes (kept: no allocation per turn).
    ops: Vec<Op>,
    next_stats: Option<Instant>,
    /// Something changed since the last statistics report (the shard keeps ticking until it
    /// has reported it).
    dirty: bool,
}

impl ShardTopics {
    /// Topics with subscribers in this shard.
    pub fn topic_count(&self) -> usize {
        self.by_name.len()
    }
    /// Subscriptions in this shard.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }
    /// Whether the statistics changed since the shard last reported them.
    pub fn report_due(&self) -> bool {
        self.dirty
    }

    fn find(&self, topic: &str) -> Option<u32> {
        self.by_name.get(topic).copied()
    }

    fn topic(&self, t: u32) -> Option<&Topic> {
        self.topics.get(t as usize)?.as_ref()
    }

    fn topic_mut(&mut self, t: u32) -> Option<&mut Topic> {
        self.topics.get_mut(t as usize)?.as_mut()
    }

    /// Subscribes (slot, id) to `name`; returns whether the topic is new in this shard. A
    /// second subscription to the same topic replaces the first's options.
    fn subscribe(&mut self, slot: usize, id: u64, name: Arc<str>, sub: Subscription) -> bool {
        let (t, new) = match self.find(&name) {
            Some(t) => (t, false),
            None => {
                let topic = Topic {
                    name: name.clone(),
                    subs: Vec::new(),
                    counts: TopicCounts::default(),
                };
                let t = match self.free.pop() {
                    Some(t) => {
                        self.topics[t as usize] = Some(topic);
                        t
                    }
                    None => {
                        self.topics.push(Some(topic));
                        (self.topics.len() - 1) as u32
                    }
                };
                self.by_name.insert(name, t);
                (t, true)
            }
        };
        if self.by_slot.len() <= slot {
            self.by_slot.resize_with(slot + 1, Vec::new);
        }
        if let Some(&(_, pos)) = self.by_slot[slot].iter().find(|(x, _)| *x == t) {
            if let Some(topic) = self.topic_mut(t) {
                topic.subs[pos as usize].sub = sub;
            }
            return new;
        }
        let topic = self.topics[t as usize].as_mut().expect("just found");
        topic.subs.push(Sub {
            slot: slot as u32,
            id,
            sub,
        });
        let pos = (topic.subs.len() - 1) as u32;
        self.by_slot[slot].push((t, pos));
        self.subscriptions += 1;
        new
    }

    /// Ends slot's subscription to topic `t`; returns the topic's name if it has no subscriber
    /// left in this shard (it is removed).
    fn unsubscribe(&mut self, slot: usize, t: u32) -> Option<Arc<str>> {
        let list = self.by_slot.get_mut(slot)?;
        let i = list.iter().position(|(x, _)| *x == t)?;
        let (_, pos) = list.swap_remove(i);
        self.subscriptions -= 1;
        let topic = self.topics[t as usize].as_mut()?;
        topic.subs.swap_remove(pos as usize);
        if let Some(moved) = topic.subs.get(pos as usize).copied() {
            // The last subscriber took the freed place: its position changes.
            if let Some(e) = self.by_slot[moved.slot as usize]
                .iter_mut()
                .find(|(x, _)| *x == t)
            {
                e.1 = pos;
            }
        }
        if !topic.subs.is_empty() {
            return None;
        }
        let topic = self.topics[t as usize].take()?;
        self.totals.add(&topic.counts);
        self.by_name.remove(&topic.name);
        self.free.push(t);
        Some(topic.name)
    }

    /// Every subscription of `slot` ends; topics left without a subscriber are reported to
    /// `gone`.
    fn remove_slot(&mut self, slot: usize, mut gone: impl FnMut(Arc<str>)) {
        while let Some(&(t, _)) = self.by_slot.get(slot).and_then(|l| l.last()) {
            if let Some(name) = self.unsubscribe(slot, t) {
                gone(name);
            }
        }
    }

    /// Counts of every topic this shard has had, summed.
    pub fn totals(&self) -> TopicCounts {
        let mut all = self.totals;
        for t in self.topics.iter().flatten() {
            all.add(&t.counts);
        }
        all
    }
}

// ---- what the shards share ----------------------------------------------------------------------

/// One topic in a snapshot of the topic statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStat {
    /// The topic.
    pub name: Arc<str>,
    /// Subscribers (summed over the shards).
    pub subscribers: usize,
    /// What happened to its publications (summed over the shards).
    pub counts: TopicCounts,
}

/// A snapshot of the server's topics: totals and the topics with the most subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicsSnapshot {
    /// Topics with subscribers (on any shard).
    pub topics: usize,
    /// Subscriptions, all shards.
    pub subscriptions: usize,
    /// Publications made on this node ([`ShardSet::publish_topic`]).
    pub published: u64,
    /// Shard inboxes a publication could not enter (full): each is a message lost for that
    /// shard's subscribers.
    pub publish_drops: u64,
    /// Counts over every topic ever had.
    pub totals: TopicCounts,
    /// At most [`TOPIC_REPORT_MAX`] topics, most subscribers first.
    pub top: Vec<TopicStat>,
}

/// Totals of one shard, as of its last statistics publication.
#[derive(Clone, Debug, Default)]
struct ShardReport {
    topics: Vec<TopicStat>,
    subscriptions: usize,
    totals: TopicCounts,
}

/// Node-wide totals of publishing.
#[derive(Debug, Default)]
pub struct TopicTotals {
    /// Publications made on this node.
    pub published: AtomicU64,
    /// Shard inboxes a publication could not enter.
    pub publish_drops: AtomicU64,
}

/// What the shards share about topics: the interest (how many shards have subscribers of each
/// topic), the shards' statistics reports, and the publishing totals. The interest lock is taken
/// when a topic appears in or leaves a shard, and the reports' at a shard's statistics period
/// and a scrape: never per message.
pub struct TopicBoard {
    interest: Mutex<HashMap<Arc<str>, u32>>,
    generation: AtomicU64,
    watcher: OnceLock<Box<dyn Fn() + Send + Sync>>,
    reports: Box<[Mutex<ShardReport>]>,
    /// Publishing totals.
    pub totals: TopicTotals,
}

impl fmt::Debug for TopicBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicBoard")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TopicBoard {
    pub(crate) fn new(shards: usize) -> TopicBoard {
        TopicBoard {
            interest: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            watcher: OnceLock::new(),
            reports: (0..shards).map(|_| Mutex::default()).collect(),
            totals: TopicTotals::default(),
        }
    }

    fn interest_changed(&self, name: &Arc<str>, up: bool) {
        {
            let mut map = self.interest.lock().unwrap_or_else(|e| e.into_inner());
            if up {
                *map.entry(name.clone()).or_insert(0) += 1;
            } else if let Some(n) = map.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    map.remove(name);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = self.watcher.get() {
            w();
        }
    }

    /// Topics that have subscribers on this node, now.
    pub fn interest(&self) -> Vec<Arc<str>> {
        let map = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// Whether this node has subscribers of `topic`.
    pub fn has_interest(&self, topic: &str) -> bool {
        let map = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(topic)
    }

    /// Bumped whenever [`TopicBoard::interest`] changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Calls `f` (on a shard's thread: it must not block) whenever the interest changes. Set once.
    pub fn watch(&self, f: Box<dyn Fn() + Send + Sync>) -> bool {
        self.watcher.set(f).is_ok()
    }

    /// The statistics, as of each shard's last report (every half second).
    pub fn snapshot(&self) -> TopicsSnapshot {
        let mut merged: HashMap<Arc<str>, TopicStat> = HashMap::new();
        let mut snap = TopicsSnapshot {
            published: self.totals.published.load(Ordering::Relaxed),
            publish_drops: self.totals.publish_drops.load(Ordering::Relaxed),
            ..TopicsSnapshot::default()
        };
        for report in self.reports.iter() {
            let r = report.lock().unwrap_or_else(|e| e.into_inner());
            snap.subscriptions += r.subscriptions;
            snap.totals.add(&r.totals);
            for t in &r.topics {
                let e = merged.entry(t.name.clone()).or_insert_with(|| TopicStat {
                    name: t.name.clone(),
                    subscribers: 0,
                    counts: TopicCounts::default(),
                });
                e.subscribers += t.subscribers;
                e.counts.add(&t.counts);
            }
        }
        snap.topics = merged.len();
        let mut top: Vec<TopicStat> = merged.into_values().collect();
        top.sort_by(|a, b| b.subscribers.cmp(&a.subscribers).then(a.name.cmp(&b.name)));
        top.truncate(TOPIC_REPORT_MAX);
        snap.top = top;
        snap
    }
}

impl ShardSet {
    /// Publishes `msg` to `topic` on this node: framed once, into every shard's inbox; a
    /// subscriber `exclude` does not get it. Returns the shards reached (an inbox that is full
    /// misses it: counted in [`TopicTotals::publish_drops`]). `from`: the calling shard, if any.
    /// Whoever forwards publications to other nodes is told first ([`ShardSet::on_publish`]).
    pub fn publish_topic(
        &self,
        topic: &str,
        msg: Message<'_>,
        exclude: Option<u64>,
        from: Option<usize>,
    ) -> Result<usize, TopicOrDeliverError> {
        check_topic(topic).map_err(TopicOrDeliverError::Topic)?;
        let p = Arc::new(Publication::new(topic, msg, exclude));
        if let Some(forward) = self.forward.get() {
            forward(&p);
        }
        self.publish_local(p, from)
            .map_err(TopicOrDeliverError::Deliver)
    }

    /// Delivers a publication to this node's subscribers only (one that came from another
    /// node, or already forwarded). Returns the shards reached.
    pub fn publish_local(
        &self,
        p: Arc<Publication>,
        from: Option<usize>,
    ) -> Result<usize, DeliverError> {
        let board = &self.topics;
        board.totals.published.fetch_add(1, Ordering::Relaxed);
        let mut reached = 0;
        let mut last_err = DeliverError::Full;
        for shard in 0..self.len() {
            match self.push(shard, Command::Publish(p.clone()), from) {
                Ok(()) => reached += 1,
                Err(e) => {
                    if e == DeliverError::Full {
                        board.totals.publish_drops.fetch_add(1, Ordering::Relaxed);
                    }
                    last_err = e;
                }
            }
        }
        if reached == 0 && !self.is_empty() {
            Err(last_err)
        } else {
            Ok(reached)
        }
    }

    /// The topics' shared state.
    pub fn topics(&self) -> &TopicBoard {
        &self.topics
    }

    /// Sets who hears of every publication made on this node before it is delivered (the
    /// cluster link, which sends it to the other nodes). Set once; it must not block.
    pub fn on_publish(&self, f: Box<dyn Fn(&Arc<Publication>) + Send + Sync>) -> bool {
        self.forward.set(f).is_ok()
    }
}

/// Why a publication was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopicOrDeliverError {
    /// The topic name is invalid.
    Topic(TopicError),
    /// No shard took it (inboxes full, or the server stops).
    Deliver(DeliverError),
}

impl fmt::Display for TopicOrDeliverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicOrDeliverError::Topic(e) => e.fmt(f),
            TopicOrDeliverError::Deliver(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TopicOrDeliverError {}

// ---- a shard's side -----------------------------------------------------------------------------

impl<T, A: App> Shard<T, A> {
    /// Applies the topic changes callbacks on this thread asked for (for this shard's sessions).
    pub(super) fn apply_topic_ops(&mut self) {
        let mut ops = std::mem::take(&mut self.topics.ops);
        OPS.with(|q| {
            let mut q = q.borrow_mut();
            if q.is_empty() {
                return;
            }
            // Another shard on this thread (tests drive several) keeps its own.
            let index = self.index;
            std::mem::swap(&mut *q, &mut ops);
            if ops.iter().any(|op| shard_of(op.session()) != index) {
                for op in std::mem::take(&mut ops) {
                    if shard_of(op.session()) == index {
                        ops.push(op);
                    } else {
                        q.push(op);
                    }
                }
            }
        });
        self.topics.dirty |= !ops.is_empty();
        for op in ops.drain(..) {
            let id = op.session();
            let slot = slot_of(id);
            let live = self
                .slot(slot)
                .is_some_and(|s| s.conn.id() == id && !s.is_released() && s.conn.has_session());
            match op {
                Op::Subscribe(_, name, sub) if live => {
                    if self.topics.subscribe(slot, id, name.clone(), sub) {
                        self.set.topics.interest_changed(&name, true);
                    }
                }
                Op::Unsubscribe(_, name) => {
                    if !self.slot(slot).is_some_and(|s| s.conn.id() == id) {
                        continue;
                    }
                    if let Some(t) = self.topics.find(&name) {
                        if let Some(gone) = self.topics.unsubscribe(slot, t) {
                            self.set.topics.interest_changed(&gone, false);
                        }
                    }
                }
                Op::UnsubscribeAll(_) => {
                    if self.slot(slot).is_some_and(|s| s.conn.id() == id) {
                        self.unsubscribe_slot(slot);
                    }
                }
                Op::Subscribe(..) => {}
            }
        }
        self.topics.ops = ops;
    }

    /// The connection in `slot` leaves: its subscriptions end.
    pub(super) fn unsubscribe_slot(&mut self, slot: usize) {
        let board = &self.set.topics;
        if self.topics.by_slot.get(slot).is_some_and(|l| !l.is_empty()) {
            self.topics.dirty = true;
            self.topics
                .remove_slot(slot, |name| board.interest_changed(&name, false));
        }
    }

    /// Delivers a publication to this shard's subscribers of its topic: the shared frame is
    /// queued on each (no copy of ours, no allocation), except a slow one, which its policy
    /// skips or closes.
    pub(super) fn deliver_publication<X: Transport<Io = T>>(
        &mut self,
        p: &Publication,
        x: &mut X,
        now: Instant,
    ) {
        self.apply_topic_ops();
        let Some(t) = self.topics.find(p.topic()) else {
            return;
        };
        self.topics.dirty = true;
        if let Some(topic) = self.topics.topic_mut(t) {
            topic.counts.published += 1;
        }
        let soft = self.settings.backpressure.soft_bytes;
        // Backwards: a subscriber closed here leaves by a swap-remove that moves an
        // already-visited one into its place.
        let mut i = self.topics.topic(t).map_or(0, |topic| topic.subs.len());
        while i > 0 {
            i -= 1;
            let Some(sub) = self
                .topics
                .topic(t)
                .and_then(|topic| topic.subs.get(i).copied())
            else {
                continue;
            };
            if p.exclude == Some(sub.id) {
                continue;
            }
            let slot = sub.slot as usize;
            let Some(s) = self.slot(slot) else {
                continue;
            };
            if s.conn.id() != sub.id || s.is_released() || !s.conn.has_session() {
                continue; // closing: it leaves the index when its slot does
            }
            let bound = sub.sub.max_buffered.unwrap_or(soft);
            if s.conn.pending().len() > bound {
                match sub.sub.policy {
                    SlowPolicy::Skip => {
                        if let Some(topic) = self.topics.topic_mut(t) {
                            topic.counts.skipped += 1;
                        }
                    }
                    SlowPolicy::Close => {
                        if let Some(topic) = self.topics.topic_mut(t) {
                            topic.counts.closed += 1;
                        }
                        self.close_slow_subscriber(slot, x, now);
                    }
                }
                continue;
            }
            let delivered = self.with_output(slot, x, now, |conn, wire| {
                conn.deliver_frame(p.header(), p.payload(), wire)
            }) == Some(true);
            if delivered {
                if let Some(topic) = self.topics.topic_mut(t) {
                    topic.counts.delivered += 1;
                }
            }
        }
    }

    /// Closes a subscriber that does not keep up (policy `Close`): Close 1008, and the
    /// connection is reset (its peer does not read what is queued already).
    fn close_slow_subscriber<X: Transport<Io = T>>(
        &mut self,
        slot: usize,
        x: &mut X,
        now: Instant,
    ) {
        if let Some((s, mut cx)) = self.split(slot) {
            let mut wire = x.wire(slot, &mut s.io);
            s.conn.close_now(
                CloseCode::POLICY_VIOLATION,
                "subscriber too slow",
                &mut wire,
                &mut cx,
                now,
            );
        }
        self.settle(slot, x);
    }

    /// At the tick: publishes this shard's topic statistics, every [`STATS_PERIOD`].
    pub(super) fn report_topics(&mut self, now: Instant) {
        if self.topics.next_stats.is_some_and(|due| now < due) {
            return;
        }
        self.topics.next_stats = Some(now + STATS_PERIOD);
        self.topics.dirty = false;
        let Some(report) = self.set.topics.reports.get(self.index) else {
            return;
        };
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.topics.clear();
        r.topics
            .extend(self.topics.topics.iter().flatten().map(|t| TopicStat {
                name: t.name.clone(),
                subscribers: t.subs.len(),
                counts: t.counts,
            }));
        r.subscriptions = self.topics.subscriptions;
        r.totals = self.topics.totals();
    }
}

/// The id a test gives to the connection in `slot` of shard 0 (serial 0).
#[cfg(test)]
pub(crate) fn test_id(slot: usize) -> u64 {
    super::session_id(0, 0, slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &ShardTopics) -> Vec<String> {
        let mut v: Vec<String> = t.by_name.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn unsubscribing_keeps_every_position_right() {
        let mut t = ShardTopics::default();
        for slot in 0..5 {
            for name in ["a", "b"] {
                t.subscribe(slot, test_id(slot), name.into(), Subscription::skip());
            }
        }
        assert_eq!(t.subscriptions(), 10);
        let a = t.find("a").unwrap();
        assert_eq!(t.unsubscribe(1, a), None);
        t.remove_slot(0, |_| panic!("b and a still have subscribers"));
        // Every remaining subscriber's recorded position points at itself.
        for (slot, list) in t.by_slot.iter().enumerate() {
            for &(topic, pos) in list {
                assert_eq!(
                    t.topic(topic).unwrap().subs[pos as usize].slot as usize,
                    slot
                );
            }
        }
        assert_eq!(t.subscriptions(), 7);
        let mut gone = Vec::new();
        for slot in 1..5 {
            t.remove_slot(slot, |n| gone.push(n.to_string()));
        }
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
        assert_eq!(t.subscriptions(), 0);
        assert!(names(&t).is_empty());
        assert_eq!(t.free.len(), 2, "both topic entries are free for reuse");
    }

    #[test]
    fn a_second_subscription_replaces_the_options() {
        let mut t = ShardTopics::default();
        assert!(t.subscribe(3, test_id(3), "x".into(), Subscription::skip()));
        assert!(!t.subscribe(3, test_id(3), "x".into(), Subscription::close()));
        assert_eq!(t.subscriptions(), 1);
        let x = t.find("x").unwrap();
        assert_eq!(t.topic(x).unwrap().subs[0].sub.policy, SlowPolicy::Close);
    }

    #[test]
    fn a_publication_is_one_server_frame() {
        let p = Publication::new("room", Message::Text("hello"), None);
        assert_eq!(p.header(), &[0x81, 5]);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(p.frame(), b"\x81\x05hello");
        let big = vec![7u8; 70_000];
        let p = Publication::new("room", Message::Binary(&big), Some(9));
        assert_eq!(p.header()[..2], [0x82, 127]);
        assert_eq!(p.payload().len(), 70_000);
        assert_eq!(p.excluded(), Some(9));
        assert!(check_topic("").is_err() && check_topic(&"x".repeat(201)).is_err());
    }
}
