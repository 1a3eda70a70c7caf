//! The host side of DPDK tests: commands, network namespaces, hugepage and CPU facts. Nothing
//! here links DPDK, so tests that reach DPDK only through another crate (hioload-echo's, which
//! run the binary) include this file by path.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::process::Command;

/// A network namespace the test owns; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name`.
    pub fn named(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }

    /// Run a command inside the namespace and return its stdout; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Moves the kernel side of the tap `tap` into the namespace as `addr` (with its prefix) and
    /// brings it and the namespace's loopback up.
    pub fn attach_tap(&self, tap: &str, addr: &str) {
        run("ip", &["link", "set", tap, "netns", &self.name]);
        run("ip", &["-n", &self.name, "addr", "add", addr, "dev", tap]);
        run("ip", &["-n", &self.name, "link", "set", tap, "up"]);
        run("ip", &["-n", &self.name, "link", "set", "lo", "up"]);
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run_inside<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn_inside(f)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Starts `f` on a thread inside the namespace.
    pub fn spawn_inside<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns with a valid namespace fd moves only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run a command, panic with its stderr if it fails, return its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Free 2 MiB hugepages.
pub fn free_hugepages() -> u64 {
    fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}
