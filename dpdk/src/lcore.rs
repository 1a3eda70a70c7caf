//! Logical cores (lcores), their NUMA sockets, and running a closure on each worker.
//!
//! DPDK starts one pinned thread per lcore given with `-l`/`--lcores`; the thread that called
//! `Eal::init` is the main lcore, the others wait for work. [`Eal::run_on`] hands each chosen
//! lcore its own input and waits for all of them before returning, like `std::thread::scope`, so
//! the closures may borrow from the caller. A panic on a worker is caught there and re-raised on
//! the caller once every lcore has finished.

use std::any::Any;
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};

use hioload_dpdk_sys as sys;

use crate::eal::Eal;
use crate::error::{Error, Result};

/// A NUMA socket id; [`SocketId::ANY`] lets DPDK choose.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(pub i32);

impl SocketId {
    /// No preference (`SOCKET_ID_ANY`).
    pub const ANY: SocketId = SocketId(sys::SOCKET_ID_ANY);

    /// The socket of the calling thread (its lcore's socket, or ANY for a non-EAL thread).
    pub fn current() -> SocketId {
        // SAFETY: rte_socket_id reads a thread-local.
        SocketId(unsafe { sys::rte_socket_id() } as i32)
    }
}

/// A logical core enabled in the EAL.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lcore(u32);

impl Lcore {
    /// The lcore id (`rte_lcore_id()` on that lcore's thread).
    pub fn id(self) -> u32 {
        self.0
    }

    /// The NUMA socket this lcore runs on.
    pub fn socket(self) -> SocketId {
        // SAFETY: rte_lcore_to_socket_id reads EAL configuration; ids come from the EAL.
        SocketId(unsafe { sys::rte_lcore_to_socket_id(self.0) } as i32)
    }

    /// The CPU (OS index) the EAL pinned this lcore's thread to (the first, for a CPU set).
    pub fn cpu(self) -> Option<u32> {
        // SAFETY: reads EAL configuration; ids come from the EAL. Negative means unknown.
        u32::try_from(unsafe { sys::rte_lcore_to_cpu_id(self.0 as i32) }).ok()
    }

    /// Dense index of this lcore among the enabled ones (0 = main), for per-lcore arrays.
    pub fn index(self) -> usize {
        // SAFETY: reads EAL configuration.
        unsafe { sys::rte_lcore_index(self.0 as i32) }.max(0) as usize
    }

    /// The lcore the calling thread is, or `None` for a thread DPDK did not start.
    pub fn current() -> Option<Lcore> {
        // SAFETY: rte_lcore_id reads a thread-local.
        let id = unsafe { sys::rte_lcore_id() };
        (id != sys::LCORE_ID_ANY).then_some(Lcore(id))
    }
}

impl Eal {
    /// The main lcore (the thread that called `Eal::init`).
    pub fn main_lcore(&self) -> Lcore {
        // SAFETY: reads EAL configuration.
        Lcore(unsafe { sys::rte_get_main_lcore() })
    }

    /// All enabled lcores, main first.
    pub fn lcores(&self) -> Vec<Lcore> {
        let mut all = vec![self.main_lcore()];
        all.extend(self.worker_lcores());
        all
    }

    /// Enabled lcores other than the main one, in id order.
    pub fn worker_lcores(&self) -> Vec<Lcore> {
        let mut workers = Vec::new();
        let mut id = u32::MAX; // rte_get_next_lcore(-1, ...) starts from the first lcore
        loop {
            // SAFETY: reads EAL configuration; skip_main = 1, wrap = 0.
            id = unsafe { sys::rte_get_next_lcore(id, 1, 0) };
            if id >= sys::RTE_MAX_LCORE {
                return workers;
            }
            workers.push(Lcore(id));
        }
    }

    /// The NUMA sockets that have lcores or memory, in DPDK's order.
    pub fn sockets(&self) -> Vec<SocketId> {
        // SAFETY: reads EAL configuration; indices below rte_socket_count are valid.
        let n = unsafe { sys::rte_socket_count() };
        (0..n)
            .map(|i| SocketId(unsafe { sys::rte_socket_id_by_idx(i) }))
            .collect()
    }

