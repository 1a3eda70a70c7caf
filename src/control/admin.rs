//! The admin listener: `/metrics` and `/debug/probes` on their own address (`admin_listen`).
//!
//! A plain blocking HTTP/1.1 server on std threads, independent of the data path: scrapes are
//! rare, small and not latency critical, and keeping them off the workers means a slow scraper
//! (or a slow application probe) never costs a worker turn.
//!
//! One thread accepts and never touches a connection: each accepted connection gets a thread of
//! its own, up to [`MAX_CONNECTIONS`] at once (one more is answered `503` at once, without
//! reading it, and closed), so idle or slow connections cannot delay another scrape. Each
//! connection has [`CONN_DEADLINE`] from its accept to read the request head (up to 8 KiB),
//! render and write the answer; every read and write is bounded by what is left of it. One
//! request per connection (`Connection: close`); anything but the two control paths gets 404.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hioload_wsproto::handshake::{self, Parsed};
use hioload_wsproto::{HttpError, Limits};
use tracing::{debug, warn};

use super::{Control, Listener};
use crate::http::write_response;

const MAX_HEAD: usize = 8 << 10;
/// Connections served at once; one more is refused (503, closed).
const MAX_CONNECTIONS: usize = 16;
/// Time a connection has, from its accept, to send its request and take the answer.
const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// How often the accepting thread looks for a connection (and for a stop) when none comes.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Longest single wait of a connection's read: it looks for a stop that often.
const READ_SLICE: Duration = Duration::from_millis(100);
/// How long `stop` waits for open connections to end before leaving them to their deadline.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// What the accepting thread and the connections' threads share.
struct Shared {
    control: Arc<Control>,
    stop: AtomicBool,
    /// Connections being served (each has a thread).
    active: AtomicUsize,
}

/// A running admin listener; stopped (and joined) on drop.
pub(crate) struct AdminServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AdminServer {
    /// Binds `addr` (an error names it) and accepts on a thread of its own.
    pub fn start(addr: SocketAddr, control: Arc<Control>) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the admin address {addr}: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            control,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hioload-admin".into())
            .spawn(move || accept_loop(listener, accepting))?;
        Ok(AdminServer {
            addr,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (the address is free once this returns) and asks open connections to
    /// end; waits a little for those that are only waiting for a request, not for the others
    /// (each ends by its deadline).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let until = Instant::now() + STOP_WAIT;
        while self.shared.active.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a connection as served until dropped (with its thread, or with the closure when the
/// thread could not be spawned).
struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Only this thread adds, so the count cannot pass the cap between the check and
                // the add.
                if shared.active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    debug!(%peer, "admin listener: {MAX_CONNECTIONS} connections open; refused");
                    refuse(stream);
                    continue;
                }
                shared.active.fetch_add(1, Ordering::AcqRel);
                let active = Active(shared.clone());
                let spawned = std::thread::Builder::new()
                    .name("hioload-admin-conn".into())
                    .spawn(move || {
                        let deadline = Instant::now() + CONN_DEADLINE;
                        if let Err(e) = answer(stream, &active.0, deadline) {
                            debug!(%peer, "admin request failed: {e}");
                        }
                        drop(active);
                    });
                if let Err(e) = spawned {
                    warn!("admin listener: cannot start a thread for {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("admin listener: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// A connection over the cap: a 503 if the socket takes it at once, then closed.
fn refuse(mut stream: TcpStream) {
    let mut response = Vec::with_capacity(160);
    write_response(
        &mut response,
        503,
        "Service Unavailable",
        "text/plain; charset=utf-8",
        b"too many admin connections\n",
    );
    if stream.set_nonblocking(true).is_ok() {
        let _ = stream.write(&response);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn time_left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "admin connection deadline"))
}

fn answer(mut stream: TcpStream, shared: &Shared, deadline: Instant) -> io::Result<()> {
    // Some systems give accepted sockets the listener's non-blocking mode.
    stream.set_nonblocking(false)?;
    let limits = Limits::default();
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut response = Vec::with_capacity(4096);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        stream.set_read_timeout(Some(time_left(deadline)?.min(READ_SLICE)))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        head.extend_from_slice(&chunk[..n]);
        let err = match handshake::parse_request(&head, &limits) {
            Parsed::Partial if head.len() < MAX_HEAD => continue,
            Parsed::Partial => HttpError {
                status: 431,
                reason: "request header fields too large",
            },
            Parsed::Reject(err) => err,
            Parsed::Http(req) => {
                if !shared.control.answer(&req, &mut response, Listener::Admin) {
                    not_found(&mut response);
                }
                break;
            }
            Parsed::Upgrade(_) => {
                not_found(&mut response);
                break;
            }
        };
        let mut buf = [0u8; 256];
        let n = handshake::write_error_response(&err, &mut buf);
        response.extend_from_slice(&buf[..n]);
        break;
    }
    write_by(&mut stream, &response, deadline)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// `write_all`, every write bounded by what is left until `deadline`.
fn write_by(stream: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn not_found(response: &mut Vec<u8>) {
    write_response(
        response,
        404,
        "Not Found",
        "text/plain; charset=utf-8",
        b"not found: the admin listener serves /metrics and /debug/probes\n",
    );
}
