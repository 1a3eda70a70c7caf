//! The io_uring side of a worker (Linux): receives as completions instead of readiness, and
//! small sends batched with the wait.
//!
//! With epoll, every echo costs a `recv` and a `send` system call, plus its share of an
//! `epoll_wait`. Here each connection keeps one receive in flight on the worker's ring, and each
//! loop turn hands the kernel all re-armed receives together with the wait for the next
//! completions: one `io_uring_enter` per loop turn instead of one `recv` per read.
//!
//! The receives name no buffer: the kernel picks one from a ring of *provided buffers*
//! ([`ProvidedBufs`], `IORING_REGISTER_PBUF_RING`) only when data arrives, so an idle connection
//! holds no receive memory, as with epoll. The provided buffers are ordinary buffers from the
//! worker's [`crate::RecvBuffers`]; a completion hands one back to the worker as such, the
//! protocol parses it in place, and it returns to the ring when the worker gives it back.
//!
//! What stays on the mio poll, whose epoll descriptor the ring watches with one multishot poll:
//! the listener, the cross-thread waker and the rare writable edges of connections with pending
//! output. Small turns are sent with [`Uring::send`] (`MSG_DONTWAIT`: done within the submission
//! that carries it, so its bytes need to live only until the wait returns); larger ones stay
//! direct `sendmsg` calls from the receive buffer, with the existing pending-output path.
//!
//! The ring is single-issuer with deferred task work: completions are produced only inside this
//! worker's own `io_uring_enter`, never by interrupting it.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use crate::pool::RecvBuffer;

/// Submission queue entries; the completion queue is twice as large.
const SQ_ENTRIES: u32 = 1024;
/// The provided-buffer group of every receive.
const BGID: u16 = 0;

const KIND_SHIFT: u32 = 62;
const KIND_RECV: u64 = 0;
const KIND_EPOLL: u64 = 1;
const KIND_CANCEL: u64 = 2;
const KIND_SEND: u64 = 3;

/// What a completion is about, from its user data.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// The receive of the connection in `slot` whose id ends in `tag`.
    Recv { slot: usize, tag: u32 },
    /// The multishot poll of the mio poll's epoll descriptor.
    Epoll,
    /// An `ASYNC_CANCEL` (its result does not matter).
    Cancel,
    /// The ring send at `index` in the worker's list of this turn's sends.
    Send { index: u32 },
}

impl Op {
    fn user_data(self) -> u64 {
        match self {
            Op::Recv { slot, tag } => {
                (KIND_RECV << KIND_SHIFT) | ((slot as u64) << 32) | u64::from(tag)
            }
            Op::Epoll => KIND_EPOLL << KIND_SHIFT,
            Op::Cancel => KIND_CANCEL << KIND_SHIFT,
            Op::Send { index } => (KIND_SEND << KIND_SHIFT) | u64::from(index),
        }
    }

    fn from_user_data(data: u64) -> Op {
        match data >> KIND_SHIFT {
            KIND_RECV => Op::Recv {
                slot: ((data >> 32) & ((1 << 30) - 1)) as usize,
                tag: data as u32,
            },
            KIND_EPOLL => Op::Epoll,
            KIND_SEND => Op::Send { index: data as u32 },
            _ => Op::Cancel,
        }
    }
}

/// One completion, copied out of the queue.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Completion {
    pub op: Op,
    /// Bytes, or a negated errno.
    pub result: i32,
    /// The provided buffer the kernel filled, if any.
    pub buffer: Option<u16>,
    /// The request stays armed (a multishot receive goes on).
    pub more: bool,
}

/// Creates a ring the way workers do and registers a provided-buffer ring on it: `Ok` when this
/// kernel (and its seccomp policy: container runtimes often forbid io_uring) supports everything
/// the backend uses (Linux 6.1 or later).
///
/// Runs on a thread of its own: a thread that has used io_uring gets task work when the ring is
/// torn down, which interrupts its blocking calls (a `recv` with a timeout fails with `EINTR`);
/// the caller's thread, often the application's, must not see that.
pub fn probe() -> io::Result<()> {
    std::thread::Builder::new()
        .name("hioload-uring-probe".into())
        .spawn(probe_here)?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
}

fn probe_here() -> io::Result<()> {
    let ring = new_ring(8)?;
    let provided = ProvidedBufs::<crate::pool::RecvBuf>::new(1)?;
    // SAFETY: the ring memory is a page-aligned mapping that outlives the registration (it is
    // unregistered below, before `provided` is dropped).
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            provided.ring_addr(),
            provided.entries,
            BGID,
            0,
        )?
    };
    ring.submitter().unregister_buf_ring(BGID)?;
    Ok(())
}

fn new_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 2)
        .build(entries)
}

/// A worker's ring, its provided receive buffers and the completions of the last wait.
pub(crate) struct Uring<B: RecvBuffer> {
    // Dropped first: the kernel lets go of the buffers before they are freed.
    ring: IoUring,
    provided: ProvidedBufs<B>,
    completions: Vec<Completion>,
    /// Receives submitted whose completion has not been seen (each has exactly one).
    recvs_in_flight: usize,
    epoll_fd: RawFd,
    epoll_armed: bool,
}

