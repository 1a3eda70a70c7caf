//! Starting and stopping the workers.
//!
//! Everything that can fail at start (binding the address, creating poll instances) happens on the
//! caller's thread before any worker runs, so `start` either returns a running transport or a
//! clear error. Stopping is the shard set's stop flag plus a wake-up per worker; each shard then
//! closes its listener, sends Close 1001 to its sessions and its worker exits when they are gone
//! or the grace period ends.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hioload_wsproto::shard::Wake;
use hioload_wsproto::{App, Listener, Settings, ShardSet};
use mio::{Poll, Waker};
use tracing::{error, info, warn};

use crate::affinity;
use crate::config::{IoBackend, TransportConfig};
use crate::listener::bind_listeners;
use crate::pool::RecvBuffers;
use crate::worker::{PollBackend, Worker, WorkerSeed, WAKER};

/// A running kernel transport: `workers` threads serving one address.
pub struct KernelTransport {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    io: IoBackend,
    set: Arc<ShardSet>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A worker's waker, as the shard set wakes it.
struct PollWaker(Waker);

impl Wake for PollWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

impl KernelTransport {
    /// Binds the listeners and starts the workers; returns once they run. Each worker serves
    /// `app` (a clone each) and takes its receive buffers from `buffers(worker, size)`, called on
    /// the worker's thread after it is pinned (so the source may be NUMA-local and `!Send`).
    pub fn start<A, P, F>(
        mut cfg: TransportConfig,
        app: A,
        buffers: F,
    ) -> io::Result<KernelTransport>
    where
        A: App + Clone + Send + 'static,
        P: RecvBuffers + 'static,
        F: Fn(usize, usize) -> P + Send + Sync + 'static,
    {
        assert!(cfg.workers > 0, "at least one worker");
        assert!(cfg.batch_size > 0, "batch_size > 0");
        cfg.io = resolve_backend(cfg.io)?;
        let (listeners, local_addr) = bind_listeners(cfg.listen, cfg.workers)?;
        let (tls_listeners, tls_local_addr): (Vec<Option<std::net::TcpListener>>, _) =
            match cfg.tls_listen {
                Some(addr) => {
                    let (ls, bound) = bind_listeners(addr, cfg.workers)?;
                    (ls.into_iter().map(Some).collect(), Some(bound))
                }
                None => ((0..cfg.workers).map(|_| None).collect(), None),
            };
        let mut polls = Vec::with_capacity(cfg.workers);
        let mut wakers: Vec<Option<Box<dyn Wake>>> = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers {
            let poll = Poll::new()?;
            wakers.push(Some(Box::new(PollWaker(Waker::new(
                poll.registry(),
                WAKER,
            )?))));
            polls.push(poll);
        }
        let set = Arc::new(ShardSet::new(
            cfg.settings.clone(),
            wakers,
            cfg.inbox_capacity,
        ));
        let cfg = Arc::new(cfg);
        let cpus = if cfg.cpu_affinity && cfg.worker_cpus.is_empty() {
            affinity::allowed_cpus()
        } else {
            Vec::new()
        };

        let mut seeds = Vec::with_capacity(cfg.workers);
        let sockets = listeners.into_iter().zip(tls_listeners);
        for (index, ((listener, tls_listener), poll)) in sockets.zip(polls).enumerate() {
            let mut sockets = vec![(listener, cfg.listen_kind)];
            sockets.extend(tls_listener.map(|l| (l, Listener::Tls)));
            seeds.push(WorkerSeed::new(
                index,
                cfg.clone(),
                set.clone(),
                poll,
                sockets,
            )?);
        }

        let transport = KernelTransport {
            local_addr,
            tls_local_addr,
            io: cfg.io,
            set,
            threads: Mutex::new(Vec::new()),
        };
        let buffers = Arc::new(buffers);
        for (index, seed) in seeds.into_iter().enumerate() {
            let cpu = if !cfg.cpu_affinity {
                None
            } else if !cfg.worker_cpus.is_empty() {
                cfg.worker_cpus.get(index).copied().flatten()
            } else {
                (!cpus.is_empty()).then(|| cpus[index % cpus.len()])
            };
            let (app, buffers) = (app.clone(), buffers.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("hioload-w{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = affinity::pin_current_thread(cpu) {
                            warn!(worker = index, cpu, "cannot pin worker to its CPU: {e}");
                        }
                    }
                    // After pinning, so that the buffers are local to the worker's node.
                    let pool = buffers(index, seed.cfg.receive_buffer_size());
                    run_worker(seed, app, pool);
                });
            match spawned {
                Ok(handle) => transport.threads.lock().unwrap().push(handle),
                Err(e) => {
                    transport.stop();
                    let _ = transport.wait();
                    return Err(e);
                }
            }
        }
        Ok(transport)
    }

    /// What the workers share: sends by session id, broadcasts, reloads, counters.
    pub fn shards(&self) -> &Arc<ShardSet> {
        &self.set
    }

    /// Publishes new settings; each worker applies them at the start of its next loop turn.
    pub fn reload(&self, settings: Settings) {
        self.set.publish(settings)
    }

    /// The I/O backend the workers run (never `Auto`).
    pub fn io_backend(&self) -> IoBackend {
        self.io
    }

    /// The address of the second, TLS listener, if any (the real port when 0 was asked).
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The address the listeners are bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open sessions (upgraded and not yet closed) across all workers.
    pub fn session_count(&self) -> usize {
        self.set.session_count()
    }

    /// Begins the graceful stop and returns at once: listeners close, every session gets Close
    /// 1001, workers exit when their sessions are gone or the grace period has passed.
    pub fn stop(&self) {
        self.set.stop();
    }

    /// Whether `stop` has been asked.
    pub fn is_stopping(&self) -> bool {
        self.set.is_stopping()
    }

    /// Blocks until every worker has exited (after `stop`, within the grace period).
    /// Returns an error if a worker panicked.
    pub fn wait(&self) -> io::Result<()> {
        let handles: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap());
        let mut result = Ok(());
        for handle in handles {
            let name = handle.thread().name().unwrap_or("worker").to_string();
            if handle.join().is_err() {
                result = Err(io::Error::other(format!("{name} panicked")));
            }
        }
        result
    }
}

