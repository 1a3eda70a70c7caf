//! One read's worth of work, the same on both backends: the connection's held bytes (a partial
//! head or frame from its last read) and the new ones, contiguous in a buffer, go through the
//! shard (handshake or frames, parsed in place; the application's replies recorded in the turn
//! output), and the turn's output goes to the backend to send. What the protocol leaves
//! unconsumed is held again by the connection, in storage of its own (`HeldInput`), so the
//! buffer read into is free again as soon as the read is processed: no connection keeps a
//! receive buffer between reads, however slowly its peer sends.

use std::io;

use super::{Backend, Worker};
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::turn::Sources;

/// Reads per connection per turn before others get their turn.
const READ_ROUNDS: usize = 4;

impl<A: hioload_wsproto::App, K: Backend<P::Buf>, P: RecvBuffers> Worker<A, K, P> {
    /// Reads with `recv` system calls until the socket is drained, the read budget is spent, or
    /// backpressure pauses the connection, into the worker's input buffer behind the held
    /// bytes: the poll backend's way to read, and the io_uring backend's when its ring has no
    /// buffer left.
    pub(super) fn read_direct(&mut self, slot: usize) {
        for _ in 0..READ_ROUNDS {
            match self.shard.slot(slot) {
                Some(s) if !s.conn.read_paused() => {}
                _ => return,
            }
            if let Some((read, room)) = self.read_bulk(slot) {
                match read {
                    Ok(0) => {
                        self.shard.peer_gone(slot, None, &mut self.io, self.clock);
                        return;
                    }
                    Ok(n) => {
                        // A short read emptied the socket (as below).
                        let hangup = self.shard.slot(slot).map_or(true, |s| s.io.hangup);
                        if cfg!(target_os = "linux") && n < room && !hangup {
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        self.shard
                            .peer_gone(slot, Some(&e), &mut self.io, self.clock);
                        return;
                    }
                }
            }
            let Some(s) = self.shard.slot_mut(slot) else {
                return;
            };
            let mut input = std::mem::take(&mut self.input);
            let held = s.conn.held_len();
            // A peer that sends large messages: read the next frame's header alone, so that
            // its payload goes straight into the message buffer (above) instead of through
            // this buffer; one more small read per message, one copy less.
            let space = if s.conn.expects_large() {
                hioload_wsproto::frame::MAX_HEADER_LEN
            } else {
                input.len() - held
            };
            let read = read_once(&mut s.io.stream, &mut input[held..held + space]);
            match read {
                Ok(0) => {
                    self.input = input;
                    self.shard.peer_gone(slot, None, &mut self.io, self.clock);
                    return;
                }
                Ok(n) => {
                    s.conn.held_mut().move_to(&mut input[..held]);
                    self.process_input(slot, &mut input[..held + n]);
                    self.input = input;
                    // A short read emptied the socket, and anything arriving later (data, FIN,
                    // RST) brings a new edge; unless the FIN or RST is already here: then read
                    // on until the read reports it.
                    let hangup = self.shard.slot(slot).map_or(true, |s| s.io.hangup);
                    if cfg!(target_os = "linux") && n < space && !hangup {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.input = input;
                    return;
                }
                Err(e) => {
                    self.input = input;
                    self.shard
                        .peer_gone(slot, Some(&e), &mut self.io, self.clock);
                    return;
                }
            }
        }
        if let Some(s) = self.shard.slot_mut(slot) {
            self.io.queue_ready(slot, &mut s.io);
        }
    }

    /// Runs the io_uring receive of `n` bytes into `buf` (a provided buffer): in place when
    /// nothing is held, else behind the held bytes in the worker's input buffer. The buffer is
    /// given back either way.
    pub(super) fn on_received(&mut self, slot: usize, mut buf: P::Buf, n: usize) {
        let held = self.shard.slot(slot).map_or(0, |s| s.conn.held_len());
        if held == 0 {
            self.process_input(slot, &mut buf.as_mut_slice()[..n]);
        } else {
            let mut input = std::mem::take(&mut self.input);
            if let Some(s) = self.shard.slot_mut(slot) {
                s.conn.held_mut().move_to(&mut input[..held]);
            }
            input[held..held + n].copy_from_slice(&buf.as_slice()[..n]);
            self.process_input(slot, &mut input[..held + n]);
            self.input = input;
        }
        self.io.give_buf(buf);
    }

    /// Runs the connection in `slot` over `input` (held bytes first), sends the turn's output
    /// and applies the shard's verdicts.
    fn process_input(&mut self, slot: usize, input: &mut [u8]) {
        {
            let mut sink = self.io.turn.sink(input);
            self.shard.receive(slot, input, &mut sink, self.clock);
        }
        self.send_output(slot, input);
    }

    /// Reads straight into the message buffer of the connection in `slot` while it streams a
    /// large frame ([`Connection::bulk_room`](hioload_wsproto::Connection::bulk_room)): the
    /// payload is copied once, by the kernel, instead of once more from a receive buffer.
    /// `None`: the connection is not streaming a large frame (read as usual); else what the read
    /// gave (bytes processed, the end of the stream, or an error) and the room it had.
    fn read_bulk(&mut self, slot: usize) -> Option<(io::Result<usize>, usize)> {
        let s = self.shard.slot_mut(slot)?;
        let room = s.conn.bulk_room()?;
        let room_len = room.len();
        let read = loop {
            match crate::sys::recv_uninit(&s.io.stream, room) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        if let Ok(n) = read {
            if n > 0 {
                {
                    let mut sink = self.io.turn.sink(&[]);
                    // SAFETY: `recv_uninit` wrote `n` bytes of the room, and nothing touched the
                    // connection since `bulk_room` gave it.
                    unsafe { self.shard.receive_bulk(slot, n, &mut sink, self.clock) };
                }
                self.send_output(slot, &[]);
            }
        }
        Some((read, room_len))
    }

    /// Sends the turn's output of the connection in `slot` (its ranges point into `input` and
    /// the session's retained message), lets the pending output adopt the message's buffer if
    /// its unsent end is all that is left, else gives the retained message back; then applies
    /// the shard's verdicts.
    fn send_output(&mut self, slot: usize, input: &[u8]) {
        let Some(s) = self.shard.slot_mut(slot) else {
            self.io.turn.clear();
            return;
        };
        let sent = if self.io.turn.is_empty() {
            Ok(())
        } else {
            let (pending, message) = s.conn.output_parts();
            self.io.backend.send_turn(
                slot,
                &mut s.io,
                &mut self.io.turn,
                pending,
                Sources { input, message },
            )
        };
        if let Some(head) = self.io.turn.take_adoption() {
            // The unsent end of an echo: the pending output keeps the message's own buffer.
            s.conn.adopt_retained(head, self.io.turn.cache());
        }
        s.conn.release_retained();
        match sent {
            Err(e) => self
                .shard
                .peer_gone(slot, Some(&e), &mut self.io, self.clock),
            Ok(()) => self.shard.after_output(slot, &mut self.io, self.clock),
        }
    }
}

fn read_once(stream: &mut mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match crate::sys::recv_nonblocking(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
