//! `wss://` end to end on the kernel path (on the I/O backend `HIOLOAD_TEST_IO` names;
//! scripts/test.sh runs this file on both) and on the DPDK path over net_tap: rustls under
//! tungstenite, Python `websockets` with `ssl`, and `openssl s_client` for what a well-behaved
//! client will not do. Certificates come from a test CA made by openssl for each run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{certificate_der, client_config, peer_certificate, with_tls, wss};
use hioload_ws::Server;
use hioload_wsproto::tls::test_pki::TestPki;
use tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tungstenite::Message as WsMessage;

/// A per-worker counter of `/metrics`, summed over the workers.
fn metric(server: &Server, name: &str) -> f64 {
    common::parse_prometheus(&server.metrics_text())
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Text, binary, 16 MiB (the default largest message) and the close handshake, over TLS only
/// on `listen`: the server's Close echo, then its close_notify.
#[test]
fn wss_echo_large_messages_and_close() {
    let pki = TestPki::new("echo");
    let (cert, key) = pki.leaf("server", "localhost");
    let (server, rec) = common::start_echo(with_tls(common::test_config(), cert, key, None));
    let addr = server.local_addr().unwrap();
    let client = client_config(&pki);

    let mut ws = wss(addr, &client, "localhost");
    assert_eq!(
        ws.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN http/1.1"
    );
    ws.send(WsMessage::text("hello over TLS")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("hello over TLS"));
    for n in [1usize, 20_000, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ 7).collect();
        ws.send(WsMessage::binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), WsMessage::binary(data), "{n} bytes");
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(WsMessage::Close(_)) | Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("after the close handshake: {e}"),
        }
    }
    // The server ended TLS properly: its close_notify arrived before the FIN.
    let stream = ws.get_mut();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(stream.conn.process_new_packets().unwrap().peer_has_closed());
    rec.wait_for(Duration::from_secs(5), "on_close", |r| r.closes.len() == 1);
    assert_eq!(rec.close_codes(), vec![1005]);
    assert!(metric(&server, "hioload_tls_handshakes_total") >= 1.0);
    assert_eq!(metric(&server, "hioload_tls_failures_total"), 0.0);
    server.stop();
    server.wait().unwrap();
}

/// Plain `ws://` on `listen` and `wss://` on a second address, at once; a plain HTTP request on
/// the TLS port gets a readable 400.
#[test]
fn plain_and_tls_listeners_side_by_side() {
    let pki = TestPki::new("both");
    let (cert, key) = pki.leaf("server", "localhost");
    let cfg = with_tls(
        common::test_config(),
        cert,
        key,
        Some("127.0.0.1:0".parse().unwrap()),
    );
    let (server, _rec) = common::start_echo(cfg);
    let plain = server.local_addr().unwrap();
    let secure = server.tls_local_addr().expect("a TLS listener");
    assert_ne!(plain, secure);

    let mut ws = common::client(plain, "/ws");
    ws.send(WsMessage::text("plain")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("plain"));
    let mut wss = wss(secure, &client_config(&pki), "localhost");
    wss.send(WsMessage::text("secure")).unwrap();
    assert_eq!(wss.read().unwrap(), WsMessage::text("secure"));

    let (mut s, head) = common::raw_request(secure, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.contains("wss://"), "{body}");
    assert!(metric(&server, "hioload_tls_failures_total") >= 1.0);
    server.stop();
    server.wait().unwrap();
}

/// Runs `openssl s_client` with `args` against `addr`; returns (success, its output).
fn s_client(addr: SocketAddr, ca: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(ca)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    drop(child.stdin.take()); // EOF on stdin: s_client ends after the handshake
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let handshaken = text.contains("Server certificate") && !text.contains("no peer certificate");
    (handshaken, text)
}

