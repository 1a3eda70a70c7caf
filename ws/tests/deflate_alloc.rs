//! permessage-deflate allocates nothing per message in steady state, in shared and dedicated
//! mode: compressed messages in (whole frames and assembled ones, up to 1 MiB inflated) are
//! inflated into buffers from the thread's assembly cache, echoes go out compressed through the
//! thread's scratch output, and dedicated sessions take their codecs from the thread's pool and
//! give them back. Allocations are counted per thread by this test binary's global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flate2::{Compress, Compression, FlushCompress};
use hioload_wsproto::deflate::{self, DeflateConfig, DeflateMode};
use hioload_wsproto::frame::encode_client_frame;
use hioload_wsproto::{Event, FrameSink, Limits, OpCode, Session};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local Cell (no allocation).
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

/// Counts the bytes of what it is given, into storage it keeps.
struct Sink {
    frames: u64,
    bytes: u64,
}

impl FrameSink for Sink {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.frames += 1;
        self.bytes += (header.len() + payload.len()) as u64;
    }
}

fn json(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while v.len() < n {
        v.extend_from_slice(format!("{{\"id\":{i},\"name\":\"user{}\"}},", i % 11).as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

/// A client's compressed messages (no context takeover, as the shared mode agrees), as frames:
/// whole ones, and one fragmented in two.
fn wire(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let mut c = Compress::new(Compression::default(), false);
        let mut z = Vec::with_capacity(m.len() + 1024);
        c.compress_vec(m, &mut z, FlushCompress::Sync).unwrap();
        z.truncate(z.len() - 4);
        let mut frames = Vec::new();
        if i % 2 == 0 {
            encode_client_frame(OpCode::Text, true, &z, [1, 2, 3, 4], &mut frames);
        } else {
            let (a, b) = z.split_at(z.len() / 2);
            encode_client_frame(OpCode::Binary, false, a, [1, 2, 3, 4], &mut frames);
            encode_client_frame(OpCode::Continuation, true, b, [1, 2, 3, 4], &mut frames);
        }
        // RSV1 on the first frame of the message.
        frames[0] |= 0x40;
        out.extend_from_slice(&frames);
    }
    out
}

/// Feeds `stream` in reads of 64 KiB (held bytes carried over), echoing every message.
fn drive(session: &mut Session, stream: &[u8], buf: &mut [u8], sink: &mut Sink) -> usize {
    let mut delivered = 0;
    let mut held = 0;
    let mut pos = 0;
    while pos < stream.len() {
        let take = (64 << 10).min(stream.len() - pos);
        buf[held..held + take].copy_from_slice(&stream[pos..pos + take]);
        pos += take;
        let len = held + take;
        let consumed = session
            .receive(&mut buf[..len], sink, |ev, out| match ev {
                Event::Text(t) => {
                    delivered += 1;
                    out.send_text(t).unwrap();
                }
                Event::Binary(b) => {
                    delivered += 1;
                    out.send_binary(b).unwrap();
                }
                _ => {}
            })
            .unwrap();
        buf.copy_within(consumed..len, 0);
        held = len - consumed;
    }
    delivered
}

fn steady(mode: DeflateMode) {
    let cfg = DeflateConfig {
        mode,
        ..DeflateConfig::default()
    };
    let agreed = deflate::negotiate(
        Some("permessage-deflate; client_no_context_takeover"),
        &cfg,
        |_| {},
    )
    .expect("accepted");
    let messages = vec![json(2000), json(50_000), json(1 << 20), json(300_000)];
    let stream = wire(&messages);
    let mut buf = vec![0u8; 256 << 10];
    let mut sink = Sink {
        frames: 0,
        bytes: 0,
    };
    let mut session = Session::new(Limits::default());
    session.enable_deflate(agreed, &cfg);
    let mut run = |sink: &mut Sink| {
        let n = drive(&mut session, &stream, &mut buf, sink);
        assert_eq!(n, messages.len());
    };
    // Warm-up: caches, pools and scratch buffers reach their size.
    for _ in 0..3 {
        run(&mut sink);
    }
    let before = allocations();
    let frames = sink.frames;
    for _ in 0..5 {
        run(&mut sink);
    }
    assert_eq!(
        allocations() - before,
        0,
        "{mode}: allocations in 5 rounds of {} messages",
        messages.len()
    );
    assert_eq!(sink.frames - frames, 5 * messages.len() as u64);
    // The echoes went out compressed: far fewer bytes than the messages.
    let raw: usize = messages.iter().map(Vec::len).sum();
    assert!(
        sink.bytes / 8 < raw as u64 / 4,
        "{mode}: {} bytes out",
        sink.bytes
    );
}

#[test]
fn shared_mode_allocates_nothing_per_message() {
    steady(DeflateMode::Shared);
}

#[test]
fn dedicated_mode_allocates_nothing_per_message_and_pools_its_codecs() {
    steady(DeflateMode::Dedicated { window_bits: 12 });
    // The session ended: its compressor went to the pool (the client did not keep its context,
    // client_no_context_takeover, so the session had no inflater of its own).
    assert_eq!(deflate::pooled(), (1, 0));
    // The next sessions take it and give it back: no codec is built again.
    let cfg = DeflateConfig {
        mode: DeflateMode::Dedicated { window_bits: 12 },
        ..DeflateConfig::default()
    };
    let agreed = deflate::negotiate(Some("permessage-deflate"), &cfg, |_| {}).unwrap();
    let mut session = Session::new(Limits::default());
    session.enable_deflate(agreed, &cfg);
    assert_eq!(deflate::pooled(), (0, 0));
    drop(session);
    assert_eq!(deflate::pooled(), (1, 1));
    let before = allocations();
    for _ in 0..10 {
        let mut session = Session::new(Limits::default());
        session.enable_deflate(agreed, &cfg);
    }
    // Two boxes per session (its deflate state, each side), no codec.
    assert_eq!(allocations() - before, 20);
    assert_eq!(deflate::pooled(), (1, 1));
}
