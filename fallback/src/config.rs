//! What the kernel transport needs to know, as plain data.
//!
//! The facade validates its `Config` and maps it onto this; the transport itself only asserts the
//! few invariants it relies on (at least one worker, a receive buffer large enough for the
//! protocol's in-place frames), so that a bad value is reported once, by the facade, with the name
//! the user knows.

use std::net::SocketAddr;

use hioload_wsproto::{Limits, Listener, Settings};

/// How a worker talks to the kernel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring where this kernel allows it (Linux 6.1+, not forbidden by a seccomp policy),
    /// else readiness polling. `KernelTransport::start` resolves it; [`crate::KernelTransport::io_backend`]
    /// tells which one runs.
    #[default]
    Auto,
    /// Readiness polling through mio: epoll on Linux, kqueue on BSD/macOS, IOCP on Windows; one
    /// `recv` and one `send` system call per read.
    Poll,
    /// Linux io_uring for receives: one receive in flight per connection into buffers the kernel
    /// picks from a provided ring, all submitted with the wait of each loop turn (no `recv` and
    /// no `epoll_wait` system calls); turns up to 8 KiB are sent through the ring with that wait,
    /// larger ones with a direct `sendmsg`. Starting fails if the kernel refuses it.
    IoUring,
}

impl IoBackend {
    /// The name used on command lines and in config files: `auto`, `poll`, `io-uring`.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Poll => "poll",
            IoBackend::IoUring => "io-uring",
        }
    }
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "poll" | "epoll" => Ok(IoBackend::Poll),
            "io-uring" | "io_uring" | "uring" => Ok(IoBackend::IoUring),
            other => Err(format!(
                "unknown I/O backend {other:?} (expected auto, poll or io-uring)"
            )),
        }
    }
}

/// Kernel transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Address every worker's listener binds (port 0: the kernel picks one, shared by all workers).
    pub listen: SocketAddr,
    /// What the `listen` address speaks: plain `ws://`, or TLS first (`wss://`, with the
    /// certificates of `settings.tls`).
    pub listen_kind: Listener,
    /// A second address that speaks TLS, beside a plain `listen` (`None`: none).
    pub tls_listen: Option<SocketAddr>,
    /// Number of worker threads, each with its own poll instance and listener.
    pub workers: usize,
    /// Most readiness events taken from the kernel per wait.
    pub batch_size: usize,
    /// Pin workers to CPUs (Linux; ignored elsewhere): to `worker_cpus[i]` when given, else
    /// worker `i` to the `i`-th CPU this process may run on.
    pub cpu_affinity: bool,
    /// The CPU of each worker, from a topology-aware plan (the facade's `PlacementPlan`); empty:
    /// the transport picks.
    pub worker_cpus: Vec<Option<usize>>,
    /// Capacity of each worker's inbox of cross-worker commands (sends by id, broadcasts).
    pub inbox_capacity: usize,
    /// How workers talk to the kernel.
    pub io: IoBackend,
    /// io_uring backend: receive buffers each worker lends the kernel's provided-buffer ring
    /// (rounded up to a power of two; default 64). Receives that complete while all of them are
    /// in use are re-armed in the same loop turn, once buffers are back.
    pub uring_buffers: u16,
    /// Most connections per worker (any phase; at most 2^20). Past it, accepted connections
    /// are closed at once (default 2^20).
    pub max_connections: usize,
    /// What may change while running.
    pub settings: Settings,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_kind: Listener::Plain,
            tls_listen: None,
            workers: 4,
            batch_size: 16,
            cpu_affinity: true,
            worker_cpus: Vec::new(),
            inbox_capacity: 1024,
            io: IoBackend::Auto,
            uring_buffers: 64,
            max_connections: 1 << 20,
            settings: Settings::default(),
        }
    }
}

impl TransportConfig {
    /// Size of one receive buffer: room for an unconsumed in-place frame plus a fresh read
    /// of the same size, for a whole request head, and at least 64 KiB so that large messages are
    /// read in few system calls.
    pub fn receive_buffer_size(&self) -> usize {
        receive_buffer_size(&self.settings.limits)
    }
}

/// Receive buffer size for `limits` (see [`TransportConfig::receive_buffer_size`]).
pub fn receive_buffer_size(limits: &Limits) -> usize {
    let inplace = 2 * limits.inplace_frame_max;
    let head = limits.max_head_bytes + 1;
    inplace.max(head).max(64 << 10)
}
