//! The io_uring backend (Linux 6.1+; see `crate::uring` for the ring itself and why).
//!
//! A loop turn, top to bottom:
//! 1. queue this turn's ring sends, then submit everything queued (re-armed receives, cancels,
//!    sends) and wait for completions, up to the same timeout the readiness loop would use;
//! 2. the sends' completions first (the send arena is the kernel's until then); then per
//!    completion: a receive hands over a filled provided buffer, which goes through the same
//!    input path as a read, and the receive stays armed; the epoll descriptor's poll means the
//!    listener, the waker or a writable/hang-up edge is ready, and runs the readiness dispatch;
//! 3. give the ring back the buffers connections kept, then the worker's end of turn.
//!
//! Receives are multishot: one request per connection completes once per arrival of data and
//! stays armed. A connection that backpressure pauses has its receive cancelled (what already
//! arrived is still processed) and re-armed when its output drains. A turn of at most
//! [`RING_SEND_MAX`] bytes is copied into the send arena and sent with the wait (`MSG_DONTWAIT`:
//! it completes within that submission); larger turns go out at once with `sendmsg`.
//!
//! Descriptors are closed only after every queued operation that names them has been submitted:
//! a released connection's stream waits in `closing` until the submission queue is empty, so a
//! receive armed for it cannot land on a new connection that got the same descriptor number.
//! Completions are matched by the connection's serial (receives) or the send's entry in this
//! turn's list, which names the serial too.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hioload_wsproto::{App, PendingOutput};
use mio::net::TcpStream;
use mio::{Events, Interest};
use tracing::{debug, error};

use super::{Backend, Socket, Worker};
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::sys;
use crate::turn::{Sources, TurnOutput};
use crate::uring::{Completion, Op, Uring};

/// Turns up to this size are sent through the ring (one copy, no system call); larger ones go
/// out at once with a vectored `sendmsg` straight from the receive buffer (no copy).
const RING_SEND_MAX: usize = 8 << 10;
/// Capacity of the send arena (a loop turn's ring sends, back to back).
const SEND_ARENA: usize = 512 << 10;
/// How long the exit waits for the kernel to end cancelled receives.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// One ring send of a loop turn: `send_arena[start..start + len]` for the connection in `slot`.
#[derive(Copy, Clone, Debug)]
struct RingSend {
    slot: usize,
    serial: u64,
    start: usize,
    len: usize,
}

/// A connection's state on this backend.
#[derive(Debug, Default)]
pub(crate) struct UringConn {
    /// A receive is in flight (tagged with the low bits of the socket's serial).
    recv_armed: bool,
    /// That "receive" is a poll for input (a large frame is read directly), not a multishot
    /// receive: its completion brings no bytes.
    polling: bool,
    /// Its cancellation is queued.
    cancelled: bool,
    /// The last completion was that poll's: the input is read directly (once more at least).
    polled: bool,
    tag: u32,
    /// A ring send of earlier output is queued or in flight; later output waits behind it.
    send_queued: bool,
}

/// The io_uring backend: the ring, its provided buffers, the send arena.
pub(crate) struct UringBackend<B: RecvBuffer> {
    ring: Uring<B>,
    ring_sends: Vec<RingSend>,
    /// `ring_sends[..sends_queued]` are in the submission queue (or submitted).
    sends_queued: usize,
    /// Of those, how many have completed (or failed to queue). The arena and the list are
    /// cleared only when every one has: a submission cut short, or a completion that comes a
    /// turn late, leaves the kernel bytes it has not read yet.
    sends_done: usize,
    /// The bytes of the ring sends, back to back; cleared once all their completions are
    /// taken. Fixed capacity (never reallocated under the kernel): a turn that does not fit is
    /// sent directly.
    send_arena: Vec<u8>,
    /// The pool had no buffer for the ring; tried again at the next tick.
    refill_waits: bool,
    /// Streams of released connections, closed once nothing queued names them.
    closing: Vec<TcpStream>,
}

impl<B: RecvBuffer> UringBackend<B> {
    /// A ring of `buffers` provided buffers taken from `take`, watching the poll `epoll_fd`.
    pub fn new(buffers: u16, epoll_fd: i32, take: impl FnMut() -> Option<B>) -> io::Result<Self> {
        Ok(UringBackend {
            ring: Uring::new(buffers, epoll_fd, take)?,
            ring_sends: Vec::with_capacity(1024),
            sends_queued: 0,
            sends_done: 0,
            send_arena: Vec::with_capacity(SEND_ARENA),
            refill_waits: false,
            closing: Vec::with_capacity(64),
        })
    }
}

