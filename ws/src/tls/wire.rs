//! The wire a TLS connection's session writes to: frames and HTTP answers are staged as
//! plaintext, encrypted into records, and the records go to the transport's wire as raw bytes.
//!
//! Small frames queued in one operation (one read's echoes, a broadcast, a ping) share records:
//! they are staged until the operation ends ([`TlsWire::finish`]) or a record is full, so a
//! batch of 20-byte echoes costs one record, not one per frame. Large payloads are encrypted
//! straight from where they lie, a few records at a time, so the scratch memory stays bounded
//! whatever the message size. The staging and record buffers belong to the thread (one worker,
//! one set) and are lent to one operation at a time.

use std::cell::RefCell;
use std::io;

use super::layer::{Received, RecordBuf, TlsFailure, TlsLayer, RECORD_PLAIN};
use crate::connection::Wire;
use crate::pending::PendingOutput;

/// Plaintext encrypted per step, at most (four full records): bounds the record buffer.
const SEAL_STEP: usize = 4 * RECORD_PLAIN;
/// Scratch storage a thread keeps between operations; more is freed.
const SCRATCH_RETAIN: usize = 256 << 10;

/// A thread's scratch: plaintext staged for encryption, records built.
#[derive(Default)]
struct Scratch {
    stage: Vec<u8>,
    records: RecordBuf,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A [`Wire`] over the transport's wire `W` for a connection with a [`TlsLayer`]; see the
/// module documentation. Call [`TlsWire::finish`] when the operation is over.
pub struct TlsWire<'a, W: Wire + ?Sized> {
    tls: &'a mut TlsLayer,
    inner: &'a mut W,
    scratch: Scratch,
    error: Option<io::Error>,
}

impl<'a, W: Wire + ?Sized> TlsWire<'a, W> {
    /// Borrows the thread's scratch for one operation on `tls` over `inner`.
    pub fn new(tls: &'a mut TlsLayer, inner: &'a mut W) -> Self {
        let scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        TlsWire {
            tls,
            inner,
            scratch,
            error: None,
        }
    }

    /// The TLS layer.
    pub fn layer(&mut self) -> &mut TlsLayer {
        self.tls
    }

    /// Runs the TLS layer over received ciphertext (see [`TlsLayer::receive`]); handshake
    /// records and alerts it answers with are queued on the wire at once.
    pub fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        pending: &mut PendingOutput,
    ) -> Result<Received, TlsFailure> {
        let records = &mut self.scratch.records;
        records.clear();
        let result = self.tls.receive(input, plain, records);
        if !records.is_empty() {
            self.inner.queue_bytes(pending, records.as_slice());
            records.clear();
        }
        result
    }

    /// Queues plaintext bytes that are not ours to encrypt (an HTTP answer to a client that
    /// spoke plain HTTP to the TLS port).
    pub fn queue_unencrypted(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        self.inner.queue_bytes(pending, bytes);
    }

    /// Encrypts what is staged and queues the records; the first error of the operation, if
    /// any (the connection cannot go on).
    pub fn finish(mut self, pending: &mut PendingOutput) -> io::Result<()> {
        self.seal_staged(pending);
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Adds `bytes` to the plaintext of this operation: full records are encrypted as they fill.
    fn stage(&mut self, pending: &mut PendingOutput, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.scratch.stage.is_empty() && bytes.len() >= RECORD_PLAIN {
                // Whole records straight from the caller's bytes, a step at a time.
                let n = (bytes.len() / RECORD_PLAIN * RECORD_PLAIN).min(SEAL_STEP);
                self.seal(pending, Some(&bytes[..n]));
                bytes = &bytes[n..];
                continue;
            }
            let stage = &mut self.scratch.stage;
            let take = (RECORD_PLAIN - stage.len()).min(bytes.len());
            stage.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if stage.len() == RECORD_PLAIN {
                self.seal_staged(pending);
            }
        }
    }

    fn seal_staged(&mut self, pending: &mut PendingOutput) {
        if !self.scratch.stage.is_empty() {
            self.seal(pending, None);
            self.scratch.stage.clear();
        }
    }

    /// Encrypts `plain` (or, `None`, the staged plaintext) and queues the records.
    fn seal(&mut self, pending: &mut PendingOutput, plain: Option<&[u8]>) {
        if self.error.is_some() {
            return;
        }
        let Scratch { stage, records } = &mut self.scratch;
        records.clear();
        let plain = plain.unwrap_or(stage);
        match self.tls.seal(plain, records) {
            Ok(()) => self.inner.queue_bytes(pending, records.as_slice()),
            Err(e) => self.error = Some(e),
        }
        records.clear();
    }
}

impl<W: Wire + ?Sized> Drop for TlsWire<'_, W> {
    fn drop(&mut self) {
        debug_assert!(
            self.scratch.stage.is_empty(),
            "TlsWire dropped without finish"
        );
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.stage.clear();
        scratch.records.clear();
        if scratch.stage.capacity() + scratch.records.capacity() <= SCRATCH_RETAIN {
            SCRATCH.with(|s| *s.borrow_mut() = scratch);
        }
    }
}

impl<W: Wire + ?Sized> Wire for TlsWire<'_, W> {
    fn queue_frame(&mut self, pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        self.stage(pending, header);
        self.stage(pending, payload);
    }
    fn queue_bytes(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        self.stage(pending, bytes);
    }
    fn flush(&mut self, pending: &mut PendingOutput) -> io::Result<()> {
        self.seal_staged(pending);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.inner.flush(pending)
    }
    fn shutdown_write(&mut self, pending: &mut PendingOutput) -> bool {
        if !self.tls.close_notify_sent() {
            // close_notify first (RFC 8446 §6.1), then our FIN once it has left.
            self.seal_staged(pending);
            let records = &mut self.scratch.records;
            records.clear();
            if self.tls.close_notify(records).is_ok() && !records.is_empty() {
                self.inner.queue_bytes(pending, records.as_slice());
            }
            records.clear();
            if self.inner.flush(pending).is_err() {
                return self.inner.shutdown_write(pending);
            }
            if !pending.is_empty() {
                return false; // asked again once the alert has left
            }
        }
        self.inner.shutdown_write(pending)
    }
    fn queued(&self) -> usize {
        self.inner.queued() + self.scratch.stage.len()
    }
}