impl<B: RecvBuffer> Uring<B> {
    /// A ring with `buffers` provided buffers taken from `take` (fewer if it runs dry, at least
    /// one), watching `epoll_fd`.
    pub fn new(
        buffers: u16,
        epoll_fd: RawFd,
        mut take: impl FnMut() -> Option<B>,
    ) -> io::Result<Self> {
        let ring = new_ring(SQ_ENTRIES)?;
        let entries = buffers.max(1).next_power_of_two();
        let mut provided = ProvidedBufs::new(entries)?;
        for bid in 0..entries {
            match take() {
                Some(buf) => provided.put(bid, buf),
                None => provided.empty.push(bid),
            }
        }
        if provided.empty.len() == usize::from(entries) {
            return Err(io::Error::other("no receive buffer for the io_uring ring"));
        }
        // SAFETY: the ring memory is a page-aligned mapping owned by `provided`, which the
        // kernel stops using before it is unmapped (`Uring` drops the ring first).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(provided.ring_addr(), entries, BGID, 0)?
        };
        Ok(Uring {
            ring,
            provided,
            completions: Vec::with_capacity(SQ_ENTRIES as usize * 2),
            recvs_in_flight: 0,
            epoll_fd,
            epoll_armed: false,
        })
    }

    /// Queues a multishot receive on `fd`: each arrival of data completes into a provided
    /// buffer, and the receive stays armed until a completion says otherwise (end of stream,
    /// error, cancel, no buffer left).
    pub fn recv(&mut self, fd: RawFd, slot: usize, tag: u32) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(Op::Recv { slot, tag }.user_data());
        self.push(&entry)?;
        self.recvs_in_flight += 1;
        Ok(())
    }

    /// Queues a single-shot poll of `fd` for input, completing as the receive of `(slot, tag)`
    /// would (result: the poll mask; no buffer): for a connection that reads the rest of a
    /// large frame itself, straight into the message buffer. Cancelled as a receive is.
    pub fn poll_readable(&mut self, fd: RawFd, slot: usize, tag: u32) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(Op::Recv { slot, tag }.user_data());
        self.push(&entry)?;
        self.recvs_in_flight += 1;
        Ok(())
    }

    /// Queues a send of `bytes` on `fd` that never waits for room (`MSG_DONTWAIT`): it completes
    /// within the submission that carries it, in full, in part or with `EAGAIN`.
    ///
    /// # Safety
    /// `bytes` must stay valid and unchanged until the next [`Uring::submit_and_wait`] returns.
    pub unsafe fn send(&mut self, fd: RawFd, bytes: &[u8], index: u32) -> io::Result<()> {
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(Op::Send { index }.user_data());
        self.push(&entry)
    }

    /// Queues the cancellation of the receive of `(slot, tag)`; its completion still comes.
    pub fn cancel_recv(&mut self, slot: usize, tag: u32) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(Op::Recv { slot, tag }.user_data())
            .build()
            .user_data(Op::Cancel.user_data());
        self.push(&entry)
    }

    /// Arms the multishot poll of the epoll descriptor if it is not armed.
    pub fn arm_epoll(&mut self) -> io::Result<()> {
        if self.epoll_armed {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(Fd(self.epoll_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(Op::Epoll.user_data());
        self.push(&entry)?;
        self.epoll_armed = true;
        Ok(())
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: receives name only provided buffers (registered for the ring's life),
            // cancels and polls no memory, and sends bytes their caller keeps until the submit.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Full: hand what is queued to the kernel and retry.
            self.ring.submit()?;
        }
    }

    /// Submits everything queued and waits up to `timeout` (`None`: without limit, zero: not at
    /// all) for at least one completion; then copies the completions out (see
    /// [`Uring::completions`]).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // The completion queue is full: taking completions is what frees it.
            }
            Err(e) => return Err(e),
        }
        self.completions.clear();
        for cqe in self.ring.completion() {
            let op = Op::from_user_data(cqe.user_data());
            match op {
                Op::Recv { .. } if !cqueue::more(cqe.flags()) => self.recvs_in_flight -= 1,
                Op::Epoll if !cqueue::more(cqe.flags()) => self.epoll_armed = false,
                _ => {}
            }
            self.completions.push(Completion {
                op,
                result: cqe.result(),
                buffer: cqueue::buffer_select(cqe.flags()),
                more: cqueue::more(cqe.flags()),
            });
        }
        Ok(())
    }

    /// The completions copied out by the last [`Uring::submit_and_wait`], moved out (give the
    /// vector back with [`Uring::recycle`] to keep its capacity).
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Returns the vector [`Uring::take_completions`] gave.
    pub fn recycle(&mut self, mut list: Vec<Completion>) {
        list.clear();
        self.completions = list;
    }

    /// Entries queued but not handed to the kernel yet (a submission cut short by a full
    /// completion queue leaves some; the next one takes them).
    pub fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Receives whose completion has not been seen yet.
    pub fn recvs_in_flight(&self) -> usize {
        self.recvs_in_flight
    }

    /// The provided buffer `bid`, which the kernel filled: the worker's until given back.
    pub fn take_buffer(&mut self, bid: u16) -> B {
        self.provided.take(bid)
    }

    /// Gives a buffer to the ring if it has a free entry, else hands it back.
    pub fn give_buffer(&mut self, buf: B) -> Option<B> {
        self.provided.give(buf)
    }

    /// Whether the ring has entries without a buffer (buffers held by connections).
    pub fn wants_buffers(&self) -> bool {
        !self.provided.empty.is_empty()
    }

    /// Buffers the kernel may fill now.
    pub fn lent(&self) -> usize {
        usize::from(self.provided.entries) - self.provided.empty.len()
    }
}

