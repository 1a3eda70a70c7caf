//! The few system calls mio does not wrap: a vectored send that never raises SIGPIPE, the
//! open-files limit, and telling "out of file descriptors" apart from other accept errors.

use std::io::{self, IoSlice};

use mio::net::TcpStream;

/// Writes `bufs` in order with one system call; returns the bytes the kernel took.
///
/// On Linux this is `sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT)`: a peer that has reset the connection
/// gives `EPIPE`, never a SIGPIPE that would kill a process which did not ignore it, and a full
/// socket gives `WouldBlock` even when the socket itself is blocking (the io_uring backend keeps
/// its sockets blocking so that the ring waits for their input). Elsewhere it is `writev`
/// (macOS sockets get `SO_NOSIGPIPE` at accept instead).
#[cfg(target_os = "linux")]
pub fn send_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero msghdr is a valid "no name, no control data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with `struct iovec` on Unix; sendmsg only reads them.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points at `bufs.len()` valid iovecs that outlive the call; the fd is open.
    let n = unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes `bufs` in order with one system call; returns the bytes the kernel took.
#[cfg(not(target_os = "linux"))]
pub fn send_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::io::Write;
    (&*stream).write_vectored(bufs)
}

/// Reads what is there without waiting, blocking socket or not.
pub fn recv_nonblocking(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    #[cfg(unix)]
    {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        unsafe { recv_raw(stream, buf.as_mut_ptr(), buf.len()) }
    }
    #[cfg(not(unix))]
    {
        use std::io::Read;
        (&*stream).read(buf)
    }
}

/// Reads what is there without waiting into memory not yet initialized (a message buffer's
/// spare capacity); returns how many of its first bytes were written.
pub fn recv_uninit(stream: &TcpStream, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    #[cfg(unix)]
    {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call;
        // the kernel only writes it (uninitialized memory is never read).
        unsafe { recv_raw(stream, buf.as_mut_ptr().cast(), buf.len()) }
    }
    #[cfg(not(unix))]
    {
        for b in buf.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte was just initialized.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len()) };
        recv_nonblocking(stream, buf)
    }
}

/// `recv` with `MSG_DONTWAIT` into `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
#[cfg(unix)]
unsafe fn recv_raw(stream: &TcpStream, ptr: *mut u8, len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the caller's contract.
    let n = unsafe { libc::recv(stream.as_raw_fd(), ptr.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Clears `O_NONBLOCK` on a socket whose reads go through io_uring: the ring then waits for
/// input itself, whatever the kernel's treatment of non-blocking files in a ring.
#[cfg(target_os = "linux")]
pub fn set_blocking(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an open descriptor read and write only its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Prepares an accepted socket: no Nagle delay (replies are already coalesced per loop turn) and,
/// on Apple systems, no SIGPIPE.
pub fn prepare_accepted(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    {
        let sock = socket2::SockRef::from(stream);
        sock.set_nosigpipe(true)?;
    }
    Ok(())
}

/// Whether an `accept` error means the process or system ran out of file descriptors.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

/// Whether an `accept` error concerns only the connection being accepted (the listener is fine).
pub fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Raises the soft open-files limit to the hard limit and returns the new soft limit.
/// A server with thousands of connections needs more than the usual default of 1024.
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let wanted = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `wanted` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = wanted;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is 32-bit on some targets
    Ok(lim.rlim_cur as u64)
}

/// Raises the soft open-files limit to the hard limit (no such limit on this OS).
#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<u64> {
    Ok(u64::MAX)
}

/// A file descriptor held in reserve, released when `accept` fails with EMFILE so that the
/// pending connection can be accepted and closed at once instead of waking the loop forever.
pub struct ReserveFd {
    #[cfg(unix)]
    file: Option<std::fs::File>,
}

impl ReserveFd {
    /// Opens the reserve (`/dev/null`).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            ReserveFd {
                file: std::fs::File::open("/dev/null").ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ReserveFd {}
        }
    }

    /// Whether a descriptor is held.
    pub fn is_held(&self) -> bool {
        #[cfg(unix)]
        {
            self.file.is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Frees the reserved descriptor.
    pub fn release(&mut self) {
        #[cfg(unix)]
        {
            self.file = None;
        }
    }

    /// Takes a descriptor back into reserve, if one is available again.
    pub fn restore(&mut self) {
        #[cfg(unix)]
        if self.file.is_none() {
            self.file = std::fs::File::open("/dev/null").ok();
        }
    }
}

impl Default for ReserveFd {
    fn default() -> Self {
        Self::new()
    }
}
