//! Middleware: layers that wrap any [`Handler`] and see every session event on its way in.
//!
//! A [`Middleware`] gets each callback together with `next`, the handler it wraps, and decides
//! what to do around the call (time it, log it, catch its panic, filter it, answer it itself).
//! [`HandlerExt::with`] stacks them: `Echo.with(Metrics::new()).with(Recovery::new())
//! .with(Logging::new())` is a handler whose outermost layer is `Logging`. Layers are composed
//! statically (`Layer<M, H>` is a plain struct), so a chain costs one virtual call per layer and
//! nothing else; the built-in ones allocate nothing per message and take no lock.
//!
//! Built in: [`Logging`] (a tracing span per session, events per message at debug),
//! [`Recovery`] (a panicking handler closes only its session, with 1011), [`Metrics`] (per-worker
//! counters and a handler-latency histogram, rendered at `/metrics`). The server always runs
//! handlers under a `Recovery`: if the chain has none, it adds one as the outermost layer.

mod logging;
mod metrics;
mod recovery;

pub use logging::Logging;
pub use metrics::{Metrics, MetricsSnapshot};
pub use recovery::Recovery;

use crate::handler::{CloseCode, Ctx, Handler, Message, Upgrade, UpgradeCtx, UpgradeRequest};

/// One layer around a handler. Every method has a pass-through default.
pub trait Middleware: Send + Sync + 'static {
    /// See [`Handler::on_upgrade`]; call `next.on_upgrade(request, ctx)` to go on.
    fn on_upgrade(
        &self,
        request: &UpgradeRequest<'_>,
        ctx: &mut UpgradeCtx<'_>,
        next: &dyn Handler,
    ) -> Upgrade {
        next.on_upgrade(request, ctx)
    }
    /// See [`Handler::on_drain`]; call `next.on_drain(ctx)` to go on.
    fn on_drain(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        next.on_drain(ctx)
    }
    /// See [`Handler::on_open`]; call `next.on_open(ctx)` to go on.
    fn on_open(&self, ctx: &mut Ctx<'_>, next: &dyn Handler) {
        next.on_open(ctx)
    }
    /// See [`Handler::on_message`]; call `next.on_message(ctx, msg)` to go on.
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        next.on_message(ctx, msg)
    }
    /// See [`Handler::on_close`]; call `next.on_close(ctx, code, reason)` to go on.
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str, next: &dyn Handler) {
        next.on_close(ctx, code, reason)
    }
    /// See [`Handler::on_start`].
    fn on_start(&self, workers: usize) {
        let _ = workers;
    }
    /// See [`Handler::write_metrics`].
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }
    /// Whether this layer catches panics of the layers below it.
    fn recovers_panics(&self) -> bool {
        false
    }
}

/// A handler wrapped in a middleware: built by [`HandlerExt::with`].
pub struct Layer<M, H> {
    middleware: M,
    inner: H,
}

impl<M, H> Layer<M, H> {
    /// The middleware of this layer.
    pub fn middleware(&self) -> &M {
        &self.middleware
    }
    /// The handler it wraps.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<M: Middleware, H: Handler> Handler for Layer<M, H> {
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        self.middleware.on_upgrade(request, ctx, &self.inner)
    }
    fn on_drain(&self, ctx: &mut Ctx<'_>) {
        self.middleware.on_drain(ctx, &self.inner)
    }
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        self.middleware.on_open(ctx, &self.inner)
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        self.middleware.on_message(ctx, msg, &self.inner)
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        self.middleware.on_close(ctx, code, reason, &self.inner)
    }
    fn on_start(&self, workers: usize) {
        self.middleware.on_start(workers);
        self.inner.on_start(workers);
    }
    fn write_metrics(&self, out: &mut String) {
        self.middleware.write_metrics(out);
        self.inner.write_metrics(out);
    }
    fn recovers_panics(&self) -> bool {
        self.middleware.recovers_panics() || self.inner.recovers_panics()
    }
}

/// Stacking middleware on any handler.
pub trait HandlerExt: Handler + Sized {
    /// `self` wrapped in `middleware` (which becomes the outermost layer).
    fn with<M: Middleware>(self, middleware: M) -> Layer<M, Self> {
        Layer {
            middleware,
            inner: self,
        }
    }
}

impl<H: Handler> HandlerExt for H {}
