//! Allocations per message in steady state: the hioload-ws echo server runs in this process under
//! a counting global allocator, real loopback connections drive messages through it, and after a
//! warm-up every allocation anywhere in the process (server workers and this client alike) is
//! counted over a fixed number of echoes. The target is zero.
//!
//! Messages are echoed and every byte of every echo is checked. The 16 MiB scenarios (the default
//! `max_message_size`) run twice: once echoed, which also exercises the kernel transport's output
//! path for a payload that is not in its receive buffer (staged, then held as pending output, both
//! in large buffers borrowed from the worker's output cache), and once answered with a 16-byte
//! digest (length and hash) instead of an echo, which measures the receive path alone (reads,
//! streaming, assembly in a buffer from the worker's assembly cache, delivery to the handler).
//!
//! **Warm-up reaches the peak.** The worker's large-buffer caches keep as many buffers as were
//! ever in use at once (within their bounds), so a scenario is in steady state only once every
//! connection has had a message in assembly (and a reply pending) at the same time. Plain rounds
//! reach that only when the worker's reads happen to interleave all connections mid-message, which
//! may first occur after any number of rounds (it once did after 1,140 of 256 KiB messages, inside
//! the measured window: one 256 KiB allocation, reported as a flake). The warm-up therefore ends
//! with [`PEAK_ROUNDS`] staggered rounds: the first half of every connection's message is sent,
//! the server is given [`PEAK_PAUSE`] to read it (each message is now in assembly), then the rest.
//!
//! Run: `cargo bench -p hioload-bench --bench alloc_per_message` (exit status 1 if any scenario
//! allocates in steady state). `ALLOC_TRACE=1` prints a backtrace of every allocation made in a
//! measured phase, to find where it comes from; `-- WORD` runs only the scenarios whose name
//! contains WORD.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hioload_bench::connect::Target;
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::wire::{self, DataKind};
use hioload_ws::{Config, Ctx, Handler, Message, Server};

/// The system allocator, counting every allocation and reallocation.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Set during measured phases when ALLOC_TRACE is set.
static TRACING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Guards against tracing the allocations the tracing itself makes.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) && !IN_TRACE.with(|t| t.replace(true)) {
        let thread = std::thread::current();
        eprintln!(
            "allocation of {size} bytes on thread {:?}:\n{}",
            thread.name().unwrap_or("?"),
            std::backtrace::Backtrace::force_capture()
        );
        IN_TRACE.with(|t| t.set(false));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
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

/// Messages larger than this are answered with their [`digest`] while [`DIGEST_LARGE`] is set.
const ECHO_MAX: usize = 1 << 20;
/// Set by a digest-reply scenario before it connects (no message is in flight then).
static DIGEST_LARGE: AtomicBool = AtomicBool::new(false);

/// Sends every message back as it came, or the digest of one larger than [`ECHO_MAX`] while
/// [`DIGEST_LARGE`] is set.
struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg.as_bytes().len() <= ECHO_MAX || !DIGEST_LARGE.load(Ordering::Relaxed) {
            let _ = ctx.send(msg);
        } else {
            let _ = ctx.send(Message::Binary(&digest(msg.as_bytes())));
        }
    }
}

/// Length (u64 LE) and a multiplicative hash (u64 LE) of `bytes`.
fn digest(bytes: &[u8]) -> [u8; 16] {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out[8..].copy_from_slice(&hash.to_le_bytes());
    out
}

/// The replies the server must send for a pattern's ring.
struct Replies {
    /// One reply per ring message, back to back.
    bytes: Vec<u8>,
    /// Bytes of one reply.
    len: usize,
}

/// The echoes of `pattern`'s messages, or (`digest_large`) their digests beyond [`ECHO_MAX`].
fn expected_replies(pattern: &Pattern, digest_large: bool) -> Replies {
    if pattern.size <= ECHO_MAX || !digest_large {
        return Replies {
            bytes: pattern.echo.clone(),
            len: pattern.echo_len,
        };
    }
    let header = pattern.echo_len - pattern.size;
    let mut replies = Vec::new();
    for m in 0..pattern.messages {
        let payload = &pattern.echo[m * pattern.echo_len + header..][..pattern.size];
        wire::push_frame(&mut replies, DataKind::Binary, &digest(payload), None);
    }
    let len = replies.len() / pattern.messages;
    Replies {
        bytes: replies,
        len,
    }
}

