//! What the kernel transport needs to know, as plain data.
//!
//! The facade validates its `Config` and maps it onto this; the transport itself only asserts the
//! few invariants it relies on (at least one worker, a receive buffer large enough for the
//! protocol's in-place frames), so that a bad value is reported once, by the facade, with the name
//! the user knows.

use std::net::SocketAddr;
use std::time::Duration;

use hioload_wsproto::Limits;

/// Bounds on what one connection may keep queued for a peer that does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backpressure {
    /// Pending-output bytes above which the connection is not read until it drains (default 1 MiB).
    pub soft_bytes: usize,
    /// Pending-output bytes that, held for longer than `timeout`, close the connection with 1008
    /// (default 4 MiB).
    pub hard_bytes: usize,
    /// How long a connection may stay above `hard_bytes` (default 10 s).
    pub timeout: Duration,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            soft_bytes: 1 << 20,
            hard_bytes: 4 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The settings a running transport can change (hot reload): published with
/// [`crate::Transport::reload`], picked up by each worker at its next loop turn.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Protocol limits handed to every session (existing sessions get new ones on reload).
    /// `inplace_frame_max` and `max_head_bytes` size the receive buffers: they are fixed at start.
    pub limits: Limits,
    /// Pending-output bounds.
    pub backpressure: Backpressure,
    /// Time a client has to send a complete upgrade request (default 10 s).
    pub handshake_timeout: Duration,
    /// Time a peer has to answer a Close we sent, and to drain and close after the close
    /// handshake (default 5 s).
    pub close_timeout: Duration,
    /// On `stop`, time given to sessions to finish their close handshake (default 5 s).
    pub shutdown_grace: Duration,
    /// A session that sent nothing for this long gets a ping (default 60 s; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// After that ping, time the peer has to send anything (its pong) before the connection is
    /// dropped and the session reported closed with 1006 (default 30 s).
    pub pong_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            backpressure: Backpressure::default(),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(60)),
            pong_timeout: Duration::from_secs(30),
        }
    }
}

/// How a worker talks to the kernel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring where this kernel allows it (Linux 6.1+, not forbidden by a seccomp policy),
    /// else readiness polling. `Transport::start` resolves it; [`crate::Transport::io_backend`]
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
    /// What may change while running.
    pub settings: Settings,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 4,
            batch_size: 16,
            cpu_affinity: true,
            worker_cpus: Vec::new(),
            inbox_capacity: 1024,
            io: IoBackend::Auto,
            uring_buffers: 64,
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
