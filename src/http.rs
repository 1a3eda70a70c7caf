//! Plain HTTP requests on the WebSocket listener (anything well-formed that is not an upgrade).
//!
//! By default they get 404, `/metrics` and `/debug/probes` included: the control plane is served
//! on the admin listener, and on this port only with `Config::control_on_main` (then it answers
//! those two paths before the hook). Install an [`HttpHandler`] (a closure works) that answers
//! the paths it knows and delegates the rest to [`NotFound`]. Every answer is followed by closing the
//! connection, so responses carry `Connection: close`.

use std::net::SocketAddr;

pub use hioload_wsproto::HttpRequest;

/// Answers a non-upgrade HTTP request by writing a complete HTTP/1.1 response into `response`.
pub trait HttpHandler: Send + Sync + 'static {
    /// Writes the response (status line, headers with `Connection: close`, body).
    fn handle(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>);
}

impl<F> HttpHandler for F
where
    F: Fn(&HttpRequest<'_>, SocketAddr, &mut Vec<u8>) + Send + Sync + 'static,
{
    fn handle(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>) {
        self(request, peer, response)
    }
}

/// Answers every request with `404 Not Found`.
#[derive(Copy, Clone, Debug, Default)]
pub struct NotFound;

impl HttpHandler for NotFound {
    fn handle(&self, _request: &HttpRequest<'_>, _peer: SocketAddr, response: &mut Vec<u8>) {
        write_response(
            response,
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            b"not found\n",
        );
    }
}

/// Appends a complete `HTTP/1.1` response with `Content-Length` and `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_a_complete_response() {
        let req = HttpRequest {
            method: "GET",
            path: "/x",
            head_len: 20,
        };
        let mut out = Vec::new();
        NotFound.handle(&req, "127.0.0.1:1".parse().unwrap(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 10\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnot found\n"));
    }
}
