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

/// Reads per connection per turn before others get their turn.
const READ_ROUNDS: usize = 4;

impl<A: hioload_wsproto::App, K: Backend<P::Buf>, P: RecvBuffers> Worker<A, K, P> {
    /// Reads with `recv` system calls until the socket is drained, the read budget is spent, or
    /// backpressure pauses the connection, into the worker's input buffer behind the held
    /// bytes: the poll backend's way to read, and the io_uring backend's when its ring has no
    /// buffer left.
    pub(super) fn read_direct(&mut self, slot: usize) {
        for _ in 0..READ_ROUNDS {
            let Some(s) = self.shard.slot_mut(slot) else {
                return;
            };
            if s.conn.read_paused() {
                return;
            }
            let mut input = std::mem::take(&mut self.input);
            let held = s.conn.held_len();
            let space = input.len() - held;
            let read = read_once(&mut s.io.stream, &mut input[held..]);
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
        let Some(s) = self.shard.slot_mut(slot) else {
            self.io.turn.clear();
            return;
        };
        let sent = if self.io.turn.is_empty() {
            Ok(())
        } else {
            self.io.backend.send_turn(
                slot,
                &mut s.io,
                &mut self.io.turn,
                s.conn.pending_mut(),
                input,
            )
        };
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
