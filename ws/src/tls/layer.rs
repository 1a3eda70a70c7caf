//! One connection's TLS: records in, plaintext out; plaintext in, records out.
//!
//! Driven through rustls's *unbuffered* API: rustls keeps no buffer of its own for the
//! connection. Ciphertext arrives in the transport's receive buffer and is decrypted there; a
//! partial record at the end of a read is held by this layer (at most one record, ~18 KiB) and
//! put back in front of the next read by the transport, exactly as a partial frame is held for
//! a plain connection; records we send are encrypted into the thread's scratch buffer and
//! queued on the wire like any other bytes. So an idle TLS connection holds rustls's state
//! (keys, sequence numbers) and nothing else.
//!
//! rustls 0.23 still copies each decrypted record into a `Vec` of its own before handing it out,
//! and encrypts each outgoing record into a fresh `Vec` before copying it into our buffer:
//! two allocations per record, inside rustls (measured in docs/BENCHMARKS.md).

use std::io;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::TlsAcceptor;
use crate::held::HeldInput;

/// The largest record on the wire: a 5-byte header and 2^14 bytes of plaintext grown by at most
/// 2048 bytes of encryption overhead (TLS 1.2's bound; TLS 1.3's is 256). A held remainder is
/// always shorter.
pub const MAX_RECORD: usize = 5 + (1 << 14) + 2048;
/// Plaintext per record we send (TLS's maximum).
pub const RECORD_PLAIN: usize = 1 << 14;
/// Room for one encrypted full record.
const RECORD_ROOM: usize = RECORD_PLAIN + 256;
/// Steps of one `receive` or `seal` at most (every step consumes input or makes output; the bound
/// only guards against a state machine that would stop doing either).
const MAX_STEPS: usize = 4096;

/// What a TLS step found wrong: rustls's verdict on the peer's records (an alert is queued for
/// it), or our own (a remainder larger than any record).
#[derive(Debug)]
pub struct TlsFailure(pub String);

/// What [`TlsLayer::receive`] did besides appending plaintext.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// The handshake completed in this step.
    pub handshake_done: bool,
    /// The peer sent close_notify: no more input will come.
    pub peer_closed: bool,
}

/// Records to send, built in place: a buffer whose length only grows (zero-filled once, to its
/// high-water mark) and the part of it in use, so that encrypting into it costs no fill.
#[derive(Debug, Default)]
pub struct RecordBuf {
    buf: Vec<u8>,
    len: usize,
}

impl RecordBuf {
    /// An empty buffer (allocates nothing).
    pub const fn new() -> Self {
        RecordBuf {
            buf: Vec::new(),
            len: 0,
        }
    }
    /// The records built so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets the records (keeps the storage).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Storage held.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// At least `n` writable bytes after those in use.
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() < self.len + n {
            self.buf.resize(self.len + n, 0);
        }
        &mut self.buf[self.len..]
    }
    /// The first `n` bytes of the last [`RecordBuf::room`] are in use now.
    fn commit(&mut self, n: usize) {
        self.len += n;
    }
}

