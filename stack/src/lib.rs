//! A userspace TCP/IP stack on DPDK, one instance per lcore, built on smoltcp.
//!
//! Each polling lcore owns a [`Stack`] over one queue pair and runs it to completion: one rx
//! burst, each packet through TCP, the application's callbacks ([`ConnEvents`]), one tx burst. The
//! stack keeps smoltcp's protocol code and replaces what does not scale: each connection has its
//! own one-socket set, found by an exact 4-tuple lookup (flat cost per packet at tens of
//! thousands of connections), listening sockets are created per SYN (a real accept backlog),
//! and smoltcp sees exactly the packets dispatched to it (bounded work per turn).
//!
//! Socket rings live in NUMA-local hugepage memory; the application parses received bytes in
//! place ([`Conn::recv_with`]) and writes its output into the send ring ([`Conn::send_with`],
//! [`Conn::send_all`]). The only copies are smoltcp's, between mbuf and ring.
//!
//! With several lcores on one port, each owns a queue pair; [`SteeredQueue`] makes sure each
//! flow lives on one lcore when the port cannot do that itself (no RSS), and that ARP reaches
//! every lcore's neighbour table.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod checksum;
mod config;
mod conn;
mod device;
mod flow;
mod flow_table;
mod ring_slab;
mod stack;
mod steer;

pub use config::StackConfig;
pub use conn::{CloseReason, Conn, ConnEvents, ConnId, SendRing, TcpState};
pub use device::{IoStats, PacketQueue, TX_BURST};
pub use flow::{flow_hash, TcpFlow};
pub use stack::{PortProfile, Stack, StackError, StackStats, RX_BURST};
pub use steer::{SteerStats, SteeredQueue, Steering};