impl<B: RecvBuffer> UringBackend<B> {
    /// Arms the multishot receive of the connection in `slot`, or (`poll`) a poll for input.
    fn arm(&mut self, slot: usize, sock: &mut Socket<B, UringConn>, poll: bool) -> io::Result<()> {
        let conn = &mut sock.backend;
        conn.tag = sock.serial as u32;
        let fd = sock.stream.as_raw_fd();
        if poll {
            self.ring.poll_readable(fd, slot, conn.tag)?;
        } else {
            self.ring.recv(fd, slot, conn.tag)?;
        }
        conn.recv_armed = true;
        conn.polling = poll;
        conn.cancelled = false;
        conn.polled = false;
        Ok(())
    }
}

impl<B: RecvBuffer> Backend<B> for UringBackend<B> {
    type Conn = UringConn;
    // Reads are completions: the poll only tells when a full socket drains (and about errors,
    // which it always reports).
    const INTEREST: Interest = Interest::WRITABLE;

    fn prepare(stream: &TcpStream) -> io::Result<()> {
        // Receives wait in the kernel; a blocking socket lets the ring poll it internally.
        sys::set_blocking(stream)
    }

    fn want_input(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, UringConn>,
        bulk: bool,
    ) -> io::Result<bool> {
        let conn = &mut sock.backend;
        if conn.recv_armed {
            if bulk && !conn.polling && !conn.cancelled {
                // A large frame streams in: stop the multishot receive (what it already brought
                // is processed first) and read the rest straight into the message buffer once
                // it has ended (no other read may run beside an armed receive: order).
                self.ring.cancel_recv(slot, conn.tag)?;
                conn.cancelled = true;
            }
            return Ok(false);
        }
        if bulk || conn.polled {
            return Ok(true);
        }
        self.arm(slot, sock, false)?;
        Ok(false)
    }

    fn after_direct_read(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, UringConn>,
        large: bool,
    ) -> io::Result<()> {
        if sock.backend.recv_armed || sock.queued_ready {
            return Ok(());
        }
        // Large messages (in one now, or the last one was): a poll tells when more arrives, to
        // be read directly again. A multishot receive would take it all into provided buffers
        // at once, before the next frame's header could say it is large, and copy each.
        self.arm(slot, sock, large)
    }

    fn take_back(&mut self, buf: B) -> Option<B> {
        self.ring.give_buffer(buf)
    }

    fn send_in_flight(conn: &UringConn) -> bool {
        conn.send_queued
    }

    fn send_turn(
        &mut self,
        slot: usize,
        sock: &mut Socket<B, UringConn>,
        turn: &mut TurnOutput,
        pending: &mut PendingOutput,
        from: Sources<'_>,
    ) -> io::Result<()> {
        if sock.backend.send_queued {
            // A ring send of earlier output is queued: this waits behind it, in order.
            turn.stage_into(pending, from);
            return Ok(());
        }
        if pending.is_empty()
            && turn.len() <= RING_SEND_MAX
            && SEND_ARENA - self.send_arena.len() >= turn.len()
        {
            // A small turn is copied into the arena and goes out with the loop turn's
            // submission, beside every other connection's (no send system call).
            let start = self.send_arena.len();
            turn.move_into(&mut self.send_arena, from);
            sock.backend.send_queued = true;
            self.ring_sends.push(RingSend {
                slot,
                serial: sock.serial,
                start,
                len: self.send_arena.len() - start,
            });
            return Ok(());
        }
        turn.flush(&sock.stream, pending, from).map(|_| ())
    }

    fn release(&mut self, slot: usize, stream: TcpStream, conn: UringConn) {
        if conn.recv_armed {
            // The ring holds the socket open until its receive ends: end it now.
            if let Err(e) = self.ring.cancel_recv(slot, conn.tag) {
                error!("cannot cancel a receive: {e}");
            }
        }
        self.closing.push(stream);
    }

    fn tick(&mut self) {
        self.refill_waits = false;
    }

