//! The DPDK data path in process, for the facade's `dpdk_*` tests: a net_tap port whose kernel
//! side the test moves into a network namespace it creates (198.18.0.1/24 there, the userspace
//! stack at [`STACK`]), and clients on threads that entered that namespace.
//!
//! One EAL per process, so each such test file holds one test and one [`TapNet`]. The EAL runs in
//! the test process: the tap PMD's SIGIO would interrupt the clients' blocking socket calls, so
//! [`TapNet::in_ns`] blocks it on the client thread and [`retry`] covers what still gets through.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hioload_ws::{Config, DataPathConfig, DpdkConfig};
use tungstenite::WebSocket;

/// Namespaces and commands, shared with the DPDK crates' tests.
#[path = "../../dpdk/tests/support/host.rs"]
mod host;

use host::Netns;

/// The userspace stack's listening address.
pub const STACK: &str = "198.18.0.2:8080";

/// A namespace and the names of the tap port and EAL runtime directory of one test; the namespace
/// and the runtime directory are removed on drop.
pub struct TapNet {
    tap: String,
    ns: Netns,
    prefix: String,
}

impl TapNet {
    /// Checks for root and creates the namespace. `tag` (one letter per test file) keeps the
    /// names of concurrently running test binaries apart.
    pub fn create(tag: char) -> TapNet {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (hugepages, tap, netns)"
        );
        let pid = std::process::id();
        TapNet {
            tap: format!("hl{tag}{pid}"),
            ns: Netns::named(format!("hioload-{tag}{pid}")),
            prefix: format!("hl{tag}-{pid}"),
        }
    }

    /// A server config listening on [`STACK`] over this test's tap port: in-memory EAL on
    /// `lcores` (e.g. `"0@0"`), 100 µs idle sleep so parallel tests share the CPUs.
    pub fn config(&self, lcores: &str, max_connections: usize) -> Config {
        let mut eal: Vec<String> = ["--no-pci", "--no-telemetry", "--in-memory"]
            .map(String::from)
            .into();
        eal.push(format!("--lcores={lcores}"));
        eal.push(format!("--file-prefix={}", self.prefix));
        eal.push(format!("--vdev=net_tap0,iface={}", self.tap));
        let mut dpdk = DpdkConfig::new(eal);
        dpdk.idle_sleep = Duration::from_micros(100);
        dpdk.max_connections = max_connections;
        Config {
            listen: STACK.parse().unwrap(),
            data_path: DataPathConfig::Dpdk(dpdk),
            ..Config::default()
        }
    }

    /// Moves the tap's kernel side (there once the server started) into the namespace, as
    /// 198.18.0.1/24, and brings it up.
    pub fn attach_tap(&self) {
        self.ns.attach_tap(&self.tap, "198.18.0.1/24");
    }

    /// Runs `f` on a thread inside the namespace, with SIGIO blocked, and returns its result.
    pub fn in_ns<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.ns.run_inside(move || {
            block_sigio();
            f()
        })
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// Keeps the tap PMD's SIGIO (the EAL runs in this process) away from this thread, so that its
/// blocking socket calls are not interrupted.
fn block_sigio() {
    // SAFETY: a zeroed sigset_t is valid for sigemptyset; pthread_sigmask changes this thread's
    // mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// Retries a blocking call interrupted by the tap PMD's signal.
pub fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The upgrade request of a raw client (`/ws`, the RFC 6455 sample key).
pub const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw connection to [`STACK`] past a successful handshake (call inside the namespace).
pub fn raw_upgrade() -> TcpStream {
    let mut s = retry(|| TcpStream::connect(STACK)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(UPGRADE).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        retry(|| s.read_exact(&mut byte)).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// A tungstenite client of `ws://{STACK}/ws` (call inside the namespace).
pub fn ws_client(read_timeout: Duration) -> WebSocket<TcpStream> {
    let stream =
        retry(|| TcpStream::connect_timeout(&STACK.parse().unwrap(), Duration::from_secs(10)))
            .unwrap();
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    tungstenite::client::client(format!("ws://{STACK}/ws"), stream)
        .unwrap()
        .0
}
