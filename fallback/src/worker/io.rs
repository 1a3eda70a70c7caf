//! The transport side of a kernel worker: its sockets, the turn's output, its receive buffers
//! and its listener — everything the shard core reaches through
//! [`Transport`](hioload_wsproto::Transport), and nothing about sessions.

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use hioload_wsproto::connection::Release;
use hioload_wsproto::output_cache::OutputCacheStats;
use hioload_wsproto::{Listener, PendingOutput, ShardSet, Transport, Wire};
use mio::net::{TcpListener, TcpStream};
use mio::Poll;

use super::accept::AcceptState;
use super::Backend;
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::turn::{Sources, TurnOutput};

/// One accepted connection as the transport sees it; `B` is the receive buffer type, `C` the
/// backend's own state of the connection.
pub(crate) struct Socket<B, C> {
    pub stream: TcpStream,
    /// Tells this occupant of a slot from earlier ones (in the ready list, and in the tags of
    /// io_uring operations).
    pub serial: u64,
    /// The poller reported the peer's FIN or an error: read until the read says so.
    pub hangup: bool,
    /// In the worker's ready list (has input we have not read yet).
    pub queued_ready: bool,
    /// The backend's state of this connection.
    pub backend: C,
    _buffers: std::marker::PhantomData<fn() -> B>,
}

impl<B, C: Default> Socket<B, C> {
    pub fn new(stream: TcpStream, serial: u64) -> Self {
        Socket {
            stream,
            serial,
            hangup: false,
            queued_ready: false,
            backend: C::default(),
            _buffers: std::marker::PhantomData,
        }
    }
}

/// One of a worker's listening sockets.
pub(crate) struct Listening {
    pub socket: TcpListener,
    /// Plain or TLS: how its connections start.
    pub kind: Listener,
    /// The poller said it has connections to accept.
    pub ready: bool,
}

/// The worker's transport side (see the module documentation).
pub(crate) struct Io<K, P: RecvBuffers> {
    pub index: usize,
    pub set: Arc<ShardSet>,
    pub poll: Poll,
    /// The worker's listeners (its own socket of each listening address); empty once stopping.
    pub listeners: Vec<Listening>,
    pub accept: AcceptState,
    pub turn: TurnOutput,
    pub pool: P,
    pub backend: K,
    /// Connections with input left to read (read budget spent, or resumed after backpressure).
    pub ready: Vec<(usize, u64)>,
    pub ready_spare: Vec<(usize, u64)>,
    pub next_serial: u64,
}

impl<K: Backend<P::Buf>, P: RecvBuffers> Io<K, P> {
    /// Gives a receive buffer back: to the backend if it lends buffers to the kernel and lacks
    /// one, else to the pool.
    pub fn give_buf(&mut self, buf: P::Buf) {
        if let Some(buf) = self.backend.take_back(buf) {
            self.pool.give(buf);
        }
    }

    /// Puts a connection in the ready list (read at the end of this turn).
    pub fn queue_ready(&mut self, slot: usize, sock: &mut Socket<P::Buf, K::Conn>) {
        if !sock.queued_ready {
            sock.queued_ready = true;
            self.ready.push((slot, sock.serial));
        }
    }
}

impl<K: Backend<P::Buf>, P: RecvBuffers> Transport for Io<K, P> {
    type Io = Socket<P::Buf, K::Conn>;
    type Wire<'a>
        = KernelWire<'a, P::Buf, K>
    where
        Self: 'a;

    fn wire<'a>(&'a mut self, _slot: usize, io: &'a mut Self::Io) -> Self::Wire<'a> {
        KernelWire {
            turn: &mut self.turn,
            sock: io,
        }
    }

    fn release(
        &mut self,
        slot: usize,
        mut sock: Self::Io,
        pending: &mut PendingOutput,
        _how: Release,
    ) -> Option<Self::Io> {
        // Closing the socket is the release either way: the kernel sends its FIN after what it
        // holds, or a reset when input is left unread.
        let _ = self.poll.registry().deregister(&mut sock.stream);
        self.turn.release(pending);
        self.backend.release(slot, sock.stream, sock.backend);
        None
    }

    fn resume_reading(&mut self, slot: usize, io: &mut Self::Io) {
        self.queue_ready(slot, io);
    }

    fn stop_listening(&mut self) {
        for mut listening in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listening.socket);
        }
    }

    fn output_cache_stats(&self) -> OutputCacheStats {
        self.turn.cache_stats()
    }
}

/// A connection's wire outside a read (inbox deliveries, pings, closes): frames are staged in
/// the worker's turn output and sent by `flush` with one vectored write.
pub(crate) struct KernelWire<'a, B: RecvBuffer, K: Backend<B>> {
    turn: &'a mut TurnOutput,
    sock: &'a mut Socket<B, K::Conn>,
}

impl<B: RecvBuffer, K: Backend<B>> Wire for KernelWire<'_, B, K> {
    fn queue_frame(&mut self, _pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        hioload_wsproto::FrameSink::send_frame(&mut self.turn.sink(&[]), header, payload);
    }
    fn queue_bytes(&mut self, _pending: &mut PendingOutput, bytes: &[u8]) {
        self.turn.push_bytes(bytes);
    }
    fn flush(&mut self, pending: &mut PendingOutput) -> io::Result<()> {
        if K::send_in_flight(&self.sock.backend) {
            // Earlier output is still in the backend's hands: this waits behind it.
            self.turn.stage_into(pending, Sources::NONE);
            Ok(())
        } else {
            self.turn
                .flush(&self.sock.stream, pending, Sources::NONE)
                .map(|_| ())
        }
    }
    fn shutdown_write(&mut self, _pending: &mut PendingOutput) -> bool {
        if K::send_in_flight(&self.sock.backend) {
            return false; // not before the queued send has taken our last bytes out
        }
        let _ = self.sock.stream.shutdown(Shutdown::Write);
        true
    }
    fn queued(&self) -> usize {
        self.turn.len()
    }
}
