//! Cost of the middleware chain per message, without any I/O: `on_message` of an echo handler
//! called directly, bare and under `Metrics`, `Recovery` and `Logging` (with an info-level
//! `tracing` subscriber installed, as hioload-echo runs). Sends go to a session stand-in that
//! discards them. Prints ns per message.
//!
//! `cargo bench -p hioload-ws --bench middleware` (a plain binary: `harness = false`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hioload_ws::handler::OutMessage;
use hioload_ws::{
    CloseCode, Ctx, DeliverError, Handler, HandlerExt, Logging, Message, Metrics, Recovery,
    SendError, SendStatus, SessionOps, State,
};

const ROUNDS: u32 = 5_000_000;

/// A session that accepts every send and keeps nothing.
struct Discard {
    sent: usize,
    data: Option<hioload_ws::handler::SessionState>,
}

impl SessionOps for Discard {
    fn session_id(&self) -> u64 {
        7
    }
    fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }
    fn worker(&self) -> usize {
        0
    }
    fn state(&self) -> State {
        State::Open
    }
    fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError> {
        self.sent += text.len();
        Ok(SendStatus::Queued)
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError> {
        self.sent += data.len();
        Ok(SendStatus::Queued)
    }
    fn buffered_amount(&self) -> usize {
        0
    }
    fn state_slot(&mut self) -> &mut Option<hioload_ws::handler::SessionState> {
        &mut self.data
    }
    fn ping(&mut self, _: &[u8]) -> Result<(), SendError> {
        Ok(())
    }
    fn close(&mut self, _: CloseCode, _: &str) -> Result<(), SendError> {
        Ok(())
    }
    fn send_to(&mut self, _: u64, _: Arc<OutMessage>) -> Result<(), DeliverError> {
        Ok(())
    }
    fn broadcast(&mut self, _: Arc<OutMessage>) -> Result<usize, DeliverError> {
        Ok(1)
    }
}

struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
}

fn per_message(label: &str, handler: &dyn Handler) {
    handler.on_start(1);
    let mut session = Discard {
        sent: 0,
        data: None,
    };
    let payload = [b'x'; 20];
    let mut run = |rounds: u32| {
        for _ in 0..rounds {
            let mut ctx = Ctx::new(&mut session);
            handler.on_message(&mut ctx, black_box(Message::Binary(&payload)));
        }
    };
    run(ROUNDS / 10);
    let start = Instant::now();
    run(ROUNDS);
    let ns = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    black_box(session.sent);
    println!("{label:<40} {ns:>7.1} ns/message");
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();
    per_message("bare handler", &Echo);
    per_message(
        "Metrics (timing every message)",
        &Echo.with(Metrics::new().time_every(1)),
    );
    per_message(
        "Metrics (timing 1 in 16, default)",
        &Echo.with(Metrics::new()),
    );
    per_message("Recovery", &Echo.with(Recovery::new()));
    per_message("Logging (info level)", &Echo.with(Logging::new()));
    per_message(
        "Metrics + Recovery + Logging",
        &Echo
            .with(Metrics::new())
            .with(Recovery::new())
            .with(Logging::new()),
    );
}
