//! One read's worth of work, the same on both backends: bytes in a receive buffer go through the
//! shard (handshake or frames, parsed in place; the application's replies recorded in the turn
//! output), the turn's output goes to the backend to send, and what the protocol left
//! unconsumed (a partial head or frame) stays at the start of the buffer, which the connection
//! keeps until its next read.

use std::io;

use hioload_wsproto::{App, CloseCode};
use tracing::error;

use super::{Backend, Worker};
use crate::pool::{RecvBuffer, RecvBuffers};

/// Reads per connection per turn before others get their turn.
const READ_ROUNDS: usize = 4;

impl<A: App, K: Backend<P::Buf>, P: RecvBuffers> Worker<A, K, P> {
    /// Reads with `recv` system calls until the socket is drained, the read budget is spent, or
    /// backpressure pauses the connection: the poll backend's way to read, and the io_uring
    /// backend's when its ring has no buffer left (then into the connection's own buffer).
    pub(super) fn read_direct(&mut self, slot: usize) {
        for _ in 0..READ_ROUNDS {
            let Some(s) = self.shard.slot_mut(slot) else {
                return;
            };
            if s.conn.read_paused() || s.io.starved {
                return;
            }
            let mut buf = match s.io.rbuf.take() {
                Some(buf) => buf,
                None => match self.io.pool.take() {
                    Some(buf) => buf,
                    None => {
                        // No buffer to be had: stop reading this one, retry at the next tick.
                        s.io.starved = true;
                        self.io.starved.push((slot, s.io.serial));
                        self.shard.counters().buffer_waits.add(1);
                        return;
                    }
                },
            };
            let held = s.io.held;
            let space = buf.as_slice().len() - held;
            match read_once(&mut s.io.stream, &mut buf.as_mut_slice()[held..]) {
                Ok(0) => {
                    s.io.held = 0;
                    self.io.give_buf(buf);
                    self.shard.peer_gone(slot, None, &mut self.io, self.clock);
                    return;
                }
                Ok(n) => {
                    self.process_input(slot, buf, held + n);
                    // A short read emptied the socket, and anything arriving later (data, FIN,
                    // RST) brings a new edge; unless the FIN or RST is already here: then read
                    // on until the read reports it.
                    let hangup = self.shard.slot(slot).map_or(true, |s| s.io.hangup);
                    if cfg!(target_os = "linux") && n < space && !hangup {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if held > 0 {
                        s.io.rbuf = Some(buf);
                    } else {
                        self.io.give_buf(buf);
                    }
                    return;
                }
                Err(e) => {
                    s.io.held = 0;
                    self.io.give_buf(buf);
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

    /// Runs the connection in `slot` over `buf[..filled]`, sends the turn's output, keeps what
    /// is unconsumed, and applies the shard's verdicts.
    pub(super) fn process_input(&mut self, slot: usize, mut buf: P::Buf, filled: usize) {
        let consumed = {
            let mut sink = self.io.turn.sink(buf.as_slice());
            self.shard.receive(
                slot,
                &mut buf.as_mut_slice()[..filled],
                &mut sink,
                self.clock,
            )
        };
        let Some(s) = self.shard.slot_mut(slot) else {
            self.io.turn.clear();
            self.io.give_buf(buf);
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
                buf.as_slice(),
            )
        };
        let kept = filled - consumed;
        let buf_len = buf.as_slice().len();
        if kept == 0 {
            s.io.held = 0;
            self.io.give_buf(buf);
        } else {
            buf.as_mut_slice().copy_within(consumed..filled, 0);
            s.io.held = kept;
            s.io.rbuf = Some(buf);
        }
        if let Err(e) = sent {
            self.shard
                .peer_gone(slot, Some(&e), &mut self.io, self.clock);
            return;
        }
        if kept == buf_len {
            // The protocol layer must consume whole frames larger than `inplace_frame_max`.
            error!(peer = %s.conn.peer(), "receive buffer full of unconsumed input ({kept} bytes); closing");
            self.shard.end(
                slot,
                CloseCode::INTERNAL_ERROR,
                "receive buffer overflow",
                &mut self.io,
                self.clock,
            );
            return;
        }
        self.shard.after_output(slot, &mut self.io, self.clock);
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
