//! Test support: one EAL per process, real devices, cleanup even on failure.
//!
//! DPDK allows one `rte_eal_init` per process, while `cargo test` runs every test of a binary in
//! one process. So each `#[test]` calls [`isolated`], which re-runs the current test binary with
//! only that test selected and an environment variable telling the child to run the body. This
//! works the same under `cargo test` (threads) and `cargo nextest run` (a process per test). The
//! parent bounds the child in time and removes what the child may leave behind: its DPDK runtime
//! directory and its network namespace.

#![allow(dead_code)]

use std::env;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hioload_dpdk::{Eal, Mempool};

mod host;
#[allow(unused_imports)] // each test binary uses a part
pub use host::{allowed_cpus, free_hugepages, run, Netns};

/// Set in the child to the name of the test case it must run.
pub const CASE_ENV: &str = "HIOLOAD_DPDK_TEST_CASE";

/// Wall-clock bound of one case.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Run `body` in a fresh process dedicated to the test `name` (the `#[test]` fn's name).
pub fn isolated(name: &str, body: impl FnOnce()) {
    if let Ok(case) = env::var(CASE_ENV) {
        if case == name {
            body();
        }
        return;
    }
    assert!(
        is_root(),
        "DPDK EAL tests need root (hugepages, tap devices, network namespaces)"
    );
    let log_path = env::temp_dir().join(format!("hioload-dpdk-{name}-{}.log", std::process::id()));
    let log = File::create(&log_path).expect("create child log");
    let mut child = Command::new(env::current_exe().expect("current_exe"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE_ENV, name)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn test child");
    let pid = child.id();
    let deadline = Instant::now() + CASE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill(); // by its own pid
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cleanup_after(pid);
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let _ = fs::remove_file(&log_path);
    println!("---- child {pid} output ----\n{output}");
    match status {
        Some(s) => assert!(s.success(), "test case {name} failed in child {pid}: {s}"),
        None => panic!("test case {name} timed out after {CASE_TIMEOUT:?} (child {pid} killed)"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `--file-prefix` of the child with this pid.
pub fn file_prefix(pid: u32) -> String {
    format!("hioload-test-{pid}")
}

/// The network namespace name a child with this pid may create.
pub fn netns_name(pid: u32) -> String {
    format!("hioload-t{pid}")
}

fn cleanup_after(pid: u32) {
    let _ = fs::remove_dir_all(PathBuf::from("/var/run/dpdk").join(file_prefix(pid)));
    let ns = netns_name(pid);
    if PathBuf::from("/var/run/netns").join(&ns).exists() {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
}

/// First CPU this process may run on (lcores are all mapped onto it: tests need no spare cores).
fn first_allowed_cpu() -> usize {
    allowed_cpus()[0]
}

/// EAL arguments for a test child: no PCI, no telemetry, unique file prefix, three lcores
/// (main + 2 workers) on one CPU, in-memory hugepages when free ones exist (CI sets
/// `nr_hugepages`), else (or with `HIOLOAD_DPDK_TEST_NO_HUGE=1`) `--no-huge`. `extra` comes last.
pub fn eal_args(extra: &[&str]) -> Vec<String> {
    let cpu = first_allowed_cpu();
    let mut args = vec![
        "hioload-dpdk-test".to_string(),
        format!("--file-prefix={}", file_prefix(std::process::id())),
        "--no-pci".into(),
        "--no-telemetry".into(),
        format!("--lcores=0@{cpu},1@{cpu},2@{cpu}"),
    ];
    if free_hugepages() >= 128 && env::var_os("HIOLOAD_DPDK_TEST_NO_HUGE").is_none() {
        args.push("--in-memory".into());
    } else {
        args.extend([
            "--no-huge".into(),
            "--no-shconf".into(),
            "-m".into(),
            "512".into(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Initialise the EAL for this test child.
pub fn init_eal(extra: &[&str]) -> Eal {
    let args = eal_args(extra);
    println!("EAL args: {args:?}");
    let (eal, rest) = Eal::init(&args).unwrap_or_else(|e| panic!("EAL init failed: {e}"));
    assert!(
        rest.is_empty(),
        "no application arguments were given, got {rest:?}"
    );
    eal
}

/// Assert that every mbuf of `pool` is back (no leak).
pub fn assert_pool_full(pool: &Mempool) {
    assert_eq!(
        pool.available(),
        pool.capacity(),
        "pool {} leaks mbufs: {} in use",
        pool.name(),
        pool.in_use()
    );
    assert_eq!(pool.in_use(), 0);
}

impl Netns {
    /// The namespace of this test child (removed by the parent too, should the child die).
    pub fn create() -> Netns {
        Netns::named(netns_name(std::process::id()))
    }
}
