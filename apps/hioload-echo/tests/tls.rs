//! The real `hioload-echo` binary over TLS: `--tls-cert`/`--tls-key` with `--tls-addr` beside
//! the plain port, SIGHUP re-reading the certificate files (a renewed pair taken, a broken one
//! refused with the running one kept), and SIGTERM closing TLS sessions with 1001.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hioload_wsproto::tls::test_pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use support::{EchoProcess, BIN};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const LOG_WAIT: Duration = Duration::from_secs(10);

type Wss = WebSocket<StreamOwned<ClientConnection, TcpStream>>;

fn wss(addr: SocketAddr, config: &Arc<ClientConfig>) -> Wss {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let conn =
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    tungstenite::client::client("wss://localhost/ws", StreamOwned::new(conn, tcp))
        .expect("upgrade over TLS")
        .0
}

fn echo_once(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
}

fn served_certificate(ws: &Wss) -> Vec<u8> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
}

fn der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[test]
fn tls_port_beside_plain_sighup_rereads_certificates_sigterm_sends_1001() {
    let pki = TestPki::new("echo-bin");
    let (cert, key) = pki.leaf("running", "localhost");
    let (renewed_cert, renewed_key) = pki.leaf("renewed", "localhost");
    let original = der(&cert);
    let io = std::env::var("HIOLOAD_TEST_IO").unwrap_or_else(|_| "auto".into());
    let mut cmd = Command::new(BIN);
    cmd.args(["--addr", "127.0.0.1:0", "--workers", "2", "--no-affinity"])
        .args(["--io", &io, "--admin-addr", "off"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--tls-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut echo = EchoProcess::spawn(cmd);
    echo.next_line_with("listening on ws://", Duration::from_secs(20));
    let line = echo.next_line_with("listening on wss://", LOG_WAIT);
    let addr: SocketAddr = line
        .split("wss://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let client = pki.client_config();

    let mut before = wss(addr, &client);
    echo_once(&mut before, "before the renewal");
    assert_eq!(served_certificate(&before), original);

    // Renewed in place, then SIGHUP (no --config: the certificates alone are re-read).
    std::fs::copy(&renewed_cert, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    echo.signal(libc::SIGHUP);
    echo.next_line_with("TLS certificates re-read", LOG_WAIT);
    let mut after = wss(addr, &client);
    assert_eq!(served_certificate(&after), der(&renewed_cert));
    echo_once(&mut after, "after the renewal");
    echo_once(&mut before, "the session from before is still open");

    // A key file that is no key: refused, named, and the running certificate stays.
    std::fs::write(&key, "not a key\n").unwrap();
    echo.signal(libc::SIGHUP);
    let line = echo.next_line_with("TLS certificates rejected", LOG_WAIT);
    assert!(line.contains(&key.display().to_string()), "{line}");
    let mut third = wss(addr, &client);
    assert_eq!(served_certificate(&third), der(&renewed_cert));
    echo_once(&mut third, "still served");

    echo.signal(libc::SIGTERM);
    for ws in [&mut before, &mut after, &mut third] {
        match ws.read().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
    assert!(echo.wait_exit(Duration::from_secs(15)).success());
}
