//! The opening handshake (RFC 6455 §4): an HTTP/1.1 `GET` with `Upgrade: websocket`, answered by
//! `101 Switching Protocols` with `Sec-WebSocket-Accept`.
//!
//! Sans-IO and incremental: [`parse_request`] is called with everything received so far and answers
//! [`Parsed::Partial`] until the head is complete. Requests that are well-formed HTTP but not an
//! upgrade are handed back ([`Parsed::Http`]) so that the control plane can serve `/metrics` and
//! `/debug/probes` on the same listener. Everything else is a [`HttpError`] with the status RFC 7230 /
//! RFC 6455 name, written by [`write_error_response`]; the transport then closes the connection.

use std::io::Write;

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::config::Limits;

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Header slots on the stack: `Limits::max_headers` above this is capped to it.
pub const MAX_HEADERS_CAP: usize = 256;

/// Outcome of parsing the bytes received so far.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// The request head is not complete yet: read more and call again with all bytes so far.
    Partial,
    /// A valid WebSocket upgrade request.
    Upgrade(UpgradeRequest<'a>),
    /// A well-formed HTTP request that is not a WebSocket upgrade (e.g. `GET /metrics`).
    Http(HttpRequest<'a>),
    /// A bad request: send `write_error_response(err)` and close.
    Reject(HttpError),
}

/// A validated upgrade request; all fields borrow the receive buffer.
#[derive(Debug, Clone)]
pub struct UpgradeRequest<'a> {
    /// Request target, e.g. `/ws` (query string included).
    pub path: &'a str,
    /// `Host` header.
    pub host: &'a str,
    /// `Sec-WebSocket-Key` (validated: base64 of 16 bytes).
    pub key: &'a str,
    /// `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// Raw `Sec-WebSocket-Protocol` value (comma-separated tokens) of the first such header, if any.
    pub protocols: Option<&'a str>,
    /// Raw `Sec-WebSocket-Extensions` value of the first such header, if any.
    pub extensions: Option<&'a str>,
    /// Length of the request head in bytes; bytes after it already belong to the WebSocket stream.
    pub head_len: usize,
    /// The whole request head (request line and headers), for [`UpgradeRequest::headers`].
    pub head: &'a [u8],
}

impl<'a> UpgradeRequest<'a> {
    /// The path without its query string (`/ws` of `/ws?token=x`).
    pub fn path_only(&self) -> &'a str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }
    /// The query string, without `?` (`token=x` of `/ws?token=x`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
    /// The value of query parameter `name` (raw, not percent-decoded), if present.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
    /// Every header, in order, as (name, value) with the value trimmed; values that are not
    /// UTF-8 are skipped. Walks the head (already validated): no allocation.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let head = self.head;
        head.split(|&b| b == b'\n')
            .skip(1) // the request line
            .filter_map(|line| {
                let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
                let (name, value) = line.split_once(':')?;
                Some((name.trim(), value.trim()))
            })
    }
    /// The first header called `name` (ASCII case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), in its order.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.protocols
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// A well-formed HTTP request that is not an upgrade.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Request target, e.g. `/metrics`.
    pub path: &'a str,
    /// Length of the request head in bytes.
    pub head_len: usize,
}

/// An HTTP error answer to a bad handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// Status code: 400, 403, 404, 405, 426, 431, …
    pub status: u16,
    /// Short human-readable reason, also used as the response body and in log lines.
    pub reason: &'static str,
}

/// Decisions the server makes about a valid upgrade request: routing, Origin check, subprotocol and
/// extension negotiation. Every method has a permissive default.
pub trait UpgradePolicy {
    /// Whether `path` is served; `false` answers 404.
    fn route(&self, path: &str) -> bool {
        let _ = path;
        true
    }
    /// Whether the `Origin` is allowed; `false` answers 403.
    fn check_origin(&self, origin: Option<&str>) -> bool {
        let _ = origin;
        true
    }
    /// Picks one of the offered subprotocols (in the client's order), or none.
    fn select_protocol<'r>(&self, offered: &mut dyn Iterator<Item = &'r str>) -> Option<&'r str> {
        let _ = offered;
        None
    }
    /// The `Sec-WebSocket-Extensions` answer, or none (no extension is negotiated by default;
    /// without one, RSV bits on received frames are a protocol error).
    fn negotiate_extensions(&self, offered: Option<&str>) -> Option<&'static str> {
        let _ = offered;
        None
    }
}

