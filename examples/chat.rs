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
//! The handler keeps the members' names in its own map keyed by session id (callbacks of one
//! handler run on every worker). Messages to the room go through `Ctx::broadcast`: one copy
//! of the text, queued on every worker's inbox, sent by each worker to its own sessions. The
//! stack around it: `TextOnly` (this example's own middleware: a binary message closes the
//! session with 1003), then the built-in `Metrics`, `Recovery` and `Logging`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hioload_ws::{
    CloseCode, Config, Ctx, Handler, HandlerExt, Logging, Message, Metrics, Middleware, Recovery,
    Server,
};

/// The room: member names by session id.
#[derive(Default)]
pub struct ChatRoom {
    names: Mutex<HashMap<u64, String>>,
}

impl ChatRoom {
    fn name_of(&self, id: u64) -> String {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("guest-{id:x}"))
    }

    /// Members, sorted by id.
    pub fn members(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Handler for ChatRoom {
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let id = ctx.session_id();
        let name = format!("guest-{id:x}");
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, name.clone());
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
            let nick = nick.trim();
            let old = self.name_of(id);
            self.names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, nick.to_string());
            let _ = ctx.broadcast(Message::Text(&format!("* {old} is now {nick}")));
        } else if let Some(rest) = text.strip_prefix("/msg ") {
            let Some((to, body)) = rest.split_once(' ') else {
                let _ = ctx.send_text("usage: /msg ID TEXT");
                return;
            };
            let line = format!("(private) {}: {body}", self.name_of(id));
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
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            let mut list: Vec<_> = names.iter().map(|(id, n)| format!("{n} ({id})")).collect();
            list.sort();
            let _ = ctx.send_text(&format!("members: {}", list.join(", ")));
        } else {
            let _ = ctx.broadcast(Message::Text(&format!("{}: {text}", self.name_of(id))));
        }
    }

    fn on_close(&self, ctx: &mut Ctx<'_>, _code: CloseCode, _reason: &str) {
        let id = ctx.session_id();
        let name = self.name_of(id);
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
