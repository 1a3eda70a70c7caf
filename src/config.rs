//! Server configuration: one plain struct with production defaults, checked once by
//! [`Config::validate`] so that a bad value is reported by the name the user wrote.

use hioload_wsproto::deflate::DeflateConfig;
pub use hioload_wsproto::tls::{CertFiles, TlsAcceptor, TlsFiles};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use hioload_fallback::IoBackend;
pub use hioload_wsproto::{Backpressure, Limits, Settings};

use crate::pool::PoolConfig;

/// Which data path serves the connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DataPathConfig {
    /// The kernel's TCP stack through `mio` (every OS; the default).
    #[default]
    Kernel,
    /// DPDK with the userspace TCP stack (EAL arguments, netmask, gateway, ...); `listen` is the
    /// stack's own address.
    #[cfg(feature = "dpdk")]
    Dpdk(crate::dpdk::DpdkConfig),
}

/// TLS on the server: rustls (ring provider), TLS 1.2 and 1.3, ALPN `http/1.1`; see
/// [`hioload_wsproto::tls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain and key (PEM files), and optionally one pair per SNI host name.
    /// Reloadable: [`Server::reload`](crate::Server::reload) re-reads the files (so a renewed
    /// certificate at the same path is picked up); new handshakes use them, open sessions keep
    /// theirs. Files that cannot be loaded are refused with the running ones kept.
    pub files: TlsFiles,
    /// Where TLS is served. `None`: `listen` itself speaks TLS (a TLS-only server; with
    /// `control_on_main`, `/metrics` and `/debug/probes` are served over TLS too). `Some(addr)`:
    /// a second listener at `addr` speaks TLS and `listen` stays plain (on the DPDK path, the
    /// same IP address as `listen`, another port). Fixed at start.
    pub listen: Option<SocketAddr>,
}

