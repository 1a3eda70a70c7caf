//! A worker's loop on io_uring (Linux; see `crate::uring` for why).
//!
//! A loop turn, top to bottom:
//! 1. submit what the last turn queued (re-armed receives, cancels) and wait for completions, up
//!    to the same timeout the readiness loop would use;
//! 2. per completion: a receive hands over a filled provided buffer, which goes through the same
//!    protocol path as a read (parse in place, service, one vectored send), then the receive is
//!    re-armed; the epoll descriptor's poll means the listener, the waker or a writable/hang-up
//!    edge is ready, and runs the readiness dispatch;
//! 3. give the ring back the buffers connections kept, then the rest of the turn is shared with
//!    the readiness loop (accepts, inbox, deadlines, idle sweeps, shutdown).
//!
//! Receives are multishot: one request per connection completes once per arrival of data and
//! stays armed, so the kernel's readiness hook is set up once per connection, not once per read.
//! A connection that backpressure pauses has its receive cancelled (what already arrived is still
//! processed) and re-armed when its output drains. A receive ends with a completion without the
//! "more" flag; the exit waits for those of the cancelled receives.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Events;
use tracing::{debug, error};

use super::{RingSend, Worker};
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::service::Service;
use crate::uring::{tag_of, Completion, Op};

/// How long the exit waits for the kernel to end cancelled receives.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

impl<S: Service> Worker<S> {
    /// The loop of a worker whose reads go through io_uring.
    pub(super) fn run_uring(mut self) {
        let mut events = self
            .events
            .take()
            .expect("events exist until the loop runs");
        // Publish the buffers lent to the ring now, not after the first wait (which may last).
        self.refill_ring();
        loop {
            let timeout = self.poll_timeout();
            self.queue_ring_sends();
            let uring = self
                .uring
                .as_mut()
                .expect("an io_uring worker has its ring");
            if let Err(e) = uring
                .arm_epoll()
                .and_then(|()| uring.submit_and_wait(timeout))
            {
                error!(
                    worker = self.index,
                    "io_uring wait failed: {e}; the worker stops"
                );
                break;
            }
            self.clock = Instant::now();
            if self.shared.epoch() != self.epoch {
                self.apply_settings();
            }
            let completions = self.uring_mut().take_completions();
            // Sends first: until their completions are taken, the arena is the kernel's (they
            // complete within the submission, before any receive).
            self.on_sends(&completions);
            for completion in &completions {
                match completion.op {
                    Op::Recv { slot, tag } => self.on_recv(slot, tag, completion),
                    Op::Epoll => self.poll_ready(&mut events),
                    Op::Cancel | Op::Send { .. } => {}
                }
            }
            self.uring_mut().recycle(completions);
            self.refill_ring();
            if self.after_events() {
                break;
            }
        }
        self.close_all();
        self.drain_receives();
    }

    fn uring_mut(&mut self) -> &mut crate::uring::Uring<<S::Buffers as RecvBuffers>::Buf> {
        self.uring
            .as_mut()
            .expect("an io_uring worker has its ring")
    }

