//! Bringing the load generator's DPDK side up, and saying clearly what is missing when it does
//! not come up: the EAL (hugepages, root: the same hints hioload-echo gives), the port (a memif
//! socket nobody serves, or one left over), or the link (no peer on the other end).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use hioload_dpdk::{Eal, Mempool, MempoolConfig, Port, PortConfig, PortId};

/// How long the port's link may take to come up (a memif peer connects within milliseconds).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// A `net_memif` device among the EAL arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memif {
    /// `role=server` (it creates the socket); otherwise client.
    pub server: bool,
    /// The control socket (`socket=`; DPDK's default `/run/memif.sock`).
    pub socket: String,
    /// An abstract socket address (`socket-abstract`, DPDK's default yes): no file to look for.
    pub abstract_socket: bool,
}

impl Memif {
    /// The first `--vdev=net_memif...` (or `--vdev net_memif...`) of `eal_args`.
    pub fn from_eal_args(eal_args: &[String]) -> Option<Memif> {
        let mut specs = Vec::new();
        let mut it = eal_args.iter();
        while let Some(a) = it.next() {
            if let Some(spec) = a.strip_prefix("--vdev=") {
                specs.push(spec.to_string());
            } else if a == "--vdev" {
                specs.extend(it.next().cloned());
            }
        }
        let spec = specs.into_iter().find(|s| s.starts_with("net_memif"))?;
        let mut memif = Memif {
            server: false,
            socket: "/run/memif.sock".into(),
            abstract_socket: true,
        };
        for kv in spec.split(',').skip(1) {
            match kv.split_once('=') {
                Some(("role", v)) => memif.server = v == "server",
                Some(("socket", v)) => memif.socket = v.to_string(),
                Some(("socket-abstract", v)) => memif.abstract_socket = v != "no",
                _ => {}
            }
        }
        Some(memif)
    }

    /// How the two sides find each other, for messages.
    fn socket_text(&self) -> String {
        if self.abstract_socket {
            format!(
                "abstract socket {:?} (socket-abstract=yes, DPDK's default: both sides need it)",
                self.socket
            )
        } else {
            format!("socket {}", self.socket)
        }
    }

    /// Before the EAL starts: a memif client whose socket file is not there cannot connect.
    pub fn check_before_start(&self) -> Result<(), String> {
        if !self.server && !self.abstract_socket && !Path::new(&self.socket).exists() {
            return Err(format!(
                "the memif socket {} does not exist: start the server side first (hioload-echo \
                 [EAL options] --vdev=net_memif0,role=server,socket={},socket-abstract=no -- \
                 --addr ...; the memif server creates the socket)",
                self.socket, self.socket
            ));
        }
        Ok(())
    }
}

/// `rte_eal_init` failed: the EAL's error, hioload-echo's hint for the machine's state, and
/// what a memif device may add.
pub fn eal_error(e: &hioload_dpdk::Error, eal_args: &[String]) -> String {
    let mut msg = format!(
        "DPDK EAL initialisation failed: {e} (EAL arguments: {})",
        eal_args.join(" ")
    );
    if let Some(hint) = hioload_ws::dpdk::eal_failure_hint(eal_args) {
        msg.push_str("; likely cause: ");
        msg.push_str(&hint);
    } else if let Some(m) = Memif::from_eal_args(eal_args) {
        if m.server && !m.abstract_socket && Path::new(&m.socket).exists() {
            msg.push_str(&format!(
                "; likely cause: the memif socket {} already exists (another memif server, or \
                 left by an earlier run): remove it",
                m.socket
            ));
        }
    }
    msg
}

/// The port, its mbuf pool, its name, and the memif device if it is one.
pub struct OpenPort {
    pub port: Port,
    pub pool: Mempool,
    pub name: String,
}

