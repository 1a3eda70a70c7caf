//! Large messages without copies of ours: a transport reads the payload of a large frame
//! straight into the session's message buffer (`bulk_room` / `receive_bulk`), and a sink that
//! keeps ranges gets an echo of an assembled message as a range of the retained message
//! (`send_message_frame`), which the pending output can adopt instead of copying its unsent end.

use std::mem::MaybeUninit;

use hioload_wsproto::frame::encode_client_frame;
use hioload_wsproto::output_cache::OutputCache;
use hioload_wsproto::session::BULK_MIN;
use hioload_wsproto::{
    assembly, CloseCode, Event, FrameSink, Limits, OpCode, PendingOutput, Session,
};

/// A sink that records frames, and whether each payload came as a range of the retained message.
#[derive(Default)]
struct RangeSink {
    keeps: bool,
    frames: Vec<(Vec<u8>, Vec<u8>, bool)>,
    message_at: Option<(usize, usize)>,
}

impl FrameSink for RangeSink {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.frames.push((header.to_vec(), payload.to_vec(), false));
    }
    fn send_message_frame(&mut self, header: &[u8], payload: &[u8], message: &[u8]) {
        self.frames.push((header.to_vec(), payload.to_vec(), true));
        self.message_at = Some((message.as_ptr() as usize, message.len()));
    }
    fn keeps_message_ranges(&self) -> bool {
        self.keeps
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(opcode, fin, payload, [9, 8, 7, 6], &mut out);
    out
}

/// Fills the room from `wire` (what a `recv` into it does); returns the bytes written.
fn fill(room: &mut [MaybeUninit<u8>], wire: &[u8]) -> usize {
    let n = room.len().min(wire.len());
    for (slot, b) in room.iter_mut().zip(&wire[..n]) {
        slot.write(*b);
    }
    n
}

/// Feeds `wire` the way a transport does: the start through `receive`, then, while the session
/// gives room, straight into the message buffer (at most `step` bytes a read). Returns the
/// messages delivered and how many bytes went through bulk reads.
fn feed(
    session: &mut Session,
    sink: &mut RangeSink,
    wire: &[u8],
    step: usize,
) -> (Vec<Vec<u8>>, usize) {
    let mut got = Vec::new();
    let mut bulk = 0;
    let mut pos = 0;
    let mut held: Vec<u8> = Vec::new();
    while pos < wire.len() {
        if held.is_empty() {
            if let Some(room) = session.bulk_room() {
                let room_len = room.len().min(step);
                let n = fill(&mut room[..room_len], &wire[pos..]);
                assert!(n > 0);
                // SAFETY: `fill` wrote the first `n` bytes of the room just given.
                unsafe {
                    session.receive_bulk(n, sink, |ev, _| {
                        if let Event::Binary(b) = ev {
                            got.push(b.to_vec());
                        } else if let Event::Text(t) = ev {
                            got.push(t.as_bytes().to_vec());
                        }
                    })
                }
                .unwrap();
                bulk += n;
                pos += n;
                continue;
            }
        }
        let take = step.min(wire.len() - pos);
        let mut input = std::mem::take(&mut held);
        input.extend_from_slice(&wire[pos..pos + take]);
        pos += take;
        let consumed = session
            .receive(&mut input, sink, |ev, out| {
                if let Event::Binary(b) = ev {
                    got.push(b.to_vec());
                    out.send_binary(b).unwrap();
                }
            })
            .unwrap();
        held = input[consumed..].to_vec();
    }
    (got, bulk)
}

#[test]
fn a_large_frame_is_read_straight_into_the_message_buffer() {
    let data = pattern(1 << 20);
    let mut wire = client_frame(OpCode::Binary, true, &data);
    wire.extend(client_frame(OpCode::Binary, true, b"small after"));
    let mut session = Session::new(Limits::default());
    let mut sink = RangeSink::default();
    // Reads of 64 KiB: the first brings the header and the start (through a receive buffer),
    // the rest goes straight into the message buffer, the small message again through `receive`.
    let (got, bulk) = feed(&mut session, &mut sink, &wire, 64 << 10);
    assert_eq!(got, vec![data.clone(), b"small after".to_vec()]);
    assert!(bulk >= data.len() - (64 << 10), "bulk bytes: {bulk}");
    assert!(
        !session.expects_large(),
        "a small message ends the large-message mode"
    );
    // After a large message alone, its peer is expected to send more of them.
    let (got, _) = feed(
        &mut session,
        &mut sink,
        &client_frame(OpCode::Binary, true, &data),
        64 << 10,
    );
    assert_eq!(got, vec![data]);
    assert!(session.expects_large());
}

