//! TLS clients for the facade's tests: rustls (trusting the test CA that
//! `hioload_wsproto::tls::test_pki` makes with openssl) under tungstenite, and the server-side
//! configuration that goes with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use hioload_ws::{Config, TlsConfig, TlsFiles};
use hioload_wsproto::tls::test_pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::WebSocket;

/// A TCP stream whose calls are retried when a signal interrupts them (the tap PMD's SIGIO in
/// the DPDK tests).
pub struct Tcp(pub TcpStream);

impl Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A TLS stream of the tests.
pub type TlsStream = StreamOwned<ClientConnection, Tcp>;

/// `config` serving TLS with the certificate `cert`/`key` (on `listen` itself, or on `tls_listen`).
pub fn with_tls(
    mut config: Config,
    cert: impl Into<std::path::PathBuf>,
    key: impl Into<std::path::PathBuf>,
    tls_listen: Option<SocketAddr>,
) -> Config {
    config.tls = Some(TlsConfig {
        files: TlsFiles::new(cert, key),
        listen: tls_listen,
    });
    config
}

/// A client configuration that trusts the test CA of `pki` (ALPN `http/1.1`).
pub fn client_config(pki: &TestPki) -> Arc<ClientConfig> {
    pki.client_config()
}

/// A TLS connection to `addr` for the host name `host`, handshaken.
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>, host: &str) -> TlsStream {
    let tcp = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn = ClientConnection::new(
        config.clone(),
        ServerName::try_from(host.to_string()).unwrap(),
    )
    .unwrap();
    let mut stream = StreamOwned::new(conn, Tcp(tcp));
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// A tungstenite client of `wss://{host}/ws` at `addr`, over rustls.
pub fn wss(addr: SocketAddr, config: &Arc<ClientConfig>, host: &str) -> WebSocket<TlsStream> {
    let stream = tls_connect(addr, config, host);
    let (ws, resp) =
        tungstenite::client::client(format!("wss://{host}/ws"), stream).expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

/// The end-entity certificate the server presented.
pub fn peer_certificate(ws: &WebSocket<TlsStream>) -> Vec<u8> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM file.
pub fn certificate_der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}
