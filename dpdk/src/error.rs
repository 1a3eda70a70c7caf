//! Errors of the safe layer.
//!
//! DPDK reports failures as a negative return value or through the thread-local `rte_errno`;
//! both become an [`Error`] that keeps the number and DPDK's own text (`rte_strerror`), so a log
//! line says what DPDK said.

use core::ffi::CStr;
use std::fmt;

use hioload_dpdk_sys as sys;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in a DPDK call or in the arguments given to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `rte_eal_init` was already called in this process (DPDK answers `EALREADY`; an EAL cannot
    /// be initialised twice, not even after cleanup).
    AlreadyInitialized,
    /// A DPDK call failed; `errno` is the positive error number, `message` its `rte_strerror` text.
    Dpdk {
        /// The DPDK function that failed.
        op: &'static str,
        /// Positive errno value (`EINVAL`, `ENOMEM`, ...).
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// The request was refused before calling DPDK (bad argument, unsupported by the device, ...).
    Invalid {
        /// What was being done.
        op: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

impl Error {
    /// Error from a positive or negative errno returned by `op`.
    pub(crate) fn dpdk(op: &'static str, errno: i32) -> Error {
        let errno = errno.abs();
        Error::Dpdk {
            op,
            errno,
            message: strerror(errno),
        }
    }

    /// Error from the calling thread's `rte_errno` after `op` failed.
    pub(crate) fn from_rte_errno(op: &'static str) -> Error {
        // SAFETY: reading the calling thread's rte_errno has no preconditions.
        let errno = unsafe { sys::rte_errno() };
        Error::dpdk(op, errno)
    }

    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            op,
            reason: reason.into(),
        }
    }

    /// The errno value, when DPDK reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::AlreadyInitialized => Some(libc::EALREADY),
            Error::Dpdk { errno, .. } => Some(*errno),
            Error::Invalid { .. } => None,
        }
    }
}

/// `rte_strerror(errno)` as an owned string (covers DPDK's own codes beyond libc's).
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a NUL-terminated string (static or per-thread
    // buffer) that stays valid until the next call on this thread; we copy it at once.
    unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyInitialized => {
                f.write_str("rte_eal_init: EAL already initialised in this process (EALREADY)")
            }
            Error::Dpdk { op, errno, message } => write!(f, "{op}: {message} (errno {errno})"),
            Error::Invalid { op, reason } => write!(f, "{op}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
