//! The opening handshake (RFC 6455 §4): an HTTP/1.1 `GET` with `Upgrade: websocket`, answered by
//! `101 Switching Protocols` with `Sec-WebSocket-Accept`.
//!
//! Sans-IO and incremental: [`parse_request`] is called with everything received so far and answers
//! [`Parsed::Partial`] until the head is complete. Requests that are well-formed HTTP but not an
//! upgrade are handed back ([`Parsed::Http`]) so that the control plane can serve `/metrics` and
//! `/debug/probes` on the same listener. Everything else is a [`HttpError`] with the status RFC 7230 /
//! RFC 6455 name, written by [`write_error_response`]; the transport then closes the connection.

use crate::config::Limits;

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
    /// Raw `Sec-WebSocket-Protocol` value(s) joined, if any (comma-separated tokens).
    pub protocols: Option<&'a str>,
    /// Raw `Sec-WebSocket-Extensions` value(s), if any.
    pub extensions: Option<&'a str>,
    /// Length of the request head in bytes; bytes after it already belong to the WebSocket stream.
    pub head_len: usize,
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

/// Parses the request head in `buf` (all bytes received so far).
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let _ = (buf, limits);
    todo!("ws: parse_request")
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ++ GUID)), always 28 ASCII bytes.
pub fn accept_key(key: &str) -> [u8; 28] {
    let _ = key;
    todo!("ws: accept_key")
}

/// Applies `policy` to a parsed upgrade and writes the `101` response (or, when the policy refuses,
/// the error response) into `out`. Returns the bytes written and whether the upgrade was accepted.
/// `out` of 512 bytes is always enough.
pub fn respond(req: &UpgradeRequest<'_>, policy: &dyn UpgradePolicy, out: &mut [u8]) -> (usize, Result<(), HttpError>) {
    let _ = (req, policy, out);
    todo!("ws: respond")
}

/// Writes a complete, short HTTP/1.1 error response (`Connection: close`; for 426 also
/// `Sec-WebSocket-Version: 13`) into `out` and returns its length. 256 bytes are always enough.
pub fn write_error_response(err: &HttpError, out: &mut [u8]) -> usize {
    let _ = (err, out);
    todo!("ws: write_error_response")
}