    /// Run `f(lcore, input)` for every `(lcore, input)` job, each on its own lcore, and wait.
    ///
    /// Worker lcores run concurrently; a job for the main lcore runs on the calling thread after
    /// the workers were launched. Results come back in job order. Fails (launching nothing) if an
    /// lcore is not enabled or appears twice; a busy worker fails the call after the jobs already
    /// launched have finished.
    pub fn run_on<T, R, F>(&self, jobs: Vec<(Lcore, T)>, f: F) -> Result<Vec<R>>
    where
        T: Send,
        R: Send,
        F: Fn(Lcore, T) -> R + Sync,
    {
        let main = self.main_lcore();
        let mut seen = Vec::with_capacity(jobs.len());
        for (lcore, _) in &jobs {
            // SAFETY: reads EAL configuration (out-of-range ids answer 0).
            if lcore.0 >= sys::RTE_MAX_LCORE || unsafe { sys::rte_lcore_is_enabled(lcore.0) } == 0 {
                return Err(Error::invalid(
                    "rte_eal_remote_launch",
                    format!("lcore {} is not enabled", lcore.0),
                ));
            }
            if seen.contains(lcore) {
                return Err(Error::invalid(
                    "rte_eal_remote_launch",
                    format!("lcore {} given twice", lcore.0),
                ));
            }
            seen.push(*lcore);
        }

        let slots: Vec<Slot<'_, T, R, F>> = jobs
            .into_iter()
            .map(|(lcore, input)| Slot {
                lcore,
                f: &f,
                input: UnsafeCell::new(Some(input)),
                output: UnsafeCell::new(None),
            })
            .collect();

        let mut launched = Vec::with_capacity(slots.len());
        let mut launch_error = None;
        for slot in slots.iter().filter(|s| s.lcore != main) {
            let arg = slot as *const Slot<'_, T, R, F> as *mut c_void;
            // SAFETY: the slot outlives the job (we wait below before `slots` is dropped), and
            // only that lcore touches its cells until wait_lcore returns.
            let ret = unsafe {
                sys::rte_eal_remote_launch(Some(trampoline::<T, R, F>), arg, slot.lcore.0)
            };
            if ret != 0 {
                launch_error = Some(Error::dpdk("rte_eal_remote_launch", ret));
                break;
            }
            launched.push(slot.lcore);
        }
        if launch_error.is_none() {
            if let Some(slot) = slots.iter().find(|s| s.lcore == main) {
                slot.run();
            }
        }
        for lcore in &launched {
            // SAFETY: waits for a job we launched; makes its writes to the slot visible here.
            unsafe { sys::rte_eal_wait_lcore(lcore.0) };
        }
        if let Some(e) = launch_error {
            return Err(e);
        }

        let mut results = Vec::with_capacity(slots.len());
        let mut first_panic: Option<Box<dyn Any + Send>> = None;
        for slot in slots {
            match slot.output.into_inner() {
                Some(Ok(r)) => results.push(r),
                Some(Err(p)) => {
                    first_panic.get_or_insert(p);
                }
                None => unreachable!("every slot ran"),
            }
        }
        if let Some(p) = first_panic {
            panic::resume_unwind(p);
        }
        Ok(results)
    }

    /// Run `f(lcore)` on every worker lcore and wait; results in worker order.
    pub fn run_on_workers<R, F>(&self, f: F) -> Result<Vec<(Lcore, R)>>
    where
        R: Send,
        F: Fn(Lcore) -> R + Sync,
    {
        let workers = self.worker_lcores();
        let jobs = workers.iter().map(|&l| (l, ())).collect();
        let results = self.run_on(jobs, |lcore, ()| f(lcore))?;
        Ok(workers.into_iter().zip(results).collect())
    }
}

/// One job: its lcore, the shared closure, its input and (after the run) its output.
struct Slot<'f, T, R, F> {
    lcore: Lcore,
    f: &'f F,
    input: UnsafeCell<Option<T>>,
    output: UnsafeCell<Option<std::thread::Result<R>>>,
}

impl<T, R, F: Fn(Lcore, T) -> R> Slot<'_, T, R, F> {
    /// Runs the job once, catching a panic so it never unwinds into DPDK's C frames.
    fn run(&self) {
        // SAFETY: exactly one thread (the lcore the slot was launched on, or the caller for the
        // main lcore) runs a slot, and the owner reads it only after rte_eal_wait_lcore.
        let input = unsafe { (*self.input.get()).take() }.expect("job runs once");
        let out = panic::catch_unwind(AssertUnwindSafe(|| (self.f)(self.lcore, input)));
        // SAFETY: as above.
        unsafe { *self.output.get() = Some(out) };
    }
}

unsafe extern "C" fn trampoline<T, R, F: Fn(Lcore, T) -> R>(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the &Slot passed by run_on, alive until the lcore is waited for.
    let slot = unsafe { &*(arg as *const Slot<'_, T, R, F>) };
    slot.run();
    0
}