/// What a hostile or confused peer may send to the TLS port: a protocol we do not speak, an
/// application protocol we do not serve, garbage, a record over the size limit, a handshake
/// that stops half-way. Each gets an alert or a close (counted), none stalls the server, and a
/// good client is served after all of them.
#[test]
fn refusals_are_alerts_or_closes_and_the_server_goes_on() {
    let pki = TestPki::new("refuse");
    let (cert, key) = pki.leaf("server", "localhost");
    let mut cfg = with_tls(common::test_config(), cert, key, None);
    cfg.handshake_timeout = Duration::from_secs(1);
    let (server, _rec) = common::start_echo(cfg);
    let addr = server.local_addr().unwrap();

    // A well-formed handshake first: s_client itself works against us.
    let (ok, text) = s_client(addr, &pki.ca(), &["-alpn", "http/1.1"]);
    assert!(ok && text.contains("Verify return code: 0"), "{text}");
    // TLS 1.1 only: refused (we speak 1.2 and 1.3).
    let (ok, text) = s_client(addr, &pki.ca(), &["-tls1_1"]);
    assert!(!ok, "TLS 1.1 was accepted: {text}");
    // ALPN without http/1.1: no_application_protocol.
    let (ok, text) = s_client(addr, &pki.ca(), &["-alpn", "h2"]);
    assert!(!ok, "ALPN h2 only was accepted: {text}");

    // Garbage: an alert record (content type 21) comes back, then the end.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    garbage.extend([0xab; 0x40]);
    s.write_all(&garbage).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "an alert: {answer:?}");

    // A record header over TLS's size limit: an alert, without waiting for its bytes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "an alert: {answer:?}");

    // A handshake that stops half-way (the first bytes of a ClientHello): closed by the
    // handshake deadline, without a byte from us.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed by the deadline"
    );
    assert!(answer.is_empty(), "{answer:?}");

    assert!(metric(&server, "hioload_tls_failures_total") >= 4.0);
    let mut ws = wss(addr, &client_config(&pki), "localhost");
    ws.send(WsMessage::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("still here"));
    server.stop();
    server.wait().unwrap();
}

/// Python `websockets` (its own TLS stack, OpenSSL through Python's `ssl`) echoes over wss://.
#[test]
fn python_websockets_over_ssl() {
    let pki = TestPki::new("python");
    let (cert, key) = pki.leaf("server", "localhost");
    let (server, _rec) = common::start_echo(with_tls(common::test_config(), cert, key, None));
    let port = server.local_addr().unwrap().port();
    let script = format!(
        r#"
import asyncio, ssl
import websockets

async def main():
    ctx = ssl.create_default_context(cafile={ca:?})
    async with websockets.connect("wss://localhost:{port}/ws", ssl=ctx, open_timeout=10,
                                  max_size=None) as ws:
        await ws.send("hello from python")
        assert await asyncio.wait_for(ws.recv(), 10) == "hello from python"
        data = bytes(range(256)) * 4096
        await ws.send(data)
        assert await asyncio.wait_for(ws.recv(), 10) == data
    print("ok", ws.close_code)

asyncio.run(main())
"#,
        ca = pki.ca().display().to_string()
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 (scripts/setup.sh installs python3-websockets)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.starts_with("ok 1000"),
        "{text}"
    );
    server.stop();
    server.wait().unwrap();
}

