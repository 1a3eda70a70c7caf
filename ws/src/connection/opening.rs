//! The opening of a connection: the request head (parsed once its end is there), the server's
//! checks, the application's decision ([`App::on_upgrade`]: accept, refuse, or defer), the 101
//! and the start of the session — or the HTTP answer and the end.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::debug;

use super::upgrade::{Accept, Awaiting, Rejection, Upgrade, UpgradeCtx};
use super::{through_tls, App, Connection, Phase, ShardContext, Wire};
use crate::deflate::{self, Agreed};
use crate::handshake::{self, HttpError, Parsed, UpgradeRequest};
use crate::pending::PendingOutput;
use crate::session::Session;

/// Where a request head leads.
enum Opening {
    /// Answered with an HTTP response: finish.
    Answered,
    /// 101 sent: the session starts, with this state and permessage-deflate as agreed; the
    /// head was this long.
    Open(usize, Option<super::SessionState>, Option<Agreed>),
    /// The application decides later; the head was this long.
    Deferred(usize),
}

impl Connection {
    /// Parses the request head; opens the session after a 101. Returns the bytes consumed.
    pub(super) fn handshake<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        input: &mut [u8],
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
        delivered: &mut bool,
    ) -> usize {
        if self.awaiting.is_some() {
            // The application is deciding: what the client sends meanwhile waits.
            return 0;
        }
        let peer = self.peer;
        // Incremental: a head is parsed once its end is there (or it is over the limit), so a
        // head that trickles in is searched once, not re-parsed from its start on every read.
        // (The first read is always parsed: garbage is refused at once.)
        let from = (self.head_scanned as usize).saturating_sub(2);
        if self.head_scanned > 0
            && input.len() <= cx.settings.limits.max_head_bytes
            && !may_end_head(&input[from..])
        {
            self.head_scanned = input.len().min(u32::MAX as usize) as u32;
            return 0;
        }
        let opening = match handshake::parse_request(input, &cx.settings.limits) {
            // Heads over `max_head_bytes` are refused (431), so what waits stays bounded.
            Parsed::Partial => {
                self.head_scanned = input.len().min(u32::MAX as usize) as u32;
                return 0;
            }
            Parsed::Reject(err) => {
                refuse(wire, &mut self.pending, peer, &err);
                Opening::Answered
            }
            Parsed::Http(req) => {
                cx.http.clear();
                cx.app.on_http(&req, peer, cx.http);
                debug!(%peer, method = req.method, path = req.path, "plain HTTP request answered");
                wire.queue_bytes(&mut self.pending, cx.http);
                Opening::Answered
            }
            Parsed::Upgrade(req) => self.upgrade(&req, wire, cx),
        };
        let (head_len, state) = match opening {
            Opening::Answered => {
                // The peer has the close timeout to read the answer and close.
                self.finish(cx.settings, now);
                return input.len();
            }
            Opening::Deferred(head_len) => return head_len,
            Opening::Open(head_len, state, deflate) => (head_len, (state, deflate)),
        };
        self.open_session(state.0, state.1, wire, cx, now);
        if !self.parses_frames() {
            return input.len();
        }
        // Bytes after the head are already frames.
        if input.len() > head_len {
            head_len
                + self.feed(
                    super::Source::Bytes(&mut input[head_len..]),
                    wire,
                    cx,
                    now,
                    delivered,
                )
        } else {
            head_len
        }
    }

    /// A valid upgrade request: the server's checks, then the application's decision.
    fn upgrade<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        req: &UpgradeRequest<'_>,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
    ) -> Opening {
        let peer = self.peer;
        let negotiated = match handshake::negotiate(req, cx.app.upgrade_policy()) {
            Ok(n) => n,
            Err(err) => {
                debug!(%peer, path = req.path, status = err.status, "upgrade refused: {}", err.reason);
                refuse(wire, &mut self.pending, peer, &err);
                return Opening::Answered;
            }
        };
        let mut ucx = UpgradeCtx {
            id: self.id,
            peer,
            set: cx.set,
            deferred: None,
        };
        let decision = cx.app.on_upgrade(req, &mut ucx);
        let accept = handshake::accept_key(req.key);
        // permessage-deflate, unless the application's policy answered extensions itself.
        let deflate = match negotiated.extensions {
            Some(_) => None,
            None => deflate::negotiate(req.extensions, &cx.settings.deflate, |reason| {
                debug!(%peer, "permessage-deflate offer declined: {reason}");
            }),
        };
        let mut answer = [0u8; 128];
        let extensions = match &deflate {
            Some(agreed) => Some(deflate::answer(agreed, &mut answer)),
            None => negotiated.extensions,
        };
        match decision {
            Upgrade::Accept(a) => {
                let protocol = chosen(&a, req.protocols.unwrap_or(""), negotiated.protocol);
                if self.write_101(&accept, protocol, extensions, wire) {
                    Opening::Open(req.head_len, a.state, deflate)
                } else {
                    Opening::Answered
                }
            }
            Upgrade::Reject(r) => {
                self.write_rejection(&r, wire, cx);
                Opening::Answered
            }
            Upgrade::Deferred => match ucx.deferred {
                Some(status) => {
                    self.awaiting = Some(Box::new(Awaiting {
                        accept,
                        protocol: negotiated.protocol.map(str::to_string),
                        extensions: negotiated.extensions,
                        deflate,
                        offered: req.protocols.unwrap_or("").to_string(),
                        status,
                    }));
                    Opening::Deferred(req.head_len)
                }
                None => {
                    // Deferred without a handle to complete it: nobody could.
                    let err = HttpError {
                        status: 500,
                        reason: "upgrade deferred without UpgradeCtx::defer",
                    };
                    refuse(wire, &mut self.pending, peer, &err);
                    Opening::Answered
                }
            },
        }
    }

    /// The application's deferred decision arrived (through the shard's inbox). Ignored unless
    /// the connection still waits for it.
    pub fn complete_upgrade<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        decision: Upgrade,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        through_tls!(self, wire, |wire| self.upgrade_on(decision, wire, cx, now))
    }

    fn upgrade_on<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        decision: Upgrade,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        let Some(awaiting) = self.awaiting.take() else {
            return;
        };
        let opened = match decision {
            Upgrade::Accept(a) => {
                let protocol = chosen(&a, &awaiting.offered, awaiting.protocol.as_deref());
                let mut answer = [0u8; 128];
                let extensions = match &awaiting.deflate {
                    Some(agreed) => Some(deflate::answer(agreed, &mut answer)),
                    None => awaiting.extensions,
                };
                self.write_101(&awaiting.accept, protocol, extensions, wire)
                    .then_some(a.state)
            }
            Upgrade::Reject(r) => {
                self.write_rejection(&r, wire, cx);
                None
            }
            Upgrade::Deferred => {
                let err = HttpError {
                    status: 500,
                    reason: "a deferred upgrade cannot be deferred again",
                };
                refuse(wire, &mut self.pending, self.peer, &err);
                None
            }
        };
        match opened {
            Some(state) => self.open_session(state, awaiting.deflate, wire, cx, now),
            None => self.finish(cx.settings, now),
        }
    }

    /// Queues the 101; false (a 500 queued instead) if it does not fit.
    fn write_101<W: Wire + ?Sized>(
        &mut self,
        accept: &[u8; 28],
        protocol: Option<&str>,
        extensions: Option<&str>,
        wire: &mut W,
    ) -> bool {
        let mut response = [0u8; 512];
        let (n, written) = handshake::write_accept(accept, protocol, extensions, &mut response);
        wire.queue_bytes(&mut self.pending, &response[..n]);
        written.is_ok()
    }

    /// Queues the application's refusal.
    fn write_rejection<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        r: &Rejection,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
    ) {
        debug!(peer = %self.peer, status = r.status, "upgrade refused by the application");
        cx.http.clear();
        handshake::write_response(r.status, &r.headers, &r.body, cx.http);
        wire.queue_bytes(&mut self.pending, cx.http);
    }

    /// The 101 is out: the session starts with `state` and the application hears of it.
    fn open_session<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        state: Option<super::SessionState>,
        deflate: Option<Agreed>,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        let mut session = Session::new(cx.settings.limits.clone());
        if let Some(agreed) = deflate {
            session.enable_deflate(agreed, &cx.settings.deflate);
        }
        self.phase = Phase::Open(session);
        self.timers.deadline = None;
        self.data.user = state;
        cx.counters().sessions.add(1);
        self.lend(wire, cx, |app, session| app.on_open(session));
        self.settle(cx, now);
    }
}

/// The subprotocol to answer with: the application's pick if the client offered it, else the
/// server policy's.
fn chosen<'a>(a: &'a Accept, offered: &str, policy: Option<&'a str>) -> Option<&'a str> {
    match a.protocol.as_deref() {
        Some(p) if offered.split(',').map(str::trim).any(|o| o == p) => Some(p),
        _ => policy,
    }
}

/// Whether `bytes` hold the blank line that ends a request head (`\n\n` or `\n\r\n`, as
/// httparse accepts both).
fn may_end_head(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match bytes.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

/// Queues an HTTP error answer.
fn refuse<W: Wire + ?Sized>(
    wire: &mut W,
    pending: &mut PendingOutput,
    peer: SocketAddr,
    err: &HttpError,
) {
    debug!(%peer, status = err.status, "handshake rejected: {}", err.reason);
    let mut response = [0u8; 256];
    let n = handshake::write_error_response(err, &mut response);
    wire.queue_bytes(pending, &response[..n]);
}