impl HttpError {
    const fn new(status: u16, reason: &'static str) -> Self {
        HttpError { status, reason }
    }
    /// 400 for a malformed request head.
    pub const MALFORMED: HttpError = HttpError::new(400, "malformed HTTP request");
    /// 431 for a request head over `Limits::max_head_bytes`.
    pub const HEAD_TOO_LARGE: HttpError = HttpError::new(431, "request head too large");
    /// 431 for more than `Limits::max_headers` headers.
    pub const TOO_MANY_HEADERS: HttpError = HttpError::new(431, "too many request headers");
    /// 404 when the policy does not route the path.
    pub const NOT_FOUND: HttpError = HttpError::new(404, "no WebSocket endpoint at this path");
    /// 403 when the policy refuses the Origin.
    pub const FORBIDDEN_ORIGIN: HttpError = HttpError::new(403, "origin not allowed");
    /// 426 for a `Sec-WebSocket-Version` other than 13.
    pub const UNSUPPORTED_VERSION: HttpError =
        HttpError::new(426, "only Sec-WebSocket-Version 13 is supported");
    /// 405 for an upgrade attempt with a method other than GET.
    pub const METHOD_NOT_ALLOWED: HttpError = HttpError::new(405, "WebSocket upgrade requires GET");

    /// The standard reason phrase of the status line.
    pub fn status_text(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            409 => "Conflict",
            429 => "Too Many Requests",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Error",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.status_text(), self.reason)
    }
}

/// Whether the comma-separated header value `list` holds `token` (ASCII case-insensitive).
fn has_token(list: &[u8], token: &str) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the request head in `buf` (all bytes received so far).
///
/// A request "tries to upgrade" when it has an `Upgrade` header naming `websocket` or a
/// `Sec-WebSocket-Key`; such a request is either a valid [`Parsed::Upgrade`] or a [`Parsed::Reject`].
/// Any other well-formed request is [`Parsed::Http`].
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let cap = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut slots[..cap]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Parsed::Reject(HttpError::HEAD_TOO_LARGE);
            }
            return Parsed::Partial;
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(HttpError::TOO_MANY_HEADERS),
        Err(_) => return Parsed::Reject(HttpError::MALFORMED),
    };
    if head_len > limits.max_head_bytes {
        return Parsed::Reject(HttpError::HEAD_TOO_LARGE);
    }
    // `Complete` guarantees method, path and version are set.
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(HttpError::MALFORMED);
    };

    let mut host = None;
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut ws_version: Option<&[u8]> = None;
    let mut ws_version_count = 0;
    let mut key: Option<&[u8]> = None;
    let mut key_count = 0;
    let mut origin = None;
    let mut protocols = None;
    let mut extensions = None;
    let mut host_count = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = Some(h.value);
            host_count += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version = Some(h.value);
            ws_version_count += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value);
            key_count += 1;
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(h.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocols = protocols.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions = extensions.or(Some(h.value));
        }
    }

    if !upgrade_ws && key.is_none() {
        return Parsed::Http(HttpRequest {
            method,
            path,
            head_len,
        });
    }

    let reject = |status, reason| Parsed::Reject(HttpError { status, reason });
    if method != "GET" {
        return Parsed::Reject(HttpError::METHOD_NOT_ALLOWED);
    }
    if version != 1 {
        return reject(400, "WebSocket upgrade requires HTTP/1.1");
    }
    let host = match (host_count, host.map(std::str::from_utf8)) {
        (1, Some(Ok(h))) if !h.trim().is_empty() => h.trim(),
        (0, _) => return reject(400, "missing Host header"),
        _ => return reject(400, "invalid Host header"),
    };
    if !upgrade_ws {
        return reject(400, "Upgrade header must name websocket");
    }
    if !connection_upgrade {
        return reject(400, "Connection header must include upgrade");
    }
    if ws_version_count != 1 || ws_version.map(<[u8]>::trim_ascii) != Some(b"13".as_slice()) {
        return Parsed::Reject(HttpError::UNSUPPORTED_VERSION);
    }
    let key = match (key_count, key.map(<[u8]>::trim_ascii)) {
        (1, Some(k)) if is_valid_key(k) => k,
        (0, _) => return reject(400, "missing Sec-WebSocket-Key"),
        _ => return reject(400, "Sec-WebSocket-Key must be base64 of 16 bytes"),
    };
    let key = std::str::from_utf8(key).expect("a valid key is base64 ASCII");
    let text = |v: Option<&'a [u8]>| v.and_then(|v| std::str::from_utf8(v).ok()).map(str::trim);
    let (origin, protocols, extensions) = (text(origin), text(protocols), text(extensions));
    Parsed::Upgrade(UpgradeRequest {
        path,
        host,
        key,
        origin,
        protocols,
        extensions,
        head_len,
        head: &buf[..head_len],
    })
}

/// A key is the base64 encoding of exactly 16 bytes: 24 characters ending in `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let mut raw = [0u8; 18];
    key.len() == 24
        && matches!(
            base64::engine::general_purpose::STANDARD.decode_slice(key, &mut raw),
            Ok(16)
        )
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ++ GUID)), always 28 ASCII bytes.
pub fn accept_key(key: &str) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(digest, &mut out)
        .expect("20 bytes encode to 28");
    debug_assert_eq!(n, 28);
    out
}

