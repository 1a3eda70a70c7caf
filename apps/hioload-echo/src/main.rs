//! hioload-echo: the reference WebSocket echo server of hioload-ws.
//!
//! Reads the command line (refusing DPDK EAL arguments in a build without DPDK) and the optional
//! TOML file (`--config`), starts a [`Server`] with an echo handler under the standard middleware
//! (Logging, Recovery, Metrics), and handles signals: SIGINT/SIGTERM are a graceful stop (no new
//! connections, Close 1001 to every session, up to `--grace-period` for the close handshakes,
//! exit 0; a second signal exits at once); SIGHUP re-reads the file and applies the reloadable
//! settings, log level included, without dropping a connection.

mod cli;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hioload_ws::{
    Config, ConfigFile, Ctx, DataPathConfig, Handler, HandlerExt, Logging, Message, Metrics,
    Recovery, Server,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// Sends every message back as it came.
/// Echoes every message; reports the log lines the non-blocking log writer dropped.
struct Echo {
    log_drops: tracing_appender::non_blocking::ErrorCounter,
}

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "# HELP hioload_log_lines_dropped_total Log lines dropped because stderr did not keep up.\n\
             # TYPE hioload_log_lines_dropped_total counter\n\
             hioload_log_lines_dropped_total {}\n",
            self.log_drops.dropped_lines()
        );
    }
}

/// Lines the log writer may queue for a slow stderr before it drops (and counts) them.
const LOG_QUEUE_LINES: usize = 2048;

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Replaces the log filter; a bad filter is reported and the old one stays.
fn set_log_level(handle: &LogHandle, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log_level {level:?}: {e}"))?;
    handle
        .modify(|f| *f = filter)
        .map_err(|e| format!("cannot change the log level: {e}"))
}

/// SIGHUP: re-reads `path` over the command-line configuration and applies it.
fn reload(server: &Server, path: &Path, base: &Config, log: &LogHandle) {
    let (file, cfg) = match ConfigFile::load_over(path, base) {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("SIGHUP: configuration rejected, the running configuration stays: {e}");
            return;
        }
    };
    if let Some(level) = file.log_level() {
        if let Err(e) = EnvFilter::try_new(level) {
            error!("SIGHUP: configuration rejected, the running configuration stays: {}: log_level {level:?}: {e}", path.display());
            return;
        }
    }
    match server.reload(cfg) {
        Ok(done) => {
            if let Some(level) = file.log_level() {
                if let Err(e) = set_log_level(log, level) {
                    error!("SIGHUP: {e}");
                }
            }
            for field in &done.restart_needed {
                warn!(
                    "SIGHUP: {field} changed in {}; it takes effect after a restart",
                    path.display()
                );
            }
            let c = server.config();
            info!(
                max_message_size = c.limits.max_message_size,
                max_frame_size = c.limits.max_frame_size,
                idle_timeout = ?c.idle_timeout,
                "SIGHUP: configuration reloaded from {}",
                path.display()
            );
        }
        Err(e) => {
            error!(
                "SIGHUP: configuration rejected, the running configuration stays: {}: {e}",
                path.display()
            )
        }
    }
}

/// SIGHUP without a configuration file: re-reads the TLS certificate and key files.
fn reload_certificates(server: &Server) {
    match server.reload(server.config()) {
        Ok(_) => info!("SIGHUP: TLS certificates re-read; new handshakes use them"),
        Err(e) => error!("SIGHUP: TLS certificates rejected, the running ones stay: {e}"),
    }
}