/// A server stop sends Close 1001 over TLS.
#[test]
fn stop_sends_1001_over_tls() {
    let pki = TestPki::new("stop");
    let (cert, key) = pki.leaf("server", "localhost");
    let (server, _rec) = common::start_echo(with_tls(common::test_config(), cert, key, None));
    let mut ws = wss(
        server.local_addr().unwrap(),
        &client_config(&pki),
        "localhost",
    );
    ws.send(WsMessage::text("x")).unwrap();
    ws.read().unwrap();
    server.stop();
    match ws.read().unwrap() {
        WsMessage::Close(Some(frame)) => assert_eq!(frame.code, WsCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    server.wait().unwrap();
}

/// The certificate a new handshake gets (the session is closed properly after).
fn certificate_of_new_handshake(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut ws = wss(addr, client, "localhost");
    let der = peer_certificate(&ws);
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    der
}

/// Certificates reloaded while sessions echo: new handshakes get the new certificate, no open
/// session is dropped; a key that does not fit its certificate is refused and the running
/// certificate stays.
#[test]
fn certificate_reload_under_load_drops_no_session() {
    let pki = TestPki::new("reload");
    let (cert1, key1) = pki.leaf("first", "localhost");
    let (cert2, key2) = pki.leaf("second", "localhost");
    let (server, rec) = common::start_echo(with_tls(
        common::test_config(),
        cert1.clone(),
        key1.clone(),
        None,
    ));
    let addr = server.local_addr().unwrap();
    let client = client_config(&pki);

    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop, echoed) = (client.clone(), stop.clone(), echoed.clone());
            std::thread::spawn(move || {
                let mut ws = wss(addr, &client, "localhost");
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let msg = format!("{i}:{n}");
                    ws.send(WsMessage::text(msg.clone())).unwrap();
                    assert_eq!(ws.read().unwrap(), WsMessage::text(msg));
                    echoed.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                ws.close(None).unwrap();
                while ws.read().is_ok() {}
            })
        })
        .collect();
    common::wait_until(Duration::from_secs(10), "echoes under way", || {
        echoed.load(Ordering::Relaxed) > 100
    });
    assert_eq!(
        certificate_of_new_handshake(addr, &client),
        certificate_der(&cert1)
    );

    // Renewed in place: the same paths, new contents.
    std::fs::copy(&cert2, &cert1).unwrap();
    std::fs::copy(&key2, &key1).unwrap();
    server.reload(server.config()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = echoed.load(Ordering::Relaxed);
    assert_eq!(
        certificate_of_new_handshake(addr, &client),
        certificate_der(&cert2),
        "new handshakes use the reloaded certificate"
    );

    // A mismatched pair: refused, with a message that names the files; the running one stays.
    let (cert3, _key3) = pki.leaf("third", "localhost");
    let mut bad = server.config();
    bad.tls.as_mut().unwrap().files = hioload_ws::TlsFiles::new(&cert3, &key2);
    let err = server.reload(bad).unwrap_err().to_string();
    assert!(
        err.contains("does not fit") && err.contains("third"),
        "{err}"
    );
    assert_eq!(
        certificate_of_new_handshake(addr, &client),
        certificate_der(&cert2)
    );

    common::wait_until(Duration::from_secs(10), "echoes after the reload", || {
        echoed.load(Ordering::Relaxed) > before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().expect("a session under load failed");
    }
    // Every loader's session ended by its own close (1005: no code), none by the server.
    rec.wait_for(Duration::from_secs(5), "closes", |r| r.closes.len() >= 7);
    assert!(
        rec.close_codes().iter().all(|&c| c == 1005),
        "{:?}",
        rec.close_codes()
    );
    server.stop();
    server.wait().unwrap();
}

/// The DPDK path serves wss:// over net_tap (clients in a network namespace): the same layer,
/// decrypting in the stack's receive ring.
#[cfg(feature = "dpdk")]
#[test]
fn dpdk_path_serves_wss() {
    let pki = TestPki::new("dpdk");
    let (cert, key) = pki.leaf("server", "localhost");
    let net = common::dpdk::TapNet::create('t');
    let cfg = with_tls(net.config("0@0", 256), cert, key, None);
    let (server, rec) = common::start_echo(cfg);
    net.attach_tap();
    let addr = server.local_addr().unwrap();
    let client = client_config(&pki);
    net.in_ns(move || {
        let mut ws = wss(addr, &client, "localhost");
        ws.send(WsMessage::text("over the userspace stack"))
            .unwrap();
        assert_eq!(
            ws.read().unwrap(),
            WsMessage::text("over the userspace stack")
        );
        for n in [100_000usize, 4 << 20] {
            let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(13)).collect();
            ws.send(WsMessage::binary(data.clone())).unwrap();
            assert_eq!(ws.read().unwrap(), WsMessage::binary(data), "{n} bytes");
        }
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        // Plain HTTP on the TLS port: the readable 400.
        let mut s = common::tls::Tcp(common::dpdk::retry(|| TcpStream::connect(addr)).unwrap());
        s.0.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    });
    rec.wait_for(Duration::from_secs(5), "on_close", |r| r.closes.len() == 1);
    assert!(metric(&server, "hioload_tls_handshakes_total") >= 1.0);
    server.stop();
    server.wait().unwrap();
}

/// Backpressure counts TLS output: a TLS peer that asks for a flood and does not read stays
/// above the soft bound and is closed with 1008 after the timeout; another TLS session is
/// served meanwhile.
#[test]
fn a_tls_peer_that_does_not_read_is_closed_with_1008() {
    let pki = TestPki::new("slow");
    let (cert, key) = pki.leaf("server", "localhost");
    let mut cfg = with_tls(common::test_config(), cert, key, None);
    cfg.backpressure.soft_bytes = 64 << 10;
    cfg.backpressure.hard_bytes = 64 << 20;
    cfg.backpressure.timeout = Duration::from_secs(1);
    let (server, rec) = common::start_echo(cfg);
    let addr = server.local_addr().unwrap();
    let client = client_config(&pki);

    let started = Instant::now();
    let mut slow = wss(addr, &client, "localhost");
    socket2::SockRef::from(&slow.get_ref().sock.0)
        .set_recv_buffer_size(16 << 10)
        .unwrap();
    slow.send(WsMessage::text("flood")).unwrap();
    let mut other = wss(addr, &client, "localhost");
    other.send(WsMessage::text("hi")).unwrap();
    assert_eq!(other.read().unwrap(), WsMessage::text("hi"));
    rec.wait_for(Duration::from_secs(10), "on_close 1008", |r| {
        r.closes.iter().any(|c| c.1 == 1008)
    });
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the timeout"
    );
    assert!(metric(&server, "hioload_backpressure_closes_total") >= 1.0);
    drop(slow);
    server.stop();
    server.wait().unwrap();
}