/// Everything a [`Server`](crate::Server) needs. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (default `0.0.0.0:8080`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The admin listener: where the control plane (`GET /metrics`, `GET /debug/probes`) is
    /// served on its own address, apart from the WebSocket port. `None` (the default): no admin
    /// listener. The library binds no port it was not asked for: a fixed default port would make
    /// two servers in one process (or on one machine) collide, so an application picks the
    /// address (hioload-echo defaults to `127.0.0.1:9464`). Use a loopback or otherwise private
    /// address: what it serves (the configuration, gauges, application probes) is not meant for
    /// clients. It serves up to 16 connections at once, each with a 5 s deadline, on threads of
    /// its own: idle or slow connections never delay another scrape, nor a worker.
    pub admin_listen: Option<SocketAddr>,
    /// Also answer `GET /metrics` and `GET /debug/probes` on the WebSocket listener, for requests
    /// that are not upgrades, before the application's [`HttpHandler`](crate::HttpHandler)
    /// (default `false`: those paths go to the `HttpHandler` like any other, and the control
    /// plane is only on `admin_listen`, if set). There, the worker that reads the request
    /// renders the answer: probes registered with
    /// [`Server::register_probe`](crate::Server::register_probe) are left out (application code
    /// must not hold a worker), only the built-in ones are served; the admin listener serves all.
    pub control_on_main: bool,
    /// Request path that is upgraded to WebSocket (default `/ws`); other paths get 404.
    pub path: String,
    /// Worker threads, one event loop each (default 4).
    pub num_workers: usize,
    /// Ring sizes, a power of two (default 1024): DPDK descriptor rings, and each worker's inbox
    /// of cross-worker commands (sends by session id, broadcasts).
    pub ring_capacity: usize,
    /// Most readiness events (or packets) handled per wait (default 16).
    pub batch_size: usize,
    /// Pin each worker to its own CPU (default on; Linux only).
    pub cpu_affinity: bool,
    /// How the kernel data path's workers talk to the kernel (default `Auto`: io_uring where the
    /// kernel allows it, else epoll); see [`IoBackend`].
    pub io_backend: IoBackend,
    /// Shards of the session registry (id -> peer, touched at session open and close), a power
    /// of two (default 16).
    pub session_shards: usize,
    /// Protocol limits (frame and message size, request head size, in-place frame size).
    pub limits: Limits,
    /// Pending-output bounds per connection (default 1 MiB soft, 32 MiB hard, 10 s from the
    /// soft bound); see [`Backpressure`].
    pub backpressure: Backpressure,
    /// Most connections the server holds at once, in any phase (default 100,000). More are
    /// refused (closed as soon as accepted; on DPDK, reset), counted in
    /// `hioload_connections_refused_total` and logged at a rate limit. At the default, idle
    /// sessions cost about 40 MB of user space (≈0.4 KiB each) plus the kernel's socket memory.
    pub max_connections: usize,
    /// Most bytes all connections together may hold in held input (partial frames and heads),
    /// message assembly and pending output (default 1 GiB). Over it, each worker closes its
    /// largest holders (1009 for a message in assembly, 1008 for unread output), counted in
    /// `hioload_budget_closes_total`.
    pub memory_budget: usize,
    /// Time a peer has to complete a message or frame once its first byte arrived, however
    /// slowly the rest trickles in (default 30 s; then Close 1008).
    pub message_timeout: Duration,
    /// Time a client has to complete the upgrade request (default 10 s).
    pub handshake_timeout: Duration,
    /// Time a peer has to answer our Close, and to close after the close handshake (default 5 s).
    pub close_timeout: Duration,
    /// On stop, time given to sessions to complete their close handshake (default 5 s).
    pub shutdown_grace: Duration,
    /// A session that sent nothing for this long gets a ping (default 60 s; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Time a pinged idle session has to send anything (its pong) before it is dropped and
    /// reported closed with 1006 (default 30 s).
    pub pong_timeout: Duration,
    /// permessage-deflate (RFC 7692): how offers are answered, the size below which messages go
    /// out uncompressed, the level (default: shared mode, 1 KiB, level 6; see
    /// [`hioload_wsproto::deflate`]). Reloadable: applies to sessions opened after the reload.
    pub deflate: DeflateConfig,
    /// TLS (`wss://`): certificates and where TLS is served (default `None`: plain `ws://` only).
    /// See [`TlsConfig`].
    pub tls: Option<TlsConfig>,
    /// Buffer pool sizes and limits (per NUMA node).
    pub pool: PoolConfig,
    /// The data path (default: the kernel).
    pub data_path: DataPathConfig,
    /// Join other nodes through Redis pub/sub, so that topics span them (default `None`: this
    /// node alone). See [`crate::cluster`]. Restart to change.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: None,
            control_on_main: false,
            path: "/ws".to_string(),
            num_workers: 4,
            ring_capacity: 1024,
            batch_size: 16,
            cpu_affinity: true,
            io_backend: IoBackend::Auto,
            session_shards: 16,
            limits: Limits::default(),
            backpressure: Backpressure::default(),
            max_connections: 100_000,
            memory_budget: 1 << 30,
            message_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(60)),
            pong_timeout: Duration::from_secs(30),
            deflate: DeflateConfig::default(),
            tls: None,
            pool: PoolConfig::default(),
            data_path: DataPathConfig::Kernel,
            cluster: None,
        }
    }
}

/// An invalid configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, as written in [`Config`] (e.g. `limits.max_frame_size`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn check(
    ok: bool,
    field: &'static str,
    problem: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            problem: problem(),
        })
    }
}