    fn run<A: App, P: RecvBuffers<Buf = B>>(mut w: Worker<A, Self, P>) {
        let mut events = w.events.take().expect("events exist until the loop runs");
        // Publish the buffers lent to the ring now, not after the first wait (which may last).
        w.refill_ring();
        loop {
            let timeout = w.poll_timeout();
            w.queue_ring_sends();
            let backend = &mut w.io.backend;
            if let Err(e) = backend
                .ring
                .arm_epoll()
                .and_then(|()| backend.ring.submit_and_wait(timeout))
            {
                error!(
                    worker = w.io.index,
                    "io_uring wait failed: {e}; the worker stops"
                );
                break;
            }
            if backend.ring.unsubmitted() == 0 {
                backend.closing.clear();
            }
            w.begin_turn(Instant::now());
            let completions = w.io.backend.ring.take_completions();
            // Sends first: until their completions are taken, the arena is the kernel's (they
            // complete within the submission, before any receive).
            w.on_sends(&completions);
            for completion in &completions {
                match completion.op {
                    Op::Recv { slot, tag } => w.on_recv(slot, tag, completion),
                    Op::Epoll => w.poll_ready(&mut events),
                    Op::Cancel | Op::Send { .. } => {}
                }
            }
            w.io.backend.ring.recycle(completions);
            w.refill_ring();
            if w.after_events() {
                break;
            }
        }
        w.close_all();
        w.drain_receives();
    }
}

