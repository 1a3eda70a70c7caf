//! [`Recovery`]: a panicking handler costs its own session, nothing else.
//!
//! Each callback of the layers below runs under `catch_unwind`. A panic is logged (with the
//! session id and peer), counted (`hioload_handler_panics_total`), and the session is closed with
//! 1011 (Internal Error); the worker goes on with its other sessions. A panic in `on_close` is
//! logged and counted only (the session is already over).
//!
//! This is the only place panics are caught: the server adds a `Recovery` as the outermost layer
//! when the handler chain has none ([`crate::Handler::recovers_panics`]), so there is always
//! exactly one, and the transport never sees a handler panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::error;

use super::Middleware;
use crate::handler::{
    CloseCode, Ctx, Handler, Message, Rejection, Upgrade, UpgradeCtx, UpgradeRequest,
};

/// Catches handler panics: closes the session with 1011, logs and counts.
#[derive(Debug, Default)]
pub struct Recovery {
    panics: AtomicU64,
}

impl Recovery {
    /// The recovery layer.
    pub fn new() -> Recovery {
        Recovery::default()
    }

    /// Panics caught so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    fn guard(&self, ctx: &mut Ctx<'_>, what: &str, call: impl FnOnce(&mut Ctx<'_>)) {
        if catch_unwind(AssertUnwindSafe(|| call(&mut *ctx))).is_err() {
            // Panics are rare: a shared counter is fine here.
            self.panics.fetch_add(1, Ordering::Relaxed);
            let (id, peer) = (ctx.session_id(), ctx.peer_addr());
            if what == "on_close" {
                error!(session = id, %peer, "handler panicked in on_close");
            } else {
                error!(session = id, %peer, "handler panicked in {what}; closing the session with 1011");
                let _ = ctx.close(CloseCode::INTERNAL_ERROR, "internal error");
            }
        }
    }
}

impl Middleware for Recovery {
    fn on_upgrade(
        &self,
        request: &UpgradeRequest<'_>,
        ctx: &mut UpgradeCtx<'_>,
        next: &dyn Handler,
    ) -> Upgrade {
        match catch_unwind(AssertUnwindSafe(|| next.on_upgrade(request, &mut *ctx))) {
            Ok(decision) => decision,
            Err(_) => {
                self.panics.fetch_add(1, Ordering::Relaxed);
                error!(peer = %ctx.peer_addr(), path = request.path, "handler panicked in on_upgrade; answering 500");
                Upgrade::Reject(Rejection::new(500, "internal error\n"))
            }
        }
    }
    fn on_drain(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        self.guard(ctx, "on_drain", |ctx| next.on_drain(ctx))
    }
    fn on_open(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        self.guard(ctx, "on_open", |ctx| next.on_open(ctx))
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        self.guard(ctx, "on_message", |ctx| next.on_message(ctx, msg))
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str, next: &dyn Handler) {
        self.guard(ctx, "on_close", |ctx| next.on_close(ctx, code, reason))
    }
    fn write_metrics(&self, out: &mut String) {
        crate::control::prometheus::counter(
            out,
            "hioload_handler_panics_total",
            "Handler panics caught by Recovery (each closed its session with 1011).",
            self.panics(),
        );
    }
    fn recovers_panics(&self) -> bool {
        true
    }
}
