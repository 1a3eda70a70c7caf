//! An authenticated WebSocket service: the upgrade is checked before the 101.
//!
//! ```text
//! cargo run --example auth -- 127.0.0.1:9010
//! wscat -c 'ws://127.0.0.1:9010/ws?token=alice-secret'          (or -H 'Authorization: Bearer alice-secret')
//! wscat -c 'ws://127.0.0.1:9010/ws'                              -> 401 Unauthorized
//! wscat -c 'ws://127.0.0.1:9010/ws?token=alice-secret'  (again)  -> 409 Conflict
//! ```
//!
//! `Handler::on_upgrade` sees the request before the server switches protocols: a token in the
//! query string (`?token=…`) or an `Authorization: Bearer …` header names the user. Without a
//! known token the client gets `401` with `WWW-Authenticate: Bearer`; a user already connected
//! gets `409`. An accepted session carries its user in its user data (owned by its worker: no
//! lock when it is read on every message). The set of connected users is shared by the
//! workers and touched twice per session only: at its upgrade and at its close.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use hioload_ws::{
    Accept, CloseCode, Config, Ctx, Handler, HandlerExt, Logging, Message, Recovery, Rejection,
    Server, Upgrade, UpgradeCtx, UpgradeRequest,
};

/// The session's user.
pub struct User {
    pub name: String,
}

/// Tokens (a real service would ask its identity provider, possibly deferring the decision with
/// `UpgradeCtx::defer`) and the users online.
pub struct Auth {
    tokens: HashMap<String, String>,
    online: Mutex<HashSet<String>>,
}

impl Auth {
    /// `tokens`: token → user name.
    pub fn new(tokens: &[(&str, &str)]) -> Auth {
        Auth {
            tokens: tokens
                .iter()
                .map(|(t, u)| (t.to_string(), u.to_string()))
                .collect(),
            online: Mutex::new(HashSet::new()),
        }
    }

    fn online(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The token of a request: `?token=…`, else `Authorization: Bearer …`.
fn token<'a>(req: &UpgradeRequest<'a>) -> Option<&'a str> {
    req.query_param("token").or_else(|| {
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    })
}

impl Handler for Auth {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>, _ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        let Some(name) = token(req).and_then(|t| self.tokens.get(t)) else {
            return Upgrade::Reject(
                Rejection::new(401, "a valid token is required\n")
                    .header("WWW-Authenticate", "Bearer"),
            );
        };
        // Taken here, given back in on_close: an accepted upgrade always opens its session.
        if !self.online().insert(name.clone()) {
            return Upgrade::Reject(Rejection::new(
                409,
                format!("{name} is already connected\n"),
            ));
        }
        Upgrade::Accept(Accept::new().user_data(User { name: name.clone() }))
    }

    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let name = ctx.user_data::<User>().map(|u| u.name.clone());
        let _ = ctx.send_text(&format!("hello {}", name.unwrap_or_default()));
    }

    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            let _ = ctx.send(msg);
            return;
        };
        // The user, from the session: no lock, no map.
        let line = match ctx.user_data::<User>() {
            Some(user) => format!("{}: {text}", user.name),
            None => text.to_string(),
        };
        let _ = ctx.send_text(&line);
    }

    fn on_close(&self, ctx: &mut Ctx<'_>, _code: CloseCode, _reason: &str) {
        if let Some(user) = ctx.take_user_data::<User>() {
            self.online().remove(&user.name);
        }
    }
}

/// The service on `cfg` (path `/ws`), with two demo users.
pub fn auth_server(cfg: Config) -> Result<Server, hioload_ws::Error> {
    let auth = Auth::new(&[("alice-secret", "alice"), ("bob-secret", "bob")]);
    let handler = auth.with(Recovery::new()).with(Logging::new());
    Ok(Server::new(cfg)?.with_handler(handler))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9010".to_string())
        .parse()?;
    let server = auth_server(Config {
        listen,
        num_workers: 2,
        ..Config::default()
    })?;
    server.start()?;
    let addr = server.local_addr().expect("started");
    println!("ws://{addr}/ws?token=alice-secret (or bob-secret); Ctrl-C to stop");
    server.wait()?;
    Ok(())
}
