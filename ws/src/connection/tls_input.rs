//! Input of a TLS connection: records are decrypted into the thread's plaintext buffer, behind
//! the plaintext a partial frame or head left last time, and the connection runs over that as
//! over a plain read. A client that speaks plain HTTP to the TLS port gets a readable 400; one
//! whose records rustls refuses gets rustls's alert; both are counted and logged (debug level,
//! rate-limited), and the connection finishes (the answer goes out, then our FIN).

use std::cell::RefCell;
use std::time::Instant;

use tracing::{debug, warn};

use super::{App, Connection, Phase, ShardContext, Wire};
use crate::close::CloseCode;
use crate::handshake::{self, HttpError};
use crate::log_limit::LogCause;
use crate::tls::{looks_like_plain_http, TlsWire};

/// Plaintext buffer a thread keeps between reads; a larger one is freed.
const PLAIN_RETAIN: usize = 256 << 10;

thread_local! {
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Connection {
    /// [`Connection::receive`] for a TLS connection: `input` is ciphertext, the held partial
    /// record first.
    pub(super) fn receive_tls<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        input: &mut [u8],
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        if !input.is_empty() {
            self.timers.last_input = now;
        }
        if matches!(self.phase, Phase::Finishing { .. } | Phase::Ended(_)) {
            return; // discarded, as on a plain connection
        }
        let mut tls = self.tls.take().expect("a TLS connection");
        if tls.has_failed() {
            self.tls = Some(tls);
            self.tls_failed("the TLS layer failed earlier", cx, now);
            return;
        }
        let fresh = tls.is_fresh();
        let mut plain = PLAIN.with(|p| std::mem::take(&mut *p.borrow_mut()));
        plain.clear();
        plain.extend_from_slice(self.held.as_slice());
        self.held.clear();
        let mut tls_wire = TlsWire::new(&mut tls, wire);
        let outcome = if fresh && looks_like_plain_http(input) {
            Err(None)
        } else {
            tls_wire
                .receive(input, &mut plain, &mut self.pending)
                .map_err(Some)
        };
        match outcome {
            Err(None) => {
                let err = HttpError {
                    status: 400,
                    reason: "this port speaks TLS: use wss:// (or https://)",
                };
                let mut response = [0u8; 256];
                let n = handshake::write_error_response(&err, &mut response);
                tls_wire.queue_unencrypted(&mut self.pending, &response[..n]);
            }
            Err(Some(_)) | Ok(_) => {}
        }
        let received = match outcome {
            Ok(received) => {
                if received.handshake_done {
                    cx.counters().tls_handshakes.add(1);
                    let (version, suite) = tls_wire.layer().describe();
                    debug!(peer = %self.peer, ?version, ?suite, "TLS handshake complete");
                }
                if !plain.is_empty() {
                    self.receive_plain(&mut plain, &mut tls_wire, cx, now);
                }
                Ok(received.peer_closed)
            }
            Err(None) => Err("plain HTTP on the TLS port".to_string()),
            Err(Some(failure)) => Err(failure.0),
        };
        let sealed = tls_wire.finish(&mut self.pending);
        self.tls = Some(tls);
        if plain.capacity() <= PLAIN_RETAIN {
            PLAIN.with(|p| *p.borrow_mut() = plain);
        }
        match (received, sealed) {
            (Err(why), _) => self.tls_failed(&why, cx, now),
            (Ok(_), Err(e)) => self.tls_broken(&e),
            (Ok(true), Ok(())) => {
                // close_notify: the peer sends nothing more (what follows it is not read); as
                // the end of its stream.
                if let Some(tls) = &mut self.tls {
                    tls.held_mut().clear();
                }
                self.peer_gone(None, cx, now);
            }
            (Ok(false), Ok(())) => {}
        }
    }

    /// The peer's TLS input was refused (the answer is queued): counted, logged at debug level
    /// (rate-limited), and the connection finishes; an open session is reported closed (1006).
    pub(super) fn tls_failed<A: App + ?Sized>(
        &mut self,
        why: &str,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        cx.counters().tls_failures.add(1);
        if cx.log.allow(LogCause::Protocol, now) {
            debug!(peer = %self.peer, "TLS: {why}; closing");
        }
        match self.phase {
            Phase::Open(_) => self.leave_open(cx, now, Some((CloseCode::ABNORMAL, "TLS failure"))),
            Phase::Handshake => {
                self.awaiting = None;
                self.finish(cx.settings, now);
            }
            Phase::Finishing { .. } | Phase::Ended(_) => {}
        }
    }

    /// Encryption failed (rustls's record limit, practically never): the layer refuses all
    /// further output, and the next input ends the connection through [`Connection::tls_failed`].
    pub(super) fn tls_broken(&mut self, e: &std::io::Error) {
        warn!(peer = %self.peer, session = self.id, "TLS output failed: {e}; closing");
    }
}
