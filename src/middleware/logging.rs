//! [`Logging`]: who connected, what they sent, how it ended, as `tracing` output.
//!
//! Each callback runs inside a span `session{id=… peer=…}`, so everything the handler logs
//! carries the session's id and peer address. Opens and closes are `info` events; each message
//! is a `debug` event (kind and length), inside a `debug` span. The span is re-entered per
//! callback rather than stored per session (that would need a map and an allocation per
//! session); with the same fields, log readers see one session. Below `debug`, per-message
//! logging costs a level check.

use tracing::{debug, debug_span, info, info_span};

use super::Middleware;
use crate::handler::{CloseCode, Ctx, Handler, Message};

/// Logs session opens and closes (info) and messages (debug).
#[derive(Clone, Copy, Debug, Default)]
pub struct Logging;

impl Logging {
    /// The logging layer.
    pub fn new() -> Logging {
        Logging
    }
}

impl Middleware for Logging {
    fn on_open(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        let span = info_span!("session", id = ctx.session_id(), peer = %ctx.peer_addr());
        let _entered = span.enter();
        info!(worker = ctx.worker(), "session opened");
        next.on_open(ctx);
    }

    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        let span = debug_span!("session", id = ctx.session_id(), peer = %ctx.peer_addr());
        let _entered = span.enter();
        let kind = match msg {
            Message::Text(_) => "text",
            Message::Binary(_) => "binary",
        };
        debug!(kind, len = msg.len(), "message");
        next.on_message(ctx, msg);
    }

    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str, next: &dyn Handler) {
        let span = info_span!("session", id = ctx.session_id(), peer = %ctx.peer_addr());
        let _entered = span.enter();
        info!(code = code.0, reason, "session closed");
        next.on_close(ctx, code, reason);
    }
}
