//! WebSocket echo server on tokio-tungstenite, one core (`current_thread` runtime).
//!
//! The comparison peer of scripts/bench.sh, written the way the tokio-tungstenite echo example is:
//! every text or binary message goes straight back; pings are answered by the library.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

/// WebSocket echo server (tokio-tungstenite, single-threaded runtime).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
}

async fn serve(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr).await?;
    eprintln!("tokio-tungstenite-echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(stream).await {
                use tokio_tungstenite::tungstenite::Error;
                if !matches!(e, Error::ConnectionClosed | Error::AlreadyClosed) {
                    eprintln!("connection ended: {e}");
                }
            }
        });
    }
}
