//! Backpressure on the DPDK data path, in process: a handler that answers one request with far
//! more than the peer reads. The output the send ring cannot take waits in the connection's
//! pending output; above `backpressure.hard_bytes` for `backpressure.timeout` the session is
//! closed with 1008 and the connection reset, while other sessions are served on.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dpdk::{raw_upgrade, retry, TapNet};
use common::frame;
use hioload_ws::{CloseCode, Ctx, Handler, Message, Server};

/// `flood` is answered with 64 messages of 64 KiB (4 MiB); anything else is echoed. Records
/// the close codes.
struct Flood {
    closes: Arc<Mutex<Vec<u16>>>,
}

impl Handler for Flood {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg == Message::Text("flood") {
            let chunk = vec![0x5au8; 64 << 10];
            for _ in 0..64 {
                let _ = ctx.send_binary(&chunk);
            }
        } else {
            let _ = ctx.send(msg);
        }
    }
    fn on_close(&self, _ctx: &mut Ctx<'_>, code: CloseCode, _reason: &str) {
        self.closes.lock().unwrap().push(code.0);
    }
}

#[test]
fn a_peer_that_does_not_read_a_flood_is_closed_with_1008_and_others_are_served() {
    let net = TapNet::create('b');
    let mut cfg = net.config("0@0", 256);
    cfg.backpressure.soft_bytes = 64 << 10;
    cfg.backpressure.hard_bytes = 256 << 10;
    cfg.backpressure.timeout = Duration::from_secs(1);
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = Server::new(cfg).unwrap().with_handler(Flood {
        closes: closes.clone(),
    });
    server.start().expect("the DPDK path starts");
    net.attach_tap();

    let (ended_after, read_before_end, echoed) = net.in_ns(|| {
        let mut slow = raw_upgrade();
        // A small receive buffer, and no reading: the flood stays on the server.
        let small: libc::c_int = 16 << 10;
        // SAFETY: setsockopt on our own socket with a valid int.
        unsafe {
            libc::setsockopt(
                slow.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        slow.write_all(&frame(true, 1, b"flood")).unwrap();
        let sent = Instant::now();
        // Another session is served meanwhile.
        let mut other = raw_upgrade();
        other.write_all(&frame(true, 1, b"hi")).unwrap();
        let mut echo = [0u8; 4];
        retry(|| other.read_exact(&mut echo)).unwrap();
        // Wait past the backpressure timeout, then read what arrived until the reset or close.
        std::thread::sleep(Duration::from_millis(2500));
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match retry(|| slow.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        (sent.elapsed(), total, echo)
    });
    assert_eq!(&echoed, b"\x81\x02hi", "the other session was served");
    assert!(
        read_before_end < 4 << 20,
        "the 4 MiB flood did not all arrive: {read_before_end} bytes"
    );
    assert!(ended_after < Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !closes.lock().unwrap().contains(&1008) {
        assert!(
            Instant::now() < deadline,
            "no 1008 close: {:?}",
            closes.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown().unwrap();
}
