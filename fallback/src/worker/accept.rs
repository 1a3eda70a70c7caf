//! Accepting: up to [`ACCEPT_BATCH`] connections per turn from each of the worker's own
//! listeners (a plain one, a TLS one, or both), each
//! handed to the shard and registered with the poll; running out of file descriptors is
//! absorbed by a reserve descriptor (the pending connection is accepted and closed at once,
//! instead of the listener waking the loop forever) and reported at most once a second.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hioload_wsproto::{App, CloseCode, Listener};
use mio::net::TcpStream;
use mio::Token;
use tracing::{debug, warn};

use super::io::Socket;
use super::{Backend, Worker, FIRST_CONN};
use crate::pool::RecvBuffers;
use crate::sys::{self, ReserveFd};

/// Accepts per turn before connections get their turn.
const ACCEPT_BATCH: usize = 256;
/// Pause of accepting after an error the reserve descriptor could not absorb.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A worker's accept bookkeeping.
pub(crate) struct AcceptState {
    /// Accepting is paused until then (after an error).
    pub resume_at: Option<Instant>,
    reserve: ReserveFd,
    last_fd_warning: Option<Instant>,
    dropped_for_fds: u64,
}

impl AcceptState {
    pub fn new() -> Self {
        AcceptState {
            resume_at: None,
            reserve: ReserveFd::new(),
            last_fd_warning: None,
            dropped_for_fds: 0,
        }
    }
}

impl<A: App, K: Backend<P::Buf>, P: RecvBuffers> Worker<A, K, P> {
    /// Accepts what the listeners have, up to a batch from each.
    pub(super) fn accept_all(&mut self) {
        for index in 0..self.io.listeners.len() {
            if self.io.listeners.get(index).is_some_and(|l| l.ready) {
                self.accept_from(index);
            }
        }
    }

    /// Accepts what listener `index` has, up to a batch.
    fn accept_from(&mut self, index: usize) {
        let state = &mut self.io.accept;
        if let Some(at) = state.resume_at {
            if self.clock < at {
                return;
            }
            state.resume_at = None;
            // Another worker may have taken the descriptor this one released: take one back.
            state.reserve.restore();
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listening) = self.io.listeners.get_mut(index) else {
                return;
            };
            let (listener, kind) = (&listening.socket, listening.kind);
            let state = &mut self.io.accept;
            match listener.accept() {
                Ok((stream, peer)) => self.add_connection(stream, peer, kind),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listening.ready = false;
                    return;
                }
                Err(e) if sys::is_transient_accept_error(&e) => {}
                Err(e) if sys::is_fd_exhaustion(&e) && state.reserve.is_held() => {
                    // Free the reserve, take the connection off the queue and close it, so that
                    // the listener stops being readable. (Linux reports EMFILE even when the
                    // queue is empty: then we are done.)
                    state.reserve.release();
                    let next = listener.accept();
                    let peer = next.as_ref().ok().map(|(_, peer)| *peer);
                    let empty = matches!(&next, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
                    drop(next);
                    state.reserve.restore();
                    if let Some(peer) = peer {
                        state.dropped_for_fds += 1;
                        self.warn_fd_exhaustion(&e, Some(peer));
                    } else if empty {
                        self.io.listeners[index].ready = false;
                        return;
                    }
                }
                Err(e) => {
                    if sys::is_fd_exhaustion(&e) {
                        self.warn_fd_exhaustion(&e, None);
                    } else {
                        warn!(
                            worker = self.io.index,
                            "accept failed: {e}; pausing accepts for 100 ms"
                        );
                    }
                    self.io.accept.resume_at = Some(self.clock + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn warn_fd_exhaustion(&mut self, e: &io::Error, peer: Option<SocketAddr>) {
        let now = self.clock;
        let state = &mut self.io.accept;
        if state
            .last_fd_warning
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1))
        {
            state.last_fd_warning = Some(now);
            warn!(
                worker = self.io.index,
                dropped_total = state.dropped_for_fds,
                "accept: {e}; dropping new connections ({}), raise RLIMIT_NOFILE (ulimit -n)",
                peer.map_or_else(
                    || "none left to drop".to_string(),
                    |p| format!("last from {p}")
                )
            );
        }
    }

    fn add_connection(&mut self, stream: TcpStream, peer: SocketAddr, kind: Listener) {
        if let Err(e) = sys::prepare_accepted(&stream).and_then(|()| K::prepare(&stream)) {
            debug!(%peer, "dropping accepted connection: {e}");
            return;
        }
        let serial = self.io.next_serial;
        self.io.next_serial += 1;
        let slot = match self
            .shard
            .open_on(kind, Socket::new(stream, serial), peer, self.clock)
        {
            Ok(slot) => slot,
            Err(_) => {
                debug!(%peer, "dropping accepted connection: no free connection slot");
                return;
            }
        };
        let sock = &mut self.shard.slot_mut(slot).expect("just opened").io;
        let registered = self.io.poll.registry().register(
            &mut sock.stream,
            Token(slot + FIRST_CONN),
            K::INTEREST,
        );
        if let Err(e) = registered {
            warn!(%peer, "cannot register connection: {e}");
            self.shard.end(
                slot,
                CloseCode::ABNORMAL,
                "cannot register",
                &mut self.io,
                self.clock,
            );
            return;
        }
        // io_uring arms the connection's receive now; readiness reports it when data comes.
        self.want_input(slot);
    }
}