impl<A: App, B: RecvBuffer, P: RecvBuffers<Buf = B>> Worker<A, UringBackend<B>, P> {
    /// Takes the ready events from the mio poll without waiting, as many batches as there are.
    fn poll_ready(&mut self, events: &mut Events) {
        loop {
            if let Err(e) = self.io.poll.poll(events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!(worker = self.io.index, "poll failed: {e}");
                }
                return;
            }
            let full = events.iter().count() == events.capacity();
            self.dispatch(events);
            if !full {
                return;
            }
        }
    }

    /// Queues this loop turn's ring sends, each a range of the send arena, which nothing touches
    /// until their completions are taken (first thing after the wait).
    fn queue_ring_sends(&mut self) {
        let from = self.io.backend.sends_queued;
        self.io.backend.sends_queued = self.io.backend.ring_sends.len();
        for index in from..self.io.backend.ring_sends.len() {
            let send = self.io.backend.ring_sends[index];
            let Some(s) = self
                .shard
                .slot(send.slot)
                .filter(|s| s.io.serial == send.serial)
            else {
                self.io.backend.sends_done += 1; // gone since: nothing to send
                continue;
            };
            let fd = s.io.stream.as_raw_fd();
            let backend = &mut self.io.backend;
            let bytes = &backend.send_arena[send.start..send.start + send.len];
            // SAFETY: the arena is neither written nor cleared before the completions of this
            // turn's sends are taken: a MSG_DONTWAIT send completes within the submission.
            let queued = unsafe { backend.ring.send(fd, bytes, index as u32) };
            if let Err(e) = queued {
                self.io.backend.sends_done += 1;
                error!(worker = self.io.index, "cannot queue a send: {e}");
                self.shard
                    .peer_gone(send.slot, Some(&e), &mut self.io, self.clock);
            }
        }
    }

    /// The completions of ring sends (normally all of this turn's: each completes within the
    /// submission); once every queued send has completed, the arena is free again.
    fn on_sends(&mut self, completions: &[Completion]) {
        for completion in completions {
            if let Op::Send { index } = completion.op {
                let send = self.io.backend.ring_sends[index as usize];
                self.io.backend.sends_done += 1;
                self.on_sent(send, completion.result);
            }
        }
        let backend = &mut self.io.backend;
        if backend.sends_done == backend.ring_sends.len() {
            backend.ring_sends.clear();
            backend.send_arena.clear();
            backend.sends_queued = 0;
            backend.sends_done = 0;
        }
    }

    /// One ring send completed with `result` (bytes sent, or a negated errno).
    fn on_sent(&mut self, send: RingSend, result: i32) {
        let Some(s) = self
            .shard
            .slot_mut(send.slot)
            .filter(|s| s.io.serial == send.serial)
        else {
            return;
        };
        s.io.backend.send_queued = false;
        let sent = match result {
            n if n >= 0 => n as usize,
            e if e == -libc::EAGAIN || e == -libc::EINTR => 0,
            e => {
                let err = io::Error::from_raw_os_error(-e);
                self.shard
                    .peer_gone(send.slot, Some(&err), &mut self.io, self.clock);
                return;
            }
        };
        let io = &mut self.io;
        if sent < send.len {
            // The socket is full: the rest goes before whatever was queued behind this send,
            // and all of it waits for the writable edge, as after a partial write.
            let rest = &io.backend.send_arena[send.start + sent..send.start + send.len];
            io.turn.requeue_front(s.conn.pending_mut(), rest);
        } else if !s.conn.pending().is_empty() {
            // Output that waited behind this send.
            if let Err(e) = io
                .turn
                .flush(&s.io.stream, s.conn.pending_mut(), Sources::NONE)
            {
                self.shard
                    .peer_gone(send.slot, Some(&e), &mut self.io, self.clock);
                return;
            }
        }
        self.shard.after_output(send.slot, &mut self.io, self.clock);
    }

    /// A receive completed: bytes, end of stream, or an error; then the receive is re-armed (or
    /// cancelled while backpressure pauses the connection).
    fn on_recv(&mut self, slot: usize, tag: u32, completion: &Completion) {
        let buf = completion
            .buffer
            .map(|bid| self.io.backend.ring.take_buffer(bid));
        let Some(s) = self
            .shard
            .slot_mut(slot)
            .filter(|s| s.io.backend.recv_armed && s.io.backend.tag == tag)
        else {
            // The receive of a connection released since (cancelled, or it raced the cancel).
            if let Some(buf) = buf {
                self.io.give_buf(buf);
            }
            return;
        };
        s.io.backend.recv_armed = completion.more;
        let polled = s.io.backend.polling;
        s.io.backend.polled = polled;
        match completion.result {
            // Input is there for a connection reading a large frame directly: below.
            n if n > 0 && polled => {}
            n if n > 0 => {
                let buf = buf.expect("a receive that brought bytes names its buffer");
                self.on_received(slot, buf, n as usize);
            }
            0 => {
                if let Some(buf) = buf {
                    self.io.give_buf(buf);
                }
                self.shard.peer_gone(slot, None, &mut self.io, self.clock);
                return;
            }
            e if e == -libc::ENOBUFS => {
                // Input is there but the ring is dry (buffers held by connections with partial
                // frames, or all in this turn's completions): read it directly, into the
                // connection's own held buffer or one from the pool (if there is none, the read
                // waits for the next tick, as with epoll).
                if let Some(buf) = buf {
                    self.io.give_buf(buf);
                }
                self.read_direct(slot);
            }
            e if e == -libc::EINTR || e == -libc::EAGAIN || e == -libc::ECANCELED => {}
            e => {
                if let Some(buf) = buf {
                    self.io.give_buf(buf);
                }
                let err = io::Error::from_raw_os_error(-e);
                self.shard
                    .peer_gone(slot, Some(&err), &mut self.io, self.clock);
                return;
            }
        }
        let Some(s) = self.shard.slot_mut(slot) else {
            return;
        };
        let paused = s.conn.read_paused();
        if paused && s.io.backend.recv_armed {
            // Backpressure paused it: stop the multishot receive (what already arrived is
            // processed; the connection is re-armed once its output drains).
            if !s.io.backend.cancelled {
                if let Err(e) = self.io.backend.ring.cancel_recv(slot, s.io.backend.tag) {
                    error!(worker = self.io.index, "cannot cancel a receive: {e}");
                }
                s.io.backend.cancelled = true;
            }
        } else if !paused {
            self.want_input(slot);
        }
    }

    /// Lends the ring buffers from the pool for the entries whose buffers were taken.
    /// When the pool has none to give, the next try waits for the next tick (not every turn).
    fn refill_ring(&mut self) {
        let io = &mut self.io;
        while !io.backend.refill_waits && io.backend.ring.wants_buffers() {
            let Some(buf) = io.pool.take() else {
                io.backend.refill_waits = true;
                self.shard.counters().buffer_waits.add(1);
                break;
            };
            if let Some(buf) = io.backend.ring.give_buffer(buf) {
                io.pool.give(buf);
                break;
            }
        }
        self.shard
            .counters()
            .ring_buffers
            .set(io.backend.ring.lent());
    }

    /// After the last connection is gone: waits (boundedly) for the kernel to end the cancelled
    /// receives, so that no buffer is still the kernel's when the ring goes.
    fn drain_receives(&mut self) {
        let until = Instant::now() + EXIT_DRAIN;
        let io = &mut self.io;
        while io.backend.ring.recvs_in_flight() > 0 && Instant::now() < until {
            if let Err(e) = io
                .backend
                .ring
                .submit_and_wait(Some(Duration::from_millis(50)))
            {
                error!(worker = io.index, "io_uring wait failed at exit: {e}");
                return;
            }
            let completions = io.backend.ring.take_completions();
            for completion in &completions {
                if let Some(bid) = completion.buffer {
                    let buf = io.backend.ring.take_buffer(bid);
                    io.give_buf(buf);
                }
            }
            io.backend.ring.recycle(completions);
        }
        io.backend.closing.clear();
        self.shard.counters().ring_buffers.set(0);
        let left = io.backend.ring.recvs_in_flight();
        if left > 0 {
            debug!(worker = io.index, left, "receives still in flight at exit");
        }
    }
}