struct Scenario {
    name: &'static str,
    kind: DataKind,
    connections: usize,
    size: usize,
    pipeline: usize,
    warmup_messages: u64,
    messages: u64,
    /// Distinct messages in the pattern ring (0: `Pattern::ring_messages`); small for huge messages.
    ring: usize,
    /// Messages larger than [`ECHO_MAX`] are answered with their digest instead of an echo.
    digest_large: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "8×20 B binary",
        kind: DataKind::Binary,
        connections: 8,
        size: 20,
        pipeline: 1,
        warmup_messages: 20_000,
        messages: 50_000,
        ring: 0,
        digest_large: false,
    },
    Scenario {
        name: "8×20 B binary, 16 in flight",
        kind: DataKind::Binary,
        connections: 8,
        size: 20,
        pipeline: 16,
        warmup_messages: 50_000,
        messages: 200_000,
        ring: 0,
        digest_large: false,
    },
    Scenario {
        name: "8×1 KiB text",
        kind: DataKind::Text,
        connections: 8,
        size: 1024,
        pipeline: 1,
        warmup_messages: 20_000,
        messages: 50_000,
        ring: 0,
        digest_large: false,
    },
    Scenario {
        name: "8×16 KiB binary",
        kind: DataKind::Binary,
        connections: 8,
        size: 16 * 1024,
        pipeline: 1,
        warmup_messages: 5_000,
        messages: 20_000,
        ring: 0,
        digest_large: false,
    },
    Scenario {
        name: "4×256 KiB binary (split reads)",
        kind: DataKind::Binary,
        connections: 4,
        size: 256 * 1024,
        pipeline: 1,
        warmup_messages: 500,
        messages: 2_000,
        ring: 0,
        digest_large: false,
    },
    Scenario {
        // The default max_message_size: assembled in a buffer from the worker's assembly cache,
        // echoed through large staging and pending-output buffers from its output cache.
        name: "2×16 MiB binary (split reads, echo)",
        kind: DataKind::Binary,
        connections: 2,
        size: 16 << 20,
        pipeline: 1,
        warmup_messages: 10,
        messages: 40,
        ring: 2,
        digest_large: false,
    },
    Scenario {
        // The same messages answered with a 16-byte digest: the receive path alone.
        name: "2×16 MiB binary (split reads, digest reply)",
        kind: DataKind::Binary,
        connections: 2,
        size: 16 << 20,
        pipeline: 1,
        warmup_messages: 10,
        messages: 40,
        ring: 2,
        digest_large: true,
    },
];

/// Staggered rounds that end every warm-up (see the module documentation).
const PEAK_ROUNDS: usize = 3;
/// Time the server gets to read the first halves of a staggered round.
const PEAK_PAUSE: Duration = Duration::from_millis(50);

/// Echo rounds over all connections; returns the messages exchanged. `stagger`: each round sends
/// the first half of every connection's first message, pauses for [`PEAK_PAUSE`], then sends the
/// rest, so that all connections have a message in progress at once.
#[allow(clippy::too_many_arguments)]
fn exchange(
    streams: &mut [TcpStream],
    pattern: &Pattern,
    replies: &Replies,
    pipeline: usize,
    sent: &mut [u64],
    messages: u64,
    inbox: &mut [u8],
    stagger: bool,
) -> Result<u64, String> {
    let mut done = 0;
    while done < messages {
        let split = if stagger { pattern.send_len / 2 } else { 0 };
        for (c, stream) in streams.iter_mut().enumerate() {
            let first = (c as u64 + sent[c]) % pattern.messages as u64;
            let start = first as usize * pattern.send_len;
            stream
                .write_all(&pattern.send[start..start + split])
                .map_err(|e| format!("write: {e}"))?;
        }
        if stagger {
            std::thread::sleep(PEAK_PAUSE);
        }
        for (c, stream) in streams.iter_mut().enumerate() {
            let first = (c as u64 + sent[c]) % pattern.messages as u64;
            let start = first as usize * pattern.send_len;
            stream
                .write_all(&pattern.send[start + split..start + pipeline * pattern.send_len])
                .map_err(|e| format!("write: {e}"))?;
        }
        for (c, stream) in streams.iter_mut().enumerate() {
            for _ in 0..pipeline {
                let m = ((c as u64 + sent[c]) % pattern.messages as u64) as usize;
                let len = replies.len;
                stream
                    .read_exact(&mut inbox[..len])
                    .map_err(|e| format!("read: {e}"))?;
                if inbox[..len] != replies.bytes[m * len..][..len] {
                    return Err(format!(
                        "connection {c}: wrong reply to message {}",
                        sent[c]
                    ));
                }
                sent[c] += 1;
            }
        }
        done += (streams.len() * pipeline) as u64;
    }
    Ok(done)
}

