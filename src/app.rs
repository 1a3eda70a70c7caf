//! The facade's application, as the session layer sees it: one adapter, used by both data
//! paths, from the session layer's [`App`] to the user's [`Handler`] and [`HttpHandler`].
//!
//! It routes only the configured path to the upgrade, answers the control plane's paths (only
//! with `control_on_main`: otherwise they are the `HttpHandler`'s like any other path), keeps
//! the session registry, and hands each callback a [`Ctx`] over the session. Handler panics are caught by the chain's `Recovery`
//! layer (the server adds one when the chain has none), the only place they are caught; an HTTP
//! handler's panic is caught here and answered with 500.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use hioload_wsproto::handshake::UpgradeRequest;
use hioload_wsproto::{
    App, CloseCode, HttpRequest, Message, SessionRef, Upgrade, UpgradeCtx, UpgradePolicy,
};
use tracing::error;

use crate::control::{Control, Listener};
use crate::handler::{Ctx, Handler};
use crate::http::{write_response, HttpHandler};
use crate::registry::SessionInfo;

/// Upgrades only the configured path (the query string is ignored).
pub(crate) struct PathRoute {
    pub(crate) path: String,
}

impl UpgradePolicy for PathRoute {
    fn route(&self, target: &str) -> bool {
        target.split('?').next() == Some(self.path.as_str())
    }
}

/// The user's handlers behind the session layer's [`App`] (see the module documentation).
pub(crate) struct HandlerApp {
    pub handler: Arc<dyn Handler>,
    pub http: Arc<dyn HttpHandler>,
    pub route: PathRoute,
    pub control: Arc<Control>,
    /// Answer `/metrics` and `/debug/probes` on the WebSocket listener (`control_on_main`).
    pub serve_control: bool,
}

impl App for HandlerApp {
    fn upgrade_policy(&self) -> &dyn UpgradePolicy {
        &self.route
    }

    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>) {
        if self.serve_control && self.control.answer(request, response, Listener::Main) {
            return;
        }
        if catch_unwind(AssertUnwindSafe(|| {
            self.http.handle(request, peer, response)
        }))
        .is_err()
        {
            error!(%peer, path = request.path, "HTTP handler panicked; answering 500");
            response.clear();
            write_response(
                response,
                500,
                "Internal Server Error",
                "text/plain; charset=utf-8",
                b"internal error\n",
            );
        }
    }

    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        self.handler.on_upgrade(request, ctx)
    }

    fn on_drain(&self, session: &mut SessionRef<'_>) {
        self.handler.on_drain(&mut Ctx::new(session));
    }

    fn on_open(&self, session: &mut SessionRef<'_>) {
        self.control.registry.insert(SessionInfo {
            id: session.id(),
            peer: session.peer_addr(),
            worker: session.shard(),
        });
        self.handler.on_open(&mut Ctx::new(session));
    }

    fn on_message(&self, session: &mut SessionRef<'_>, msg: Message<'_>) {
        self.handler.on_message(&mut Ctx::new(session), msg);
    }

    fn on_close(&self, session: &mut SessionRef<'_>, code: CloseCode, reason: &str) {
        self.control.registry.remove(session.id());
        self.handler.on_close(&mut Ctx::new(session), code, reason);
        // Its subscriptions end with the turn (and at the latest when its slot is freed).
        session.unsubscribe_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_path_is_upgraded() {
        let r = PathRoute { path: "/ws".into() };
        assert!(r.route("/ws"));
        assert!(r.route("/ws?token=1"));
        assert!(!r.route("/ws/"));
        assert!(!r.route("/"));
        assert!(!r.route("/wsx"));
    }
}
