//! A small RESP2 client: commands written as arrays of bulk strings, replies parsed from a
//! buffer as they arrive (a read that times out mid-reply loses nothing), every length bounded.
//! Just what the cluster link needs: `AUTH`, `SELECT`, `INFO`, `PING`, `(S)PUBLISH`,
//! `(S)SUBSCRIBE`, `(S)UNSUBSCRIBE` and the messages a subscribed connection receives.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` (`None`: the null array).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RESP: {what}"))
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is incomplete, else the value
/// and the bytes it took. Bulk strings longer than `max_bulk` and arrays of more than 1,024
/// elements (or nested deeper than 4) are errors.
pub fn parse(buf: &[u8], max_bulk: usize) -> io::Result<Option<(Value, usize)>> {
    parse_at(buf, 0, max_bulk, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn int(b: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad integer"))
}

fn parse_at(
    buf: &[u8],
    at: usize,
    max_bulk: usize,
    depth: usize,
) -> io::Result<Option<(Value, usize)>> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1) else {
        if buf.len() - at > 64 + 1 {
            return Err(bad("header line too long"));
        }
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(head).into_owned();
    match kind {
        b'+' => Ok(Some((Value::Simple(text()), next))),
        b'-' => Ok(Some((Value::Error(text()), next))),
        b':' => Ok(Some((Value::Int(int(head)?), next))),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let n = n as usize;
            if n > max_bulk {
                return Err(bad("bulk string over the limit"));
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(bad("bulk string without CRLF"));
            }
            Ok(Some((
                Value::Bulk(Some(buf[next..next + n].to_vec())),
                next + n + 2,
            )))
        }
        b'*' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            if n > 1024 || depth >= 4 {
                return Err(bad("array too large or too deep"));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, max_bulk, depth + 1)? {
                    Some((v, after)) => {
                        items.push(v);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(bad("unknown reply type")),
    }
}

/// Where a Redis server is, from a `redis://[:password@]host:port[/db]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// `host:port` (port 6379 when absent).
    pub host: String,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// `SELECT` database, if any (pub/sub ignores it; checked as a URL part only).
    pub db: Option<u32>,
}

impl RedisUrl {
    /// Parses the URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?}: a Redis URL starts with redis://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let password = auth.map(|a| a.rsplit(':').next().unwrap_or(a).to_string());
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, None),
            Some((h, db)) => (
                h,
                Some(db.parse().map_err(|_| format!("{url:?}: bad database"))?),
            ),
            None => (rest, None),
        };
        if hostport.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let host = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            || hostport.ends_with(']')
        {
            hostport.to_string()
        } else if hostport.contains(':') && !hostport.starts_with('[') {
            return Err(format!("{url:?}: bad port"));
        } else {
            format!("{hostport}:6379")
        };
        Ok(RedisUrl { host, password, db })
    }

    fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(self.host.to_socket_addrs()?.collect())
    }
}

/// One connection to Redis.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    max_bulk: usize,
}

impl Conn {
    /// Connects (within `timeout`), authenticates if the URL has a password, and sets `timeout`
    /// as the read and write timeout.
    pub fn open(url: &RedisUrl, timeout: Duration, max_bulk: usize) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in url.addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    stream.set_nodelay(true)?;
                    let mut c = Conn {
                        stream,
                        buf: Vec::with_capacity(16 << 10),
                        max_bulk,
                    };
                    if let Some(pw) = &url.password {
                        c.call(&[b"AUTH", pw.as_bytes()])?;
                    }
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sets the read timeout (a subscriber polls with a short one).
    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Writes bytes already encoded (one or more commands).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one command and waits for its reply; an error reply is an error.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.write_all(&out)?;
        match self.read()? {
            Some(Value::Error(e)) => Err(io::Error::other(e)),
            Some(v) => Ok(v),
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// The next reply: `Ok(None)` if none is complete within the read timeout; an error if the
    /// connection broke or sent something that is not RESP.
    pub fn read(&mut self) -> io::Result<Option<Value>> {
        loop {
            if let Some((v, used)) = parse(&self.buf, self.max_bulk)? {
                self.buf.drain(..used);
                return Ok(Some(v));
            }
            let len = self.buf.len();
            self.buf.resize(len + (16 << 10), 0);
            match self.stream.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.buf.truncate(len);
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhello\r\n:1\r\n";
        let (v, used) = parse(msg, 1 << 20).unwrap().unwrap();
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message".to_vec())),
                Value::Bulk(Some(b"chan".to_vec())),
                Value::Bulk(Some(b"hello".to_vec())),
            ]))
        );
        assert_eq!(
            parse(&msg[used..], 1 << 20).unwrap().unwrap().0,
            Value::Int(1)
        );
        for cut in 0..used {
            assert_eq!(parse(&msg[..cut], 1 << 20).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(b"$100\r\n", 10).is_err(), "over the bulk limit");
        assert!(parse(b"?x\r\n", 10).is_err());
        assert_eq!(
            parse(b"-ERR no\r\n", 10).unwrap().unwrap().0,
            Value::Error("ERR no".into())
        );
        let mut out = Vec::new();
        encode(&mut out, &[b"PUBLISH", b"c", b"x y"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\nx y\r\n");
    }

    #[test]
    fn urls_name_host_port_password_and_database() {
        let u = RedisUrl::parse("redis://127.0.0.1:7000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.password, u.db),
            ("127.0.0.1:7000", None, None)
        );
        let u = RedisUrl::parse("redis://:s3cret@localhost/2").unwrap();
        assert_eq!(u.host, "localhost:6379");
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.db, Some(2));
        assert!(RedisUrl::parse("http://x").is_err());
        assert!(RedisUrl::parse("redis://").is_err());
        assert!(RedisUrl::parse("redis://h:notaport").is_err());
    }
}
