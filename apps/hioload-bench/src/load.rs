//! The measured loop: each load thread owns some connections and one epoll instance (mio), keeps
//! `pipeline` messages in flight on each, and checks every echoed byte against the pattern.
//!
//! Per readiness event a connection does one `read` (a short read means the socket is drained)
//! and, for all the echoes that read completed, one `write` of as many new frames, taken as one
//! slice of the pre-masked send ring. A connection that sees a wrong byte, an unexpected close or
//! an I/O error is counted as an error, reported once, and dropped; the others carry on.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::pattern::{self, Framing, Pattern};

/// Run phases, switched by the main thread, read by every load thread once per poll.
pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const DONE: u8 = 2;

/// Size of a load thread's receive buffer.
const READ_BUF: usize = 256 * 1024;
/// Error descriptions kept per thread.
const ERRORS_KEPT: usize = 5;
/// How long connections get to finish their last echoes and close after the measured window.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(1);

/// What a load thread measured during the MEASURE phase.
pub struct ThreadStats {
    /// Echoes completed and verified.
    pub messages: u64,
    /// Round-trip latency, nanoseconds.
    pub latency: Histogram<u64>,
    /// Connections that failed (any phase).
    pub errors: u64,
    /// The first few failures, described.
    pub error_texts: Vec<String>,
    /// Compressed-echo mode (`--deflate`): frame bytes sent for the messages issued in the
    /// window, how many those were, and frame bytes of the echoes completed in it.
    pub wire_out: u64,
    pub wire_out_messages: u64,
    pub wire_in: u64,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats::new()
    }
}

