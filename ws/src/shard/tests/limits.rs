//! What a client can make a shard hold, bounded: output (soft and hard bounds), time (the
//! message deadline), connections (the cap), memory (the budget, reservations).

use std::time::Duration;

use super::*;

#[test]
fn output_over_the_hard_bound_is_closed_at_the_next_tick() {
    let settings = Settings {
        backpressure: crate::Backpressure {
            soft_bytes: 4096,
            hard_bytes: 8192,
            timeout: Duration::from_secs(60),
        },
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    rig.shard.slot_mut(slot).unwrap().io.room = 0;
    rig.read(slot, &client_frame(OpCode::Binary, &[7u8; 10_000]));
    assert!(rig.seen().closes.is_empty());
    rig.advance(super::TICK);
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1008]
    );
    assert_eq!(rig.set.counters(0).snapshot().backpressure_closes, 1);
}

#[test]
fn a_message_that_trickles_is_closed_at_its_deadline() {
    let settings = Settings {
        message_timeout: Duration::from_secs(5),
        idle_timeout: None,
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    // A 1000-byte binary frame, one byte per second: the idle timer would never fire.
    let frame = client_frame(OpCode::Binary, &[1u8; 1000]);
    for byte in frame.iter().take(5) {
        rig.read(slot, std::slice::from_ref(byte));
        rig.advance(Duration::from_millis(900));
    }
    assert!(
        rig.seen().closes.is_empty(),
        "open 4.5 s after the first byte"
    );
    rig.read(slot, &frame[5..6]);
    rig.advance(Duration::from_millis(600));
    assert_eq!(
        rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1008]
    );
    assert_eq!(rig.set.counters(0).snapshot().message_timeouts, 1);
}

#[test]
fn steady_messages_never_meet_the_message_deadline() {
    let settings = Settings {
        message_timeout: Duration::from_secs(2),
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    // Every read ends inside a frame, but every read also completes a message.
    let frame = client_frame(OpCode::Binary, &[1u8; 100]);
    let mut stream = Vec::new();
    for _ in 0..40 {
        stream.extend_from_slice(&frame);
    }
    for chunk in stream.chunks(150) {
        rig.read(slot, chunk);
        rig.advance(Duration::from_millis(200));
    }
    assert!(rig.seen().closes.is_empty(), "{:?}", rig.seen().closes);
}

#[test]
fn connections_over_the_cap_are_refused_and_counted() {
    let settings = Settings {
        max_connections: 2,
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let a = rig.connect();
    let _b = rig.connect();
    let io = FakeIo::default();
    assert!(rig
        .shard
        .open(io, "127.0.0.1:2".parse().unwrap(), rig.now)
        .is_err());
    assert_eq!(rig.set.counters(0).snapshot().connections_refused, 1);
    rig.shard
        .end(a, CloseCode::ABNORMAL, "test", &mut rig.x, rig.now);
    assert!(rig
        .shard
        .open(FakeIo::default(), "127.0.0.1:3".parse().unwrap(), rig.now)
        .is_ok());
}

#[test]
fn over_the_memory_budget_the_largest_holder_is_closed_with_1009() {
    let settings = Settings {
        memory_budget: 256 << 10,
        idle_timeout: None,
        ..Settings::default()
    };
    let mut rig = Rig::new(settings);
    let small = rig.connect();
    let large = rig.connect();
    rig.read(small, UPGRADE);
    rig.read(large, UPGRADE);
    // Both start a fragmented message; the large one sends 300 KiB of it.
    let mut first = Vec::new();
    encode_client_frame(
        OpCode::Binary,
        false,
        &[1u8; 1000],
        [1, 2, 3, 4],
        &mut first,
    );
    rig.read(small, &first);
    let mut big = Vec::new();
    encode_client_frame(
        OpCode::Binary,
        false,
        &[1u8; 300 << 10],
        [1, 2, 3, 4],
        &mut big,
    );
    for chunk in big.chunks(32 << 10) {
        rig.read(large, chunk);
    }
    assert!(rig.seen().closes.is_empty());
    rig.advance(super::TICK);
    let seen = rig.seen().closes.clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].1, 1009);
    let large_conn = &rig.shard.slot(large).unwrap().conn;
    assert!(
        !large_conn.has_session() && large_conn.memory() < 1024,
        "the largest holder finishes, its message dropped"
    );
    let sent = rig.sent(large);
    assert!(
        sent.ends_with(b"\x03\xf1message over the memory budget"),
        "it is told why (1009): {:?}",
        String::from_utf8_lossy(&sent[sent.len().saturating_sub(40)..])
    );
    assert!(rig.shard.slot(small).is_some(), "the small one lives");
    assert_eq!(rig.set.counters(0).snapshot().budget_closes, 1);
}

#[test]
fn a_frame_header_declaring_16_mib_holds_only_what_arrived() {
    let mut rig = Rig::new(Settings::default());
    let slot = rig.connect();
    rig.read(slot, UPGRADE);
    // Header of a 16 MiB - 1 masked binary frame, then 100 bytes of it.
    let len: u64 = (16 << 20) - 1;
    let mut head = vec![0x82, 0xff];
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    head.extend_from_slice(&[0u8; 100]);
    rig.read(slot, &head);
    rig.advance(super::TICK);
    let memory = rig.set.counters(0).snapshot().memory;
    assert!(
        memory <= crate::assembly::RESERVE_STEP + (64 << 10),
        "holds {memory} bytes for 100 received"
    );
}

#[test]
fn a_connection_stays_small() {
    // Idle connections are what a server holds most of: keep the lifecycle machine compact
    // (a deferred upgrade's data is boxed, the session's user data too).
    let size = std::mem::size_of::<Connection>();
    eprintln!("Connection: {size} bytes");
    assert!(size <= 448, "Connection is {size} bytes");
}
