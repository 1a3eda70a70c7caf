//! The shard core driven without a socket: an in-memory transport whose "network" takes at most
//! `room` bytes per connection, and a clock the test moves by hand.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::connection::{App, Message, Release, SessionRef, Wire};
use crate::frame::encode_client_frame;
use crate::handshake::{HttpRequest, UpgradePolicy};
use crate::{CloseCode, OpCode, PendingOutput};

/// What the application saw.
#[derive(Default)]
struct Seen {
    opened: Vec<u64>,
    messages: Vec<String>,
    closes: Vec<(u64, u16)>,
}

#[derive(Clone, Default)]
struct EchoApp(Arc<Mutex<Seen>>);

struct AnyPath;
impl UpgradePolicy for AnyPath {}

impl App for EchoApp {
    fn upgrade_policy(&self) -> &dyn UpgradePolicy {
        &AnyPath
    }
    fn on_http(&self, _: &HttpRequest<'_>, _: SocketAddr, response: &mut Vec<u8>) {
        response.extend_from_slice(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    }
    fn on_open(&self, s: &mut SessionRef<'_>) {
        self.0.lock().unwrap().opened.push(s.id());
    }
    fn on_message(&self, s: &mut SessionRef<'_>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            self.0.lock().unwrap().messages.push(t.to_string());
            if t == "bye" {
                let _ = s.close(CloseCode::NORMAL, "bye");
                return;
            }
        }
        let _ = match msg {
            Message::Text(t) => s.send_text(t),
            Message::Binary(b) => s.send_binary(b),
        };
    }
    fn on_close(&self, s: &mut SessionRef<'_>, code: CloseCode, _: &str) {
        assert!(
            s.send_text("late").is_err(),
            "sends are refused after the close"
        );
        self.0.lock().unwrap().closes.push((s.id(), code.0));
    }
}

/// A connection's "socket": what left, whether our FIN or a reset went out.
#[derive(Default, Debug)]
struct FakeIo {
    sent: Vec<u8>,
    room: usize,
    fin: bool,
}

#[derive(Default)]
struct FakeTransport {
    listening: bool,
    released: Vec<(usize, Release, Vec<u8>)>,
    resumed: Vec<usize>,
}

struct FakeWire<'a>(&'a mut FakeIo);

impl Wire for FakeWire<'_> {
    fn queue_frame(&mut self, pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        pending.push(header);
        pending.push(payload);
    }
    fn queue_bytes(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        pending.push(bytes);
    }
    fn flush(&mut self, pending: &mut PendingOutput) -> io::Result<()> {
        let n = pending.len().min(self.0.room);
        self.0.sent.extend_from_slice(&pending.unsent()[..n]);
        self.0.room -= n;
        pending.consume(n);
        Ok(())
    }
    fn shutdown_write(&mut self, _pending: &mut PendingOutput) -> bool {
        self.0.fin = true;
        true
    }
}

impl Transport for FakeTransport {
    type Io = FakeIo;
    type Wire<'a> = FakeWire<'a>;
    fn wire<'a>(&'a mut self, _slot: usize, io: &'a mut FakeIo) -> FakeWire<'a> {
        FakeWire(io)
    }
    fn release(
        &mut self,
        slot: usize,
        io: FakeIo,
        _pending: &mut PendingOutput,
        how: Release,
    ) -> Option<FakeIo> {
        self.released.push((slot, how, io.sent));
        None
    }
    fn resume_reading(&mut self, slot: usize, _io: &mut FakeIo) {
        self.resumed.push(slot);
    }
    fn stop_listening(&mut self) {
        self.listening = false;
    }
    fn output_cache_stats(&self) -> crate::output_cache::OutputCacheStats {
        Default::default()
    }
}

struct Rig {
    shard: Shard<FakeIo, EchoApp>,
    x: FakeTransport,
    app: EchoApp,
    set: Arc<ShardSet>,
    now: Instant,
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Rig {
    fn new(settings: Settings) -> Rig {
        let set = Arc::new(ShardSet::new(settings, vec![None], 64));
        let app = EchoApp::default();
        let now = Instant::now();
        Rig {
            shard: Shard::new(0, app.clone(), set.clone(), 1024, now),
            x: FakeTransport {
                listening: true,
                ..Default::default()
            },
            app,
            set,
            now,
        }
    }

    fn connect(&mut self) -> usize {
        let io = FakeIo {
            room: usize::MAX,
            ..Default::default()
        };
        self.shard
            .open(io, "127.0.0.1:1".parse().unwrap(), self.now)
            .unwrap()
    }

    /// Feeds bytes as one read (after what the connection holds, as a transport does), sends
    /// the output, applies the verdicts; returns how many bytes the connection holds now.
    fn read(&mut self, slot: usize, bytes: &[u8]) -> usize {
        let s = self.shard.slot_mut(slot).unwrap();
        let mut input = vec![0u8; s.conn.held_len() + bytes.len()];
        let held = s.conn.held_mut().move_to(&mut input);
        input[held..].copy_from_slice(bytes);
        let mut io = std::mem::take(&mut s.io);
        self.shard
            .receive(slot, &mut input, &mut FakeWire(&mut io), self.now);
        if let Some(s) = self.shard.slot_mut(slot) {
            FakeWire(&mut io).flush(s.conn.pending_mut()).unwrap();
            s.io = io;
        }
        self.shard.after_output(slot, &mut self.x, self.now);
        self.shard.slot(slot).map_or(0, |s| s.conn.held_len())
    }

    fn sent(&mut self, slot: usize) -> Vec<u8> {
        std::mem::take(&mut self.shard.slot_mut(slot).unwrap().io.sent)
    }

    fn advance(&mut self, by: Duration) -> TurnEnd {
        self.now += by;
        self.shard.begin_turn(self.now);
        self.shard.end_turn(&mut self.x, self.now)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.app.0.lock().unwrap()
    }
}

fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    encode_client_frame(opcode, true, payload, [1, 2, 3, 4], &mut f);
    f
}