fn main() -> ExitCode {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        num_workers: 1,
        cpu_affinity: false,
        ..Config::default()
    };
    let server = match Server::new(cfg) {
        Ok(s) => s.with_handler(Echo),
        Err(e) => {
            eprintln!("alloc_per_message: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.start() {
        eprintln!("alloc_per_message: starting the server: {e}");
        return ExitCode::FAILURE;
    }
    let addr = server
        .local_addr()
        .expect("a started server has an address");

    println!(
        "Allocations per echoed message after warm-up (whole process: server worker and client):\n"
    );
    println!("| scenario | warm-up | measured | allocations | bytes | per message |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut failed = false;
    let trace = std::env::var_os("ALLOC_TRACE").is_some();
    // `cargo bench ... -- WORD` runs only the scenarios whose name contains WORD.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for sc in SCENARIOS
        .iter()
        .filter(|sc| filter.as_deref().map_or(true, |f| sc.name.contains(f)))
    {
        let framing = Framing::WebSocket(sc.kind);
        let target = Target {
            addr,
            path: server.config().path.clone(),
            framing,
            sources: 1,
        };
        let ring = if sc.ring > 0 {
            sc.ring
        } else {
            Pattern::ring_messages(sc.pipeline, sc.size)
        };
        let pattern = Pattern::new(framing, sc.size, ring);
        DIGEST_LARGE.store(sc.digest_large, Ordering::Relaxed);
        let mut streams = Vec::new();
        for i in 0..sc.connections {
            match target.open(i) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    eprintln!("alloc_per_message: {}: connection {i}: {e}", sc.name);
                    return ExitCode::FAILURE;
                }
            }
        }
        let mut sent = vec![0u64; sc.connections];
        let replies = expected_replies(&pattern, sc.digest_large);
        let mut inbox = vec![0u8; replies.len];
        let run = |streams: &mut [TcpStream], sent: &mut [u64], inbox: &mut [u8], n, stagger| {
            exchange(
                streams,
                &pattern,
                &replies,
                sc.pipeline,
                sent,
                n,
                inbox,
                stagger,
            )
        };
        // Plain rounds, then staggered ones: the caches see the peak before the measurement.
        let peak = (PEAK_ROUNDS * sc.connections * sc.pipeline) as u64;
        let warmup = run(
            &mut streams,
            &mut sent,
            &mut inbox,
            sc.warmup_messages,
            false,
        )
        .and_then(|plain| Ok(plain + run(&mut streams, &mut sent, &mut inbox, peak, true)?));
        let result = warmup.and_then(|warm| {
            let (a0, b0) = (
                ALLOCATIONS.load(Ordering::SeqCst),
                ALLOCATED_BYTES.load(Ordering::SeqCst),
            );
            TRACING.store(trace, Ordering::SeqCst);
            let n = run(&mut streams, &mut sent, &mut inbox, sc.messages, false)?;
            let (a1, b1) = (
                ALLOCATIONS.load(Ordering::SeqCst),
                ALLOCATED_BYTES.load(Ordering::SeqCst),
            );
            TRACING.store(false, Ordering::SeqCst);
            Ok((warm, n, a1 - a0, b1 - b0))
        });
        match result {
            Ok((warm, n, allocs, bytes)) => {
                println!(
                    "| {} | {warm} | {n} | {allocs} | {bytes} | {:.4} |",
                    sc.name,
                    allocs as f64 / n as f64
                );
                failed |= allocs > 0;
            }
            Err(e) => {
                println!("| {} | – | – | – | – | error: {e} |", sc.name);
                failed = true;
            }
        }
        drop(streams);
    }
    server.stop();
    let _ = server.wait();
    if failed {
        println!("\nFAIL: the server allocates in steady state (or an exchange failed).");
        ExitCode::FAILURE
    } else {
        println!("\nOK: no allocation per message in steady state.");
        ExitCode::SUCCESS
    }
}
