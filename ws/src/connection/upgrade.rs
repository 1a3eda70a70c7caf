//! The application's say on an upgrade: accept (with a subprotocol and the session's initial
//! state), refuse (with a status, headers and a body), or decide later from any thread.
//!
//! [`App::on_upgrade`](super::App::on_upgrade) runs on the shard's thread after the request
//! passed the server's own checks (valid handshake, routed path, allowed Origin). A deferred
//! decision is completed through a [`PendingUpgrade`], which queues it in the owning shard's
//! inbox (like a send by id); the connection waits in its handshake meanwhile, with the
//! handshake deadline still running. If the connection is gone when the decision arrives (the
//! client left, the deadline passed, the server stopped), the decision is dropped, and
//! [`PendingUpgrade::is_gone`] / the completion's error say so.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::shard::{Command, DeliverError, ShardSet};

/// A session's application state: any `Send` value, reachable from every callback of that
/// session, dropped after its `on_close`.
pub type SessionState = Box<dyn Any + Send>;

/// Accepting an upgrade.
#[derive(Default)]
pub struct Accept {
    /// The subprotocol to answer with: one of the client's offers (an unoffered one is ignored).
    /// `None`: the server's policy picks (by default none).
    pub protocol: Option<String>,
    /// The session's initial state.
    pub state: Option<SessionState>,
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accept")
            .field("protocol", &self.protocol)
            .field("state", &self.state.is_some())
            .finish()
    }
}

impl Accept {
    /// Accept as the server's policy says (no state).
    pub fn new() -> Self {
        Accept::default()
    }
    /// With this subprotocol (it must be one the client offered).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }
    /// With this initial user data (the session's application state).
    pub fn user_data<T: Any + Send>(mut self, data: T) -> Self {
        self.state = Some(Box::new(data));
        self
    }
}

/// Refusing an upgrade: the HTTP answer, then the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Status code (401, 403, 409, 429, …).
    pub status: u16,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, …); `Connection` and `Content-Length`
    /// are written by the server.
    pub headers: Vec<(String, String)>,
    /// A short body.
    pub body: Vec<u8>,
}

impl Rejection {
    /// A refusal with `status` and a text `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Rejection {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    /// With one more header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What [`App::on_upgrade`](super::App::on_upgrade) decided.
#[derive(Debug)]
pub enum Upgrade {
    /// Switch protocols now.
    Accept(Accept),
    /// Answer with this HTTP response and close.
    Reject(Rejection),
    /// The application called [`UpgradeCtx::defer`] and completes the decision later.
    Deferred,
}

impl Upgrade {
    /// Accept as the server's policy says, without state (what a hook that does not care says).
    pub fn accept() -> Upgrade {
        Upgrade::Accept(Accept::default())
    }
}

/// What an upgrade hook may do besides deciding: defer.
pub struct UpgradeCtx<'a> {
    pub(crate) id: u64,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) set: &'a Arc<ShardSet>,
    pub(crate) deferred: Option<Arc<AtomicU8>>,
}

impl UpgradeCtx<'_> {
    /// The id the session will have if accepted.
    pub fn session_id(&self) -> u64 {
        self.id
    }
    /// The client's address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.peer
    }
    /// Defers the decision: return [`Upgrade::Deferred`] and complete it later, from any thread,
    /// through the returned handle (within the handshake deadline).
    pub fn defer(&mut self) -> PendingUpgrade {
        let status = self
            .deferred
            .get_or_insert_with(|| Arc::new(AtomicU8::new(WAITING)))
            .clone();
        PendingUpgrade {
            id: self.id,
            set: self.set.clone(),
            status,
        }
    }
}

const WAITING: u8 = 0;
const DECIDED: u8 = 1;
const GONE: u8 = 2;

/// A deferred upgrade decision, to complete once from any thread.
#[derive(Debug)]
pub struct PendingUpgrade {
    id: u64,
    set: Arc<ShardSet>,
    status: Arc<AtomicU8>,
}

/// Why a deferred decision could not be delivered.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UpgradeError {
    /// The connection is gone (the client left, the handshake deadline passed, the server
    /// stopped), or a decision was already made.
    Gone,
    /// The owning shard's inbox is full: try again shortly.
    Busy,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpgradeError::Gone => "the connection waiting for this upgrade is gone",
            UpgradeError::Busy => "the worker's inbox is full",
        })
    }
}

impl std::error::Error for UpgradeError {}

impl PendingUpgrade {
    /// The id of the session-to-be.
    pub fn session_id(&self) -> u64 {
        self.id
    }
    /// Whether the connection is gone already (a decision would be dropped).
    pub fn is_gone(&self) -> bool {
        self.status.load(Ordering::Acquire) == GONE
    }
    /// Accepts the upgrade.
    pub fn accept(self, accept: Accept) -> Result<(), UpgradeError> {
        self.complete(Upgrade::Accept(accept))
    }
    /// Refuses the upgrade.
    pub fn reject(self, rejection: Rejection) -> Result<(), UpgradeError> {
        self.complete(Upgrade::Reject(rejection))
    }

    fn complete(self, decision: Upgrade) -> Result<(), UpgradeError> {
        if self
            .status
            .compare_exchange(WAITING, DECIDED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(UpgradeError::Gone);
        }
        let cmd = Command::Upgrade(self.id, Box::new(decision));
        match self.set.push(crate::shard::shard_of(self.id), cmd, None) {
            Ok(()) => Ok(()),
            Err(DeliverError::Full) => {
                // Not delivered: the decision may be tried again.
                self.status.store(WAITING, Ordering::Release);
                Err(UpgradeError::Busy)
            }
            Err(_) => Err(UpgradeError::Gone), // no such shard, or the server stops
        }
    }
}

/// The connection's side of a deferred upgrade: what the 101 needs, and the flag the
/// application's handle reads. Dropped (the flag set to gone) if the connection ends first.
#[derive(Debug)]
pub(crate) struct Awaiting {
    pub accept: [u8; 28],
    /// What the server's policy picked, used unless the decision names a protocol.
    pub protocol: Option<String>,
    pub extensions: Option<&'static str>,
    /// permessage-deflate as negotiated (answered and enabled if the upgrade is accepted).
    pub deflate: Option<crate::deflate::Agreed>,
    /// The protocols the client offered (to validate the decision's choice).
    pub offered: String,
    pub status: Arc<AtomicU8>,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        // Unless the application decided already: the connection went away while it was
        // deciding, and its handle says so.
        let _ = self
            .status
            .compare_exchange(WAITING, GONE, Ordering::AcqRel, Ordering::Acquire);
    }
}
