//! RFC 6455 WebSocket protocol for hioload-ws, sans-IO.
//!
//! This crate never touches a socket. Transports (the kernel fallback and the DPDK stack) hand it
//! bytes and get back events and bytes to send, so both drive exactly the same protocol code:
//!
//! * [`handshake`]: parse the HTTP/1.1 upgrade request (incrementally), validate it and write the
//!   `101 Switching Protocols` answer or a short HTTP error.
//! * [`frame`]: decode frame headers in place, encode server headers into a small stack buffer.
//! * [`mask`]: unmask payloads in place, word at a time, keeping the mask phase across pieces.
//! * [`utf8`]: incremental UTF-8 validation that fails at the first invalid byte.
//! * [`assembly`]: the per-worker-thread cache of large buffers that messages beyond 4 KiB are
//!   assembled in, so that steady large messages allocate nothing and idle sessions stay small.
//! * [`session`]: the per-connection frame machine (`Session::receive` → [`Event`]s; outgoing
//!   frames go to a transport-provided [`FrameSink`]).
//!
//! Above the frames, the session layer that both data paths share:
//!
//! * [`connection`]: one connection's whole lifecycle (handshake, open, finishing, ended), its
//!   timers and backpressure verdicts, over a small [`Wire`] trait the transport implements, with
//!   the application behind the [`App`] trait.
//! * [`shard`]: one worker's connections: slots, the watch list, the idle sweep, the cross-shard
//!   inbox, reload and stop; a transport loop drives it through [`Shard`] and [`Transport`].
//! * [`settings`], [`pending`], [`output_cache`]: what may be reloaded, a connection's pending
//!   output, and the bounded cache its storage comes from.
//!
//! Zero-copy rules: a message that arrives whole in one frame is unmasked in the caller's buffer and
//! handed out as a sub-slice of it; only fragmented or split-across-reads messages are assembled in
//! the session's reusable buffer (or, beyond 4 KiB, a buffer borrowed from the thread's
//! [`assembly`] cache). See docs/ARCHITECTURE.md.
//!
//! ```
//! use hioload_wsproto::frame::encode_client_frame;
//! use hioload_wsproto::{Event, Limits, OpCode, Session};
//!
//! let mut session = Session::new(Limits::default());
//! let mut rx = Vec::new(); // what the socket delivered: one masked "Hello" and half of a ping
//! encode_client_frame(OpCode::Text, true, b"Hello", [1, 2, 3, 4], &mut rx);
//! encode_client_frame(OpCode::Ping, true, b"hb", [5, 6, 7, 8], &mut rx);
//! rx.truncate(rx.len() - 1);
//! let mut tx = Vec::new(); // a Vec<u8> is a FrameSink: frames are appended
//! let consumed = session
//!     .receive(&mut rx, &mut tx, |event, out| {
//!         if let Event::Text(text) = event {
//!             out.send_text(text).unwrap(); // `text` borrows `rx`: no copy
//!         }
//!     })
//!     .unwrap();
//! assert_eq!(tx, b"\x81\x05Hello"); // the unmasked echo
//! assert_eq!(rx.len() - consumed, 7); // the partial ping stays with the caller
//! ```

pub mod assembly;
pub mod buffer_cache;
pub mod close;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod held;
pub mod log_limit;
pub mod mask;
pub mod output_cache;
pub mod pending;
pub mod session;
pub mod settings;
pub mod shard;
pub mod tls;
pub mod utf8;

pub use close::CloseCode;
pub use config::Limits;
pub use connection::{
    Accept, App, Connection, Message, PendingUpgrade, Rejection, SendStatus, SessionRef,
    SessionState, Upgrade, UpgradeCtx, UpgradeError, Wire,
};
pub use frame::{FrameHeader, OpCode};
pub use handshake::{HttpError, HttpRequest, Parsed, UpgradePolicy, UpgradeRequest};
pub use held::HeldInput;
pub use pending::PendingOutput;
pub use session::{Event, FrameSink, Outgoing, ProtocolError, Role, SendError, Session, State};
pub use settings::{Backpressure, Settings};
pub use shard::topics::{
    Publication, SlowPolicy, Subscription, TopicCounts, TopicError, TopicOrDeliverError, TopicStat,
    TopicsSnapshot,
};
pub use shard::{DeliverError, Listener, OutMessage, Shard, ShardSet, Transport, WorkerStats};
