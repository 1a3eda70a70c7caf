//! Large-message assembly: a message beyond `ASSEMBLY_RETAIN` is assembled in a buffer borrowed
//! from the thread's cache and given back once delivered (or when its session is dropped); the
//! cache is bounded; idle sessions hold at most `ASSEMBLY_RETAIN`; and in steady state large
//! messages, fragmented or streamed, up to `max_message_size`, allocate nothing. Allocations are
//! counted by this test binary's global allocator, per thread (tests run in parallel threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hioload_wsproto::assembly::{self, CACHE_MAX_BUFFERS, CACHE_MAX_BYTES};
use hioload_wsproto::frame::encode_client_frame;
use hioload_wsproto::session::ASSEMBLY_RETAIN;
use hioload_wsproto::{Event, FrameSink, Limits, OpCode, Session};

/// The system allocator, counting the allocations and reallocations of each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out (the counter is a const-initialised thread-local Cell: no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A sink that only counts what it is given (no allocation).
#[derive(Default)]
struct CountingSink {
    frames: u64,
    bytes: u64,
}

impl FrameSink for CountingSink {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.frames += 1;
        self.bytes += (header.len() + payload.len()) as u64;
    }
}

/// A fingerprint of a payload, to check deliveries without keeping copies.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(bytes.len() as u64, |h, &b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    })
}

/// Masked client frames for `messages`, each given as its fragments; returns the stream and the
/// fingerprint of every whole message.
fn encode(messages: &[(OpCode, Vec<Vec<u8>>)]) -> (Vec<u8>, Vec<u64>) {
    let mut stream = Vec::new();
    let mut prints = Vec::new();
    for (i, (opcode, fragments)) in messages.iter().enumerate() {
        for (f, payload) in fragments.iter().enumerate() {
            let op = if f == 0 {
                *opcode
            } else {
                OpCode::Continuation
            };
            let key = [i as u8, f as u8, 0x5a, 0xa5];
            encode_client_frame(op, f + 1 == fragments.len(), payload, key, &mut stream);
        }
        prints.push(fingerprint(&fragments.concat()));
    }
    (stream, prints)
}

/// Payload bytes that are valid UTF-8 text and differ per message.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect()
}

/// Feeds `stream` to `session` the way a transport does: reads of at most `read` bytes into the
/// fixed buffer `buf`, the unconsumed tail kept at its start. Checks every delivered message
/// against `prints` (in order) and echoes it; returns the messages delivered. Allocates nothing.
fn drive(
    session: &mut Session,
    stream: &[u8],
    read: usize,
    buf: &mut [u8],
    prints: &[u64],
) -> usize {
    let mut sink = CountingSink::default();
    let (mut at, mut kept, mut delivered) = (0, 0, 0);
    while at < stream.len() {
        let n = read.min(stream.len() - at).min(buf.len() - kept);
        buf[kept..kept + n].copy_from_slice(&stream[at..at + n]);
        at += n;
        let len = kept + n;
        let consumed = session
            .receive(&mut buf[..len], &mut sink, |ev, out| {
                let bytes = match ev {
                    Event::Text(t) => t.as_bytes(),
                    Event::Binary(b) => b,
                    _ => panic!("only data messages are sent"),
                };
                assert_eq!(fingerprint(bytes), prints[delivered], "message {delivered}");
                delivered += 1;
                out.send_binary(bytes).unwrap();
            })
            .expect("valid stream");
        buf.copy_within(consumed..len, 0);
        kept = len - consumed;
    }
    assert_eq!(kept, 0, "the stream ends with a whole frame");
    assert_eq!(sink.frames as usize, delivered);
    delivered
}

/// A read buffer as the transports size it: a read plus a retained partial frame.
fn read_buffer(read: usize) -> Vec<u8> {
    vec![0; read + 2 * Limits::default().inplace_frame_max]
}

const READ: usize = 64 << 10;

#[test]
fn steady_large_messages_allocate_nothing_up_to_max_message_size() {
    assembly::trim();
    let max = Limits::default().max_message_size;
    let messages = vec![
        // One frame beyond inplace_frame_max, split across reads: streamed, length announced.
        (OpCode::Binary, vec![payload(256 << 10, 1)]),
        // The largest message allowed, in one frame.
        (OpCode::Binary, vec![payload(max, 2)]),
        // Fragments whose total is not announced: the buffer grows while they arrive.
        (
            OpCode::Text,
            vec![
                payload(40 << 10, 3),
                payload(100 << 10, 4),
                payload(300 << 10, 5),
            ],
        ),
        // Small fragments, then a small single frame: the session's own buffer and zero copy.
        (OpCode::Text, vec![payload(10, 6), payload(20, 7)]),
        (OpCode::Binary, vec![payload(1000, 8)]),
        (
            OpCode::Binary,
            vec![payload(1 << 20, 9), payload(1 << 20, 10)],
        ),
    ];
    let (stream, prints) = encode(&messages);
    let mut buf = read_buffer(READ);
    let mut session = Session::new(Limits::default());
    // Warm-up: the cache fills with the buffers these messages need.
    assert_eq!(
        drive(&mut session, &stream, READ, &mut buf, &prints),
        messages.len()
    );
    let warm = assembly::stats();
    assert!(warm.borrowed >= 4 && warm.cached_buffers >= 1, "{warm:?}");
    let before = allocations();
    for _ in 0..2 {
        assert_eq!(
            drive(&mut session, &stream, READ, &mut buf, &prints),
            messages.len()
        );
    }
    assert_eq!(allocations() - before, 0, "allocations in steady state");
    let steady = assembly::stats();
    assert_eq!(
        steady.misses, warm.misses,
        "every large message found its buffer in the cache"
    );
    assert_eq!(steady.grown, warm.grown, "no buffer grew in steady state");
    assert_eq!(
        steady.hits - warm.hits,
        steady.borrowed - warm.borrowed,
        "every borrow a hit"
    );
    // Between messages the session holds only its small buffer.
    assert!(
        session.assembly_capacity() <= ASSEMBLY_RETAIN,
        "holds {}",
        session.assembly_capacity()
    );
}

