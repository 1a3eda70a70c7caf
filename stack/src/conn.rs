//! One TCP connection as the application sees it: zero-copy access to its two rings.
//!
//! The application never gets a copy of received bytes: [`Conn::recv_with`] lends it the
//! contiguous readable part of the receive ring (in NUMA-local hugepage memory) and it reports
//! how much it consumed; bytes it leaves stay for the next call, which is how a protocol parser
//! keeps an incomplete frame. Sending is the mirror image: [`Conn::send_with`] lends the free
//! part of the send ring to write into, and [`Conn::send_all`] copies a header and payload in
//! whole or not at all. Backpressure is explicit: [`Conn::send_free`] says how much fits; an
//! application that cannot write should stop reading that connection until it is called again.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

/// A connection's identity: a dense slot index (below `max_connections`, handy for per-
/// connection tables) and a generation, so an id of a closed connection never reaches a new one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The slot index, in `0..max_connections`.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// How a connection ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// FIN exchanged both ways.
    Graceful,
    /// Reset by either side (RST received, [`Conn::abort`]), a timeout, or a failed connect.
    Reset,
}

/// The TCP state of a connection (smoltcp's).
pub type TcpState = tcp::State;

/// What the stack tells the application, from inside its poll loop.
pub trait ConnEvents {
    /// A connection finished its handshake (accepted or connected).
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = conn;
    }
    /// The connection's bucket saw traffic and the connection has unread bytes, a newly seen
    /// end of stream, or more send room than when last reported.
    fn on_ready(&mut self, conn: &mut Conn<'_>);
    /// The connection is gone; `id` is no longer valid.
    fn on_close(&mut self, id: ConnId, reason: CloseReason) {
        let _ = (id, reason);
    }
}

/// A borrowed connection.
pub struct Conn<'a> {
    pub(crate) id: ConnId,
    pub(crate) socket: &'a mut tcp::Socket<'static>,
}

