//! WebSocket echo server on fastwebsockets, one core (`current_thread` runtime).
//!
//! The comparison peer of scripts/bench.sh, written the way fastwebsockets' own `echo_server`
//! example is (hyper upgrade, `FragmentCollector`, `unconstrained` task), since that is what its
//! published benchmarks run.

use clap::Parser;
use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// WebSocket echo server (fastwebsockets, single-threaded runtime).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    addr: String,
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn upgrade(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(echo(fut)).await {
            if !matches!(e, WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) {
                eprintln!("connection ended: {e}");
            }
        }
    });
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr).await?;
    eprintln!("fastwebsockets-echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let conn =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(upgrade)).with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("http error: {e}");
            }
        });
    }
}