/// Opens the port (`name`, else the first), one queue pair, and starts it.
pub fn open_port(eal: &Eal, name: Option<&str>, memif: Option<&Memif>) -> Result<OpenPort, String> {
    let id = match name {
        Some(n) => PortId::by_name(eal, n).map_err(|e| format!("port {n:?}: {e}"))?,
        None => *eal.ports().first().ok_or_else(|| {
            "DPDK found no Ethernet port: give one with --vdev (e.g. \
             --vdev=net_memif0,role=client,socket=/tmp/x/memif.sock,socket-abstract=no) or -a PCI_ADDRESS"
                .to_string()
        })?,
    };
    let port_name = id.name().unwrap_or_else(|_| format!("port {}", id.id()));
    let socket = eal.main_lcore().socket();
    let pool = Mempool::new(
        eal,
        "bench_pool",
        &MempoolConfig {
            mbufs: 16383,
            cache_size: 256,
            socket,
            ..MempoolConfig::default()
        },
    )
    .map_err(|e| {
        format!(
            "cannot create the mbuf pool: {e} (are enough hugepages free? see /proc/meminfo HugePages_Free)"
        )
    })?;
    let mut port = Port::open(eal, id).map_err(|e| format!("port {port_name}: {e}"))?;
    port.configure(&PortConfig::default(), &[&pool])
        .map_err(|e| format!("port {port_name} refused its configuration: {e}"))?;
    port.start().map_err(|e| match memif {
        Some(m) if !m.server => format!(
            "port {port_name} did not start: {e}: the memif client could not connect to the \
             {}: is the memif server (hioload-echo) running?",
            m.socket_text()
        ),
        _ => format!("port {port_name} did not start: {e}"),
    })?;
    Ok(OpenPort {
        port,
        pool,
        name: port_name,
    })
}

/// Waits up to [`LINK_TIMEOUT`] for the link; the error says what peer is missing.
pub fn wait_for_link(port: PortId, name: &str, memif: Option<&Memif>) -> Result<(), String> {
    let deadline = Instant::now() + LINK_TIMEOUT;
    loop {
        if port.link().is_ok_and(|l| l.up) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let secs = LINK_TIMEOUT.as_secs();
            return Err(match memif {
                Some(m) => format!(
                    "the link of {name} is still down after {secs} s: no memif peer on the {}; \
                     start hioload-echo with --vdev=net_memif0,role={},socket={}{} (the same \
                     socket, the other role)",
                    m.socket_text(),
                    if m.server { "client" } else { "server" },
                    m.socket,
                    if m.abstract_socket {
                        ""
                    } else {
                        ",socket-abstract=no"
                    }
                ),
                None => format!(
                    "the link of {name} is still down after {secs} s: is its peer (cable, \
                     switch, the other end of the virtual device) up?"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The source addresses for `sources` stacks: `first`, then the next addresses up, skipping
/// the server's; all in the server's subnet (`prefix_len`).
pub fn source_addresses(
    first: Ipv4Addr,
    server: Ipv4Addr,
    prefix_len: u8,
    sources: usize,
) -> Result<Vec<Ipv4Addr>, String> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let net = u32::from(server) & mask;
    let mut ips = Vec::with_capacity(sources);
    let mut next = u32::from(first);
    while ips.len() < sources {
        let ip = Ipv4Addr::from(next);
        let host = next & !mask;
        if next & mask != net || (host == !mask && mask != u32::MAX) {
            return Err(format!(
                "{sources} source addresses from {first} do not fit in {server}/{prefix_len} \
                 (the server's subnet): pick another --local-ip or a wider --netmask"
            ));
        }
        if ip != server && host != 0 {
            ips.push(ip);
        }
        next = next.wrapping_add(1);
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn memif_devargs_are_read() {
        let m = Memif::from_eal_args(&args(
            "-l 0 --vdev=net_memif0,role=server,socket=/tmp/a/m.sock,socket-abstract=no",
        ))
        .unwrap();
        assert!(m.server && !m.abstract_socket && m.socket == "/tmp/a/m.sock");
        let m = Memif::from_eal_args(&args("--vdev net_memif0")).unwrap();
        assert!(!m.server && m.abstract_socket && m.socket == "/run/memif.sock");
        assert_eq!(Memif::from_eal_args(&args("--vdev=net_tap0")), None);
    }

    #[test]
    fn a_missing_client_socket_is_named() {
        let m = Memif {
            server: false,
            socket: "/nonexistent/hioload/memif.sock".into(),
            abstract_socket: false,
        };
        let e = m.check_before_start().unwrap_err();
        assert!(
            e.contains("does not exist") && e.contains("role=server"),
            "{e}"
        );
        // A server creates it; an abstract socket has no file to look for.
        assert!(Memif {
            server: true,
            ..m.clone()
        }
        .check_before_start()
        .is_ok());
        assert!(Memif {
            abstract_socket: true,
            ..m
        }
        .check_before_start()
        .is_ok());
    }

    #[test]
    fn source_addresses_skip_the_server_and_stay_in_its_subnet() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let server = ip("198.18.0.2");
        assert_eq!(
            source_addresses(ip("198.18.0.1"), server, 24, 3).unwrap(),
            [ip("198.18.0.1"), ip("198.18.0.3"), ip("198.18.0.4")]
        );
        assert!(source_addresses(ip("198.18.0.250"), server, 24, 10).is_err());
        assert!(source_addresses(ip("198.18.1.1"), server, 24, 1).is_err());
    }
}
