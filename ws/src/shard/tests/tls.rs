//! TLS below the session, without a socket: a rustls client talks to the shard through the
//! in-memory transport; the handshake, the upgrade, echoes small and large, the close with
//! close_notify, and the refusals (plain HTTP, garbage) all run through the real layers.

use std::io::{Read, Write};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::*;
use crate::tls::test_pki::TestPki;
use crate::tls::{TlsAcceptor, TlsFiles};

struct TlsRig {
    rig: Rig,
    client: ClientConnection,
    slot: usize,
    _pki: TestPki,
}

impl TlsRig {
    fn new(tag: &str) -> TlsRig {
        let pki = TestPki::new(tag);
        let (cert, key) = pki.leaf("server", "localhost");
        let acceptor = TlsAcceptor::load(&TlsFiles::new(cert, key)).unwrap();
        let settings = Settings {
            tls: Some(acceptor),
            ..Settings::default()
        };
        let mut rig = Rig::new(settings);
        let io = FakeIo {
            room: usize::MAX,
            ..Default::default()
        };
        let slot = rig
            .shard
            .open_on(Listener::Tls, io, "127.0.0.1:1".parse().unwrap(), rig.now)
            .unwrap();
        let config = pki.client_config();
        let mut client =
            ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        client.set_buffer_limit(None);
        TlsRig {
            rig,
            client,
            slot,
            _pki: pki,
        }
    }

    /// Moves records both ways until neither side has anything to send; returns the plaintext
    /// the client received.
    fn pump(&mut self) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..64 {
            let mut records = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut records).unwrap();
            }
            if !records.is_empty() {
                // Split in odd pieces: records are held across reads.
                for piece in records.chunks(1000) {
                    self.rig.read(self.slot, piece);
                }
            }
            let out = match self.rig.shard.slot_mut(self.slot) {
                Some(_) => self.rig.sent(self.slot),
                None => Vec::new(),
            };
            if out.is_empty() && records.is_empty() {
                break;
            }
            let mut rd = &out[..];
            let mut buf = [0u8; 65536];
            while !rd.is_empty() {
                self.client.read_tls(&mut rd).unwrap();
                self.client.process_new_packets().unwrap();
                while let Ok(n @ 1..) = self.client.reader().read(&mut buf) {
                    plain.extend_from_slice(&buf[..n]);
                }
            }
        }
        plain
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.client.writer().write_all(bytes).unwrap();
        self.pump()
    }
}

fn unmasked_len(out: &[u8]) -> usize {
    let len = (out[1] & 0x7f) as usize;
    match len {
        126 => 4 + u16::from_be_bytes([out[2], out[3]]) as usize,
        127 => 10 + u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
        n => 2 + n,
    }
}

#[test]
fn tls_handshake_upgrade_echo_and_close() {
    let mut t = TlsRig::new("echo");
    t.pump();
    assert!(!t.client.is_handshaking(), "the handshake completes");
    assert_eq!(t.client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(t.rig.set.counters(0).snapshot().tls_handshakes, 1);

    let answer = t.send(UPGRADE);
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let echo = t.send(&client_frame(OpCode::Text, b"hello over tls"));
    assert_eq!(echo, b"\x81\x0ehello over tls");

    // A message larger than a record comes back whole, byte for byte.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let echo = t.send(&client_frame(OpCode::Binary, &big));
    assert_eq!(unmasked_len(&echo), echo.len());
    assert_eq!(&echo[echo.len() - big.len()..], &big[..]);

    // Our Close, then close_notify and FIN.
    let close = t.send(&client_frame(OpCode::Text, b"bye"));
    assert_eq!(&close[..4], b"\x88\x05\x03\xe8", "our Close 1000");
    assert!(!t.client.process_new_packets().unwrap().peer_has_closed());
    t.send(&client_frame(OpCode::Close, &1000u16.to_be_bytes()));
    assert!(t.client.process_new_packets().unwrap().peer_has_closed());
    let s = t.rig.shard.slot(t.slot).unwrap();
    assert!(s.io.fin, "our FIN follows close_notify");
    assert_eq!(t.rig.seen().closes.len(), 1);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_readable_400() {
    let mut t = TlsRig::new("plain");
    t.rig.read(t.slot, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = t.rig.sent(t.slot);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("wss://"), "{text}");
    assert!(t.rig.shard.slot(t.slot).unwrap().io.fin);
    assert_eq!(t.rig.set.counters(0).snapshot().tls_failures, 1);
    assert!(t.rig.seen().opened.is_empty());
}

#[test]
fn garbage_on_the_tls_port_gets_an_alert_and_the_connection_ends() {
    let mut t = TlsRig::new("garbage");
    // A handshake record header announcing a record, then bytes that are no ClientHello.
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    garbage.extend([0xab; 0x40]);
    t.rig.read(t.slot, &garbage);
    let out = t.rig.sent(t.slot);
    assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
    assert!(t.rig.shard.slot(t.slot).unwrap().io.fin);
    assert_eq!(t.rig.set.counters(0).snapshot().tls_failures, 1);
    // More input is discarded.
    t.rig.read(t.slot, &[0u8; 100]);
    assert!(t.rig.sent(t.slot).is_empty());
}

#[test]
fn a_tls_connection_without_certificates_is_refused() {
    let mut rig = Rig::new(Settings::default());
    let io = FakeIo::default();
    assert!(rig
        .shard
        .open_on(Listener::Tls, io, "127.0.0.1:1".parse().unwrap(), rig.now)
        .is_err());
}

#[test]
fn close_notify_ends_the_input_like_a_fin() {
    let mut t = TlsRig::new("notify");
    t.pump();
    t.send(UPGRADE);
    assert_eq!(t.send(&client_frame(OpCode::Text, b"hi")), b"\x81\x02hi");
    // close_notify (and bytes after it, which are not read) without a WebSocket close.
    t.client.send_close_notify();
    let mut records = Vec::new();
    while t.client.wants_write() {
        t.client.write_tls(&mut records).unwrap();
    }
    records.extend([0x17, 0x03, 0x03, 0x00, 0x10]);
    records.extend([0u8; 16]);
    t.rig.read(t.slot, &records);
    assert_eq!(
        t.rig.seen().closes.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1006]
    );
    assert!(t.rig.shard.slot(t.slot).is_none(), "released");
}
