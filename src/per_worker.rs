//! Handlers built once per worker: state without `Sync`, without locks.
//!
//! A [`Handler`] is shared by every worker, so whatever it mutates must be `Sync` (atomics,
//! locks). In the shard-per-core style the state of a worker belongs to that worker alone: a
//! [`WorkerHandler`] is built by a factory on each worker thread, the first time that worker
//! needs it, and is called with `&mut self` from that thread only. [`PerWorker`] turns such a
//! factory into a `Handler` (so middleware stacks on it as on any other). The per-worker value
//! lives in the worker thread's thread-local storage, keyed by the `PerWorker` it belongs to:
//! one lookup in a short list per callback, no lock, no atomic read-modify-write.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::handler::{CloseCode, Ctx, Handler, Message, Upgrade, UpgradeCtx, UpgradeRequest};

/// A handler of one worker's sessions, called from that worker's thread only, with `&mut self`.
pub trait WorkerHandler: 'static {
    /// See [`Handler::on_upgrade`].
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        let _ = (request, ctx);
        Upgrade::accept()
    }
    /// See [`Handler::on_open`].
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// See [`Handler::on_message`].
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>);
    /// See [`Handler::on_drain`].
    fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// See [`Handler::on_close`].
    fn on_close(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        let _ = (ctx, code, reason);
    }
}

/// A [`Handler`] whose state is one [`WorkerHandler`] per worker, built by `factory(worker)` on
/// that worker's thread (see the module documentation).
pub struct PerWorker<F> {
    factory: F,
    key: u64,
}

impl<F, W> PerWorker<F>
where
    F: Fn(usize) -> W + Send + Sync + 'static,
    W: WorkerHandler,
{
    /// Handlers made by `factory`, which gets the worker's index.
    pub fn new(factory: F) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        PerWorker {
            factory,
            key: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs `f` on this thread's handler, building it first if needed. A callback that calls
    /// back into the same handler (it cannot, through the server's API) would find it busy and
    /// be skipped rather than alias it.
    fn with<R>(&self, worker: usize, f: impl FnOnce(&mut W) -> R) -> Option<R> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let at = match local.iter().position(|(k, _)| *k == self.key) {
                Some(at) => at,
                None => {
                    local.push((self.key, Some(Box::new((self.factory)(worker)))));
                    local.len() - 1
                }
            };
            // Taken out while it runs, so that the thread-local is not borrowed during `f`.
            let mut handler = local[at].1.take()?;
            drop(local);
            let r = handler.downcast_mut::<W>().map(f);
            LOCAL.with(|local| {
                if let Some(entry) = local.borrow_mut().iter_mut().find(|(k, _)| *k == self.key) {
                    entry.1 = Some(handler);
                }
            });
            r
        })
    }
}

/// One `PerWorker`'s handler on this thread (`None` while it runs), by the `PerWorker`'s key.
type Entry = (u64, Option<Box<dyn Any>>);

thread_local! {
    /// This thread's per-worker handlers.
    static LOCAL: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

impl<F, W> Handler for PerWorker<F>
where
    F: Fn(usize) -> W + Send + Sync + 'static,
    W: WorkerHandler,
{
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        let worker = hioload_wsproto::shard::shard_of(ctx.session_id());
        self.with(worker, |h| h.on_upgrade(request, ctx))
            .unwrap_or_else(Upgrade::accept)
    }
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        self.with(ctx.worker(), |h| h.on_open(ctx));
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        self.with(ctx.worker(), |h| h.on_message(ctx, msg));
    }
    fn on_drain(&self, ctx: &mut Ctx<'_>) {
        self.with(ctx.worker(), |h| h.on_drain(ctx));
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        self.with(ctx.worker(), |h| h.on_close(ctx, code, reason));
    }
}
