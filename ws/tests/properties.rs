//! Property tests: header encode/decode round trips, and "feeding a stream in random pieces,
//! down to one byte, gives the same events and replies as feeding it whole".

mod common;

use common::*;
use hioload_wsproto::frame::{encode_client_frame, FrameHeader, MAX_HEADER_LEN};
use hioload_wsproto::{Limits, OpCode, Session};
use proptest::prelude::*;

fn opcode() -> impl Strategy<Value = OpCode> {
    (0u8..16).prop_map(OpCode::from_bits)
}

fn header() -> impl Strategy<Value = FrameHeader> {
    let len = prop_oneof![0u64..130, 120u64..70_000, 0u64..(1 << 63)];
    (
        any::<bool>(),
        0u8..8,
        opcode(),
        proptest::option::of(any::<[u8; 4]>()),
        len,
    )
        .prop_map(|(fin, rsv, opcode, mask, payload_len)| FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        })
}

/// What a well-behaved client sends.
#[derive(Clone, Debug)]
enum Item {
    /// A data message split at the given fragment sizes, with pings between fragments.
    Message {
        text: bool,
        data: Vec<u8>,
        cuts: Vec<usize>,
        ping_between: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    let payload = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => proptest::collection::vec(any::<u8>(), 0..20_000),
    ];
    prop_oneof![
        6 => (any::<bool>(), payload, ".{0,300}", proptest::collection::vec(1usize..5000, 0..4), any::<bool>()).prop_map(
            |(text, bytes, s, cuts, ping_between)| {
                let data = if text { s.into_bytes() } else { bytes };
                Item::Message { text, data, cuts, ping_between }
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Item::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Item::Pong),
    ]
}

/// Encodes the items as masked client frames (keys from `seed`), and the events a server must
/// report for them.
fn encode(items: &[Item], seed: u32) -> (Vec<u8>, Vec<Ev>) {
    let mut wire = Vec::new();
    let mut events = Vec::new();
    let mut key = seed;
    let mut next_key = || {
        key = key.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        key.to_le_bytes()
    };
    for item in items {
        match item {
            Item::Ping(p) => {
                encode_client_frame(OpCode::Ping, true, p, next_key(), &mut wire);
                events.push(Ev::Ping(p.clone()));
            }
            Item::Pong(p) => {
                encode_client_frame(OpCode::Pong, true, p, next_key(), &mut wire);
                events.push(Ev::Pong(p.clone()));
            }
            Item::Message {
                text,
                data,
                cuts,
                ping_between,
            } => {
                let mut pieces = Vec::new();
                let mut rest = &data[..];
                for cut in cuts {
                    let n = (*cut).min(rest.len());
                    pieces.push(&rest[..n]);
                    rest = &rest[n..];
                }
                pieces.push(rest);
                let first = if *text { OpCode::Text } else { OpCode::Binary };
                for (i, piece) in pieces.iter().enumerate() {
                    let op = if i == 0 { first } else { OpCode::Continuation };
                    encode_client_frame(op, i + 1 == pieces.len(), piece, next_key(), &mut wire);
                    if *ping_between && i + 1 < pieces.len() {
                        encode_client_frame(OpCode::Ping, true, b"mid", next_key(), &mut wire);
                        events.push(Ev::Ping(b"mid".to_vec()));
                    }
                }
                events.push(if *text {
                    Ev::Text(String::from_utf8(data.clone()).unwrap())
                } else {
                    Ev::Binary(data.clone())
                });
            }
        }
    }
    (wire, events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn header_encode_decode_round_trips(h in header()) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        prop_assert_eq!(FrameHeader::decode(&buf[..n]), Ok(Some((h, n))));
        for cut in 0..n {
            prop_assert_eq!(FrameHeader::decode(&buf[..cut]), Ok(None));
        }
    }

    #[test]
    fn random_pieces_give_the_same_events_as_whole(
        items in proptest::collection::vec(item(), 1..12),
        seed in any::<u32>(),
        pieces in proptest::collection::vec(1usize..3000, 1..20),
        inplace in prop_oneof![Just(16usize << 10), 131usize..2048],
    ) {
        let (wire, expected) = encode(&items, seed);
        let limits = Limits { inplace_frame_max: inplace, ..Limits::default() };

        let mut whole = Driver::new(limits.clone());
        whole.feed(&wire).unwrap();
        prop_assert_eq!(&whole.events, &expected);
        prop_assert!(whole.buf.is_empty());

        let mut split = Driver::new(limits.clone());
        split.feed_in_pieces(&wire, &pieces).unwrap();
        prop_assert_eq!(&split.events, &expected);
        prop_assert_eq!(&split.out, &whole.out, "same replies and echoes");
        prop_assert!(split.max_retained <= inplace.max(131));
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events(items in proptest::collection::vec(item(), 1..4), seed in any::<u32>()) {
        let (wire, expected) = encode(&items, seed);
        let mut d = Driver::server();
        d.feed_in_pieces(&wire, &[1]).unwrap();
        prop_assert_eq!(&d.events, &expected);
    }

    #[test]
    fn server_frames_round_trip_through_a_client_session(items in proptest::collection::vec(item(), 1..8)) {
        // What the server sends (unmasked, through Outgoing), a client session reads back.
        let mut server = Session::new(Limits::default());
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        {
            let mut tx = server.outgoing(&mut wire);
            for item in &items {
                match item {
                    Item::Message { text, data, cuts, .. } => {
                        let cut = cuts.first().copied().unwrap_or(0).min(data.len());
                        let op = if *text { OpCode::Text } else { OpCode::Binary };
                        tx.send_frame(op, false, &data[..cut]).unwrap();
                        tx.send_frame(OpCode::Continuation, true, &data[cut..]).unwrap();
                        expected.push(if *text { Ev::Text(String::from_utf8(data.clone()).unwrap()) } else { Ev::Binary(data.clone()) });
                    }
                    Item::Ping(p) => { tx.ping(p).unwrap(); expected.push(Ev::Ping(p.clone())); }
                    Item::Pong(p) => { tx.pong(p).unwrap(); expected.push(Ev::Pong(p.clone())); }
                }
            }
        }
        let mut client = Session::new_client(Limits::default(), 42);
        let mut got = Vec::new();
        let mut replies = Vec::new();
        let consumed = client.receive(&mut wire, &mut replies, |ev, _| got.push(Ev::from(&ev))).unwrap();
        prop_assert_eq!(consumed, wire.len());
        prop_assert_eq!(got, expected);
        // The client's pongs are masked frames a server session accepts.
        let mut server2 = Driver::server();
        server2.feed(&replies).unwrap();
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_respect_the_consumed_contract(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        pieces in proptest::collection::vec(1usize..500, 1..8),
    ) {
        let mut d = Driver::new(Limits { inplace_frame_max: 256, max_frame_size: 1 << 20, max_message_size: 1 << 20, ..Limits::default() });
        let _ = d.feed_in_pieces(&bytes, &pieces);
        prop_assert!(d.max_retained <= 256);
        server_frames(&d.out); // whatever was sent is well-formed server frames
    }
}
