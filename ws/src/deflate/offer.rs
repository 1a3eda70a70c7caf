//! permessage-deflate negotiation (RFC 7692 §5, §7.1): the client's `Sec-WebSocket-Extensions`
//! offers in, the parameters agreed and the answer out.
//!
//! A header may hold several offers (comma-separated, in the client's order of preference), each
//! with parameters with or without values, values as tokens or quoted strings. The first
//! permessage-deflate offer the server can accept wins; an offer with an unknown, repeated or
//! invalid parameter is declined and the next one is tried; none acceptable means no extension,
//! never a failed handshake.

use super::{DeflateConfig, DeflateMode};

/// The parameters agreed for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// We reset our compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (so our inflater may too).
    pub client_no_context_takeover: bool,
    /// The window we compress with (8..=15; the client's limit or ours).
    pub server_window_bits: u8,
    /// `server_max_window_bits` goes in the answer (the client asked for it, or ours is < 15).
    pub answer_server_window: bool,
    /// `client_max_window_bits=N` answered (the client said it accepts one).
    pub client_window_bits: Option<u8>,
}

/// One offer's parameters, as parsed.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Why an offer is declined (logged at debug level by the caller).
pub type Decline = &'static str;

/// The first acceptable permessage-deflate offer of `header` under `cfg`, or `None` (mode off,
/// no such offer, or every one declined; `declined` is called with each reason).
pub fn negotiate(
    header: Option<&str>,
    cfg: &DeflateConfig,
    mut declined: impl FnMut(Decline),
) -> Option<Agreed> {
    if cfg.mode == DeflateMode::Off {
        return None;
    }
    let mut parser = Parser::new(header?.as_bytes());
    while let Some(name) = parser.extension_name() {
        let offer = parse_params(&mut parser);
        if !name.eq_ignore_ascii_case(b"permessage-deflate") {
            continue;
        }
        match offer.and_then(|o| accept(&o, cfg)) {
            Ok(agreed) => return Some(agreed),
            Err(reason) => declined(reason),
        }
    }
    None
}

/// The server's side of one valid offer.
fn accept(offer: &Offer, cfg: &DeflateConfig) -> Result<Agreed, Decline> {
    let ours = match cfg.mode {
        DeflateMode::Dedicated { window_bits } => window_bits,
        _ => 15,
    };
    let server_window_bits = offer.server_max_window_bits.map_or(ours, |n| n.min(ours));
    Ok(match cfg.mode {
        DeflateMode::Off => return Err("permessage-deflate is off"),
        // No state per connection: both sides reset after each message (a server may ask the
        // client for client_no_context_takeover even when not offered, RFC 7692 §7.1.1.2).
        DeflateMode::Shared => Agreed {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_window_bits,
            answer_server_window: offer.server_max_window_bits.is_some(),
            client_window_bits: None,
        },
        DeflateMode::Dedicated { window_bits } => Agreed {
            server_no_context_takeover: offer.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover,
            server_window_bits,
            answer_server_window: offer.server_max_window_bits.is_some() || window_bits < 15,
            // Bound the client's window (our inflater's memory) when it lets us.
            client_window_bits: offer
                .client_max_window_bits
                .map(|v| v.unwrap_or(15).min(window_bits)),
        },
    })
}