#[test]
fn bulk_reads_check_text_and_fail_with_1007() {
    let mut bad = "é".repeat(200_000).into_bytes();
    bad[150_001] = 0xff; // inside the part read in bulk
    let wire = client_frame(OpCode::Text, true, &bad);
    let mut session = Session::new(Limits::default());
    let mut sink = RangeSink::default();
    let mut pos = 0;
    let mut input = wire[..BULK_MIN].to_vec();
    pos += session.receive(&mut input, &mut sink, |_, _| {}).unwrap();
    assert_eq!(pos, BULK_MIN, "a large frame is streamed");
    let mut failed = None;
    while failed.is_none() {
        let room = session.bulk_room().expect("room while the frame streams");
        let n = fill(room, &wire[pos..]);
        pos += n;
        // SAFETY: `fill` wrote the first `n` bytes of the room just given.
        failed = unsafe { session.receive_bulk(n, &mut sink, |_, _| {}) }.err();
    }
    assert_eq!(failed.unwrap().code, CloseCode::INVALID_PAYLOAD);
    assert!(session.bulk_room().is_none(), "no room once closed");
}

#[test]
fn an_echo_is_a_range_of_the_retained_message_when_the_sink_keeps_ranges() {
    let data = pattern(300 << 10);
    let wire = client_frame(OpCode::Binary, true, &data);
    for keeps in [false, true] {
        assembly::trim();
        let mut session = Session::new(Limits::default());
        let mut sink = RangeSink {
            keeps,
            ..RangeSink::default()
        };
        let (got, _) = feed(&mut session, &mut sink, &wire[..wire.len() - 10], 32 << 10);
        assert!(got.is_empty());
        // The last bytes through `receive`: the echo is sent from the callback.
        let mut input = wire[wire.len() - 10..].to_vec();
        let mut echoed = 0;
        session
            .receive(&mut input, &mut sink, |ev, out| {
                if let Event::Binary(b) = ev {
                    out.send_binary(b).unwrap();
                    echoed += 1;
                }
            })
            .unwrap();
        assert_eq!(echoed, 1);
        let (_, payload, as_range) = sink.frames.last().unwrap();
        assert_eq!(payload, &data);
        assert_eq!(
            *as_range, keeps,
            "a range only for a sink that keeps ranges"
        );
        if keeps {
            // Retained, unchanged, at the address the sink was given, until released.
            let retained = session.retained_message();
            assert_eq!(retained, &data[..]);
            assert_eq!(
                sink.message_at,
                Some((retained.as_ptr() as usize, retained.len()))
            );
            let before = assembly::stats().returned;
            session.release_retained();
            assert!(session.retained_message().is_empty());
            assert_eq!(assembly::stats().returned, before + 1);
        } else {
            assert!(session.retained_message().is_empty());
        }
    }
}

#[test]
fn pending_output_adopts_a_message_and_gives_it_back_to_the_assembly_cache() {
    assembly::trim();
    let mut cache = OutputCache::new();
    let mut pending = PendingOutput::new();
    let buf = pattern(1 << 20);
    let returned = assembly::stats().returned;
    pending.adopt(buf.clone(), 1000, &mut cache);
    assert_eq!(pending.unsent(), &buf[1000..]);
    // Output queued behind it stays in order.
    pending.push_cached(b"next frame", &mut cache);
    pending.consume_cached(buf.len() - 1000, &mut cache);
    assert_eq!(pending.unsent(), b"next frame");
    let n = pending.len();
    pending.consume_cached(n, &mut cache);
    assert!(pending.is_empty());
    let stats = assembly::stats();
    assert_eq!(stats.returned, returned + 1, "the message buffer went home");
    assert!(stats.cached_bytes >= 1 << 20);
}
