//! The readiness backend: mio's poll (epoll on Linux, kqueue on BSD/macOS, IOCP on Windows).
//! A readable edge means `recv` into a pooled buffer now; a turn's output leaves with one
//! vectored `sendmsg` at the end of the read; what the kernel does not take waits in the
//! connection's pending output for the writable edge.

use std::io;

use hioload_wsproto::{App, PendingOutput};
use mio::net::TcpStream;
use mio::Interest;
use tracing::error;

use super::{Backend, Socket, Worker};
use crate::pool::{RecvBuffer, RecvBuffers};
use crate::turn::{Sources, TurnOutput};

/// The readiness backend: it keeps no state of its own.
#[derive(Debug, Default)]
pub(crate) struct PollBackend;

impl<B: RecvBuffer> Backend<B> for PollBackend {
    type Conn = ();
    const INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

    fn prepare(_stream: &TcpStream) -> io::Result<()> {
        Ok(())
    }

    fn want_input(
        &mut self,
        _slot: usize,
        _sock: &mut Socket<B, ()>,
        _bulk: bool,
    ) -> io::Result<bool> {
        Ok(true)
    }

    fn take_back(&mut self, buf: B) -> Option<B> {
        Some(buf)
    }

    fn send_in_flight(_conn: &()) -> bool {
        false
    }

    fn send_turn(
        &mut self,
        _slot: usize,
        sock: &mut Socket<B, ()>,
        turn: &mut TurnOutput,
        pending: &mut PendingOutput,
        from: Sources<'_>,
    ) -> io::Result<()> {
        turn.flush(&sock.stream, pending, from).map(|_| ())
    }

    fn release(&mut self, _slot: usize, stream: TcpStream, _conn: ()) {
        drop(stream);
    }

    fn run<A: App, P: RecvBuffers<Buf = B>>(mut w: Worker<A, Self, P>) {
        loop {
            let timeout = w.poll_timeout();
            let mut events = w.events.take().expect("events are put back every turn");
            if let Err(e) = w.io.poll.poll(&mut events, timeout) {
                w.events = Some(events);
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(worker = w.io.index, "poll failed: {e}; the worker stops");
                break;
            }
            w.begin_turn(std::time::Instant::now());
            w.dispatch(&events);
            w.events = Some(events);
            if w.after_events() {
                break;
            }
        }
        w.close_all();
    }
}
