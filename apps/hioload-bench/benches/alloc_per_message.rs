//! Allocations per message in steady state: the hioload-ws echo server runs in this process under
//! a counting global allocator, real loopback connections drive messages through it, and after a
//! warm-up every allocation anywhere in the process (server workers and this client alike) is
//! counted over a fixed number of echoes. The target is zero.
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

use hioload_bench::connect::Target;
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::wire::DataKind;
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

/// Sends every message back as it came.
struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
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
    },
    Scenario {
        name: "8×20 B binary, 16 in flight",
        kind: DataKind::Binary,
        connections: 8,
        size: 20,
        pipeline: 16,
        warmup_messages: 50_000,
        messages: 200_000,
    },
    Scenario {
        name: "8×1 KiB text",
        kind: DataKind::Text,
        connections: 8,
        size: 1024,
        pipeline: 1,
        warmup_messages: 20_000,
        messages: 50_000,
    },
    Scenario {
        name: "8×16 KiB binary",
        kind: DataKind::Binary,
        connections: 8,
        size: 16 * 1024,
        pipeline: 1,
        warmup_messages: 5_000,
        messages: 20_000,
    },
    Scenario {
        name: "4×256 KiB binary (split reads)",
        kind: DataKind::Binary,
        connections: 4,
        size: 256 * 1024,
        pipeline: 1,
        warmup_messages: 500,
        messages: 2_000,
    },
];

/// Echo rounds over all connections; returns the messages exchanged.
fn exchange(
    streams: &mut [TcpStream],
    pattern: &Pattern,
    pipeline: usize,
    sent: &mut [u64],
    messages: u64,
    inbox: &mut [u8],
) -> Result<u64, String> {
    let mut done = 0;
    while done < messages {
        for (c, stream) in streams.iter_mut().enumerate() {
            let first = (c as u64 + sent[c]) % pattern.messages as u64;
            let start = first as usize * pattern.send_len;
            stream
                .write_all(&pattern.send[start..start + pipeline * pattern.send_len])
                .map_err(|e| format!("write: {e}"))?;
        }
        for (c, stream) in streams.iter_mut().enumerate() {
            for _ in 0..pipeline {
                let m = ((c as u64 + sent[c]) % pattern.messages as u64) as usize;
                stream.read_exact(&mut inbox[..pattern.echo_len]).map_err(|e| format!("read: {e}"))?;
                if inbox[..pattern.echo_len] != pattern.echo[m * pattern.echo_len..][..pattern.echo_len] {
                    return Err(format!("connection {c}: wrong echo of message {}", sent[c]));
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
    let addr = server.local_addr().expect("a started server has an address");

    println!("Allocations per echoed message after warm-up (whole process: server worker and client):\n");
    println!("| scenario | warm-up | measured | allocations | bytes | per message |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut failed = false;
    let trace = std::env::var_os("ALLOC_TRACE").is_some();
    // `cargo bench ... -- WORD` runs only the scenarios whose name contains WORD.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for sc in SCENARIOS.iter().filter(|sc| filter.as_deref().map_or(true, |f| sc.name.contains(f))) {
        let framing = Framing::WebSocket(sc.kind);
        let target = Target { addr, path: server.config().path.clone(), framing, sources: 1 };
        let pattern = Pattern::new(framing, sc.size, Pattern::ring_messages(sc.pipeline, sc.size));
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
        let mut inbox = vec![0u8; pattern.echo_len];
        let run = |streams: &mut [TcpStream], sent: &mut [u64], inbox: &mut [u8], n| {
            exchange(streams, &pattern, sc.pipeline, sent, n, inbox)
        };
        let result = run(&mut streams, &mut sent, &mut inbox, sc.warmup_messages).and_then(|warm| {
            let (a0, b0) = (ALLOCATIONS.load(Ordering::SeqCst), ALLOCATED_BYTES.load(Ordering::SeqCst));
            TRACING.store(trace, Ordering::SeqCst);
            let n = run(&mut streams, &mut sent, &mut inbox, sc.messages)?;
            let (a1, b1) = (ALLOCATIONS.load(Ordering::SeqCst), ALLOCATED_BYTES.load(Ordering::SeqCst));
            TRACING.store(false, Ordering::SeqCst);
            Ok((warm, n, a1 - a0, b1 - b0))
        });
        match result {
            Ok((warm, n, allocs, bytes)) => {
                println!("| {} | {warm} | {n} | {allocs} | {bytes} | {:.4} |", sc.name, allocs as f64 / n as f64);
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
