//! The smallest complete server over this crate: blocking `std::net`, one thread per connection,
//! echoing every message. It shows how a transport drives the sans-IO API (handshake, then
//! `Session::receive` with a retained tail) and lets the Autobahn|Testsuite run against the
//! protocol layer alone:
//!
//! ```text
//! cargo run --release -p hioload-wsproto --example std_echo -- 127.0.0.1:9302
//! /work/shared/tools/autobahn/run.sh ws://127.0.0.1:9302/ws '1.*,2.*,...,10.*' --no-deflate
//! ```
//! It binds only loopback addresses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use hioload_wsproto::handshake::{
    parse_request, respond, write_error_response, HttpError, Parsed, UpgradePolicy,
};
use hioload_wsproto::{Event, Limits, Session, State};

struct EchoPolicy;
impl UpgradePolicy for EchoPolicy {}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9302".into())
        .parse()
        .expect("address");
    assert!(
        addr.ip().is_loopback(),
        "std_echo binds loopback addresses only"
    );
    let listener = TcpListener::bind(addr)?;
    eprintln!("std_echo: listening on ws://{addr}/");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("std_echo: connection error: {e}");
            }
        });
    }
    Ok(())
}

fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let limits = Limits::default();
    // Room for a retained partial frame (≤ inplace_frame_max) plus a large read.
    let mut buf = vec![0u8; 4 * limits.inplace_frame_max];
    let mut len = 0;
    let head_len = loop {
        let n = sock.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut answer = [0u8; 512];
        match parse_request(&buf[..len], &limits) {
            Parsed::Partial if len < buf.len() => continue,
            Parsed::Partial => {
                let n = write_error_response(&HttpError::HEAD_TOO_LARGE, &mut answer);
                return sock.write_all(&answer[..n]);
            }
            Parsed::Upgrade(req) => {
                let (n, accepted) = respond(&req, &EchoPolicy, &mut answer);
                sock.write_all(&answer[..n])?;
                if accepted.is_err() {
                    return Ok(());
                }
                break req.head_len;
            }
            Parsed::Http(_) => {
                let n = write_error_response(&HttpError::NOT_FOUND, &mut answer);
                return sock.write_all(&answer[..n]);
            }
            Parsed::Reject(err) => {
                let n = write_error_response(&err, &mut answer);
                return sock.write_all(&answer[..n]);
            }
        }
    };
    buf.copy_within(head_len..len, 0);
    len -= head_len;

    let mut session = Session::new(limits);
    let mut out = Vec::new();
    loop {
        let result = session.receive(&mut buf[..len], &mut out, |event, reply| {
            let _ = match event {
                Event::Text(text) => reply.send_text(text),
                Event::Binary(data) => reply.send_binary(data),
                _ => Ok(()),
            };
        });
        sock.write_all(&out)?;
        out.clear();
        match result {
            Ok(consumed) => {
                buf.copy_within(consumed..len, 0);
                len -= consumed;
            }
            Err(e) => {
                eprintln!("std_echo: closing with {}: {}", e.code.0, e.reason);
                break;
            }
        }
        if session.state() == State::Closed {
            break;
        }
        let n = sock.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    // Server closes the TCP connection first (RFC 6455 §7.1.1); drain briefly so that the peer
    // sees our Close before a reset.
    sock.shutdown(Shutdown::Write)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut sink = [0u8; 4096];
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}
