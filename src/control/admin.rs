//! The admin listener: `/metrics` and `/debug/probes` on their own address (`admin_listen`).
//!
//! A plain blocking HTTP/1.1 server on one thread, independent of the data path: scrapes are
//! rare, small and not latency critical, and keeping them off the workers means a slow scraper
//! never costs a worker turn. One request per connection (`Connection: close`), a 5 s budget per
//! connection, request heads up to 8 KiB; anything but the two control paths gets 404.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hioload_wsproto::handshake::{self, Parsed};
use hioload_wsproto::{HttpError, Limits};
use tracing::{debug, warn};

use super::Control;
use crate::http::write_response;

const MAX_HEAD: usize = 8 << 10;
const CONN_BUDGET: Duration = Duration::from_secs(5);
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A running admin listener; stopped (and joined) on drop.
pub(crate) struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AdminServer {
    /// Binds `addr` (an error names it) and serves on a thread of its own.
    pub fn start(addr: SocketAddr, control: Arc<Control>) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the admin address {addr}: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hioload-admin".into())
            .spawn(move || serve(listener, control, flag))?;
        Ok(AdminServer {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, control: Arc<Control>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, &control) {
                    debug!(%peer, "admin request failed: {e}");
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

fn answer(mut stream: TcpStream, control: &Control) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + CONN_BUDGET;
    let limits = Limits::default();
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut response = Vec::with_capacity(4096);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "request head too slow"))?;
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let err = match handshake::parse_request(&head, &limits) {
            Parsed::Partial if head.len() < MAX_HEAD => continue,
            Parsed::Partial => HttpError {
                status: 431,
                reason: "request header fields too large",
            },
            Parsed::Reject(err) => err,
            Parsed::Http(req) => {
                if !control.answer(&req, &mut response) {
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
    stream.set_write_timeout(Some(CONN_BUDGET))?;
    stream.write_all(&response)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
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
