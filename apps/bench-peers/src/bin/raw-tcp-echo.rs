//! Raw TCP echo on one thread (mio/epoll): the physical limit of the kernel path for an echo load.
//!
//! No framing at all: whatever bytes arrive go straight back, in one `read` and one `write` per
//! readiness event (a short read means the socket was drained, so no extra `read` that would only
//! return `EAGAIN`). When the peer does not take all of an echo, the rest waits in the connection's
//! pending buffer and the connection is not read again until it is flushed (back-pressure).

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Raw TCP echo server (single thread, epoll via mio).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9003")]
    addr: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Echo bytes the peer has not taken yet.
    pending: Vec<u8>,
}

/// Reads and echoes until the socket is drained or the peer stops taking bytes.
/// `Ok(false)` means the connection is finished.
fn pump(conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    if !flush(conn)? {
        return Ok(true);
    }
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            match conn.stream.write(&buf[sent..n]) {
                Ok(w) => sent += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if sent < n {
            conn.pending.extend_from_slice(&buf[sent..n]);
            return Ok(true);
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

/// Writes pending bytes; `Ok(true)` when none are left.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(w) => {
                conn.pending.drain(..w);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("raw-tcp-echo listening on {}", listener.local_addr()?);

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let (mut stream, _) = match listener.accept() {
                        Ok(s) => s,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    };
                    stream.set_nodelay(true)?;
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    poll.registry().register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)?;
                    conns[slot] = Some(Conn { stream, pending: Vec::new() });
                }
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = conns[slot].as_mut() else { continue };
            let keep = match pump(conn, &mut buf) {
                Ok(keep) => keep,
                Err(e) => {
                    if e.kind() != io::ErrorKind::ConnectionReset {
                        eprintln!("connection error: {e}");
                    }
                    false
                }
            };
            if !keep {
                let mut conn = conns[slot].take().expect("live slot");
                poll.registry().deregister(&mut conn.stream)?;
                free.push(slot);
            }
        }
    }
}
