//! hioload-ws: a WebSocket server built for high load.
//!
//! Shard-per-core workers run connections to completion with no lock and no allocation on the
//! message path. The data path is the kernel's TCP stack through `mio` (every OS, the default) or,
//! with the `dpdk` feature, DPDK with a userspace TCP stack. The WebSocket protocol is the same
//! sans-IO code (`hioload-wsproto`) on both.
//!
//! ```no_run
//! use hioload_ws::{Config, Ctx, Handler, Message, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
//!         let _ = ctx.send(msg);
//!     }
//! }
//!
//! let server = Server::new(Config::default())?.with_handler(Echo);
//! server.start()?;
//! println!("listening on {}", server.local_addr().unwrap());
//! server.wait()?; // until another thread calls server.stop()
//! # Ok::<(), hioload_ws::Error>(())
//! ```

mod app;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod control;
mod data_path;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod handler;
pub mod http;
mod kernel;
pub mod middleware;
mod per_worker;
pub mod pinning;
pub mod pool;
mod registry;
pub mod server;
pub mod topology;

pub use config::{
    Backpressure, CertFiles, Config, ConfigError, DataPathConfig, IoBackend, Limits, TlsConfig,
    TlsFiles,
};
pub use config_file::{ConfigFile, ConfigFileError};
pub use control::ProbeValue;
#[cfg(feature = "dpdk")]
pub use dpdk::DpdkConfig;
pub use handler::{
    Accept, CloseCode, Ctx, DeliverError, Handler, Message, PendingUpgrade, Rejection, SendError,
    SendStatus, SessionOps, State, Upgrade, UpgradeCtx, UpgradeError, UpgradeRequest,
};
pub use hioload_wsproto::deflate::{DeflateConfig, DeflateMode, DeflateStats};
pub use hioload_wsproto::WorkerStats;
pub use hioload_wsproto::{
    Publication, SlowPolicy, Subscription, TopicCounts, TopicError, TopicOrDeliverError,
    TopicStat, TopicsSnapshot,
};
pub use http::{HttpHandler, HttpRequest, NotFound};
pub use middleware::{HandlerExt, Logging, Metrics, Middleware, Recovery};
pub use per_worker::{PerWorker, WorkerHandler};
pub use registry::SessionInfo;
pub use server::{Error, Reloaded, Server};

/// Raises this process's open-files limit (soft) to its hard limit; returns the new limit.
/// Call it before serving thousands of connections.
pub use hioload_fallback::raise_fd_limit;

/// Which data paths this build carries: `"kernel"` or `"dpdk+kernel"`.
pub const BUILD_PATHS: &str = env!("HIOLOAD_BUILD_PATHS");
