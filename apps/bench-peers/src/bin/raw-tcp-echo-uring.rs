//! Raw TCP echo on one thread with io_uring: what the kernel path costs when the epoll
//! readiness step and the per-operation syscalls go away.
//!
//! Each connection always has one operation in flight: a `recv` into its own buffer, or the `send`
//! of what that recv brought. All operations a loop turn produces are submitted together with the
//! wait for the next completions, so one `io_uring_enter` serves many connections (the ring is set
//! up single-issuer with deferred task work, so completions are reaped only there). Not a server
//! design to copy: it measures how far below `raw-tcp-echo` (epoll) the kernel can go.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

use clap::Parser;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Raw TCP echo server (single thread, io_uring).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9004")]
    addr: SocketAddr,
}

const BUF: usize = 64 * 1024;
const ACCEPT: u64 = u64::MAX;
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;

struct Conn {
    fd: RawFd,
    buf: Box<[u8]>,
    /// Bytes of `buf` being echoed, and how many of them are sent.
    len: usize,
    sent: usize,
}

fn recv(conn: &mut Conn, slot: usize) -> squeue::Entry {
    opcode::Recv::new(types::Fd(conn.fd), conn.buf.as_mut_ptr(), BUF as u32)
        .build()
        .user_data(((slot as u64) << 1) | OP_RECV)
}

fn send(conn: &Conn, slot: usize) -> squeue::Entry {
    let rest = &conn.buf[conn.sent..conn.len];
    opcode::Send::new(types::Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
        .build()
        .user_data(((slot as u64) << 1) | OP_SEND)
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.addr)?;
    eprintln!("raw-tcp-echo-uring listening on {}", listener.local_addr()?);
    let mut ring: IoUring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(4096)?;
    let (submitter, mut sq, mut cq) = ring.split();
    let accept = opcode::Accept::new(types::Fd(listener.as_raw_fd()), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT);
    let mut pending: Vec<squeue::Entry> = vec![accept.clone()];
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done: Vec<cqueue::Entry> = Vec::new();
    loop {
        for entry in pending.drain(..) {
            // SAFETY: every buffer an entry points to is owned by a live `Conn` that is only
            // dropped after the operation's completion has been reaped.
            while unsafe { sq.push(&entry) }.is_err() {
                sq.sync();
                submitter.submit()?;
                sq.sync();
            }
        }
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        cq.sync();
        done.extend(&mut cq);
        for cqe in done.drain(..) {
            let res = cqe.result();
            if cqe.user_data() == ACCEPT {
                pending.push(accept.clone());
                if res < 0 {
                    eprintln!("accept: {}", io::Error::from_raw_os_error(-res));
                    continue;
                }
                let one: libc::c_int = 1;
                // SAFETY: a valid socket fd and a pointer to a c_int of the size passed.
                unsafe {
                    libc::setsockopt(
                        res,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        &one as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                let slot = free.pop().unwrap_or_else(|| {
                    conns.push(None);
                    conns.len() - 1
                });
                let conn =
                    conns[slot].insert(Conn { fd: res, buf: vec![0u8; BUF].into_boxed_slice(), len: 0, sent: 0 });
                pending.push(recv(conn, slot));
                continue;
            }
            let slot = (cqe.user_data() >> 1) as usize;
            let op = cqe.user_data() & 1;
            let conn = conns[slot].as_mut().expect("completion for a live connection");
            if res <= 0 {
                // EOF or error: the connection is done (it has no other operation in flight).
                // SAFETY: the fd is ours and closed once.
                unsafe { libc::close(conn.fd) };
                conns[slot] = None;
                free.push(slot);
                continue;
            }
            match op {
                OP_RECV => {
                    conn.len = res as usize;
                    conn.sent = 0;
                    pending.push(send(conn, slot));
                }
                _ => {
                    conn.sent += res as usize;
                    pending.push(if conn.sent < conn.len { send(conn, slot) } else { recv(conn, slot) });
                }
            }
        }
    }
}
