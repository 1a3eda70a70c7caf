//! TLS (`wss://`) between the wire and the WebSocket session, sans-IO, for both data paths.
//!
//! A connection accepted on a TLS listener carries a [`TlsLayer`] (rustls's unbuffered server
//! connection and the ciphertext of a partial record). The transport does not know: it reads
//! ciphertext and hands it to [`crate::Connection::receive`] as it would plaintext, putting the
//! connection's held bytes in front (for a TLS connection, a partial record), and it sends
//! whatever the connection queues on its wire. Inside, the connection decrypts into the
//! thread's plaintext buffer and runs the handshake or the session over it unchanged; what the
//! session writes goes through a [`TlsWire`], which encrypts it into records before it reaches
//! the transport's wire. So backpressure, the memory budget and every deadline count and bound
//! TLS bytes like any others, and a feature built on the session works over TLS on both paths.
//!
//! - [`identity`]: certificates and keys from PEM files, SNI, the rustls configuration
//!   ([`TlsAcceptor`]); reloads build a new one.
//! - [`layer`]: one connection's records in and out.
//! - [`wire`]: the encrypting wire.

pub mod identity;
pub mod layer;
pub mod wire;

#[doc(hidden)]
pub mod test_pki;

pub use identity::{CertFiles, TlsAcceptor, TlsError, TlsFiles};
pub use layer::{Received, TlsFailure, TlsLayer};
pub use wire::TlsWire;

/// Whether the first bytes on a TLS port are a plain HTTP request ("GET /", "POST ", …) rather
/// than a TLS record (which starts with content type 22, a handshake): such a client gets a
/// plain-text 400 that says to use `wss://`, instead of an alert it cannot read.
pub fn looks_like_plain_http(input: &[u8]) -> bool {
    input.len() >= 4
        && input[..4]
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b' ')
}
