//! A chat room: every text message goes to everyone, with a custom handler under middleware.
//!
//! ```text
//! cargo run --example chat -- 127.0.0.1:9002 127.0.0.1:9003
//! wscat -c ws://127.0.0.1:9002/chat        (in several terminals)
//! curl http://127.0.0.1:9003/metrics       (messages, sessions, close codes, latency)
//! curl http://127.0.0.1:9003/debug/probes  (members, plus the built-in probes)
//! ```
//!
//! The second address (default `127.0.0.1:9003`) is the admin listener, where the control plane
//! is served: the chat port itself answers `/metrics` and `/debug/probes` with 404.
//!
//! Commands: `/nick NAME` renames you, `/msg ID TEXT` whispers to one member (by session id,
//! whichever worker it is on), `/who` lists the members; anything else is said to the room.
//!
//! Each member's name lives in its session (`Ctx::user_data`: owned by the session's worker, no
//! lock), so a message to the room takes no lock at all. The room's directory (names by id, for
//! `/who` and the `members` probe) is shared by the workers, and touched only when someone joins,
//! leaves or renames, or asks `/who`. Messages to the room go through `Ctx::broadcast`: one
//! copy of the text, queued on every worker's inbox, sent by each worker to its own sessions. The
//! stack around it: `TextOnly` (this example's own middleware: a binary message closes the
//! session with 1003), then the built-in `Metrics`, `Recovery` and `Logging`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hioload_ws::{
    CloseCode, Config, Ctx, Handler, HandlerExt, Logging, Message, Metrics, Middleware, Recovery,
    Server,
};

/// A member, kept in its session's user data.
struct Member {
    name: String,
}

/// The room's directory: member names by session id (joins, leaves, renames and `/who` only).
#[derive(Default)]
pub struct ChatRoom {
    directory: Mutex<HashMap<u64, String>>,
}

impl ChatRoom {
    fn directory(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members now.
    pub fn members(&self) -> usize {
        self.directory().len()
    }
}

/// The name in the session's user data.
fn name_of(ctx: &mut Ctx<'_>) -> String {
    let id = ctx.session_id();
    ctx.user_data::<Member>()
        .map_or_else(|| format!("guest-{id:x}"), |m| m.name.clone())
}

impl Handler for ChatRoom {
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let id = ctx.session_id();
        let name = format!("guest-{id:x}");
        ctx.set_user_data(Member { name: name.clone() });
        self.directory().insert(id, name.clone());
        let _ = ctx.send_text(&format!(
            "welcome {name} (your id is {id}); /nick, /msg, /who"
        ));
        let _ = ctx.broadcast(Message::Text(&format!("* {name} joined")));
    }

    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return; // TextOnly keeps binary messages away
        };
        let id = ctx.session_id();
        if let Some(nick) = text.strip_prefix("/nick ") {
            let nick = nick.trim().to_string();
            let old = name_of(ctx);
            ctx.set_user_data(Member { name: nick.clone() });
            self.directory().insert(id, nick.clone());
            let _ = ctx.broadcast(Message::Text(&format!("* {old} is now {nick}")));
        } else if let Some(rest) = text.strip_prefix("/msg ") {
            let Some((to, body)) = rest.split_once(' ') else {
                let _ = ctx.send_text("usage: /msg ID TEXT");
                return;
            };
            let line = format!("(private) {}: {body}", name_of(ctx));
            match to.parse() {
                Ok(to) => {
                    if let Err(e) = ctx.send_to(to, Message::Text(&line)) {
                        let _ = ctx.send_text(&format!("cannot reach {to}: {e}"));
                    }
                }
                Err(_) => {
                    let _ = ctx.send_text("usage: /msg ID TEXT (ID is a number)");
                }
            }
        } else if text == "/who" {
            let mut list: Vec<_> = self
                .directory()
                .iter()
                .map(|(id, n)| format!("{n} ({id})"))
                .collect();
            list.sort();
            let _ = ctx.send_text(&format!("members: {}", list.join(", ")));
        } else {
            // The room's hot path: the name from the session, one broadcast, no lock.
            let line = format!("{}: {text}", name_of(ctx));
            let _ = ctx.broadcast(Message::Text(&line));
        }
    }

    fn on_close(&self, ctx: &mut Ctx<'_>, _code: CloseCode, _reason: &str) {
        let name = name_of(ctx);
        self.directory().remove(&ctx.session_id());
        // This session can no longer send, but the others can be told.
        let _ = ctx.broadcast(Message::Text(&format!("* {name} left")));
    }
}

/// This example's own middleware: the chat speaks text; a binary message closes its session
/// with 1003 (unsupported data) before the room sees it.
pub struct TextOnly;

impl Middleware for TextOnly {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        match msg {
            Message::Text(_) => next.on_message(ctx, msg),
            Message::Binary(_) => {
                let _ = ctx.close(CloseCode(1003), "this chat takes text only");
            }
        }
    }
}

/// The chat server on `cfg` (path `/chat`), with its `members` probe.
pub fn chat_server(mut cfg: Config) -> Result<Server, hioload_ws::Error> {
    cfg.path = "/chat".to_string();
    let room = Arc::new(ChatRoom::default());
    let handler = room
        .clone()
        .with(TextOnly)
        .with(Metrics::new())
        .with(Recovery::new())
        .with(Logging::new());
    let server = Server::new(cfg)?.with_handler(handler);
    server.register_probe("members", move || room.members());
    Ok(server)
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
        .unwrap_or_else(|| "127.0.0.1:9002".to_string())
        .parse()?;
    let admin = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:9003".to_string())
        .parse()?;
    let server = chat_server(Config {
        listen,
        admin_listen: Some(admin),
        num_workers: 2,
        ..Config::default()
    })?;
    server.start()?;
    let addr = server.local_addr().expect("started");
    let admin = server.admin_addr().expect("started");
    println!("chat room on ws://{addr}/chat; metrics at http://{admin}/metrics; Ctrl-C to stop");
    server.wait()?;
    Ok(())
}
