//! Idle-connection memory: the server's resident memory before and after N upgraded connections
//! that each exchanged one echo and then went quiet, divided by N.
//!
//! The one echo makes the server touch whatever per-connection state it sets up lazily; VmRSS
//! counts user-space pages only (socket buffers live in the kernel and are not in it).

use std::io::{Read, Write};
use std::time::Duration;

use crate::connect::Target;
use crate::pattern::{self, Framing, Pattern};
use crate::procfs;
use crate::report::escape;

/// Opens `count` connections, echoes one `size`-byte message on each, and reports the RSS growth
/// of server `pid`.
pub fn run(
    target: &Target,
    count: usize,
    size: usize,
    pid: u32,
    settle: Duration,
    json: bool,
) -> Result<(), String> {
    let pattern = Pattern::new(target.framing, size, 64);
    let rss_err = |e| format!("reading the RSS of server pid {pid}: {e}");
    let before = procfs::process_rss(pid).map_err(rss_err)?;
    let mut streams = Vec::with_capacity(count);
    let mut echo = vec![0u8; pattern.echo_len];
    for i in 0..count {
        let fail = |e: std::io::Error| format!("connection {i} of {count}: {e}");
        let mut stream = target.open(i).map_err(fail)?;
        let m = i % pattern.messages;
        stream
            .write_all(&pattern.send[m * pattern.send_len..][..pattern.send_len])
            .map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(fail)?;
        stream.read_exact(&mut echo).map_err(fail)?;
        if echo[..] != pattern.echo[m * pattern.echo_len..][..pattern.echo_len] {
            return Err(format!("connection {i} of {count}: wrong echo"));
        }
        streams.push(stream);
    }
    std::thread::sleep(settle);
    let after = procfs::process_rss(pid).map_err(rss_err)?;
    let per_conn = (after as f64 - before as f64) / count as f64;
    if json {
        println!(
            "{{\"addr\":\"{}\",\"idle_connections\":{count},\"rss_before\":{before},\"rss_after\":{after},\
             \"rss_bytes_per_connection\":{per_conn:.1}}}",
            escape(&target.addr.to_string())
        );
    } else {
        let how = if target.framing == Framing::Raw {
            "plain TCP"
        } else {
            "upgraded"
        };
        println!(
            "{count} idle connections to {} ({how}, one {size} B echo each)",
            target.addr
        );
        println!("  server RSS before  {:.1} MiB", before as f64 / 1048576.0);
        println!("  server RSS after   {:.1} MiB", after as f64 / 1048576.0);
        println!("  per connection     {per_conn:.0} bytes");
    }
    close_all(&mut streams, target.framing);
    Ok(())
}

/// Ends every connection in an orderly way (close frame or FIN), waiting up to two seconds in all
/// for the server's side of it, so that servers log no resets.
fn close_all(streams: &mut [std::net::TcpStream], framing: Framing) {
    for stream in streams.iter_mut() {
        let _ = match framing {
            Framing::WebSocket(_) => stream.write_all(&pattern::CLOSE_FRAME),
            Framing::Raw => stream.shutdown(std::net::Shutdown::Write),
        };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 256];
    for stream in streams.iter_mut() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}
