//! Does `MSG_ZEROCOPY` pay for large sends here? Sends `--count` messages of `--size` bytes over
//! one loopback TCP connection, from a thread pinned to `--sender-cpu`, to a reader pinned to
//! `--reader-cpu` that discards them; once with plain `send`, once with `MSG_ZEROCOPY` (and
//! `SO_ZEROCOPY`, completions reaped from the error queue), `--rounds` times interleaved. Prints
//! the sender thread's CPU time per MiB for each (`CLOCK_THREAD_CPUTIME_ID`; on loopback the
//! sender's CPU also runs the receiving socket's TCP path) and how many completions the kernel
//! flagged `SO_EE_CODE_ZEROCOPY_COPIED` (it copied after all: what loopback delivery does).
//! Traffic stays on 127.0.0.1.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use clap::Parser;

/// `SO_EE_ORIGIN_ZEROCOPY` and `SO_EE_CODE_ZEROCOPY_COPIED` (linux/errqueue.h; not in libc).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

#[derive(Parser)]
#[command(about = "Sender CPU per MiB with and without MSG_ZEROCOPY over loopback TCP")]
struct Args {
    /// Bytes per send.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Sends per run.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Runs of each mode, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 0)]
    sender_cpu: usize,
    #[arg(long, default_value_t = 1)]
    reader_cpu: usize,
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Completions reaped from the error queue: (notifications, of which copied).
fn reap(fd: i32, wait: bool) -> (u64, u64) {
    let (mut done, mut copied) = (0, 0);
    loop {
        let mut control = [0u8; 128];
        // SAFETY: a zeroed msghdr is valid; it points only at `control`, which outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let flags = libc::MSG_ERRQUEUE | if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: `msg` is valid for the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock && wait {
                // Nothing queued yet: wait for POLLERR.
                let mut p = libc::pollfd { fd, events: 0, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
                continue;
            }
            return (done, copied);
        }
        // SAFETY: the kernel filled `control` with well-formed cmsgs within msg_controllen.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&msg);
            while !cm.is_null() {
                let ee = libc::CMSG_DATA(cm) as *const libc::sock_extended_err;
                if (*ee).ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    // ee_info..=ee_data: the range of send calls this completes.
                    let n = u64::from((*ee).ee_data.wrapping_sub((*ee).ee_info)) + 1;
                    done += n;
                    if (*ee).ee_code == SO_EE_CODE_ZEROCOPY_COPIED {
                        copied += n;
                    }
                }
                cm = libc::CMSG_NXTHDR(&msg, cm);
            }
        }
        if wait {
            return (done, copied);
        }
    }
}

/// One run: (sender CPU seconds, wall seconds, send calls, completions copied).
fn run(args: &Args, zerocopy: bool) -> (f64, f64, u64, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = (args.size * args.count) as u64;
    let reader_cpu = args.reader_cpu;
    let reader = std::thread::spawn(move || {
        pin(reader_cpu);
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    });
    pin(args.sender_cpu);
    let s = TcpStream::connect(addr).unwrap();
    let fd = s.as_raw_fd();
    if zerocopy {
        let one: libc::c_int = 1;
        // SAFETY: a valid int option for a valid socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ZEROCOPY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_ZEROCOPY: {}", std::io::Error::last_os_error());
    }
    let data = vec![0x5au8; args.size];
    let (mut calls, mut done, mut copied) = (0u64, 0u64, 0u64);
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    for _ in 0..args.count {
        let mut off = 0;
        while off < data.len() {
            let flags = if zerocopy { libc::MSG_ZEROCOPY } else { 0 };
            // SAFETY: `data[off..]` is valid for reads for the call (and, with MSG_ZEROCOPY,
            // is never written while completions are outstanding: it is never written at all).
            let n = unsafe {
                libc::send(fd, data[off..].as_ptr().cast(), data.len() - off, flags)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    let (d, c) = reap(fd, true);
                    done += d;
                    copied += c;
                    continue;
                }
                panic!("send: {e}");
            }
            off += n as usize;
            calls += 1;
        }
        if zerocopy {
            let (d, c) = reap(fd, false);
            done += d;
            copied += c;
        }
    }
    while zerocopy && done < calls {
        let (d, c) = reap(fd, true);
        done += d;
        copied += c;
    }
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed().as_secs_f64());
    drop(s);
    assert_eq!(reader.join().unwrap(), total);
    (cpu, wall, calls, copied)
}

fn main() {
    let args = Args::parse();
    let mib = (args.size * args.count) as f64 / (1 << 20) as f64;
    let mut rows = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, zc) in [false, true].into_iter().enumerate() {
            let (cpu, wall, calls, copied) = run(&args, zc);
            println!(
                "round {} {:<11} sender CPU {:7.1} µs/MiB, wall {:7.1} µs/MiB, {} send calls, {} completions copied",
                round + 1,
                if zc { "MSG_ZEROCOPY" } else { "send" },
                cpu * 1e6 / mib,
                wall * 1e6 / mib,
                calls,
                copied
            );
            rows[i].push(cpu * 1e6 / mib);
        }
    }
    for r in &mut rows {
        r.sort_by(f64::total_cmp);
    }
    let median = |r: &Vec<f64>| r[r.len() / 2];
    println!(
        "median sender CPU per MiB: send {:.1} µs, MSG_ZEROCOPY {:.1} µs (zerocopy / send = {:.2})",
        median(&rows[0]),
        median(&rows[1]),
        median(&rows[1]) / median(&rows[0])
    );
}
