//! `PerWorker`: a handler built once per worker, called with `&mut self` (no `Sync`, no lock):
//! each worker counts its own messages, and the factory runs once per worker that has sessions.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use hioload_ws::{Ctx, Message, PerWorker, Server, WorkerHandler};
use tungstenite::Message as WsMessage;

/// Counts this worker's messages; `Rc<Cell>` on purpose: neither `Send` nor `Sync`.
struct Counter {
    worker: usize,
    seen: Rc<Cell<usize>>,
}

impl WorkerHandler for Counter {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _msg: Message<'_>) {
        assert_eq!(ctx.worker(), self.worker, "called on its own worker only");
        self.seen.set(self.seen.get() + 1);
        let _ = ctx.send_text(&format!("{} {}", self.worker, self.seen.get()));
    }
}

#[test]
fn each_worker_has_its_own_handler() {
    let built = Arc::new(AtomicUsize::new(0));
    let b = built.clone();
    let handler = PerWorker::new(move |worker| {
        b.fetch_add(1, Ordering::SeqCst);
        Counter {
            worker,
            seen: Rc::new(Cell::new(0)),
        }
    });
    let server = Server::new(test_config()).unwrap().with_handler(handler);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    // Connect until sessions sit on both workers.
    let mut clients = Vec::new();
    let mut workers = std::collections::HashSet::new();
    while workers.len() < 2 && clients.len() < 40 {
        let mut ws = client(addr, "/ws");
        ws.send(WsMessage::text("x")).unwrap();
        let reply = ws.read().unwrap().into_text().unwrap().to_string();
        let worker: usize = reply.split(' ').next().unwrap().parse().unwrap();
        workers.insert(worker);
        clients.push((worker, ws));
    }
    assert_eq!(workers.len(), 2, "sessions on both workers");
    // Each worker's count grows with its own messages only.
    let mut expected = std::collections::HashMap::new();
    for (worker, _) in &clients {
        *expected.entry(*worker).or_insert(0usize) += 1;
    }
    for (worker, ws) in &mut clients {
        ws.send(WsMessage::text("again")).unwrap();
        let reply = ws.read().unwrap().into_text().unwrap().to_string();
        let n = expected.get_mut(worker).unwrap();
        *n += 1;
        assert_eq!(reply, format!("{worker} {n}"));
    }
    assert_eq!(built.load(Ordering::SeqCst), 2, "one handler per worker");
}
