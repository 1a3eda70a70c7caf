//! The opening handshake: incremental parsing, every rejection with its status, the policy hooks
//! and well-formed HTTP answers.

use hioload_wsproto::handshake::{
    parse_request, respond, write_error_response, HttpError, Parsed, UpgradePolicy,
};
use hioload_wsproto::Limits;

const GOOD: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn parse(req: &str) -> Parsed<'_> {
    parse_request(req.as_bytes(), &Limits::default())
}

/// Replaces header `name`'s line in GOOD (or removes it when `value` is None).
fn with_header(name: &str, value: Option<&str>) -> String {
    let mut out = String::new();
    for line in GOOD.split_inclusive("\r\n") {
        if line
            .to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        {
            if let Some(v) = value {
                out.push_str(&format!("{name}: {v}\r\n"));
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

fn status(req: &str) -> u16 {
    match parse(req) {
        Parsed::Reject(e) => e.status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn valid_request_parses_with_all_fields() {
    let Parsed::Upgrade(req) = parse(GOOD) else {
        panic!()
    };
    assert_eq!(req.path, "/chat?room=1");
    assert_eq!(req.host, "server.example.com");
    assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(req.origin, Some("http://example.com"));
    assert_eq!(req.protocols, Some("chat, superchat"));
    assert_eq!(req.extensions, None);
    assert_eq!(req.head_len, GOOD.len());
}

#[test]
fn incremental_parsing_is_partial_until_the_head_ends() {
    let mut bytes = GOOD.as_bytes().to_vec();
    bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // the first frame already arrived
    for end in 0..GOOD.len() {
        assert!(
            matches!(
                parse_request(&bytes[..end], &Limits::default()),
                Parsed::Partial
            ),
            "cut at {end}"
        );
    }
    let Parsed::Upgrade(req) = parse_request(&bytes, &Limits::default()) else {
        panic!()
    };
    assert_eq!(
        req.head_len,
        GOOD.len(),
        "bytes after the head belong to the WebSocket stream"
    );
}

#[test]
fn header_tokens_are_case_insensitive_lists() {
    let req = with_header("Connection", Some("keep-alive, UPGRADE"));
    let req = req.replace("Upgrade: websocket", "upgrade: WebSocket");
    assert!(matches!(parse(&req), Parsed::Upgrade(_)));
}

#[test]
fn non_upgrade_requests_go_to_the_caller() {
    let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let Parsed::Http(r) = parse(metrics) else {
        panic!()
    };
    assert_eq!(
        (r.method, r.path, r.head_len),
        ("GET", "/metrics", metrics.len())
    );
    assert!(matches!(
        parse("POST /debug/probes HTTP/1.0\r\n\r\n"),
        Parsed::Http(_)
    ));
    // An Upgrade to another protocol is not ours either.
    assert!(matches!(
        parse("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
        Parsed::Http(_)
    ));
}

#[test]
fn upgrade_with_another_method_is_405() {
    assert_eq!(status(&GOOD.replacen("GET", "POST", 1)), 405);
}

#[test]
fn upgrade_over_http_1_0_is_400() {
    assert_eq!(status(&GOOD.replacen("HTTP/1.1", "HTTP/1.0", 1)), 400);
}

#[test]
fn missing_or_repeated_host_is_400() {
    assert_eq!(status(&with_header("Host", None)), 400);
    assert_eq!(
        status(&GOOD.replacen("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n", 1)),
        400
    );
}

#[test]
fn missing_upgrade_or_connection_token_is_400() {
    assert_eq!(
        status(&with_header("Upgrade", None)),
        400,
        "key without Upgrade"
    );
    assert_eq!(status(&with_header("Upgrade", Some("websocket2"))), 400);
    assert_eq!(status(&with_header("Connection", None)), 400);
    assert_eq!(status(&with_header("Connection", Some("keep-alive"))), 400);
}

#[test]
fn wrong_or_missing_version_is_426() {
    assert_eq!(
        status(&with_header("Sec-WebSocket-Version", Some("8"))),
        426
    );
    assert_eq!(status(&with_header("Sec-WebSocket-Version", None)), 426);
    assert_eq!(
        status(&with_header("Sec-WebSocket-Version", Some("13, 8"))),
        426
    );
}

#[test]
fn bad_key_is_400() {
    assert_eq!(status(&with_header("Sec-WebSocket-Key", None)), 400);
    assert_eq!(
        status(&with_header(
            "Sec-WebSocket-Key",
            Some("dGhlIHNhbXBsZSBub25jZQ")
        )),
        400
    );
    assert_eq!(
        status(&with_header(
            "Sec-WebSocket-Key",
            Some("dGhlIHNhbXBsZSBub25jZXg=")
        )),
        400
    );
    assert_eq!(
        status(&with_header(
            "Sec-WebSocket-Key",
            Some("not base64 at all!!!!!==")
        )),
        400
    );
}

#[test]
fn oversized_head_is_431() {
    let limits = Limits::default();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n",
        "a".repeat(limits.max_head_bytes)
    );
    // Still incomplete, but already over the limit: refused without waiting for the end.
    assert_eq!(
        parse_request(big.as_bytes(), &limits).reject_status(),
        Some(431)
    );
    let complete = format!("{big}\r\n");
    assert_eq!(
        parse_request(complete.as_bytes(), &limits).reject_status(),
        Some(431)
    );
}

#[test]
fn too_many_headers_is_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..64 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_eq!(status(&req), 431);
    let limits = Limits {
        max_headers: 100,
        ..Limits::default()
    };
    assert!(matches!(
        parse_request(req.as_bytes(), &limits),
        Parsed::Http(_)
    ));
}

#[test]
fn malformed_http_is_400() {
    assert_eq!(status("GET / HTTP/1.1\r\nHost x\r\n\r\n"), 400);
    let tls_client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert_eq!(
        parse_request(tls_client_hello, &Limits::default()).reject_status(),
        Some(400)
    );
}

trait RejectStatus {
    fn reject_status(&self) -> Option<u16>;
}
impl RejectStatus for Parsed<'_> {
    fn reject_status(&self) -> Option<u16> {
        match self {
            Parsed::Reject(e) => Some(e.status),
            _ => None,
        }
    }
}

struct Policy;
impl UpgradePolicy for Policy {
    fn route(&self, path: &str) -> bool {
        path.starts_with("/chat")
    }
    fn check_origin(&self, origin: Option<&str>) -> bool {
        origin == Some("http://example.com")
    }
    #[allow(clippy::manual_find)]
    fn select_protocol<'r>(&self, offered: &mut dyn Iterator<Item = &'r str>) -> Option<&'r str> {
        // `for` works on the trait object (Iterator adapters like `find` need `Sized`).
        for p in offered {
            if p == "superchat" {
                return Some(p);
            }
        }
        None
    }
    fn negotiate_extensions(&self, offered: Option<&str>) -> Option<&'static str> {
        offered.map(|_| "x-test")
    }
}

fn answer(req: &str, policy: &dyn UpgradePolicy) -> (String, Result<(), HttpError>) {
    let Parsed::Upgrade(r) = parse(req) else {
        panic!()
    };
    let mut out = [0u8; 512];
    let (n, result) = respond(&r, policy, &mut out);
    (String::from_utf8(out[..n].to_vec()).unwrap(), result)
}

#[test]
fn policy_selects_subprotocol_and_extension() {
    let req = GOOD.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    let (text, result) = answer(&req, &Policy);
    assert_eq!(result, Ok(()));
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    assert_eq!(
        resp.parse(text.as_bytes()).unwrap(),
        httparse::Status::Complete(text.len())
    );
    assert_eq!(resp.code, Some(101));
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    assert_eq!(
        get("Sec-WebSocket-Accept"),
        Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
    );
    assert_eq!(get("Sec-WebSocket-Protocol"), Some(&b"superchat"[..]));
    assert_eq!(get("Sec-WebSocket-Extensions"), Some(&b"x-test"[..]));
    assert_eq!(get("Upgrade"), Some(&b"websocket"[..]));

    // The permissive default policy picks no subprotocol.
    struct Default;
    impl UpgradePolicy for Default {}
    let (text, _) = answer(GOOD, &Default);
    assert!(!text.contains("Sec-WebSocket-Protocol"));
}

#[test]
fn policy_refusals_are_404_and_403() {
    let (text, result) = answer(&GOOD.replacen("/chat?room=1", "/other", 1), &Policy);
    assert_eq!(result.unwrap_err().status, 404);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
    let (text, result) = answer(&with_header("Origin", Some("http://evil.example")), &Policy);
    assert_eq!(result.unwrap_err().status, 403);
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
}

#[test]
fn error_responses_are_complete_http() {
    for err in [
        HttpError::MALFORMED,
        HttpError::FORBIDDEN_ORIGIN,
        HttpError::NOT_FOUND,
        HttpError::METHOD_NOT_ALLOWED,
        HttpError::UNSUPPORTED_VERSION,
        HttpError::HEAD_TOO_LARGE,
        HttpError::TOO_MANY_HEADERS,
    ] {
        let mut out = [0u8; 256];
        let n = write_error_response(&err, &mut out);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&out[..n]).unwrap() {
            httparse::Status::Complete(h) => h,
            httparse::Status::Partial => panic!("incomplete {err:?}"),
        };
        assert_eq!(resp.code, Some(err.status));
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        assert_eq!(get("Connection"), Some(&b"close"[..]));
        let len: usize = std::str::from_utf8(get("Content-Length").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n - head, len);
        assert_eq!(get("Sec-WebSocket-Version").is_some(), err.status == 426);
    }
    // A buffer too small for the body still gets a complete head.
    let mut small = [0u8; 130];
    let n = write_error_response(&HttpError::HEAD_TOO_LARGE, &mut small);
    assert!(n > 0 && small[..n].ends_with(b"Content-Length: 0\r\n\r\n"));
}