/// Applies `policy` to a parsed upgrade and writes the `101` response (or, when the policy refuses,
/// the error response) into `out`. Returns the bytes written and whether the upgrade was accepted.
/// `out` of 512 bytes is always enough unless the policy picks a subprotocol or extension string
/// longer than 300 bytes; a response that does not fit `out` becomes a 500 error.
pub fn respond(
    req: &UpgradeRequest<'_>,
    policy: &dyn UpgradePolicy,
    out: &mut [u8],
) -> (usize, Result<(), HttpError>) {
    match negotiate(req, policy) {
        Ok(n) => write_accept(&accept_key(req.key), n.protocol, n.extensions, out),
        Err(err) => (write_error_response(&err, out), Err(err)),
    }
}

/// What the policy agreed to for an upgrade: the subprotocol and the extensions answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated<'a> {
    /// The subprotocol picked among the offered ones, if any.
    pub protocol: Option<&'a str>,
    /// The `Sec-WebSocket-Extensions` answer, if any.
    pub extensions: Option<&'static str>,
}

/// Applies `policy` to a parsed upgrade: routing (404), Origin (403), then the subprotocol and
/// extensions it picks.
pub fn negotiate<'a>(
    req: &UpgradeRequest<'a>,
    policy: &dyn UpgradePolicy,
) -> Result<Negotiated<'a>, HttpError> {
    if !policy.route(req.path) {
        return Err(HttpError::NOT_FOUND);
    }
    if !policy.check_origin(req.origin) {
        return Err(HttpError::FORBIDDEN_ORIGIN);
    }
    let mut tokens = req.offered_protocols();
    let protocol = policy.select_protocol(&mut tokens);
    let extensions = policy.negotiate_extensions(req.extensions);
    Ok(Negotiated {
        protocol,
        extensions,
    })
}

/// Writes the `101 Switching Protocols` answer for `accept` (see [`accept_key`]) with an optional
/// subprotocol and extensions into `out`; a response that does not fit becomes a 500.
pub fn write_accept(
    accept: &[u8; 28],
    protocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut [u8],
) -> (usize, Result<(), HttpError>) {
    let refuse = |err: HttpError, out: &mut [u8]| (write_error_response(&err, out), Err(err));
    let total = out.len();
    let mut w = &mut *out;
    let written = (|| -> std::io::Result<()> {
        w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")?;
        w.write_all(accept)?;
        w.write_all(b"\r\n")?;
        if let Some(p) = protocol {
            write!(w, "Sec-WebSocket-Protocol: {p}\r\n")?;
        }
        if let Some(e) = extensions {
            write!(w, "Sec-WebSocket-Extensions: {e}\r\n")?;
        }
        w.write_all(b"\r\n")
    })();
    match written {
        Ok(()) => (total - w.len(), Ok(())),
        Err(_) => refuse(
            HttpError::new(500, "handshake response does not fit the buffer"),
            out,
        ),
    }
}

/// Writes a complete, short HTTP/1.1 error response (`Connection: close`; for 426 also
/// `Sec-WebSocket-Version: 13`; for 405 `Allow: GET`) into `out` and returns its length.
/// 256 bytes are always enough for this crate's errors; a body that does not fit is dropped, and
/// 0 is returned only if not even the status line and headers fit.
pub fn write_error_response(err: &HttpError, out: &mut [u8]) -> usize {
    let write = |out: &mut [u8], body: &str| -> Option<usize> {
        let total = out.len();
        let mut w = out;
        write!(
            w,
            "HTTP/1.1 {} {}\r\nConnection: close\r\n",
            err.status,
            err.status_text()
        )
        .ok()?;
        match err.status {
            426 => w.write_all(b"Sec-WebSocket-Version: 13\r\n").ok()?,
            405 => w.write_all(b"Allow: GET\r\n").ok()?,
            _ => {}
        }
        let body_len = if body.is_empty() { 0 } else { body.len() + 1 };
        write!(
            w,
            "Content-Type: text/plain\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .ok()?;
        if !body.is_empty() {
            writeln!(w, "{body}").ok()?;
        }
        Some(total - w.len())
    };
    write(out, err.reason)
        .or_else(|| write(out, ""))
        .unwrap_or(0)
}

/// Appends a complete HTTP/1.1 response (`Connection: close`, `Content-Length`) with `status`,
/// the extra `headers` and `body` to `out` (an application's refusal of an upgrade). Header
/// names and values with CR or LF are dropped (no response splitting).
pub fn write_response(status: u16, headers: &[(String, String)], body: &[u8], out: &mut Vec<u8>) {
    let reason = HttpError { status, reason: "" }.status_text();
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
        if clean(name) && clean(value) && !name.is_empty() {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            &accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn key_validation() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ"), "unpadded");
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZXg="), "17 bytes");
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j"), "15 bytes");
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ!="), "not base64");
    }

    #[test]
    fn error_response_fits_and_is_complete() {
        let mut out = [0u8; 256];
        let n = write_error_response(&HttpError::UNSUPPORTED_VERSION, &mut out);
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let len: usize = text
            .split("Content-Length: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
    }
}
