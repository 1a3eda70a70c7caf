//! Kernel transport of hioload-ws: shard-per-core workers on the kernel's TCP stack, through
//! `mio` (epoll, kqueue or IOCP) or Linux io_uring.
//!
//! Each worker thread owns a poll instance, its own `SO_REUSEPORT` listener and a
//! [`Shard`](hioload_wsproto::Shard) of connections, and only moves bytes: read into a buffer
//! from the worker's own source ([`RecvBuffers`], made on the pinned worker thread), hand them to
//! the shard (the session layer of `hioload-wsproto`: handshake, frames, the application's
//! callbacks, deadlines, backpressure), send the turn's replies with one vectored write (or a ring
//! send). No lock and no allocation on that path.
//!
//! Other threads reach the workers through the shard set ([`KernelTransport::shards`]): sends to
//! a session by id and broadcasts (bounded per-worker inboxes), reloads, per-worker counters.
//!
//! The facade (`hioload-ws`) plugs its `Handler` in as the shard's `App`; see
//! docs/ARCHITECTURE.md.

pub mod affinity;
pub mod config;
mod listener;
pub mod pool;
pub mod sys;
mod transport;
pub mod turn;
#[cfg(target_os = "linux")]
mod uring;
mod worker;

pub use config::{receive_buffer_size, IoBackend, TransportConfig};
pub use pool::{RecvBuffer, RecvBuffers};
pub use sys::raise_fd_limit;
pub use transport::KernelTransport;
