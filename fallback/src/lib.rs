//! Kernel transport of hioload-ws: shard-per-core workers on `mio` (epoll, kqueue or IOCP).
//!
//! Each worker thread owns a poll instance, its own `SO_REUSEPORT` listener and every connection
//! it accepted, and runs them to completion: read into a pooled buffer, parse in place with the
//! sans-IO protocol layer (`hioload-wsproto`), call the [`Service`], send the turn's replies with
//! one vectored write. No lock and no allocation on that path. Slow readers are held back by
//! per-connection output bounds ([`Backpressure`]) and closed with 1008 if they stay stuck.
//!
//! The facade (`hioload-ws`) adapts its `Handler` to [`Service`]; see docs/ARCHITECTURE.md.

pub mod affinity;
pub mod config;
mod conn;
mod listener;
pub mod outbuf;
pub mod pool;
mod service;
pub mod sys;
mod transport;
pub mod turn;
mod worker;

pub use config::{Backpressure, TransportConfig};
pub use service::{Conn, Service};
pub use sys::raise_fd_limit;
pub use transport::Transport;
