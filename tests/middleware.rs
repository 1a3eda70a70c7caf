//! Middleware around a real server: a panicking handler costs only its own session (Recovery
//! closes it with 1011, counts it, the worker serves on); user middleware runs in the order it
//! was stacked and can answer for the handler.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use hioload_ws::{
    CloseCode, Ctx, Handler, HandlerExt, Logging, Message, Metrics, Middleware, Recovery, Server,
};
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as WsMessage;

#[test]
fn a_panicking_handler_leaves_the_other_sessions_untouched() {
    let mut cfg = test_config();
    cfg.num_workers = 1; // every session on the worker that sees the panic
    let rec = Arc::new(RecordingEcho::default());
    let server = Server::new(cfg).unwrap().with_handler(
        rec.clone()
            .with(Metrics::new())
            .with(Recovery::new())
            .with(Logging::new()),
    );
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut sessions: Vec<_> = (0..10).map(|_| client(addr, "/ws")).collect();
    for (i, ws) in sessions.iter_mut().enumerate() {
        ws.send(WsMessage::text(format!("before {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), WsMessage::text(format!("before {i}")));
    }

    sessions[3].send(WsMessage::text("panic")).unwrap();
    match sessions[3].read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Error),
        other => panic!("expected close 1011, got {other:?}"),
    }
    let mut panicked = sessions.remove(3);
    while panicked.read().is_ok() {}
    rec.wait_for(T, "the panicked session's close", |r| r.closes.len() == 1);
    assert_eq!(rec.close_codes(), vec![1011]);

    for (i, ws) in sessions.iter_mut().enumerate() {
        ws.send(WsMessage::text(format!("after {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), WsMessage::text(format!("after {i}")));
    }
    assert_eq!(server.session_count(), 9);
    let samples = parse_prometheus(&server.metrics_text());
    assert_eq!(sample(&samples, "hioload_handler_panics_total"), Some(1.0));
    assert_eq!(
        sample(&samples, "hioload_session_close_codes_total{code=\"1011\"}"),
        Some(1.0)
    );
}

/// Records the order it sees callbacks in.
struct Trace {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Middleware for Trace {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        self.log.lock().unwrap().push(format!("{} in", self.name));
        next.on_message(ctx, msg);
        self.log.lock().unwrap().push(format!("{} out", self.name));
    }
}

/// Answers `secret` itself with a close 1008; everything else goes on.
struct Gate;

impl Middleware for Gate {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>, next: &dyn Handler) {
        if msg == Message::Text("secret") {
            let _ = ctx.close(CloseCode::POLICY_VIOLATION, "not here");
            return;
        }
        next.on_message(ctx, msg);
    }
}

#[test]
fn user_middleware_runs_in_stacking_order_and_can_answer_for_the_handler() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = RecordingEcho::default()
        .with(Trace {
            name: "inner",
            log: log.clone(),
        })
        .with(Gate)
        .with(Trace {
            name: "outer",
            log: log.clone(),
        });
    let server = Server::new(test_config()).unwrap().with_handler(handler);
    server.start().unwrap();
    let mut ws = client(server.local_addr().unwrap(), "/ws");
    ws.send(WsMessage::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("hi"));
    assert_eq!(
        *log.lock().unwrap(),
        ["outer in", "inner in", "inner out", "outer out"]
    );
    log.lock().unwrap().clear();
    ws.send(WsMessage::text("secret")).unwrap();
    match ws.read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Policy),
        other => panic!("expected close 1008, got {other:?}"),
    }
    assert_eq!(
        *log.lock().unwrap(),
        ["outer in", "outer out"],
        "the gate stopped it"
    );
}
