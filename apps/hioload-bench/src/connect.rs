//! Opening connections: source-address spreading, the file-descriptor limit, and the HTTP/1.1
//! upgrade, done with blocking calls before any load starts (connection setup is not measured).
//!
//! One source address gives about 28,000 ephemeral ports (`ip_local_port_range`); for a loopback
//! target, connections are spread round-robin over 127.0.0.1, 127.0.0.2, … (all of 127.0.0.0/8 is
//! local on Linux). `IP_BIND_ADDRESS_NO_PORT` lets the kernel pick the port at `connect`, so a
//! port is only tied up per (source, destination) pair.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::pattern::Framing;
use crate::wire;

/// Connections per source address before the next one is used, when spreading automatically.
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// How long connecting, and each step of the upgrade, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
pub struct Target {
    pub addr: SocketAddr,
    /// Request path of the upgrade.
    pub path: String,
    pub framing: Framing,
    /// Source addresses to spread over (1 = let the kernel choose).
    pub sources: usize,
}

impl Target {
    /// Source addresses needed for `connections`, given `requested` (0 = automatic).
    pub fn sources_for(
        addr: &SocketAddr,
        connections: usize,
        requested: usize,
    ) -> Result<usize, String> {
        let needed = connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1);
        let sources = if requested == 0 { needed } else { requested };
        if sources > 1 && !addr.ip().is_loopback() {
            return Err(format!(
                "{connections} connections need {sources} source addresses, which are only chosen automatically \
                 for a loopback (127.0.0.0/8) target; {addr} is not one"
            ));
        }
        if sources > 250 {
            return Err(format!(
                "{sources} source addresses requested, at most 250 (127.0.0.1–127.0.0.250)"
            ));
        }
        Ok(sources)
    }

    /// Opens connection number `index` and, for WebSocket framing, completes the upgrade.
    /// The stream is returned blocking, with TCP_NODELAY set.
    pub fn open(&self, index: usize) -> io::Result<TcpStream> {
        self.open_offering(index, None).map(|(stream, _)| stream)
    }

    /// [`Target::open`] with `Sec-WebSocket-Extensions: offer` in the upgrade request; also
    /// returns the server's `Sec-WebSocket-Extensions` answer, if any.
    pub fn open_offering(
        &self,
        index: usize,
        offer: Option<&str>,
    ) -> io::Result<(TcpStream, Option<String>)> {
        let domain = Domain::for_address(self.addr);
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if self.sources > 1 && self.addr.ip().is_ipv4() {
            set_bind_no_port(&socket)?;
            let source = Ipv4Addr::new(127, 0, 0, 1 + (index % self.sources) as u8);
            socket.bind(&SockAddr::from(SocketAddr::new(source.into(), 0)))?;
        }
        socket
            .connect_timeout(&SockAddr::from(self.addr), STEP_TIMEOUT)
            .map_err(|e| context(e, format!("connect to {}", self.addr)))?;
        socket.set_tcp_nodelay(true)?;
        let mut stream: TcpStream = socket.into();
        let mut answer = None;
        if let Framing::WebSocket(_) = self.framing {
            stream.set_read_timeout(Some(STEP_TIMEOUT))?;
            stream.set_write_timeout(Some(STEP_TIMEOUT))?;
            answer = upgrade(&mut stream, &self.addr, &self.path, index, offer)?;
            stream.set_read_timeout(None)?;
            stream.set_write_timeout(None)?;
        }
        Ok((stream, answer))
    }
}

/// Sends the upgrade request (offering the extensions `offer`) and checks the `101` answer,
/// including `Sec-WebSocket-Accept`; returns its `Sec-WebSocket-Extensions`, if any.
fn upgrade(
    stream: &mut TcpStream,
    addr: &SocketAddr,
    path: &str,
    index: usize,
    offer: Option<&str>,
) -> io::Result<Option<String>> {
    let key = request_key(index);
    let mut request = upgrade_request(path, &addr.to_string(), &key);
    if let Some(offer) = offer {
        request.truncate(request.len() - 2);
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n\r\n"));
    }
    stream.write_all(request.as_bytes())?;

    let mut buf = [0u8; 4096];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Err(handshake_error(format!(
                "server closed the connection during the upgrade ({len} bytes received)"
            )));
        }
        len += n;
        match check_upgrade_response(&buf[..len], &key) {
            Ok(None) if len == buf.len() => {
                return Err(handshake_error(format!(
                    "upgrade response head larger than {} bytes",
                    buf.len()
                )))
            }
            Ok(None) => continue,
            Ok(Some(head_len)) if head_len != len => {
                return Err(handshake_error(format!(
                    "{} unsolicited bytes after the 101 response",
                    len - head_len
                )))
            }
            Ok(Some(head_len)) => {
                let answer = response_header(&buf[..head_len], "Sec-WebSocket-Extensions");
                if offer.is_none() && answer.is_some() {
                    return Err(handshake_error(format!(
                        "the server agreed the extension {answer:?}, which was not offered"
                    )));
                }
                return Ok(answer);
            }
            Err(e) => return Err(handshake_error(e)),
        }
    }
}