#[test]
fn a_large_message_borrows_a_buffer_and_gives_it_back() {
    assembly::trim();
    let start = assembly::stats();
    let data = payload(1 << 20, 0);
    let (stream, prints) = encode(&[(OpCode::Binary, vec![data])]);
    let mut buf = read_buffer(READ);
    let mut session = Session::new(Limits::default());
    // The first read streams the start of the frame: the buffer is borrowed, sized to what
    // arrived plus at most one reserve step, not to the announced length (a header is a
    // promise, not bytes).
    let half = stream.len() / 2;
    assert_eq!(drive(&mut session, &stream[..READ], READ, &mut buf, &[]), 0);
    assert!(
        session.assembly_capacity() <= READ + assembly::RESERVE_STEP + ASSEMBLY_RETAIN,
        "reserved ahead of the bytes: {}",
        session.assembly_capacity()
    );
    let during = assembly::stats();
    assert_eq!(
        (during.borrowed, during.misses),
        (start.borrowed + 1, start.misses + 1)
    );
    assert_eq!(during.cached_buffers, 0);
    assert_eq!(
        drive(&mut session, &stream[READ..half], READ, &mut buf, &[]),
        0
    );
    assert!(
        session.assembly_capacity() <= 2 * half + assembly::RESERVE_STEP,
        "grows with the bytes: {}",
        session.assembly_capacity()
    );
    assert_eq!(
        drive(&mut session, &stream[half..], READ, &mut buf, &prints),
        1
    );
    // Delivered: the buffer is back in the cache, the session keeps at most its small buffer.
    let after = assembly::stats();
    assert_eq!(
        (after.returned, after.cached_buffers),
        (start.returned + 1, 1)
    );
    assert!(after.cached_bytes >= 1 << 20);
    assert!(session.assembly_capacity() <= ASSEMBLY_RETAIN);
    // The next one reuses it.
    assert_eq!(drive(&mut session, &stream, READ, &mut buf, &prints), 1);
    assert_eq!(assembly::stats().hits, start.hits + 1);

    // A session dropped in the middle of a message gives its buffer back too.
    let mut session = Session::new(Limits::default());
    drive(&mut session, &stream[..READ], READ, &mut buf, &[]);
    assert_eq!(assembly::stats().cached_buffers, 0);
    drop(session);
    assert_eq!(assembly::stats().cached_buffers, 1);

    // Messages that fit ASSEMBLY_RETAIN never borrow.
    let borrowed = assembly::stats().borrowed;
    let small = vec![(
        OpCode::Binary,
        vec![payload(1 << 10, 1), payload(2 << 10, 2)],
    )];
    let (stream, prints) = encode(&small);
    let mut session = Session::new(Limits::default());
    assert_eq!(drive(&mut session, &stream, 1000, &mut buf, &prints), 1);
    assert_eq!(assembly::stats().borrowed, borrowed);
    assert!(session.assembly_capacity() <= ASSEMBLY_RETAIN);
}

#[test]
fn the_cache_is_bounded_per_thread() {
    assembly::trim();
    let start = assembly::stats();
    let (stream, prints) = encode(&[(OpCode::Binary, vec![payload(2 << 20, 0)])]);
    let mut buf = read_buffer(READ);
    // More sessions in the middle of a large message at once than the cache keeps buffers.
    let mut sessions: Vec<Session> = (0..CACHE_MAX_BUFFERS + 2)
        .map(|_| Session::new(Limits::default()))
        .collect();
    for s in &mut sessions {
        assert_eq!(drive(s, &stream[..READ], READ, &mut buf, &[]), 0);
    }
    for s in &mut sessions {
        assert_eq!(drive(s, &stream[READ..], READ, &mut buf, &prints), 1);
    }
    let after = assembly::stats();
    assert_eq!(
        after.borrowed - start.borrowed,
        CACHE_MAX_BUFFERS as u64 + 2
    );
    assert_eq!(after.cached_buffers, CACHE_MAX_BUFFERS);
    assert_eq!(
        after.freed - start.freed,
        2,
        "the buffers beyond the bound are freed"
    );
    assert!(after.cached_bytes <= CACHE_MAX_BYTES);
    for s in &sessions {
        assert!(s.assembly_capacity() <= ASSEMBLY_RETAIN);
    }
    // The byte bound: four 16 MiB buffers fill it, a fifth cannot join.
    assembly::trim();
    let max = Limits::default().max_message_size;
    let (stream, prints) = encode(&[(OpCode::Binary, vec![payload(max, 1)])]);
    let mut sessions: Vec<Session> = (0..CACHE_MAX_BUFFERS + 1)
        .map(|_| Session::new(Limits::default()))
        .collect();
    for s in &mut sessions {
        drive(s, &stream[..READ], READ, &mut buf, &[]);
    }
    for s in &mut sessions {
        assert_eq!(drive(s, &stream[READ..], READ, &mut buf, &prints), 1);
    }
    let full = assembly::stats();
    assert!(
        full.cached_bytes <= CACHE_MAX_BYTES && full.cached_buffers <= CACHE_MAX_BUFFERS,
        "{full:?}"
    );
    assembly::trim();
    assert_eq!(
        (
            assembly::stats().cached_buffers,
            assembly::stats().cached_bytes
        ),
        (0, 0)
    );
}
