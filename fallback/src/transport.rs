//! Starting and stopping the workers.
//!
//! Everything that can fail at start (binding the address, creating poll instances) happens on the
//! caller's thread before any worker runs, so `start` either returns a running transport or a
//! clear error. Stopping is a flag plus a wake-up per worker; each worker then closes its
//! listener, sends Close 1001 to its sessions and exits when they are gone or the grace period
//! ends.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::{Poll, Waker};
use tracing::{info, warn};

use crate::affinity;
use crate::config::{IoBackend, Settings, TransportConfig};
use crate::listener::bind_listeners;
use crate::service::Service;
use crate::shared::{Remote, Shared};
use crate::worker::{Worker, WorkerSeed, WAKER};

/// A running kernel transport: `workers` threads serving one address.
pub struct Transport {
    local_addr: SocketAddr,
    io: IoBackend,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Transport {
    /// Binds the listeners and starts the workers; returns once they run.
    pub fn start<S: Service>(mut cfg: TransportConfig, service: Arc<S>) -> io::Result<Transport> {
        assert!(cfg.workers > 0, "at least one worker");
        assert!(cfg.batch_size > 0, "batch_size > 0");
        cfg.io = resolve_backend(cfg.io)?;
        let (listeners, local_addr) = bind_listeners(cfg.listen, cfg.workers)?;
        let mut polls = Vec::with_capacity(cfg.workers);
        let mut wakers = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers {
            let poll = Poll::new()?;
            wakers.push(Waker::new(poll.registry(), WAKER)?);
            polls.push(poll);
        }
        let shared = Arc::new(Shared::new(
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
        for (index, (listener, poll)) in listeners.into_iter().zip(polls).enumerate() {
            seeds.push(WorkerSeed::new(
                index,
                cfg.clone(),
                shared.clone(),
                poll,
                listener,
            )?);
        }

        let transport = Transport {
            local_addr,
            io: cfg.io,
            shared,
            threads: Mutex::new(Vec::new()),
        };
        for (index, seed) in seeds.into_iter().enumerate() {
            let cpu = if !cfg.cpu_affinity {
                None
            } else if !cfg.worker_cpus.is_empty() {
                cfg.worker_cpus.get(index).copied().flatten()
            } else {
                (!cpus.is_empty()).then(|| cpus[index % cpus.len()])
            };
            let service = service.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hioload-w{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = affinity::pin_current_thread(cpu) {
                            warn!(worker = index, cpu, "cannot pin worker to its CPU: {e}");
                        }
                    }
                    // After pinning, so that the buffers are local to the worker's node.
                    let buffers = service.worker_buffers(index, seed.receive_buffer_size());
                    Worker::new(seed, service, buffers).run();
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

    /// A handle for sends by session id, broadcasts, reloads and counters, from any thread.
    pub fn remote(&self) -> Remote {
        Remote {
            shared: self.shared.clone(),
        }
    }

    /// Publishes new settings (see [`Remote::reload`]).
    pub fn reload(&self, settings: Settings) {
        self.shared.publish(settings)
    }

    /// The I/O backend the workers run (never `Auto`).
    pub fn io_backend(&self) -> IoBackend {
        self.io
    }

    /// The address the listeners are bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open sessions (upgraded and not yet closed) across all workers.
    pub fn session_count(&self) -> usize {
        self.shared.workers.iter().map(|w| w.sessions.get()).sum()
    }

    /// Begins the graceful stop and returns at once: listeners close, every session gets Close
    /// 1001, workers exit when their sessions are gone or the grace period has passed.
    pub fn stop(&self) {
        if !self.shared.stopping.swap(true, Ordering::AcqRel) {
            self.shared.wake_all();
        }
    }

    /// Whether `stop` has been asked.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
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

impl Drop for Transport {
    /// Dropping a running transport stops it gracefully and waits for the workers.
    fn drop(&mut self) {
        self.stop();
        let _ = self.wait();
    }
}