/// One connection's TLS state; see the module documentation.
pub struct TlsLayer {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a partial record (or of handshake records rustls has read but not
    /// discarded yet), until the rest arrives.
    held: HeldInput,
    /// Our close_notify is queued.
    close_notify_sent: bool,
    /// rustls refused the peer's input, or encryption failed: nothing more goes through.
    failed: bool,
    handshaken: bool,
    /// Some input arrived.
    started: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("held", &self.held.len())
            .field("handshaken", &self.handshaken)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    /// A server connection that waits for the client's hello.
    pub fn new(acceptor: &TlsAcceptor) -> Result<TlsLayer, TlsFailure> {
        let conn = UnbufferedServerConnection::new(acceptor.config().clone())
            .map_err(|e| TlsFailure(e.to_string()))?;
        Ok(TlsLayer {
            conn,
            held: HeldInput::new(),
            close_notify_sent: false,
            failed: false,
            handshaken: false,
            started: false,
        })
    }

    /// The held ciphertext, for the transport to put in front of the next read.
    pub fn held_mut(&mut self) -> &mut HeldInput {
        &mut self.held
    }

    /// Bytes held.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Memory this layer holds beyond rustls's fixed state (the held ciphertext).
    pub fn memory(&self) -> usize {
        self.held.capacity()
    }

    /// Whether no byte has arrived yet (the next input is the client's first).
    pub fn is_fresh(&self) -> bool {
        !self.started
    }

    /// Whether the handshake is complete.
    pub fn is_handshaken(&self) -> bool {
        self.handshaken
    }

    /// Whether the layer failed (nothing more is read or written).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Whether our close_notify is queued.
    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// The negotiated protocol version and cipher suite, for logs.
    pub fn describe(&self) -> (Option<rustls::ProtocolVersion>, Option<rustls::CipherSuite>) {
        (
            self.conn.protocol_version(),
            self.conn.negotiated_cipher_suite().map(|s| s.suite()),
        )
    }

    /// Runs rustls over `input` (the held ciphertext first, then what was read): decrypted
    /// application data is appended to `plain`; handshake records to send are appended to
    /// `out`. What is left unprocessed (a partial record) is held. On an error, the alert rustls
    /// has for the peer is appended to `out` and the layer fails.
    pub fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut RecordBuf,
    ) -> Result<Received, TlsFailure> {
        debug_assert!(
            self.held.is_empty(),
            "held ciphertext goes in front of input"
        );
        let mut done = Received::default();
        self.started |= !input.is_empty();
        if self.failed {
            return Ok(done);
        }
        let mut offset = 0;
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut input[offset..]);
            let mut discard = discard;
            let more = match state {
                Err(e) => {
                    offset += discard;
                    self.fail(&mut input[offset..], out, &e);
                    return Err(TlsFailure(e.to_string()));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                self.failed = true;
                                return Err(TlsFailure(e.to_string()));
                            }
                        }
                    }
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, out);
                    true
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes are in `out`: the caller queues them on the wire.
                    transmit.done();
                    true
                }
                Ok(ConnectionState::PeerClosed) => {
                    done.peer_closed = true;
                    true
                }
                Ok(ConnectionState::ReadEarlyData(_)) => true, // early data is off (0 bytes)
                // Needs more input (BlockedHandshake, WriteTraffic), or closed both ways.
                Ok(_) => false,
            };
            offset += discard;
            if !more {
                break;
            }
        }
        if !self.handshaken && !self.conn.is_handshaking() {
            self.handshaken = true;
            done.handshake_done = true;
        }
        let rest = &input[offset..];
        if rest.len() > MAX_RECORD + (1 << 16) {
            // More unprocessed bytes than a record and a handshake message: not TLS we serve.
            self.failed = true;
            return Err(TlsFailure(format!(
                "{} bytes of input that make no record",
                rest.len()
            )));
        }
        if !rest.is_empty() && self.held.keep(rest).is_err() {
            self.failed = true;
            return Err(TlsFailure("out of memory for a partial record".into()));
        }
        Ok(done)
    }

    /// Encrypts `plain` into records appended to `out`, with any handshake records rustls
    /// still has to send in front of them.
    pub fn seal(&mut self, plain: &[u8], out: &mut RecordBuf) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("TLS connection failed"));
        }
        let mut rest = plain;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(RECORD_PLAIN)];
            self.with_write_traffic(out, |traffic, out| {
                let mut room = RECORD_ROOM;
                loop {
                    match traffic.encrypt(chunk, out.room(room)) {
                        Ok(n) => {
                            out.commit(n);
                            return Ok(());
                        }
                        Err(EncryptError::InsufficientSize(need)) => room = need.required_size,
                        Err(e) => return Err(io::Error::other(format!("TLS encryption: {e}"))),
                    }
                }
            })?;
            rest = &rest[chunk.len()..];
        }
        Ok(())
    }

    /// Appends our close_notify alert to `out` (once).
    pub fn close_notify(&mut self, out: &mut RecordBuf) -> io::Result<()> {
        if self.close_notify_sent || self.failed || !self.handshaken {
            self.close_notify_sent = true;
            return Ok(());
        }
        self.close_notify_sent = true;
        self.with_write_traffic(out, |traffic, out| {
            match traffic.queue_close_notify(out.room(64)) {
                Ok(n) => {
                    out.commit(n);
                    Ok(())
                }
                Err(e) => Err(io::Error::other(format!("TLS close_notify: {e}"))),
            }
        })
    }

    /// Brings rustls to its write state (sending what handshake records it has first) and runs
    /// `f` there.
    fn with_write_traffic(
        &mut self,
        out: &mut RecordBuf,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut RecordBuf,
        ) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut f = Some(f);
        for _ in 0..MAX_STEPS {
            // The held bytes are what rustls last saw unprocessed: the same bytes at the same
            // place, as its handshake reassembly expects.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.held.as_mut_slice());
            let result = match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let f = f.take().expect("runs once");
                    Some(f(&mut traffic, out))
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, out);
                    None
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(other) => Some(Err(io::Error::other(format!(
                    "TLS connection cannot send now ({other:?})"
                )))),
                Err(e) => Some(Err(io::Error::other(format!("TLS: {e}")))),
            };
            self.held.discard_front(discard);
            if let Some(result) = result {
                if result.is_err() {
                    self.failed = true;
                }
                return result;
            }
        }
        self.failed = true;
        Err(io::Error::other("TLS state machine made no progress"))
    }

    /// After rustls refused input: appends the alert it queued for the peer, and fails. `rest`
    /// is the input from where rustls stopped (rustls reads on from where it was in that
    /// buffer). Some refusals (a handshake message over rustls's size limit) queue no alert:
    /// while nothing is encrypted yet, the peer gets a plaintext fatal alert of ours.
    fn fail(&mut self, rest: &mut [u8], out: &mut RecordBuf, error: &rustls::Error) {
        self.failed = true;
        let before = out.len();
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            encode_into(&mut encode, out);
        }
        if out.len() == before && !self.handshaken {
            let description = match error {
                rustls::Error::InvalidMessage(_) => 50, // decode_error
                _ => 40,                                // handshake_failure
            };
            let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description];
            out.room(alert.len())[..alert.len()].copy_from_slice(&alert);
            out.commit(alert.len());
        }
    }
}

/// Appends one handshake (or alert) record rustls has ready to `out`.
fn encode_into(
    encode: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut RecordBuf,
) {
    let mut room = 4096;
    loop {
        match encode.encode(out.room(room)) {
            Ok(n) => return out.commit(n),
            Err(EncodeError::InsufficientSize(need)) => room = need.required_size,
            Err(EncodeError::AlreadyEncoded) => return,
        }
    }
}