#[test]
fn upgrade_echo_and_close_handshake() {
    let mut rig = Rig::new(Settings::default());
    let slot = rig.connect();
    // A head split over two reads: nothing consumed until it is whole.
    assert_eq!(rig.read(slot, &UPGRADE[..20]), 20);
    let mut rest = UPGRADE[20..].to_vec();
    rest.extend(client_frame(OpCode::Text, b"hello"));
    assert_eq!(rig.read(slot, &rest), 0);
    let out = rig.sent(slot);
    assert!(
        out.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.ends_with(b"\x81\x05hello"));
    assert_eq!(rig.set.session_count(), 1);

    rig.read(slot, &client_frame(OpCode::Close, &1000u16.to_be_bytes()));
    assert_eq!(
        rig.sent(slot),
        b"\x88\x02\x03\xe8",
        "our Close echoes the code"
    );
    let s = rig.shard.slot(slot).unwrap();
    assert!(
        s.io.fin && s.conn.is_finished(),
        "FIN after the close handshake"
    );
    assert_eq!(rig.seen().closes, vec![(s.conn.id(), 1000)]);
    assert_eq!(rig.set.session_count(), 0);
    // The peer's FIN: released gracefully, slot freed.
    rig.shard.peer_gone(slot, None, &mut rig.x, rig.now);
    assert_eq!(rig.x.released.len(), 1);
    assert_eq!(rig.x.released[0].1, Release::Close);
    assert_eq!(rig.shard.live(), 0);
    assert_eq!(rig.seen().closes.len(), 1, "on_close exactly once");
}

#[test]
fn handshake_and_close_deadlines() {
    let settings = Settings {
        handshake_timeout: Duration::from_secs(2),
        close_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let idle = rig.connect();
    rig.advance(Duration::from_millis(1900));
    assert_eq!(rig.shard.live(), 1);
    rig.advance(Duration::from_millis(200));
    assert_eq!(rig.shard.live(), 0, "the handshake deadline ended it");
    assert_eq!(rig.x.released.pop().unwrap().0, idle);

    // We close; the peer never answers: 1006 after the close timeout.
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.read(slot, &client_frame(OpCode::Text, b"bye"));
    rig.advance(Duration::from_millis(900));
    assert!(rig.seen().closes.is_empty());
    rig.advance(Duration::from_millis(200));
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1006]
    );
    assert_eq!(rig.x.released.pop().unwrap().1, Release::Reset);
}

#[test]
fn a_protocol_error_closes_with_its_code_and_reports_it_once() {
    let mut rig = Rig::new(Settings::default());
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.sent(slot);
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    assert_eq!(
        rig.read(slot, &unmasked),
        0,
        "everything consumed after the error"
    );
    let out = rig.sent(slot);
    assert_eq!(
        (out[0], &out[2..4]),
        (0x88, &1002u16.to_be_bytes()[..]),
        "close 1002"
    );
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1002]
    );
    assert!(rig.shard.slot(slot).unwrap().io.fin);
}

#[test]
fn idle_sessions_are_pinged_and_dropped_without_an_answer() {
    let settings = Settings {
        idle_timeout: Some(Duration::from_secs(4)),
        pong_timeout: Duration::from_secs(4),
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let (quiet, lively) = (rig.connect(), rig.connect());
    rig.read(quiet, UPGRADE);
    rig.read(lively, UPGRADE);
    rig.sent(quiet);
    rig.sent(lively);
    for _ in 0..5 {
        rig.advance(Duration::from_secs(1));
    }
    assert_eq!(rig.sent(quiet), b"\x89\x04idle");
    assert_eq!(rig.sent(lively), b"\x89\x04idle");
    rig.read(lively, &client_frame(OpCode::Pong, b"idle"));
    for _ in 0..5 {
        rig.advance(Duration::from_secs(1));
    }
    let counters = rig.set.counters(0).snapshot();
    // Pings: both at 4 s, the lively one again at 9 s (4 s after its pong); the quiet one dropped.
    assert_eq!((counters.idle_pings, counters.idle_drops), (3, 1));
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1006]
    );
    assert!(rig.shard.slot(lively).is_some() && rig.shard.slot(quiet).is_none());
}