impl<B: RecvBuffer> Drop for Uring<B> {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

/// A ring of provided buffers shared with the kernel (`struct io_uring_buf_ring`): entries
/// `0..tail` are the buffers it may fill, each named by a buffer id (`bid`) that its completion
/// reports. The buffers themselves are kept here by id while the kernel may write into them.
struct ProvidedBufs<B> {
    ring: NonNull<BufRingEntry>,
    entries: u16,
    /// Our copy of the tail: entries added so far (wraps).
    tail: u16,
    /// By buffer id: the buffer the kernel may fill, or `None` while the worker holds it.
    bufs: Vec<Option<B>>,
    /// Buffer ids without a buffer.
    empty: Vec<u16>,
}

impl<B: RecvBuffer> ProvidedBufs<B> {
    fn new(entries: u16) -> io::Result<Self> {
        assert!(entries.is_power_of_two());
        let bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = Vec::with_capacity(usize::from(entries));
        bufs.resize_with(usize::from(entries), || None);
        Ok(ProvidedBufs {
            ring: NonNull::new(addr.cast()).expect("mmap does not return null"),
            entries,
            tail: 0,
            bufs,
            empty: Vec::with_capacity(usize::from(entries)),
        })
    }

    fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Publishes `buf` to the kernel under `bid`.
    fn put(&mut self, bid: u16, mut buf: B) {
        let slice = buf.as_mut_slice();
        let (addr, len) = (slice.as_mut_ptr() as u64, slice.len() as u32);
        self.bufs[usize::from(bid)] = Some(buf);
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index < entries`, inside the mapping; the kernel reads this entry only once the
        // tail below covers it.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies inside the first entry of the mapping and is only ever
        // accessed as an atomic u16 (the kernel reads it with acquire semantics).
        let tail = unsafe { &*(BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    fn take(&mut self, bid: u16) -> B {
        self.empty.push(bid);
        self.bufs[usize::from(bid)]
            .take()
            .expect("the kernel reports only buffers it was given")
    }

    fn give(&mut self, buf: B) -> Option<B> {
        match self.empty.pop() {
            Some(bid) => {
                self.put(bid, buf);
                None
            }
            None => Some(buf),
        }
    }
}

impl<B> Drop for ProvidedBufs<B> {
    fn drop(&mut self) {
        let bytes = usize::from(self.entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: the mapping made in `new`, no longer registered with any ring.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// What ring sends rely on: a `MSG_DONTWAIT` send is done when the submit returns, taken in
    /// full, in part, or refused with `EAGAIN` (io_uring does not wait for room), so the bytes it
    /// names need to live only until then.
    #[test]
    fn a_dontwait_send_completes_within_its_submit_even_on_a_full_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        let fd = server.as_raw_fd();
        let chunk = [7u8; 4096];
        let mut ring = new_ring(8).unwrap();
        let mut results = Vec::new();
        for _ in 0..4096 {
            let entry = opcode::Send::new(Fd(fd), chunk.as_ptr(), chunk.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(1);
            // SAFETY: `chunk` outlives the ring.
            unsafe { ring.submission().push(&entry).unwrap() };
            ring.submit().unwrap();
            let done: Vec<i32> = ring.completion().map(|c| c.result()).collect();
            assert_eq!(done.len(), 1, "the send completed within its submit");
            results.push(done[0]);
            if done[0] == -libc::EAGAIN {
                break;
            }
        }
        assert_eq!(results.last(), Some(&-libc::EAGAIN), "{results:?}");
        assert!(
            results[..results.len() - 1].iter().all(|&n| n > 0),
            "{results:?}"
        );
    }

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::Recv { slot: 0, tag: 0 },
            Op::Recv {
                slot: (1 << 30) - 1,
                tag: u32::MAX,
            },
            Op::Recv { slot: 7, tag: 42 },
            Op::Epoll,
            Op::Cancel,
            Op::Send { index: 9 },
        ] {
            assert_eq!(Op::from_user_data(op.user_data()), op);
        }
    }
}
