//! hioload-echo: the reference WebSocket echo server of hioload-ws.
//!
//! Reads the command line (refusing DPDK EAL arguments in a build without DPDK), starts a
//! [`Server`] with an echo handler, and turns SIGINT/SIGTERM into a graceful stop: no new
//! connections, Close 1001 to every session, up to `--grace-period` for the close handshakes,
//! exit 0. A second signal exits at once.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hioload_ws::{Config, Ctx, DataPath, Handler, Message, Server};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

/// Sends every message back as it came.
struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
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

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut cfg = Config {
        listen: args.addr,
        path: args.path.clone(),
        num_workers: args.workers,
        batch_size: args.batch_size,
        cpu_affinity: !args.no_affinity,
        shutdown_grace: args.grace_period,
        handshake_timeout: args.handshake_timeout,
        ..Config::default()
    };
    cfg.limits.max_message_size = args.max_message;
    cfg.limits.max_frame_size = args.max_frame;
    cfg.backpressure.soft_bytes = args.backpressure_bytes;
    cfg.backpressure.hard_bytes = args.backpressure_bytes.saturating_mul(4);
    cfg.backpressure.timeout = args.backpressure_timeout;
    #[cfg(feature = "dpdk")]
    if !split.eal.is_empty() {
        cfg.data_path = DataPath::Dpdk {
            eal_args: split.eal.clone(),
        };
    }
    let data_path = match cfg.data_path {
        DataPath::Kernel => "kernel",
        #[cfg(feature = "dpdk")]
        DataPath::Dpdk { .. } => "dpdk",
    };

    match hioload_ws::raise_fd_limit() {
        Ok(n) if n < 4096 => {
            warn!("open-files limit is {n}; fewer connections than that can be served")
        }
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open-files limit: {e}"),
    }

    let server = match Server::new(cfg) {
        Ok(s) => Arc::new(s.with_handler(Echo)),
        Err(e) => {
            eprintln!("hioload-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
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
    info!(
        "hioload-echo listening on ws://{addr}{} ({} workers, {data_path} data path)",
        args.path, args.workers
    );

    let stopper = server.clone();
    let grace = args.grace_period;
    std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            seen += 1;
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if seen == 1 {
                info!(
                    sessions = stopper.session_count(),
                    "{name}: stopping; closing sessions with 1001, grace period {grace:?} (signal again to exit now)"
                );
                stopper.stop();
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