#[test]
fn a_peer_that_does_not_read_is_paused_then_closed_with_1008() {
    // The clock runs from the soft bound.
    let settings = Settings {
        backpressure: crate::Backpressure {
            soft_bytes: 4096,
            hard_bytes: 1 << 20,
            timeout: Duration::from_secs(2),
        },
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.shard.slot_mut(slot).unwrap().io.room = 0; // the peer stops reading
    rig.read(slot, &client_frame(OpCode::Binary, &[7u8; 5000]));
    assert!(
        rig.shard.slot(slot).unwrap().conn.read_paused(),
        "over the soft bound"
    );
    rig.read(slot, &client_frame(OpCode::Binary, &[7u8; 5000]));
    rig.advance(Duration::from_millis(1500));
    assert!(rig.seen().closes.is_empty());
    rig.advance(Duration::from_millis(600));
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1008]
    );
    assert_eq!(rig.x.released.pop().unwrap().1, Release::Reset);
}

#[test]
fn draining_below_the_soft_bound_resumes_reading() {
    let settings = Settings {
        backpressure: crate::Backpressure {
            soft_bytes: 4096,
            hard_bytes: 1 << 20,
            timeout: Duration::from_secs(2),
        },
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.shard.slot_mut(slot).unwrap().io.room = 0;
    rig.read(slot, &client_frame(OpCode::Binary, &[7u8; 5000]));
    assert!(rig.shard.slot(slot).unwrap().conn.read_paused());
    // The network takes it (the transport's writable edge), then the verdicts.
    let s = rig.shard.slot_mut(slot).unwrap();
    s.io.room = usize::MAX;
    FakeWire(&mut s.io).flush(s.conn.pending_mut()).unwrap();
    rig.shard.after_output(slot, &mut rig.x, rig.now);
    assert_eq!(rig.x.resumed, vec![slot]);
    assert!(!rig.shard.slot(slot).unwrap().conn.read_paused());
}

#[test]
fn a_reload_governs_the_next_message() {
    let mut rig = Rig::new(Settings::default());
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.read(slot, &client_frame(OpCode::Binary, &[1u8; 200]));
    let mut lower = Settings::default();
    lower.limits.max_message_size = 150;
    rig.set.publish(lower);
    rig.advance(Duration::ZERO);
    rig.sent(slot);
    rig.read(slot, &client_frame(OpCode::Binary, &[1u8; 200]));
    assert_eq!(
        rig.sent(slot)[2..4],
        1009u16.to_be_bytes(),
        "closed with 1009 by the new limit"
    );
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1009]
    );
}

#[test]
fn sends_by_id_reach_open_sessions_only_and_broadcast_reaches_all() {
    let mut rig = Rig::new(Settings::default());
    let (a, b, handshaking) = (rig.connect(), rig.connect(), rig.connect());
    rig.read(a, UPGRADE);
    rig.read(b, UPGRADE);
    let (ida, idb) = (
        rig.shard.slot(a).unwrap().conn.id(),
        rig.shard.slot(b).unwrap().conn.id(),
    );
    rig.sent(a);
    rig.sent(b);
    let msg = Arc::new(OutMessage::Text("to-a".into()));
    rig.set.send_to(ida, msg, None).unwrap();
    rig.set
        .send_to(
            ida ^ (1 << SLOT_BITS),
            Arc::new(OutMessage::Text("stale".into())),
            None,
        )
        .unwrap();
    rig.set
        .broadcast(Arc::new(OutMessage::Binary(vec![1, 2].into())), None)
        .unwrap();
    rig.advance(Duration::ZERO);
    assert_eq!(rig.sent(a), b"\x81\x04to-a\x82\x02\x01\x02");
    assert_eq!(rig.sent(b), b"\x82\x02\x01\x02");
    assert!(rig.sent(handshaking).is_empty());
    assert_eq!(
        rig.set.counters(0).snapshot().undelivered,
        1,
        "the stale id"
    );
    let _ = idb;
}

#[test]
fn stop_sends_1001_and_finishes_when_every_close_is_done() {
    let settings = Settings {
        shutdown_grace: Duration::from_secs(3),
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let (open, handshaking) = (rig.connect(), rig.connect());
    rig.read(open, UPGRADE);
    rig.sent(open);
    rig.set.stop();
    let end = rig.advance(Duration::ZERO);
    assert!(!rig.x.listening && !end.done);
    let out = rig.sent(open);
    assert_eq!(
        (out[0], &out[2..4]),
        (0x88, &1001u16.to_be_bytes()[..]),
        "close 1001"
    );
    assert!(
        rig.x.released.iter().any(|r| r.0 == handshaking),
        "a handshake in progress is dropped"
    );
    assert!(rig
        .shard
        .open(FakeIo::default(), "127.0.0.1:2".parse().unwrap(), rig.now)
        .is_err());
    rig.read(open, &client_frame(OpCode::Close, &1001u16.to_be_bytes()));
    assert!(
        rig.advance(Duration::ZERO).done,
        "every close handshake done"
    );
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1001]
    );
    rig.shard.close_all(&mut rig.x, rig.now);
    assert_eq!(rig.shard.live(), 0);
}

mod limits;
mod tls;
