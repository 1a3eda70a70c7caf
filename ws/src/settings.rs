//! What a running server may change (hot reload), as plain data: protocol limits, timeouts and
//! the bounds on what one connection may keep queued for a slow peer.
//!
//! Every shard holds its own `Arc<Settings>` and swaps it at one defined point, the start of a
//! loop turn, when the shared epoch says a reload happened (see [`crate::shard`]); so a setting
//! lowered by a reload governs the next message on either data path.

use std::time::Duration;

use crate::config::Limits;

/// Bounds on what one connection may keep queued for a peer that does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backpressure {
    /// Pending-output bytes above which the connection is not read until it drains, and its
    /// backpressure clock runs (default 1 MiB).
    pub soft_bytes: usize,
    /// Pending-output bytes above which the connection is closed with 1008 at the next tick,
    /// whatever the clock says (default 32 MiB: twice the largest default message, so that the
    /// echo of a whole 16 MiB message fits).
    pub hard_bytes: usize,
    /// How long a connection may stay above `soft_bytes` before it is closed with 1008
    /// (default 10 s).
    pub timeout: Duration,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            soft_bytes: 1 << 20,
            hard_bytes: 32 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The settings a running server can change, picked up by each shard at its next loop turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Protocol limits handed to every session (open sessions get new ones on reload).
    /// `inplace_frame_max` and `max_head_bytes` size receive buffers: they are fixed at start.
    pub limits: Limits,
    /// Pending-output bounds.
    pub backpressure: Backpressure,
    /// Time a client has to send a complete upgrade request (default 10 s).
    pub handshake_timeout: Duration,
    /// Time a peer has to answer a Close we sent, and to drain and close after the close
    /// handshake (default 5 s).
    pub close_timeout: Duration,
    /// On stop, time given to sessions to finish their close handshake (default 5 s).
    pub shutdown_grace: Duration,
    /// A session that sent nothing for this long gets a ping (default 60 s; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// After that ping, time the peer has to send anything (its pong) before the connection is
    /// dropped and the session reported closed with 1006 (default 30 s).
    pub pong_timeout: Duration,
    /// Time a peer has to complete a message (or a frame) once its first byte arrived, however
    /// slowly the rest trickles in; then Close 1008 (default 30 s: a 16 MiB message needs at
    /// least ~4.5 Mbit/s).
    pub message_timeout: Duration,
    /// Most connections the server holds at once, in any phase; more are refused (reset) as
    /// soon as they are accepted, counted in `connections_refused` (default 100,000).
    pub max_connections: usize,
    /// Most bytes all connections together may hold in held input, message assembly and
    /// pending output; over it, the largest holders are closed (1009 for input, 1008 for
    /// output), counted in `budget_closes` (default 1 GiB).
    pub memory_budget: usize,
    /// permessage-deflate: how offers are answered (default: shared, no state per connection;
    /// see [`crate::deflate`]). A reload applies to sessions opened after it.
    pub deflate: crate::deflate::DeflateConfig,
    /// The certificates TLS listeners serve (`None`: no TLS). A reload swaps them for
    /// handshakes that start after it; open sessions keep theirs.
    pub tls: Option<crate::tls::TlsAcceptor>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            backpressure: Backpressure::default(),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(60)),
            pong_timeout: Duration::from_secs(30),
            message_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            memory_budget: 1 << 30,
            deflate: crate::deflate::DeflateConfig::default(),
            tls: None,
        }
    }
}

impl Settings {
    /// `new` as a reload of `self`: the two limits that size receive buffers keep their running
    /// values (the facade refuses reloads that change them and says a restart is needed).
    pub fn reloaded(&self, new: &Settings) -> Settings {
        let mut next = new.clone();
        next.limits.inplace_frame_max = self.limits.inplace_frame_max;
        next.limits.max_head_bytes = self.limits.max_head_bytes;
        next
    }
}
