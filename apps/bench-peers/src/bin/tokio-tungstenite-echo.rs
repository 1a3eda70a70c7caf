//! WebSocket echo server on tokio-tungstenite, one core (`current_thread` runtime).
//!
//! The comparison peer of scripts/bench.sh, written the way the tokio-tungstenite echo example is:
//! every text or binary message goes straight back; pings are answered by the library.
//!
//! With `--tls-cert`/`--tls-key`: wss:// through tokio-rustls, the way a tokio server adds TLS,
//! with rustls and the same provider (ring) and defaults as hioload-echo, so that the client
//! negotiates the same protocol version and cipher suite with both.

use std::sync::Arc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// WebSocket echo server (tokio-tungstenite, single-threaded runtime).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Serve wss://: the certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

async fn serve(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    match tls {
        Some(acceptor) => echo(acceptor.accept(stream).await?).await,
        None => echo(stream).await,
    }
}

/// The rustls server configuration: ring provider, TLS 1.2 and 1.3, ALPN http/1.1.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)),
        _ => None,
    };
    let listener = TcpListener::bind(&args.addr).await?;
    eprintln!("tokio-tungstenite-echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, tls).await {
                use tokio_tungstenite::tungstenite::Error;
                if !matches!(e, Error::ConnectionClosed | Error::AlreadyClosed) {
                    eprintln!("connection ended: {e}");
                }
            }
        });
    }
}