/// Runs one worker on the backend its configuration names.
fn run_worker<A: App, P: RecvBuffers>(seed: WorkerSeed, app: A, mut pool: P) {
    #[cfg(target_os = "linux")]
    if seed.cfg.io == IoBackend::IoUring {
        use std::os::fd::AsRawFd;
        let backend =
            crate::worker::UringBackend::new(seed.cfg.uring_buffers, seed.poll.as_raw_fd(), || {
                pool.take()
            });
        match backend {
            Ok(backend) => return Worker::new(seed, app, pool, backend).run(),
            Err(e) => error!(
                worker = seed.index,
                "cannot set up io_uring: {e}; this worker uses epoll"
            ),
        }
    }
    Worker::new(seed, app, pool, PollBackend).run()
}

/// Turns `Auto` into the backend this kernel supports; checks that an explicit `IoUring` works.
fn resolve_backend(asked: IoBackend) -> io::Result<IoBackend> {
    #[cfg(target_os = "linux")]
    match asked {
        IoBackend::Poll => Ok(IoBackend::Poll),
        IoBackend::Auto => match crate::uring::probe() {
            Ok(()) => Ok(IoBackend::IoUring),
            Err(e) => {
                info!("io_uring is not available ({e}): the workers use epoll");
                Ok(IoBackend::Poll)
            }
        },
        IoBackend::IoUring => crate::uring::probe()
            .map(|()| IoBackend::IoUring)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the io-uring backend needs Linux 6.1+ with io_uring allowed: {e}"),
                )
            }),
    }
    #[cfg(not(target_os = "linux"))]
    match asked {
        IoBackend::IoUring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the io-uring backend exists only on Linux",
        )),
        _ => Ok(IoBackend::Poll),
    }
}

impl Drop for KernelTransport {
    /// Dropping a running transport stops it gracefully and waits for the workers.
    fn drop(&mut self) {
        self.stop();
        let _ = self.wait();
    }
}