    /// Takes the ready events from the mio poll without waiting, as many batches as there are.
    fn poll_ready(&mut self, events: &mut Events) {
        loop {
            if let Err(e) = self.poll.poll(events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!(worker = self.index, "poll failed: {e}");
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
        for index in 0..self.ring_sends.len() {
            let send = self.ring_sends[index];
            let Some(conn) = self.conns[send.idx].as_ref().filter(|c| c.id == send.id) else {
                continue; // gone since: nothing to send
            };
            let fd = conn.stream.as_raw_fd();
            let bytes = &self.send_arena[send.start..send.start + send.len];
            let uring = self.uring.as_mut().expect("an io_uring worker has its ring");
            // SAFETY: the arena is neither written nor cleared before the completions of this
            // turn's sends are taken: a MSG_DONTWAIT send completes within the submission.
            let queued = unsafe { uring.send(fd, bytes, index as u32) };
            if let Err(e) = queued {
                error!(worker = self.index, "cannot queue a send: {e}");
                self.peer_gone(send.idx, Some(e));
            }
        }
    }

    /// The completions of this loop turn's ring sends (all of them: each completes within the
    /// submission); then the arena is free for the next turn.
    fn on_sends(&mut self, completions: &[Completion]) {
        for completion in completions {
            if let Op::Send { index } = completion.op {
                let send = self.ring_sends[index as usize];
                self.on_sent(send, completion.result);
            }
        }
        self.ring_sends.clear();
        self.send_arena.clear();
    }

    /// One ring send completed with `result` (bytes sent, or a negated errno).
    fn on_sent(&mut self, send: RingSend, result: i32) {
        let idx = send.idx;
        let Some(conn) = self.conns[idx].as_mut().filter(|c| c.id == send.id) else {
            return;
        };
        conn.send_queued = false;
        let sent = match result {
            n if n >= 0 => n as usize,
            e if e == -libc::EAGAIN || e == -libc::EINTR => 0,
            e => {
                self.peer_gone(idx, Some(io::Error::from_raw_os_error(-e)));
                return;
            }
        };
        if sent < send.len {
            // The socket is full: the rest goes before whatever was queued behind this send, and
            // all of it waits for the writable edge, as after a partial write.
            let rest = &self.send_arena[send.start + sent..send.start + send.len];
            self.turn.requeue_front(&mut conn.out, rest);
        } else if !conn.out.is_empty() {
            // Output that waited behind this send.
            if let Err(e) = self.turn.flush(&conn.stream, &mut conn.out, &[]) {
                self.peer_gone(idx, Some(e));
                return;
            }
        }
        self.after_output(idx);
    }

    /// Queues a receive for the connection in `idx` unless one is in flight or it is paused.
    pub(super) fn arm_recv(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.recv_armed || conn.read_paused {
            return;
        }
        let uring = self
            .uring
            .as_mut()
            .expect("an io_uring worker has its ring");
        let fd = conn.stream.as_raw_fd();
        match uring.recv(fd, idx, tag_of(conn.id)) {
            Ok(()) => conn.recv_armed = true,
            Err(e) => {
                error!(worker = self.index, "cannot queue a receive: {e}");
                self.peer_gone(idx, Some(e));
            }
        }
    }

    /// A receive ended: bytes, end of stream, or an error.
    fn on_recv(&mut self, idx: usize, tag: u32, completion: &Completion) {
        let buf = completion
            .buffer
            .map(|bid| self.uring_mut().take_buffer(bid));
        let live = self
            .conns
            .get(idx)
            .and_then(Option::as_ref)
            .is_some_and(|conn| tag_of(conn.id) == tag);
        if !live {
            // The receive of a connection dropped since (cancelled, or it raced the cancel).
            if let Some(buf) = buf {
                self.give_buf(buf);
            }
            return;
        }
        if let Some(conn) = self.conns[idx].as_mut() {
            conn.recv_armed = completion.more;
        }
        match completion.result {
            n if n > 0 => {
                let buf = buf.expect("a receive that brought bytes names its buffer");
                self.on_received(idx, buf, n as usize);
            }
            0 => {
                if let Some(buf) = buf {
                    self.give_buf(buf);
                }
                self.peer_gone(idx, None);
                return;
            }
            e if e == -libc::ENOBUFS => {
                // Input is there but the ring is dry (buffers held by connections with partial
                // frames, or all in this turn's completions): read it directly, into the
                // connection's own held buffer or one from the pool (if there is none, the read
                // waits for the next tick, as with epoll).
                if let Some(buf) = buf {
                    self.give_buf(buf);
                }
                self.read_direct(idx);
            }
            e if e == -libc::EINTR || e == -libc::EAGAIN || e == -libc::ECANCELED => {}
            e => {
                if let Some(buf) = buf {
                    self.give_buf(buf);
                }
                self.peer_gone(idx, Some(io::Error::from_raw_os_error(-e)));
                return;
            }
        }
        match self.conns[idx].as_mut() {
            // Backpressure paused it: stop the multishot receive (what already arrived is
            // processed; the connection is re-armed once its output drains).
            Some(conn) if conn.read_paused && conn.recv_armed => {
                let tag = tag_of(conn.id);
                if let Err(e) = self.uring_mut().cancel_recv(idx, tag) {
                    error!(worker = self.index, "cannot cancel a receive: {e}");
                }
            }
            Some(_) => self.arm_recv(idx),
            None => {}
        }
    }

    /// Runs the protocol over `n` received bytes at the start of `buf` (a provided buffer).
    fn on_received(&mut self, idx: usize, mut buf: <S::Buffers as RecvBuffers>::Buf, n: usize) {
        let clock = self.clock;
        let Some(conn) = self.conns[idx].as_mut() else {
            self.give_buf(buf);
            return;
        };
        conn.last_input = clock;
        let Some(mut held) = conn.rbuf.take() else {
            // Nothing held from earlier: parse in place, in the buffer the kernel filled.
            self.process_input(idx, buf, n);
            return;
        };
        // A partial frame is held in the connection's own buffer: append, as a read into its
        // tail would have, in as many rounds as the held buffer's room needs.
        let mut offset = 0;
        loop {
            let filled = self.conns[idx].as_ref().map_or(0, |c| c.held);
            let room = held.as_slice().len() - filled;
            let take = room.min(n - offset);
            held.as_mut_slice()[filled..filled + take]
                .copy_from_slice(&buf.as_slice()[offset..offset + take]);
            offset += take;
            self.process_input(idx, held, filled + take);
            if offset == n {
                self.give_buf(buf);
                return;
            }
            let Some(conn) = self.conns[idx].as_mut() else {
                self.give_buf(buf);
                return;
            };
            match conn.rbuf.take() {
                Some(next) => held = next,
                None => {
                    // The held bytes are consumed: the rest is parsed where it lies.
                    buf.as_mut_slice().copy_within(offset..n, 0);
                    self.process_input(idx, buf, n - offset);
                    return;
                }
            }
        }
    }

    /// Lends the ring buffers from the pool for the entries whose buffers connections kept.
    /// When the pool has none to give, the next try waits for the next tick (not every turn).
    fn refill_ring(&mut self) {
        while !self.ring_refill_waits && self.uring_mut().wants_buffers() {
            let Some(buf) = self.pool.take() else {
                self.ring_refill_waits = true;
                break;
            };
            if let Some(buf) = self.uring_mut().give_buffer(buf) {
                self.pool.give(buf);
                break;
            }
        }
        let lent = self.uring_mut().lent();
        self.shared.workers[self.index].ring_buffers.set(lent);
    }

    /// After the last connection is gone: waits (boundedly) for the kernel to end the cancelled
    /// receives, so that no buffer is still the kernel's when the ring goes.
    fn drain_receives(&mut self) {
        let until = Instant::now() + EXIT_DRAIN;
        while self.uring_mut().recvs_in_flight() > 0 && Instant::now() < until {
            if let Err(e) = self
                .uring_mut()
                .submit_and_wait(Some(Duration::from_millis(50)))
            {
                error!(worker = self.index, "io_uring wait failed at exit: {e}");
                return;
            }
            let completions = self.uring_mut().take_completions();
            for completion in &completions {
                if let Some(bid) = completion.buffer {
                    let buf = self.uring_mut().take_buffer(bid);
                    self.give_buf(buf);
                }
            }
            self.uring_mut().recycle(completions);
        }
        self.shared.workers[self.index].ring_buffers.set(0);
        let left = self.uring_mut().recvs_in_flight();
        if left > 0 {
            debug!(
                worker = self.index,
                left, "receives still in flight at exit"
            );
        }
    }
}