/// The HTTP/1.1 upgrade request for `path` on `host` with `Sec-WebSocket-Key: key`.
pub fn upgrade_request(path: &str, host: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks the start of an upgrade response to a request with `key`: `Ok(None)` while the head
/// is incomplete, `Ok(Some(head length))` for a valid `101` (with the right
/// `Sec-WebSocket-Accept` and `Upgrade: websocket`), else what is wrong.
pub fn check_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "malformed upgrade response ({e}); not a WebSocket server? (--raw is for raw TCP echo servers)"
            ))
        }
        Ok(httparse::Status::Complete(head_len)) => head_len,
    };
    if response.code != Some(101) {
        let head = String::from_utf8_lossy(&buf[..head_len]);
        let status = head.lines().next().unwrap_or("");
        return Err(format!("upgrade refused: {status}"));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let expected = wire::accept_key(key);
    match header("Sec-WebSocket-Accept") {
        Some(got) if got.trim() == expected => {}
        got => {
            return Err(format!(
                "Sec-WebSocket-Accept is {got:?}, expected {expected:?}"
            ))
        }
    }
    if !header("Upgrade").is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket")) {
        return Err("101 response without `Upgrade: websocket`".into());
    }
    Ok(Some(head_len))
}

/// The value of header `name` in a complete response head (the first, if repeated).
pub fn response_header(head: &[u8], name: &str) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
}

/// A distinct, valid `Sec-WebSocket-Key` (base64 of 16 bytes) per connection.
pub fn request_key(index: usize) -> String {
    use base64::Engine;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&(index as u64).to_le_bytes());
    raw[8..].copy_from_slice(&0x6869_6f6c_6f61_6421u64.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn set_bind_no_port(socket: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises RLIMIT_NOFILE so that `needed` descriptors fit (up to the hard limit, or beyond it
/// when running as root).
pub fn raise_fd_limit(needed: u64) -> Result<(), String> {
    // SAFETY: an all-zero rlimit is valid; getrlimit only writes into it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", io::Error::last_os_error()));
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    let mut want = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max.max(needed),
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        // Not root: go as high as the hard limit allows.
        want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to an rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
        return Err(format!(
            "{needed} file descriptors needed but RLIMIT_NOFILE is capped at {} (raise it with `ulimit -n`)",
            lim.rlim_max
        ));
    }
    Ok(())
}

fn handshake_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_are_16_bytes_and_distinct() {
        use base64::Engine;
        let a = request_key(1);
        let b = request_key(2);
        assert_ne!(a, b);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .unwrap()
                .len(),
            16
        );
    }

    #[test]
    fn upgrade_responses_are_checked() {
        let key = request_key(7);
        let accept = wire::accept_key(&key);
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert_eq!(
            check_upgrade_response(ok.as_bytes(), &key),
            Ok(Some(ok.len()))
        );
        assert_eq!(check_upgrade_response(&ok.as_bytes()[..40], &key), Ok(None));
        let wrong_key = check_upgrade_response(ok.as_bytes(), &request_key(8)).unwrap_err();
        assert!(wrong_key.contains("Sec-WebSocket-Accept"), "{wrong_key}");
        let refused = check_upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n", &key);
        assert_eq!(
            refused,
            Err("upgrade refused: HTTP/1.1 404 Not Found".into())
        );
        assert!(check_upgrade_response(b"SSH-2.0-x\r\n\r\n", &key).is_err());
        let with_ext = ok.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        );
        assert_eq!(
            response_header(with_ext.as_bytes(), "sec-websocket-extensions").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            response_header(ok.as_bytes(), "Sec-WebSocket-Extensions"),
            None
        );
        let request = upgrade_request("/ws", "198.18.0.2:8080", &key);
        assert!(request.starts_with("GET /ws HTTP/1.1\r\nHost: 198.18.0.2:8080\r\n"));
        assert!(request.ends_with("\r\n\r\n") && request.contains(&key));
    }

    #[test]
    fn source_spreading_is_loopback_only() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(Target::sources_for(&lo, 100, 0), Ok(1));
        assert_eq!(Target::sources_for(&lo, 50_000, 0), Ok(3));
        assert_eq!(Target::sources_for(&lo, 10, 4), Ok(4));
        let doc: SocketAddr = "198.18.0.1:1".parse().unwrap();
        assert!(Target::sources_for(&doc, 50_000, 0).is_err());
        assert_eq!(Target::sources_for(&doc, 100, 0), Ok(1));
    }
}
