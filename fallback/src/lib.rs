//! Kernel transport of hioload-ws: shard-per-core workers on `mio` (epoll, kqueue or IOCP).
//!
//! Each worker thread owns a poll instance, its own `SO_REUSEPORT` listener and every connection
//! it accepted, and runs them to completion: read into a buffer from the worker's own source
//! ([`RecvBuffers`], given by the [`Service`] on the pinned worker thread), parse in place with
//! the sans-IO protocol layer (`hioload-wsproto`), call the [`Service`], send the turn's replies
//! with one vectored write. No lock and no allocation on that path. Slow readers are held back by
//! per-connection output bounds ([`Backpressure`]) and closed with 1008 if they stay stuck.
//!
//! Other threads reach the workers through a [`Remote`]: sends to a session by id and broadcasts
//! (bounded per-worker inboxes), settings reloads ([`Settings`], picked up at the next loop turn),
//! per-worker counters. Idle sessions are pinged and dropped when they stop answering.
//!
//! The facade (`hioload-ws`) adapts its `Handler` to [`Service`]; see docs/ARCHITECTURE.md.

pub mod affinity;
pub mod bufcache;
pub mod config;
mod conn;
mod listener;
pub mod outbuf;
pub mod pool;
mod service;
mod shared;
pub mod sys;
mod transport;
pub mod turn;
#[cfg(target_os = "linux")]
mod uring;
mod worker;

pub use config::{receive_buffer_size, Backpressure, IoBackend, Settings, TransportConfig};
pub use pool::{RecvBuffer, RecvBuffers};
pub use service::{Conn, Service};
pub use shared::{worker_of, DeliverError, OutMessage, Remote, WorkerStats};
pub use sys::raise_fd_limit;
pub use transport::Transport;