fn main() -> ExitCode {
    let split = cli::split_eal(std::env::args_os().collect());
    #[cfg(not(feature = "dpdk"))]
    if !split.eal.is_empty() {
        eprint!("{}", cli::no_dpdk_message(&split.eal));
        return ExitCode::from(2);
    }
    #[cfg(feature = "dpdk")]
    if !split.eal.is_empty() && !split.separated {
        eprintln!(
            "error: EAL arguments ({}) go before `--`, ours after it, e.g.\n    \
             hioload-echo -l 2-5 --vdev net_tap0 -- --addr 198.18.0.2:8080",
            split.eal.join(" ")
        );
        return ExitCode::from(2);
    }
    let args = cli::Args::parse_from(split.ours);

    let mut cfg = Config {
        listen: args.addr,
        path: args.path.clone(),
        num_workers: args.workers,
        batch_size: args.batch_size,
        cpu_affinity: !args.no_affinity,
        io_backend: args.io_backend,
        shutdown_grace: args.grace_period,
        handshake_timeout: args.handshake_timeout,
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        admin_listen: args
            .admin_addr
            .map_or(Some(cli::DEFAULT_ADMIN_ADDR), |a| a.0),
        control_on_main: args.control_on_main,
        ..Config::default()
    };
    cfg.limits.max_message_size = args.max_message;
    cfg.limits.max_frame_size = args.max_frame;
    cfg.backpressure.soft_bytes = args.backpressure_bytes;
    cfg.backpressure.hard_bytes = args
        .backpressure_bytes
        .saturating_mul(4)
        .max(cfg.backpressure.hard_bytes);
    cfg.backpressure.timeout = args.backpressure_timeout;
    cfg.max_connections = args.max_connections;
    cfg.memory_budget = args.memory_budget;
    cfg.message_timeout = args.message_timeout;
    cfg.deflate.mode = args.deflate;
    cfg.deflate.threshold = args.deflate_threshold;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut files = hioload_ws::TlsFiles::new(cert, key);
        files.sni = args.tls_sni.clone();
        cfg.tls = Some(hioload_ws::TlsConfig {
            files,
            listen: args.tls_addr,
        });
    }
    #[cfg(feature = "dpdk")]
    if !split.eal.is_empty() {
        let mut dpdk = hioload_ws::DpdkConfig::new(split.eal.clone());
        dpdk.prefix_len = args.netmask;
        dpdk.gateway = args.gateway;
        dpdk.idle_sleep = std::time::Duration::from_micros(args.idle_sleep_us);
        dpdk.max_connections = args.stack_connections;
        dpdk.ring_bytes = args.stack_ring_bytes;
        dpdk.port = args.dpdk_port.clone();
        cfg.data_path = DataPathConfig::Dpdk(dpdk);
    }
    let mut base = cfg.clone();
    let mut file_log_level = None;
    if let Some(path) = &args.config {
        match ConfigFile::load_over(path, &base) {
            Ok((file, loaded)) => {
                file_log_level = file.log_level().map(str::to_string);
                cfg = loaded;
            }
            Err(e) => {
                eprintln!("hioload-echo: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let filter = match &file_log_level {
        Some(level) => match EnvFilter::try_new(level) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("hioload-echo: log_level {level:?}: {e}");
                return ExitCode::from(2);
            }
        },
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, log_handle) = reload::Layer::new(filter);
    // Log lines go through a bounded queue to a writer thread: a stalled stderr (a pipe whose
    // reader stopped) drops and counts lines instead of blocking the workers that log.
    let (log_writer, _log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("hioload-log")
        .finish(std::io::stderr());
    let log_drops = log_writer.error_counter();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                // A closed stderr (the reader went away) must not panic the signal thread.
                .log_internal_errors(false)
                .with_writer(log_writer)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();

    let data_path = match cfg.data_path {
        DataPathConfig::Kernel => "kernel",
        #[cfg(feature = "dpdk")]
        DataPathConfig::Dpdk { .. } => "dpdk",
    };

    match hioload_ws::raise_fd_limit() {
        Ok(n) if n < 4096 => {
            warn!("open-files limit is {n}; fewer connections than that can be served")
        }
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open-files limit: {e}"),
    }

    // The default admin address is a convenience: if it cannot be bound (say, another
    // hioload-echo on this machine has it), run without the admin listener rather than not at
    // all. An address the operator gave must bind.
    if args.admin_addr.is_none() && cfg.admin_listen == Some(cli::DEFAULT_ADMIN_ADDR) {
        if let Err(e) = std::net::TcpListener::bind(cli::DEFAULT_ADMIN_ADDR) {
            warn!(
                "cannot bind the default admin address {}: {e}; running without the admin \
                 listener (--admin-addr IP:PORT picks another)",
                cli::DEFAULT_ADMIN_ADDR
            );
            cfg.admin_listen = None;
            base.admin_listen = None;
        }
    }

    let server = match Server::new(cfg) {
        Ok(s) => Arc::new(
            s.with_handler(
                Echo { log_drops }
                    .with(Metrics::new())
                    .with(Recovery::new())
                    .with(Logging::new()),
            ),
        ),
        Err(e) => {
            eprintln!("hioload-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hioload-echo: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.start() {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    let addr = server.local_addr().expect("started");
    let cfg = server.config();
    let scheme = match &cfg.tls {
        Some(t) if t.listen.is_none() => "wss",
        _ => "ws",
    };
    if data_path == "kernel" {
        info!(
            "hioload-echo listening on {scheme}://{addr}{} ({} worker{}, {data_path} data path, {} I/O)",
            cfg.path,
            cfg.num_workers,
            if cfg.num_workers == 1 { "" } else { "s" },
            server.io_backend().map_or("?", |io| io.name())
        );
    } else {
        info!(
            "hioload-echo listening on {scheme}://{addr}{} ({data_path} data path, lcores as logged above)",
            cfg.path
        );
    }
    if let Some(tls_addr) = server.tls_local_addr() {
        info!(
            "hioload-echo listening on wss://{tls_addr}{} (TLS)",
            cfg.path
        );
    }
    match (server.admin_addr(), cfg.control_on_main) {
        (Some(admin), false) => info!(
            "control plane: http://{admin}/metrics and http://{admin}/debug/probes \
             (admin listener; not on the WebSocket port)"
        ),
        (Some(admin), true) => info!(
            "control plane: http://{admin}/metrics and http://{admin}/debug/probes \
             (admin listener), and on the WebSocket port: http://{addr}/metrics"
        ),
        (None, true) => info!(
            "control plane: http://{addr}/metrics and http://{addr}/debug/probes \
             (on the WebSocket port, --control-on-main)"
        ),
        (None, false) => info!(
            "control plane: off (no admin listener; --admin-addr IP:PORT or --control-on-main \
             serves /metrics and /debug/probes)"
        ),
    }

    let stopper = server.clone();
    let grace = cfg.shutdown_grace;
    let config_path = args.config.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            if signal == SIGHUP {
                match &config_path {
                    Some(path) => reload(&stopper, path, &base, &log_handle),
                    None if stopper.config().tls.is_some() => reload_certificates(&stopper),
                    None => warn!("SIGHUP: no --config file; nothing to reload"),
                }
                continue;
            }
            seen += 1;
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if seen == 1 {
                let sessions = stopper.session_count();
                stopper.stop();
                info!(
                    sessions,
                    "{name}: stopping; closing sessions with 1001, grace period {grace:?} (signal again to exit now)"
                );
            } else {
                warn!("{name} again: exiting without waiting");
                std::process::exit(1);
            }
        }
    });

    match server.wait() {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