const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl Config {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.num_workers;
        check((1..=1024).contains(&n), "num_workers", || {
            format!("must be between 1 and 1024, got {n}")
        })?;
        let r = self.ring_capacity;
        check(
            r.is_power_of_two() && (64..=65536).contains(&r),
            "ring_capacity",
            || format!("must be a power of two between 64 and 65536, got {r}"),
        )?;
        let b = self.batch_size;
        check((1..=r.min(1024)).contains(&b), "batch_size", || {
            format!(
                "must be between 1 and min(ring_capacity, 1024) = {}, got {b}",
                r.min(1024)
            )
        })?;
        let s = self.session_shards;
        check(s.is_power_of_two() && s <= 4096, "session_shards", || {
            format!("must be a power of two between 1 and 4096, got {s}")
        })?;
        if let Some(c) = &self.cluster {
            c.validate().map_err(|problem| ConfigError {
                field: "cluster",
                problem,
            })?;
        }
        let p = &self.path;
        check(p.starts_with('/') && p.len() <= 1024, "path", || {
            format!("must start with '/' (at most 1024 bytes), got {p:?}")
        })?;
        check(
            p.bytes().all(|c| c.is_ascii_graphic()) && !p.contains(['?', '#']),
            "path",
            || format!("must be printable ASCII without spaces, '?' or '#', got {p:?}"),
        )?;

        let l = &self.limits;
        check(
            (125..=1 << 30).contains(&l.max_frame_size),
            "limits.max_frame_size",
            || {
                format!(
                    "must be between 125 (a control frame) and 1 GiB, got {}",
                    l.max_frame_size
                )
            },
        )?;
        check(
            (125..=1 << 30).contains(&l.max_message_size),
            "limits.max_message_size",
            || format!("must be between 125 and 1 GiB, got {}", l.max_message_size),
        )?;
        check(
            (256..=1 << 20).contains(&l.max_head_bytes),
            "limits.max_head_bytes",
            || format!("must be between 256 and 1 MiB, got {}", l.max_head_bytes),
        )?;
        check(
            (8..=1024).contains(&l.max_headers),
            "limits.max_headers",
            || format!("must be between 8 and 1024, got {}", l.max_headers),
        )?;
        check(
            (256..=16 << 20).contains(&l.inplace_frame_max),
            "limits.inplace_frame_max",
            || {
                format!(
                    "must be between 256 bytes and 16 MiB, got {}",
                    l.inplace_frame_max
                )
            },
        )?;

        // And whatever else the protocol layer needs of its limits.
        l.validate().map_err(|problem| ConfigError {
            field: "limits",
            problem,
        })?;

        let bp = &self.backpressure;
        check(bp.soft_bytes >= 4096, "backpressure.soft_bytes", || {
            format!("must be at least 4096, got {}", bp.soft_bytes)
        })?;
        check(
            bp.hard_bytes >= bp.soft_bytes,
            "backpressure.hard_bytes",
            || {
                format!(
                    "must be at least backpressure.soft_bytes ({}), got {}",
                    bp.soft_bytes, bp.hard_bytes
                )
            },
        )?;
        check(
            !bp.timeout.is_zero() && bp.timeout <= MAX_TIMEOUT,
            "backpressure.timeout",
            || format!("must be between 1 ms and 1 h, got {:?}", bp.timeout),
        )?;
        let idle = self.idle_timeout.unwrap_or(Duration::from_secs(1));
        for (field, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", self.close_timeout),
            ("idle_timeout", idle),
            ("pong_timeout", self.pong_timeout),
            ("message_timeout", self.message_timeout),
        ] {
            check(!value.is_zero() && value <= MAX_TIMEOUT, field, || {
                format!("must be between 1 ms and 1 h, got {value:?}")
            })?;
        }
        self.deflate.validate().map_err(|problem| ConfigError {
            field: "deflate",
            problem,
        })?;
        if let Some(tls) = &self.tls {
            let same = tls.listen == Some(self.listen) && self.listen.port() != 0;
            check(!same, "tls.listen", || {
                format!(
                    "must differ from listen ({}); leave it unset to serve TLS on listen itself",
                    self.listen
                )
            })?;
            for (name, _) in &tls.files.sni {
                check(
                    !name.is_empty() && name.len() <= 253 && !name.contains(['/', ' ']),
                    "tls.sni",
                    || format!("not a host name: {name:?}"),
                )?;
            }
        }
        check(self.max_connections >= 1, "max_connections", || {
            "must be at least 1".to_string()
        })?;
        check(self.memory_budget >= 1 << 20, "memory_budget", || {
            format!("must be at least 1 MiB, got {}", self.memory_budget)
        })?;
        let g = self.shutdown_grace;
        check(g <= MAX_TIMEOUT, "shutdown_grace", || {
            format!("must be at most 1 h, got {g:?}")
        })?;
        let rbuf = hioload_fallback::receive_buffer_size(l);
        check(rbuf <= self.pool.max_buffer, "pool.max_buffer", || {
            format!(
                "must hold a receive buffer ({rbuf} bytes for these limits), got {}",
                self.pool.max_buffer
            )
        })?;
        crate::pool::check_config(&self.pool).map_err(|e| ConfigError {
            field: "pool",
            problem: e.to_string(),
        })?;
        Ok(())
    }

    /// The settings a running server can change (see [`crate::Server::reload`]), with the
    /// certificates `tls` (loaded from [`Config::tls`] by the server).
    pub(crate) fn settings_with(&self, tls: Option<TlsAcceptor>) -> Settings {
        Settings {
            tls,
            ..self.settings()
        }
    }

    /// The settings a running server can change, without certificates.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            limits: self.limits.clone(),
            backpressure: self.backpressure.clone(),
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            shutdown_grace: self.shutdown_grace,
            idle_timeout: self.idle_timeout,
            pong_timeout: self.pong_timeout,
            message_timeout: self.message_timeout,
            max_connections: self.max_connections,
            memory_budget: self.memory_budget,
            deflate: self.deflate.clone(),
            tls: None,
        }
    }

    /// Loads the certificates [`Config::tls`] names (`None` without TLS); the error names the
    /// file and what is wrong.
    pub fn load_tls(&self) -> Result<Option<TlsAcceptor>, ConfigError> {
        self.tls
            .as_ref()
            .map(|t| TlsAcceptor::load(&t.files))
            .transpose()
            .map_err(|e| ConfigError {
                field: "tls",
                problem: e.to_string(),
            })
    }

    /// Where the server speaks TLS: (plain `listen`'s kind, the second TLS address).
    pub(crate) fn tls_listeners(&self) -> (hioload_wsproto::Listener, Option<SocketAddr>) {
        use hioload_wsproto::Listener;
        match &self.tls {
            None => (Listener::Plain, None),
            Some(TlsConfig { listen: None, .. }) => (Listener::Tls, None),
            Some(TlsConfig {
                listen: Some(addr), ..
            }) => (Listener::Plain, Some(*addr)),
        }
    }

    /// The fields of `new` that differ from `self` and only take effect after a restart.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut diff = |name, differs: bool| {
            if differs {
                changed.push(name)
            }
        };
        diff("listen", self.listen != new.listen);
        diff("admin_listen", self.admin_listen != new.admin_listen);
        diff(
            "control_on_main",
            self.control_on_main != new.control_on_main,
        );
        diff("path", self.path != new.path);
        diff("num_workers", self.num_workers != new.num_workers);
        diff("ring_capacity", self.ring_capacity != new.ring_capacity);
        diff("batch_size", self.batch_size != new.batch_size);
        diff("cpu_affinity", self.cpu_affinity != new.cpu_affinity);
        diff("io_backend", self.io_backend != new.io_backend);
        diff("session_shards", self.session_shards != new.session_shards);
        diff("pool", self.pool != new.pool);
        diff(
            "tls.listen",
            self.tls.as_ref().map(|t| t.listen) != new.tls.as_ref().map(|t| t.listen),
        );
        diff("data_path", self.data_path != new.data_path);
        diff("cluster", self.cluster != new.cluster);
        diff(
            "limits.inplace_frame_max",
            self.limits.inplace_frame_max != new.limits.inplace_frame_max,
        );
        diff(
            "limits.max_head_bytes",
            self.limits.max_head_bytes != new.limits.max_head_bytes,
        );
        changed
    }

    /// `self` with the reloadable settings of `new` (limits, timeouts, backpressure bounds);
    /// everything that needs a restart keeps its value.
    pub fn with_reloadable_from(&self, new: &Config) -> Config {
        let mut merged = self.clone();
        merged.limits = Limits {
            inplace_frame_max: self.limits.inplace_frame_max,
            max_head_bytes: self.limits.max_head_bytes,
            ..new.limits.clone()
        };
        merged.backpressure = new.backpressure.clone();
        merged.handshake_timeout = new.handshake_timeout;
        merged.close_timeout = new.close_timeout;
        merged.shutdown_grace = new.shutdown_grace;
        merged.idle_timeout = new.idle_timeout;
        merged.pong_timeout = new.pong_timeout;
        merged.message_timeout = new.message_timeout;
        merged.max_connections = new.max_connections;
        merged.memory_budget = new.memory_budget;
        merged.deflate = new.deflate.clone();
        // Certificate files reload; where TLS is served does not (a listener is not added or
        // removed by a reload).
        if let (Some(running), Some(new)) = (&mut merged.tls, &new.tls) {
            running.files = new.files.clone();
        }
        merged
    }

    /// The kernel transport's settings.
    pub(crate) fn transport(&self, tls: Option<TlsAcceptor>) -> hioload_fallback::TransportConfig {
        let (listen_kind, tls_listen) = self.tls_listeners();
        hioload_fallback::TransportConfig {
            listen: self.listen,
            listen_kind,
            tls_listen,
            workers: self.num_workers,
            batch_size: self.batch_size,
            cpu_affinity: self.cpu_affinity,
            worker_cpus: Vec::new(),
            inbox_capacity: self.ring_capacity,
            io: self.io_backend,
            settings: self.settings_with(tls),
            ..hioload_fallback::TransportConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = Config::default();
        assert_eq!(c.num_workers, 4);
        assert_eq!(c.ring_capacity, 1024);
        assert_eq!(c.batch_size, 16);
        assert!(c.cpu_affinity);
        assert_eq!(c.session_shards, 16);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.path, "/ws");
        assert_eq!(c.backpressure.soft_bytes, 1 << 20);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        c.validate().unwrap();
    }

    fn field_of(f: impl FnOnce(&mut Config)) -> &'static str {
        let mut c = Config::default();
        f(&mut c);
        c.validate().expect_err("invalid config accepted").field
    }

    #[test]
    fn each_bad_value_is_reported_by_its_field_name() {
        assert_eq!(field_of(|c| c.num_workers = 0), "num_workers");
        assert_eq!(field_of(|c| c.ring_capacity = 1000), "ring_capacity");
        assert_eq!(field_of(|c| c.batch_size = 0), "batch_size");
        assert_eq!(field_of(|c| c.batch_size = 2048), "batch_size");
        assert_eq!(field_of(|c| c.session_shards = 3), "session_shards");
        assert_eq!(field_of(|c| c.path = "ws".into()), "path");
        assert_eq!(field_of(|c| c.path = "/a b".into()), "path");
        assert_eq!(
            field_of(|c| c.limits.max_frame_size = 10),
            "limits.max_frame_size"
        );
        assert_eq!(
            field_of(|c| c.limits.max_message_size = 0),
            "limits.max_message_size"
        );
        assert_eq!(
            field_of(|c| c.limits.max_head_bytes = 10),
            "limits.max_head_bytes"
        );
        assert_eq!(field_of(|c| c.limits.max_headers = 0), "limits.max_headers");
        assert_eq!(
            field_of(|c| c.limits.inplace_frame_max = 0),
            "limits.inplace_frame_max"
        );
        assert_eq!(
            field_of(|c| c.backpressure.soft_bytes = 10),
            "backpressure.soft_bytes"
        );
        assert_eq!(
            field_of(|c| c.backpressure.hard_bytes = 4096),
            "backpressure.hard_bytes"
        );
        assert_eq!(
            field_of(|c| c.backpressure.timeout = Duration::ZERO),
            "backpressure.timeout"
        );
        assert_eq!(
            field_of(|c| c.handshake_timeout = Duration::ZERO),
            "handshake_timeout"
        );
        assert_eq!(
            field_of(|c| c.close_timeout = Duration::from_secs(7200)),
            "close_timeout"
        );
        assert_eq!(
            field_of(|c| c.shutdown_grace = Duration::from_secs(7200)),
            "shutdown_grace"
        );
    }

    #[test]
    fn the_message_says_what_is_wrong() {
        let c = Config {
            num_workers: 0,
            ..Config::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid configuration: num_workers: must be between 1 and 1024, got 0"
        );
    }
}
