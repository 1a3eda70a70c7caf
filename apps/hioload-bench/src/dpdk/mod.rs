//! DPDK mode: the load generator's WebSocket clients on our userspace TCP stack (hioload-stack
//! over hioload-dpdk), with no kernel between it and a hioload-echo in DPDK mode — typically the
//! two processes joined by `net_memif`, one on each core.
//!
//! The main thread initialises the EAL (it becomes the one lcore), opens the port (one queue
//! pair), waits for its link, and builds one stack per source address (`sources`); then it runs
//! the client loop (`client`) while a control thread times the window exactly as in kernel mode
//! (`window`): warm-up, the server's counters (its lcores' busy time from `/metrics`), MEASURE,
//! DONE, the counters again. `setup` says what is missing when something does not come up.

pub mod client;
pub mod setup;
pub mod sources;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hioload_dpdk::Eal;
use hioload_stack::{PortProfile, Stack, StackConfig};

use crate::pattern::Pattern;
use crate::window::{self, Measured, WindowSpec};
use client::{ClientConfig, Control, Outcome};
use setup::Memif;
use sources::Sources;

/// Connections per source address before the next is used (our stack's local ports are
/// 10000..=65535: one address reaches one server port ~55,000 times).
pub const CONNECTIONS_PER_SOURCE: usize = 50_000;

/// What DPDK mode needs besides the scenario.
#[derive(Clone, Debug)]
pub struct DpdkOptions {
    /// EAL arguments (without the program name).
    pub eal_args: Vec<String>,
    /// The port, by DPDK name; default the first.
    pub port: Option<String>,
    /// Our first source address.
    pub local_ip: Ipv4Addr,
    /// Prefix length of the subnet shared with the server.
    pub prefix_len: u8,
    /// Source addresses (0: one per [`CONNECTIONS_PER_SOURCE`] connections).
    pub sources: usize,
    /// Receive and send ring bytes per connection (0: sized for the scenario).
    pub ring_bytes: usize,
    pub client: ClientConfig,
}

/// Ring bytes per connection for a scenario: two windows of P frames, 4 KiB to 256 KiB.
pub fn ring_bytes_for(pattern: &Pattern, pipeline: usize) -> usize {
    let frame = pattern.send_len.max(pattern.echo_len);
    (2 * pipeline * frame)
        .next_power_of_two()
        .clamp(4096, 256 << 10)
}

/// Runs the scenario in DPDK mode: the client's outcome and the window's readings.
pub fn run(
    opts: &DpdkOptions,
    pattern: &Pattern,
    spec: &WindowSpec,
) -> Result<(Outcome, Measured), String> {
    let memif = Memif::from_eal_args(&opts.eal_args);
    if let Some(m) = &memif {
        m.check_before_start()?;
    }
    let mut argv = vec!["hioload-bench".to_string()];
    argv.extend(opts.eal_args.iter().cloned());
    let (eal, rest) = Eal::init(&argv).map_err(|e| setup::eal_error(&e, &opts.eal_args))?;
    if !rest.is_empty() {
        return Err(format!(
            "unexpected arguments after the EAL's: {}",
            rest.join(" ")
        ));
    }
    let result = run_on_eal(&eal, opts, pattern, spec, memif.as_ref());
    drop(eal); // rte_eal_cleanup, every port, pool and ring being gone
               // The EAL leaves its runtime directory behind (empty with --in-memory): removed if empty.
    let prefix = opts
        .eal_args
        .iter()
        .find_map(|a| a.strip_prefix("--file-prefix="))
        .unwrap_or("rte");
    let _ = std::fs::remove_dir(format!("/var/run/dpdk/{prefix}"));
    result
}

fn run_on_eal(
    eal: &Eal,
    opts: &DpdkOptions,
    pattern: &Pattern,
    spec: &WindowSpec,
    memif: Option<&Memif>,
) -> Result<(Outcome, Measured), String> {
    let cfg = &opts.client;
    let mut open = setup::open_port(eal, opts.port.as_deref(), memif)?;
    let port_id = open.port.id();
    setup::wait_for_link(port_id, &open.name, memif)?;
    let profile = PortProfile::of(&open.port).map_err(|e| e.to_string())?;

    let sources = match opts.sources {
        0 => cfg.connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1),
        n => n,
    };
    let ips = setup::source_addresses(opts.local_ip, *cfg.server.ip(), opts.prefix_len, sources)?;
    let ring = match opts.ring_bytes {
        0 => ring_bytes_for(pattern, cfg.pipeline),
        n => n,
    };
    let per_stack = cfg.connections.div_ceil(ips.len()) + 16;
    let socket = eal.main_lcore().socket();
    let result = {
        let queue = open.port.queues().remove(0);
        let mut stacks = Vec::with_capacity(ips.len());
        for (queue, &ip) in Sources::split(queue, &ips).into_iter().zip(&ips) {
            let mut c = StackConfig::new(ip, opts.prefix_len);
            c.max_connections = per_stack;
            c.backlog = c.backlog.min(per_stack);
            c.rx_ring = ring;
            c.tx_ring = ring;
            let stack =
                Stack::new(eal, queue, open.pool.clone(), profile, socket, c).map_err(|e| {
                    format!(
                        "the TCP stack for {ip} ({per_stack} connections × 2 × {ring} B rings): \
                         {e} (are enough hugepages free?)"
                    )
                })?;
            stacks.push(stack);
        }
        let control = Control::default();
        let link_up = || port_id.link().ok().map(|l| l.up);
        std::thread::scope(|scope| {
            let timer = scope.spawn(|| {
                // The window starts once every connection is upgraded (or never).
                let limit = Instant::now() + cfg.setup_timeout + Duration::from_secs(5);
                loop {
                    match control.setup.load(Ordering::Acquire) {
                        client::SETUP_READY => return window::measure(spec, &control.phase),
                        client::SETUP_FAILED => return Err(String::new()),
                        _ if Instant::now() >= limit => {
                            control.phase.store(crate::load::DONE, Ordering::Relaxed);
                            return Err("the setup never ended".into());
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            let outcome = client::run(&mut stacks, pattern, cfg, &control, &link_up);
            let measured = timer
                .join()
                .unwrap_or_else(|_| Err("the timing thread panicked".into()));
            match (outcome, measured) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(e),
                (Ok(o), Ok(m)) => Ok((o, m)),
            }
        })
    };
    if let Err(e) = open.port.stop() {
        eprintln!("hioload-bench: stopping port {}: {e}", open.name);
    }
    result
}
