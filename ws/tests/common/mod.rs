//! A test transport: keeps the unconsumed tail like a real transport does, records events and the
//! frames the session sent.
#![allow(dead_code)]

use hioload_wsproto::frame::{encode_client_frame, FrameHeader};
use hioload_wsproto::{Event, Limits, OpCode, ProtocolError, Session};

/// An owned copy of an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl From<&Event<'_>> for Ev {
    fn from(e: &Event<'_>) -> Self {
        match e {
            Event::Text(t) => Ev::Text(t.to_string()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(b) => Ev::Ping(b.to_vec()),
            Event::Pong(b) => Ev::Pong(b.to_vec()),
            Event::Close(c, r) => Ev::Close(c.map(|c| c.0), r.to_string()),
        }
    }
}

/// A frame the session sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub opcode: OpCode,
    pub fin: bool,
    pub payload: Vec<u8>,
}

/// Drives a server session the way a transport does.
pub struct Driver {
    pub session: Session,
    /// Received bytes not consumed yet.
    pub buf: Vec<u8>,
    /// Everything the session queued for sending.
    pub out: Vec<u8>,
    pub events: Vec<Ev>,
    pub error: Option<ProtocolError>,
    /// Echo text and binary messages back, like hioload-echo.
    pub echo: bool,
    /// Largest number of bytes left unconsumed after any call.
    pub max_retained: usize,
}

impl Driver {
    pub fn new(limits: Limits) -> Self {
        Driver {
            session: Session::new(limits),
            buf: Vec::new(),
            out: Vec::new(),
            events: Vec::new(),
            error: None,
            echo: true,
            max_retained: 0,
        }
    }

    pub fn server() -> Self {
        Self::new(Limits::default())
    }

    /// Appends `bytes` to the receive buffer and runs the session over it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.buf.extend_from_slice(bytes);
        let events = &mut self.events;
        let echo = self.echo;
        let result = self
            .session
            .receive(&mut self.buf, &mut self.out, |ev, out| {
                events.push(Ev::from(&ev));
                if echo {
                    let _ = match ev {
                        Event::Text(t) => out.send_text(t),
                        Event::Binary(b) => out.send_binary(b),
                        _ => Ok(()),
                    };
                }
            });
        match result {
            Ok(consumed) => {
                assert!(consumed <= self.buf.len());
                self.buf.drain(..consumed);
                self.max_retained = self.max_retained.max(self.buf.len());
                Ok(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(e)
            }
        }
    }

    /// Feeds `bytes` in pieces of the given sizes (cycled), stopping at the first error.
    pub fn feed_in_pieces(&mut self, bytes: &[u8], sizes: &[usize]) -> Result<(), ProtocolError> {
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = sizes[i % sizes.len()].max(1).min(bytes.len() - at);
            self.feed(&bytes[at..at + n])?;
            at += n;
            i += 1;
        }
        Ok(())
    }

    /// The frames sent so far, decoded (server frames must be unmasked).
    pub fn sent(&self) -> Vec<Sent> {
        server_frames(&self.out)
    }

    /// The close code of the last Close frame sent, if any (`Some(None)`: empty close).
    pub fn sent_close(&self) -> Option<Option<u16>> {
        self.sent()
            .iter()
            .rev()
            .find(|f| f.opcode == OpCode::Close)
            .map(|f| {
                (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]))
            })
    }
}

/// Decodes a stream of whole unmasked frames.
pub fn server_frames(mut bytes: &[u8]) -> Vec<Sent> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (h, n) = FrameHeader::decode(bytes).unwrap().expect("whole header");
        assert_eq!(h.mask, None, "server frames are never masked");
        assert_eq!(h.rsv, 0);
        let len = h.payload_len as usize;
        frames.push(Sent {
            opcode: h.opcode,
            fin: h.fin,
            payload: bytes[n..n + len].to_vec(),
        });
        bytes = &bytes[n + len..];
    }
    frames
}

/// A masked client frame with a fixed key.
pub fn client(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(opcode, fin, payload, [0x37, 0xfa, 0x21, 0x3d], &mut out);
    out
}

/// A masked client frame with raw first byte (FIN/RSV/opcode as given).
pub fn client_raw(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = client(OpCode::Binary, true, payload);
    out[0] = b0;
    out
}

/// A Close frame payload.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}