impl ThreadStats {
    /// Empty statistics.
    pub fn new() -> ThreadStats {
        ThreadStats {
            messages: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            errors: 0,
            error_texts: Vec::new(),
            wire_out: 0,
            wire_out_messages: 0,
            wire_in: 0,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: ThreadStats) {
        self.messages += other.messages;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.errors += other.errors;
        self.wire_out += other.wire_out;
        self.wire_out_messages += other.wire_out_messages;
        self.wire_in += other.wire_in;
        for text in other.error_texts {
            if self.error_texts.len() < ERRORS_KEPT {
                self.error_texts.push(text);
            }
        }
    }

    /// Starts the measured window: what the warm-up counted is dropped.
    pub fn reset_counts(&mut self) {
        self.messages = 0;
        self.latency.reset();
        self.wire_out = 0;
        self.wire_out_messages = 0;
        self.wire_in = 0;
    }

    fn fail(&mut self, conn: &Conn, why: String) {
        self.fail_connection(conn.index, why);
    }

    /// Counts connection number `index` as failed, and keeps `why` if it is one of the first.
    pub fn fail_connection(&mut self, index: usize, why: String) {
        self.errors += 1;
        if self.error_texts.len() < ERRORS_KEPT {
            self.error_texts.push(format!("connection {index}: {why}"));
        }
    }
}

/// One connection under load.
struct Conn {
    stream: TcpStream,
    /// Connection number, for error messages.
    index: usize,
    /// Ring message this connection starts at.
    start: usize,
    /// Messages handed to the send side so far.
    issued: u64,
    /// Bytes written so far.
    sent: u64,
    /// Bytes received and verified so far.
    received: u64,
    /// Send time of in-flight message `k`, at `k % pipeline`.
    sent_at: Box<[Instant]>,
    /// Close frame (or FIN) sent; only EOF is awaited.
    closing: bool,
    alive: bool,
}

/// Runs connections until the phase becomes DONE and returns what was measured.
pub fn run_thread(
    streams: Vec<(usize, std::net::TcpStream)>,
    pattern: Arc<Pattern>,
    pipeline: usize,
    phase: Arc<AtomicU8>,
) -> io::Result<ThreadStats> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let now = Instant::now();
    let mut conns = Vec::with_capacity(streams.len());
    for (slot, (index, stream)) in streams.into_iter().enumerate() {
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            index,
            start: index % pattern.messages,
            issued: 0,
            sent: 0,
            received: 0,
            sent_at: vec![now; pipeline].into_boxed_slice(),
            closing: false,
            alive: true,
        });
    }

    let mut stats = ThreadStats::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut measuring = false;
    for conn in conns.iter_mut() {
        issue(conn, 0, pipeline, now);
        if let Err(e) = flush(conn, &pattern) {
            conn.alive = false;
            stats.fail(conn, format!("write: {e}"));
        }
    }
    // Until DONE: load. Then, for at most DRAIN_TIME, no new messages: each connection waits for
    // its last echoes and closes cleanly (close frame, or FIN for raw TCP), so that servers see
    // an orderly end rather than resets.
    let mut drain_deadline = None;
    loop {
        match phase.load(Ordering::Relaxed) {
            DONE if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + DRAIN_TIME);
                for conn in conns.iter_mut().filter(|c| c.alive) {
                    close_if_drained(conn, &pattern);
                }
            }
            MEASURE if !measuring => {
                measuring = true;
                stats.reset_counts();
            }
            _ => {}
        }
        if let Some(deadline) = drain_deadline {
            if Instant::now() >= deadline || conns.iter().all(|c| !c.alive) {
                break;
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(5))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let draining = drain_deadline.is_some();
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if !conn.alive {
                continue;
            }
            let now = Instant::now();
            let result = if event.is_readable() || event.is_read_closed() || event.is_error() {
                receive(
                    conn, &pattern, &mut buf, &mut stats, now, pipeline, !draining,
                )
            } else {
                flush(conn, &pattern).map_err(|e| format!("write: {e}"))
            };
            match result {
                Ok(()) if draining && conn.alive => close_if_drained(conn, &pattern),
                Ok(()) => {}
                Err(why) => {
                    conn.alive = false;
                    stats.fail(conn, why);
                }
            }
            if !conn.alive {
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
    Ok(stats)
}

/// Once every issued message is echoed, starts the closing handshake: a masked close frame
/// (code 1000) for WebSocket, a FIN for raw TCP. The connection then only waits for EOF.
fn close_if_drained(conn: &mut Conn, pattern: &Pattern) {
    let drained = conn.sent == conn.issued * pattern.send_len as u64
        && conn.received == conn.issued * pattern.echo_len as u64;
    if !drained || conn.closing {
        return;
    }
    conn.closing = true;
    match pattern.framing {
        Framing::WebSocket(_) => {
            // A fresh, drained socket takes 8 bytes; if not, the drain deadline ends it.
            let _ = conn.stream.write(&pattern::CLOSE_FRAME);
        }
        Framing::Raw => {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Reads what has arrived, verifies it and, while `running`, records completed echoes and sends
/// their successors.
fn receive(
    conn: &mut Conn,
    pattern: &Pattern,
    buf: &mut [u8],
    stats: &mut ThreadStats,
    now: Instant,
    pipeline: usize,
    running: bool,
) -> Result<(), String> {
    if conn.closing {
        return finish_close(conn, buf);
    }
    let done_before = conn.received / pattern.echo_len as u64;
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        verify(conn, pattern, &buf[..n])?;
        if n < buf.len() {
            break;
        }
    }
    let done = conn.received / pattern.echo_len as u64;
    if !running {
        return flush(conn, pattern).map_err(|e| format!("write: {e}"));
    }
    for k in done_before..done {
        let rtt = now.saturating_duration_since(conn.sent_at[(k % pipeline as u64) as usize]);
        stats
            .latency
            .saturating_record(rtt.as_nanos().max(1) as u64);
    }
    stats.messages += done - done_before;
    if done > done_before {
        issue(conn, done, pipeline, now);
    }
    flush(conn, pattern).map_err(|e| format!("write: {e}"))
}

/// After our close: reads (and ignores) the server's close frame until EOF.
fn finish_close(conn: &mut Conn, buf: &mut [u8]) -> Result<(), String> {
    loop {
        match conn.stream.read(buf) {
            Ok(0) => {
                conn.alive = false;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset after our close is the server's way of ending too.
            Err(_) => {
                conn.alive = false;
                return Ok(());
            }
        }
    }
}

/// Tops the connection up to `pipeline` messages in flight after `done` completed echoes,
/// stamping their send time.
fn issue(conn: &mut Conn, done: u64, pipeline: usize, now: Instant) {
    let target = done + pipeline as u64;
    for k in conn.issued..target {
        conn.sent_at[(k % pipeline as u64) as usize] = now;
    }
    conn.issued = conn.issued.max(target);
}

/// Writes issued frames until all are out or the socket is full.
fn flush(conn: &mut Conn, pattern: &Pattern) -> io::Result<()> {
    let ring = (pattern.messages * pattern.send_len) as u64;
    let goal = conn.issued * pattern.send_len as u64;
    while conn.sent < goal {
        let pos = ((conn.start * pattern.send_len) as u64 + conn.sent) % ring;
        let len = goal - conn.sent;
        let chunk = &pattern.send[pos as usize..(pos + len) as usize];
        match conn.stream.write(chunk) {
            Ok(w) => conn.sent += w as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Compares received bytes with the expected echoes at the connection's position.
fn verify(conn: &mut Conn, pattern: &Pattern, data: &[u8]) -> Result<(), String> {
    pattern.verify(conn.start, conn.issued, &mut conn.received, data)
}