/// Parses the parameters after an extension name, up to the next offer.
fn parse_params(p: &mut Parser<'_>) -> Result<Offer, Decline> {
    let mut offer = Offer::default();
    let mut error = None;
    while let Some(param) = p.param() {
        let Ok((name, value)) = param else {
            error.get_or_insert("malformed parameter");
            continue;
        };
        let result = match name.to_ascii_lowercase().as_slice() {
            b"server_no_context_takeover" => flag(&mut offer.server_no_context_takeover, value),
            b"client_no_context_takeover" => flag(&mut offer.client_no_context_takeover, value),
            b"server_max_window_bits" => match (offer.server_max_window_bits, value) {
                (Some(_), _) => Err("repeated server_max_window_bits"),
                (None, None) => Err("server_max_window_bits without a value"),
                (None, Some(v)) => window_bits(&v).map(|n| offer.server_max_window_bits = Some(n)),
            },
            b"client_max_window_bits" => match offer.client_max_window_bits {
                Some(_) => Err("repeated client_max_window_bits"),
                None => match value {
                    None => {
                        offer.client_max_window_bits = Some(None);
                        Ok(())
                    }
                    Some(v) => {
                        window_bits(&v).map(|n| offer.client_max_window_bits = Some(Some(n)))
                    }
                },
            },
            _ => Err("unknown parameter"),
        };
        if let Err(e) = result {
            error.get_or_insert(e);
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(offer),
    }
}

fn flag(seen: &mut bool, value: Option<Vec<u8>>) -> Result<(), Decline> {
    if value.is_some() {
        return Err("a value on a flag parameter");
    }
    if std::mem::replace(seen, true) {
        return Err("repeated parameter");
    }
    Ok(())
}

/// A window size: 8..=15, decimal, no leading zero (RFC 7692 §7.1.2).
fn window_bits(v: &[u8]) -> Result<u8, Decline> {
    match v {
        [d] if (b'8'..=b'9').contains(d) => Ok(d - b'0'),
        [b'1', d] if (b'0'..=b'5').contains(d) => Ok(10 + d - b'0'),
        _ => Err("window bits not in 8..15"),
    }
}

/// The answer for `a`: `permessage-deflate` and the parameters agreed, written into `buf`.
pub fn answer<'b>(a: &Agreed, buf: &'b mut [u8; 128]) -> &'b str {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = w.write_all(b"permessage-deflate");
    if a.server_no_context_takeover {
        let _ = w.write_all(b"; server_no_context_takeover");
    }
    if a.client_no_context_takeover {
        let _ = w.write_all(b"; client_no_context_takeover");
    }
    if a.answer_server_window {
        let _ = write!(w, "; server_max_window_bits={}", a.server_window_bits);
    }
    if let Some(n) = a.client_window_bits {
        let _ = write!(w, "; client_max_window_bits={n}");
    }
    let n = 128 - w.len();
    std::str::from_utf8(&buf[..n]).expect("ASCII")
}

