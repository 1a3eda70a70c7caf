//! The measured loop of the compressed-echo scenario (`--deflate`): like [`crate::load`], one
//! epoll instance per thread and `pipeline` messages in flight per connection, but each message
//! is compressed (or taken compressed from the ring) as the connection agreed, each echo is
//! inflated and compared with what was sent, and the frame bytes each way are counted.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::deflate::{Agreed, Codec, TextRing};
use crate::load::{ThreadStats, DONE, DRAIN_TIME, MEASURE};
use crate::pattern;

/// Size of a load thread's receive buffer.
const READ_BUF: usize = 256 * 1024;

/// One connection under load.
struct Conn {
    stream: TcpStream,
    index: usize,
    /// Ring message this connection starts at.
    start: usize,
    /// Messages issued so far.
    issued: u64,
    /// Echoes received and verified so far.
    verified: u64,
    codec: Codec,
    /// Frames issued and not yet written: `out[written..]`.
    out: Vec<u8>,
    written: usize,
    /// Send time of in-flight message `k`, at `k % pipeline`.
    sent_at: Box<[Instant]>,
    closing: bool,
    alive: bool,
}

/// Runs connections (each with what it agreed at the upgrade) until the phase becomes DONE and
/// returns what was measured.
pub fn run_thread(
    streams: Vec<(usize, std::net::TcpStream, Option<Agreed>)>,
    ring: Arc<TextRing>,
    pipeline: usize,
    phase: Arc<AtomicU8>,
) -> io::Result<ThreadStats> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let now = Instant::now();
    let mut conns = Vec::with_capacity(streams.len());
    for (slot, (index, stream, agreed)) in streams.into_iter().enumerate() {
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
            start: index % ring.len(),
            issued: 0,
            verified: 0,
            codec: Codec::new(agreed),
            out: Vec::new(),
            written: 0,
            sent_at: vec![now; pipeline].into_boxed_slice(),
            closing: false,
            alive: true,
        });
    }

    let mut stats = ThreadStats::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut measuring = false;
    for conn in conns.iter_mut() {
        issue(conn, &ring, 0, pipeline, now, &mut stats);
        if let Err(e) = flush(conn) {
            conn.alive = false;
            stats.fail_connection(conn.index, format!("write: {e}"));
        }
    }
    let mut drain_deadline = None;
    loop {
        match phase.load(Ordering::Relaxed) {
            DONE if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + DRAIN_TIME);
                for conn in conns.iter_mut().filter(|c| c.alive) {
                    close_if_drained(conn);
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
                receive(conn, &ring, &mut buf, &mut stats, now, pipeline, !draining)
            } else {
                flush(conn).map_err(|e| format!("write: {e}"))
            };
            match result {
                Ok(()) if draining && conn.alive => close_if_drained(conn),
                Ok(()) => {}
                Err(why) => {
                    conn.alive = false;
                    stats.fail_connection(conn.index, why);
                }
            }
            if !conn.alive {
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
    Ok(stats)
}

/// Once every issued message is out and echoed, sends a close frame and waits for EOF.
fn close_if_drained(conn: &mut Conn) {
    if conn.closing || conn.written < conn.out.len() || conn.verified < conn.issued {
        return;
    }
    conn.closing = true;
    let _ = conn.stream.write(&pattern::CLOSE_FRAME);
}

fn receive(
    conn: &mut Conn,
    ring: &TextRing,
    buf: &mut [u8],
    stats: &mut ThreadStats,
    now: Instant,
    pipeline: usize,
    running: bool,
) -> Result<(), String> {
    if conn.closing {
        // After our close: the server's close frame is read and ignored until EOF (or a
        // reset, the server's way of ending too).
        loop {
            match conn.stream.read(buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        conn.alive = false;
        return Ok(());
    }
    let done_before = conn.verified;
    let mut wire_in = 0;
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        wire_in +=
            conn.codec
                .receive(ring, conn.start, conn.issued, &mut conn.verified, &buf[..n])?;
        if n < buf.len() {
            break;
        }
    }
    let done = conn.verified;
    if running {
        for k in done_before..done {
            let rtt = now.saturating_duration_since(conn.sent_at[(k % pipeline as u64) as usize]);
            stats
                .latency
                .saturating_record(rtt.as_nanos().max(1) as u64);
        }
        stats.messages += done - done_before;
        stats.wire_in += wire_in;
        if done > done_before {
            issue(conn, ring, done, pipeline, now, stats);
        }
    }
    flush(conn).map_err(|e| format!("write: {e}"))
}

/// Tops the connection up to `pipeline` messages in flight after `done` verified echoes.
fn issue(
    conn: &mut Conn,
    ring: &TextRing,
    done: u64,
    pipeline: usize,
    now: Instant,
    stats: &mut ThreadStats,
) {
    let target = done + pipeline as u64;
    if conn.written == conn.out.len() {
        conn.out.clear();
        conn.written = 0;
    }
    for k in conn.issued..target {
        conn.sent_at[(k % pipeline as u64) as usize] = now;
        let before = conn.out.len();
        let m = ((conn.start as u64 + k) % ring.len() as u64) as usize;
        conn.codec.push_message(ring, m, &mut conn.out);
        stats.wire_out += (conn.out.len() - before) as u64;
        stats.wire_out_messages += 1;
    }
    conn.issued = conn.issued.max(target);
}

/// Writes issued frames until all are out or the socket is full.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while conn.written < conn.out.len() {
        match conn.stream.write(&conn.out[conn.written..]) {
            Ok(w) => conn.written += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if conn.written == conn.out.len() {
        conn.out.clear();
        conn.written = 0;
    }
    Ok(())
}
