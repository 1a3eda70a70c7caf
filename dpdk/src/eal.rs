//! The Environment Abstraction Layer: one per process, initialised once, cleaned up on drop.
//!
//! `Eal::init` takes the command line the DPDK way (`prog [EAL options] -- [app options]`) and
//! hands back the application's part, as the l2fwd/l3fwd examples do with `argc -= ret`.
//! The [`Eal`] value is the proof that DPDK is up: constructors of pools, ports and NUMA buffers
//! take `&Eal`. It stays on the thread that created it (that thread is the main lcore), and its
//! drop runs `rte_eal_cleanup` only when no pool, port or buffer is still alive; otherwise DPDK
//! memory is deliberately left mapped, so nothing can point into freed hugepages.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicUsize, Ordering};

use hioload_dpdk_sys as sys;

use crate::error::{Error, Result};
use crate::port::PortId;

/// Pools, ports and NUMA buffers alive right now; `Eal::drop` cleans up only at zero.
static LIVE_OBJECTS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn live_object_created() {
    LIVE_OBJECTS.fetch_add(1, Ordering::AcqRel);
}

pub(crate) fn live_object_released() {
    LIVE_OBJECTS.fetch_sub(1, Ordering::AcqRel);
}

/// The initialised EAL. Not `Send`: it belongs to the main lcore's thread.
pub struct Eal {
    _main_thread_only: PhantomData<*mut ()>,
}

impl Eal {
    /// Initialise DPDK with `args` (`args[0]` is the program name, as in `argv`).
    ///
    /// Returns the EAL and the application arguments (those after `--`, without the program
    /// name). A second call in the same process returns [`Error::AlreadyInitialized`].
    pub fn init<I, S>(args: I) -> Result<(Eal, Vec<String>)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut argv: Vec<*mut c_char> = Vec::new();
        for arg in args {
            let c = CString::new(arg.as_ref())
                .map_err(|_| Error::invalid("rte_eal_init", "argument contains a NUL byte"))?;
            // DPDK may keep pointers into argv (device arguments, prefixes); the strings are
            // leaked on purpose, once per process.
            argv.push(c.into_raw());
        }
        if argv.is_empty() {
            return Err(Error::invalid(
                "rte_eal_init",
                "args must start with the program name",
            ));
        }
        let argc = argv.len() as i32;
        argv.push(std::ptr::null_mut());
        // SAFETY: argv holds argc valid NUL-terminated strings followed by NULL, as C's main
        // gets; DPDK may permute the pointer array, which we own.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            // SAFETY: reading this thread's rte_errno has no preconditions.
            let errno = unsafe { sys::rte_errno() };
            if errno == libc::EALREADY {
                return Err(Error::AlreadyInitialized);
            }
            return Err(Error::dpdk("rte_eal_init", errno));
        }
        // argv[ret] is the program name again; the application's arguments follow it.
        let rest = argv[(ret as usize + 1).min(argc as usize)..argc as usize]
            .iter()
            // SAFETY: every entry before argc is one of our leaked CStrings.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        Ok((
            Eal {
                _main_thread_only: PhantomData,
            },
            rest,
        ))
    }

    /// Ethernet ports DPDK knows about (probed PCI devices and `--vdev`s), in id order.
    pub fn ports(&self) -> Vec<PortId> {
        let mut ports = Vec::new();
        let mut id = 0u16;
        loop {
            // SAFETY: rte_eth_find_next only reads the ethdev table.
            let next = unsafe { sys::rte_eth_find_next(id) };
            if next as u32 >= sys::RTE_MAX_ETHPORTS {
                return ports;
            }
            ports.push(PortId::new(next as u16));
            id = next as u16 + 1;
        }
    }

    /// The DPDK version string, e.g. `DPDK 22.11.11`.
    pub fn version(&self) -> String {
        // SAFETY: rte_version returns a pointer to a static string.
        unsafe { CStr::from_ptr(sys::rte_version()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Whether the EAL runs on hugepages (false with `--no-huge`).
    pub fn has_hugepages(&self) -> bool {
        // SAFETY: reads EAL configuration only.
        unsafe { sys::rte_eal_has_hugepages() != 0 }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        let live = LIVE_OBJECTS.load(Ordering::Acquire);
        if live != 0 {
            tracing::warn!(
                live,
                "EAL left running: DPDK objects still alive at Eal drop"
            );
            return;
        }
        // SAFETY: we are on the main lcore (Eal is !Send), every worker lcore has been waited
        // for (run_on waits before returning) and no pool, port or buffer remains.
        let ret = unsafe { sys::rte_eal_cleanup() };
        if ret != 0 {
            tracing::warn!(error = %Error::dpdk("rte_eal_cleanup", ret), "EAL cleanup failed");
        }
    }
}
