//! Safe layer over the system DPDK: EAL, lcores, mempools, mbufs, ethdev ports, NUMA buffers.
//!
//! The shape follows DPDK's own examples (l2fwd, l3fwd): initialise the EAL from the command
//! line, create one mbuf pool per NUMA socket, configure each port with one rx/tx queue pair per
//! polling lcore, then let every lcore loop over `rx_burst` / `tx_burst`. Nothing on that path
//! allocates: packets move as [`Mbuf`] handles inside fixed [`Burst`] arrays, and packet bytes
//! are borrowed in place.
//!
//! ```no_run
//! use hioload_dpdk::{Burst, Eal, Mempool, MempoolConfig, Port, PortConfig};
//! let (eal, _app_args) = Eal::init(["app", "--no-pci", "--vdev=net_ring0", "--in-memory"])?;
//! let pool = Mempool::new(&eal, "rx0", &MempoolConfig::default())?;
//! let mut port = Port::open_by_name(&eal, "net_ring0")?;
//! port.configure(&PortConfig::default(), &[&pool])?;
//! port.start()?;
//! let mut burst = Burst::<32>::new();
//! let n = port.rx_burst(0, &mut burst);
//! # let _ = n;
//! # Ok::<(), hioload_dpdk::Error>(())
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod burst;
mod cycles;
mod eal;
mod error;
mod lcore;
mod mbuf;
mod mempool;
mod numa_buf;
mod port;

pub use burst::{Burst, Drain, DEFAULT_BURST};
pub use cycles::{tsc, tsc_hz};
pub use eal::Eal;
pub use error::{strerror, Error, Result};
pub use lcore::{Lcore, SocketId};
pub use mbuf::Mbuf;
pub use mempool::{Mempool, MempoolConfig};
pub use numa_buf::{MemorySegment, NumaAllocator, NumaBuf};
pub use port::{
    Checksums, Configured, DeviceInfo, Link, MacAddr, Port, PortConfig, PortId, Queue, Stats,
    RSS_TCP_4TUPLE,
};

/// The raw bindings, for what this crate does not wrap.
pub use hioload_dpdk_sys as sys;
