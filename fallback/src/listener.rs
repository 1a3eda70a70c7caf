//! One listening socket per worker.
//!
//! On Linux every worker binds its own socket to the same address with `SO_REUSEPORT`, and the
//! kernel spreads incoming connections across them: no shared accept queue, no lock, no
//! thundering herd. The first socket binds the requested address (port 0 picks a port); the others
//! bind the address it got. Where `SO_REUSEPORT` does not balance (macOS, Windows), the workers
//! share one socket through cloned handles instead, which is correct, only less even.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog of each listener.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr`; returns them and the address actually bound.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    assert!(count > 0, "at least one listener");
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        #[cfg(target_os = "linux")]
        listeners.push(bind_one(bound)?);
        #[cfg(not(target_os = "linux"))]
        listeners.push(listeners[0].try_clone()?);
    }
    Ok((listeners, bound))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv6 only; listen on 0.0.0.0 too for IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_listener_the_same_port() {
        let (ls, addr) = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(ls.len(), 3);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
        // Every connection lands in one of the three accept queues.
        let clients: Vec<_> = (0..12)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut accepted = 0;
        for l in &ls {
            while l.accept().is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, clients.len());
    }

    #[test]
    fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_listeners(addr, 1).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