/// A cursor over an extension list: `ext *( ";" param ) *( "," ext ... )`.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Parser { s, pos: 0 }
    }

    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(|&c| is_tchar(c)) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    /// The next extension's name (skipping empty list elements and anything malformed up to
    /// the next comma), or `None` at the end.
    fn extension_name(&mut self) -> Option<&'a [u8]> {
        loop {
            self.skip_ws();
            match self.s.get(self.pos) {
                None => return None,
                Some(b',') => self.pos += 1,
                Some(_) => {
                    let name = self.token();
                    if !name.is_empty() {
                        return Some(name);
                    }
                    self.skip_to_comma();
                }
            }
        }
    }

    /// The next parameter of the current extension: `Ok((name, value))`, `Err(())` if
    /// malformed (skipped to the next `;` or `,`), `None` at the end of the extension.
    #[allow(clippy::type_complexity)]
    fn param(&mut self) -> Option<Result<(Vec<u8>, Option<Vec<u8>>), ()>> {
        self.skip_ws();
        match self.s.get(self.pos) {
            Some(b';') => self.pos += 1,
            None | Some(b',') => return None,
            Some(_) => {
                self.skip_to_separator();
                return Some(Err(()));
            }
        }
        self.skip_ws();
        let name = self.token().to_vec();
        if name.is_empty() {
            self.skip_to_separator();
            return Some(Err(()));
        }
        self.skip_ws();
        if self.s.get(self.pos) != Some(&b'=') {
            return Some(Ok((name, None)));
        }
        self.pos += 1;
        self.skip_ws();
        let value = if self.s.get(self.pos) == Some(&b'"') {
            self.quoted()
        } else {
            let t = self.token();
            (!t.is_empty()).then(|| t.to_vec())
        };
        match value {
            Some(v) => Some(Ok((name, Some(v)))),
            None => {
                self.skip_to_separator();
                Some(Err(()))
            }
        }
    }

    /// A quoted string's content (escapes resolved); its content must be a token (RFC 6455
    /// §9.1). `None` if unterminated or not a token.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        self.pos += 1;
        let mut v = Vec::new();
        loop {
            match *self.s.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    v.push(*self.s.get(self.pos + 1)?);
                    self.pos += 2;
                }
                c => {
                    v.push(c);
                    self.pos += 1;
                }
            }
        }
        (!v.is_empty() && v.iter().all(|&c| is_tchar(c))).then_some(v)
    }

    fn skip_to_separator(&mut self) {
        let mut quoted = false;
        while let Some(&c) = self.s.get(self.pos) {
            match c {
                b'"' => quoted = !quoted,
                b'\\' if quoted => self.pos += 1,
                b';' | b',' if !quoted => return,
                _ => {}
            }
            self.pos += 1;
        }
    }

    fn skip_to_comma(&mut self) {
        loop {
            self.skip_to_separator();
            match self.s.get(self.pos) {
                Some(b';') => self.pos += 1,
                _ => return,
            }
        }
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> DeflateConfig {
        DeflateConfig {
            mode: DeflateMode::Shared,
            ..DeflateConfig::default()
        }
    }

    fn dedicated(window_bits: u8) -> DeflateConfig {
        DeflateConfig {
            mode: DeflateMode::Dedicated { window_bits },
            ..DeflateConfig::default()
        }
    }

    fn answer_of(header: &str, cfg: &DeflateConfig) -> Option<String> {
        let mut buf = [0u8; 128];
        negotiate(Some(header), cfg, |_| {}).map(|a| answer(&a, &mut buf).to_string())
    }

    #[test]
    fn a_browser_offer_gets_the_shared_answer() {
        assert_eq!(
            answer_of("permessage-deflate; client_max_window_bits", &shared()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }

    #[test]
    fn dedicated_answers_what_was_offered_and_bounds_the_client_window() {
        let cfg = dedicated(15);
        assert_eq!(
            answer_of("permessage-deflate", &cfg).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            answer_of(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits",
                &cfg
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
        );
        let small = dedicated(11);
        assert_eq!(
            answer_of("permessage-deflate; client_max_window_bits=13", &small).as_deref(),
            Some("permessage-deflate; server_max_window_bits=11; client_max_window_bits=11")
        );
        let a = negotiate(
            Some("permessage-deflate; server_max_window_bits=9"),
            &small,
            |_| {},
        )
        .unwrap();
        assert_eq!((a.server_window_bits, a.answer_server_window), (9, true));
    }

    #[test]
    fn quoted_values_and_several_offers() {
        let cfg = dedicated(15);
        // The first offer is invalid (window 16), the second has a quoted value: it wins.
        let h = "permessage-deflate; client_max_window_bits=16, permessage-deflate; server_max_window_bits=\"10\"";
        assert_eq!(
            answer_of(h, &cfg).as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
        // Other extensions are skipped, whatever their parameters.
        let h = "x-webkit-deflate-frame; foo=\"a,b;c\", permessage-deflate";
        assert_eq!(answer_of(h, &cfg).as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn invalid_offers_are_declined_never_failed() {
        let cfg = shared();
        for h in [
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=1 5",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=\"",
            "permessage-deflate; ;",
            "",
            "foo, bar",
        ] {
            let mut reasons = Vec::new();
            assert_eq!(negotiate(Some(h), &cfg, |r| reasons.push(r)), None, "{h}");
            if h.starts_with("permessage") {
                assert_eq!(reasons.len(), 1, "{h}: {reasons:?}");
            }
        }
        assert_eq!(negotiate(None, &cfg, |_| {}), None);
        let off = DeflateConfig {
            mode: DeflateMode::Off,
            ..DeflateConfig::default()
        };
        assert_eq!(negotiate(Some("permessage-deflate"), &off, |_| {}), None);
    }
}