impl Conn<'_> {
    /// Its id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address (unspecified:0 before the handshake).
    pub fn remote(&self) -> SocketAddrV4 {
        match self.socket.remote_endpoint() {
            Some(ep) => SocketAddrV4::new(ipv4(ep.addr), ep.port),
            None => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        }
    }

    /// Our port.
    pub fn local_port(&self) -> u16 {
        self.socket.local_endpoint().map_or(0, |ep| ep.port)
    }

    /// The TCP state.
    pub fn state(&self) -> TcpState {
        self.socket.state()
    }

    /// Bytes waiting in the receive ring.
    pub fn recv_queue(&self) -> usize {
        self.socket.recv_queue()
    }

    /// True once the peer closed its direction and every byte was read.
    pub fn is_eof(&self) -> bool {
        !self.socket.may_recv() && self.socket.recv_queue() == 0
    }

    /// Lend `f` the contiguous readable part of the receive ring; `f` returns how many bytes
    /// it consumed (at most the slice length). Returns that count; 0 when nothing is readable.
    /// The ring may hold more after a wrap: call again while it returns non-zero.
    pub fn recv_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        if self.socket.recv_queue() == 0 {
            return 0;
        }
        self.socket
            .recv(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    /// Lend `f` the contiguous readable part of the receive ring *and* a [`SendRing`] writer
    /// into the send ring, for a protocol that answers while it parses (a WebSocket session:
    /// frames in, frames out, no copy in between). `f` returns how many received bytes it
    /// consumed; those leave the receive ring after `f` returns. Returns that count.
    pub fn recv_and_send(
        &mut self,
        f: impl FnOnce(&mut [u8], &mut SendRing<'_>) -> usize,
    ) -> usize {
        if self.socket.recv_queue() == 0 {
            return 0;
        }
        // Peek: where the readable bytes are, consuming nothing.
        let Ok((ptr, len)) = self.socket.recv(|buf| (0, (buf.as_mut_ptr(), buf.len()))) else {
            return 0;
        };
        // SAFETY: the bytes are `len` initialised bytes of this connection's receive ring, in
        // the stack's ring slab, which outlives this borrow of the connection. smoltcp lent them
        // to us just above and keeps no reference into them; until the consuming `recv` below,
        // nothing reads or writes them but `f`: the only other access to the socket meanwhile
        // is `SendRing`, whose calls (`send`, `send_slice`, queue sizes) touch the send ring and
        // the socket's counters, never the receive ring's bytes.
        let rx = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let mut tx = SendRing {
            socket: self.socket,
        };
        let consumed = f(rx, &mut tx).min(len);
        if consumed > 0 {
            let _ = self.socket.recv(|_| (consumed, ()));
        }
        consumed
    }

    /// Copy up to `out.len()` received bytes out (for callers that want a copy).
    pub fn recv_slice(&mut self, out: &mut [u8]) -> usize {
        self.socket.recv_slice(out).unwrap_or(0)
    }

    /// Free bytes in the send ring.
    pub fn send_free(&self) -> usize {
        self.socket.send_capacity() - self.socket.send_queue()
    }

    /// Bytes in the send ring not yet acknowledged by the peer.
    pub fn send_queue(&self) -> usize {
        self.socket.send_queue()
    }

    /// True while the connection may still send (not closed by us, not reset).
    pub fn may_send(&self) -> bool {
        self.socket.may_send()
    }

    /// Lend `f` the contiguous free part of the send ring; `f` returns how many bytes it wrote.
    /// Returns that count; 0 when the ring is full or the connection cannot send.
    pub fn send_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        if !self.socket.may_send() {
            return 0;
        }
        self.socket
            .send(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    /// Copy as much of `bytes` as fits into the send ring; returns how much.
    pub fn send_slice(&mut self, bytes: &[u8]) -> usize {
        if !self.socket.may_send() {
            return 0;
        }
        let mut done = 0;
        // Two rounds cover the ring's wrap.
        for _ in 0..2 {
            match self.socket.send_slice(&bytes[done..]) {
                Ok(n) if n > 0 => done += n,
                _ => break,
            }
            if done == bytes.len() {
                break;
            }
        }
        done
    }

    /// Queue every part of `parts` (e.g. a frame header and its payload) or nothing: false if
    /// they do not all fit in the free send space or the connection cannot send.
    pub fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.socket.may_send() || self.send_free() < total {
            return false;
        }
        for part in parts {
            let n = self.send_slice(part);
            debug_assert_eq!(n, part.len());
        }
        true
    }

    /// Close our direction (FIN after the queued bytes).
    pub fn close(&mut self) {
        self.socket.close();
    }

    /// Reset the connection (RST now; queued bytes are dropped).
    pub fn abort(&mut self) {
        self.socket.abort();
    }
}

/// The send side of a connection, lent next to its receive ring by [`Conn::recv_and_send`].
pub struct SendRing<'a> {
    socket: &'a mut tcp::Socket<'static>,
}

impl SendRing<'_> {
    /// Free bytes in the send ring.
    pub fn free(&self) -> usize {
        self.socket.send_capacity() - self.socket.send_queue()
    }

    /// Queue every part of `parts` (e.g. a frame header and its payload) or nothing: false if
    /// they do not all fit or the connection cannot send.
    pub fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.socket.may_send() || self.free() < total {
            return false;
        }
        for part in parts {
            let mut done = 0;
            while done < part.len() {
                match self.socket.send_slice(&part[done..]) {
                    Ok(n) if n > 0 => done += n,
                    _ => return false, // cannot happen: the room was checked
                }
            }
        }
        true
    }

    /// Lend `f` the contiguous free part of the send ring; returns the bytes it wrote.
    pub fn send_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        if !self.socket.may_send() {
            return 0;
        }
        self.socket
            .send(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0)
    }
}

fn ipv4(addr: IpAddress) -> Ipv4Addr {
    match addr {
        IpAddress::Ipv4(a) => a,
    }
}
