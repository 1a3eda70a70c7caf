//! `scripts/bind-nic.sh` in `--dry-run` mode against the real machine and against interfaces
//! the test creates inside its own network namespaces. Dry runs must not change anything; the
//! tests check that too.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bind-nic.sh")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn output(out: Output) -> Run {
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    run
}

fn bind_nic(args: &[&str]) -> Run {
    output(
        Command::new("bash")
            .arg(script())
            .args(args)
            .output()
            .expect("run bash"),
    )
}

/// A network namespace of this test, with a veth pair `hv0`/`hv1` in it; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hioload-b{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "add", "hv0", "type", "veth", "peer", "name", "hv1"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full);
    }

    fn bind_nic(&self, args: &[&str]) -> Run {
        let script = script();
        let mut full = vec!["netns", "exec", &self.0, "bash", script.to_str().unwrap()];
        full.extend_from_slice(args);
        output(
            Command::new("ip")
                .args(full)
                .output()
                .expect("run ip netns exec"),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

/// hugetlbfs lines of /proc/mounts (other mounts change under parallel tests: netns files).
fn hugetlbfs_mounts() -> Vec<String> {
    read_trimmed("/proc/mounts")
        .lines()
        .filter(|l| l.contains(" hugetlbfs "))
        .map(String::from)
        .collect()
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn help_lists_every_option() {
    let run = bind_nic(&["--help"]);
    assert_eq!(run.code, 0);
    for opt in [
        "--hugepages",
        "--hugepage-size",
        "--node",
        "--mount",
        "--status",
        "--unbind",
        "--driver",
        "--dry-run",
        "--force",
        "--noiommu",
    ] {
        assert!(run.stdout.contains(opt), "--help misses {opt}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--hugepages", "many"],
        &["--unbind"],
        &["--hugepage-size", "4M"],
        &["eth0", "eth1"],
    ] {
        let run = bind_nic(args);
        assert_eq!(run.code, 2, "{args:?}");
        assert!(run.stderr.contains("--help"), "{args:?} points to --help");
    }
}

#[test]
fn dry_run_plans_hugepages_and_mount_and_changes_nothing() {
    let before_pages = read_trimmed(HUGEPAGES_2M);
    let before_mounts = hugetlbfs_mounts();
    let want = (before_pages.parse::<u64>().unwrap() + 2).to_string();
    let mount = format!("/tmp/hioload-bindnic-{}-mnt", std::process::id());

    let run = bind_nic(&["--dry-run", "--hugepages", &want, "--mount", &mount]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run
        .stdout
        .contains(&format!("would write '{want}' to {HUGEPAGES_2M}")));
    assert!(run.stdout.contains(&format!("would run: mkdir -p {mount}")));
    assert!(run.stdout.contains(&format!(
        "would run: mount -t hugetlbfs -o pagesize=2M nodev {mount}"
    )));
    assert!(run.stdout.contains("nothing was changed"));

    let node0 = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages";
    if fs::metadata(node0).is_ok() {
        let want0 = (read_trimmed(node0).parse::<u64>().unwrap() + 2).to_string();
        let run = bind_nic(&[
            "--dry-run",
            "--node",
            "0",
            "--hugepages",
            &want0,
            "--mount",
            &mount,
        ]);
        assert_eq!(run.code, 0);
        assert!(run
            .stdout
            .contains(&format!("would write '{want0}' to {node0}")));
    }

    let enough = bind_nic(&["--dry-run", "--hugepages", &before_pages, "--mount", &mount]);
    assert!(enough.stdout.contains("already reserved") || before_pages == "0");
    assert!(!enough.stdout.contains("would write"), "nothing to reserve");

    assert_eq!(
        read_trimmed(HUGEPAGES_2M),
        before_pages,
        "dry run changed nr_hugepages"
    );
    assert_eq!(
        hugetlbfs_mounts(),
        before_mounts,
        "dry run changed hugetlbfs mounts"
    );
    assert!(fs::metadata(&mount).is_err(), "dry run created {mount}");
}

#[test]
fn refuses_interface_with_default_route_unless_forced() {
    let ns = Netns::new();
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "hv0"]);
    ns.ip(&["link", "set", "hv0", "up"]);
    ns.ip(&["link", "set", "hv1", "up"]);
    ns.ip(&["route", "add", "default", "via", "198.18.1.254"]);

    let run = ns.bind_nic(&["--dry-run", "hv0"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("refused: hv0 carries the default route"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"));
    assert!(!run.stdout.contains("would run"), "no plan after a refusal");

    // --force passes the route and address checks; a veth still has no PCI device to bind.
    let forced = ns.bind_nic(&["--dry-run", "--force", "hv0"]);
    assert_eq!(forced.code, 1);
    assert!(forced
        .stdout
        .contains("warning: hv0 carries the default route"));
    assert!(forced
        .stdout
        .contains("warning: hv0 is up with addresses 198.18.1.1/24"));
    assert!(
        forced
            .stderr
            .contains("refused: hv0 is not backed by a PCI device"),
        "{}",
        forced.stderr
    );
}

#[test]
fn refuses_interface_up_with_addresses() {
    let ns = Netns::new();
    ns.ip(&["addr", "add", "198.18.2.1/24", "dev", "hv0"]);
    ns.ip(&["link", "set", "hv0", "up"]);
    let run = ns.bind_nic(&["--dry-run", "hv0"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("refused: hv0 is up with addresses 198.18.2.1/24"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("default route"));

    // Down and without addresses, the only objection left is that it is not a PCI NIC.
    let plain = ns.bind_nic(&["--dry-run", "hv1"]);
    assert_eq!(plain.code, 1);
    assert!(
        plain
            .stderr
            .contains("refused: hv1 is not backed by a PCI device"),
        "{}",
        plain.stderr
    );
}

#[test]
fn refuses_unknown_devices() {
    let run = bind_nic(&["--dry-run", "hioload-nosuch0"]);
    assert_eq!(run.code, 1);
    assert!(run
        .stderr
        .contains("no network interface 'hioload-nosuch0'"));
    let run = bind_nic(&["--dry-run", "ff:1f.7"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no PCI device 0000:ff:1f.7"));
}

#[test]
fn refuses_when_not_root() {
    let script = fs::File::open(script()).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-s",
            "--",
            "--dry-run",
        ])
        .stdin(Stdio::from(script))
        .output()
        .expect("setpriv (util-linux)");
    let run = output(out);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("refused: must run as root"));
}

#[test]
fn refuses_this_machines_default_route_interface() {
    let routes = Command::new("ip")
        .args(["-4", "-o", "route", "show", "default"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let Some(iface) = routes.split_whitespace().skip_while(|w| *w != "dev").nth(1) else {
        println!("no IPv4 default route here; the namespace test covers the refusal");
        return;
    };
    let run = bind_nic(&["--dry-run", iface]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("refused: {iface} carries the default route")),
        "{}",
        run.stderr
    );
}

#[test]
fn status_reports_hugepages() {
    let run = bind_nic(&["--status"]);
    assert_eq!(run.code, 0);
    let total = read_trimmed(HUGEPAGES_2M);
    assert!(
        run.stdout.contains(&format!("2048kB: {total} total")),
        "status shows the 2 MiB count"
    );
    assert!(run.stdout.contains("hugetlbfs mounts:"));
    assert!(run.stdout.contains("IOMMU:"));
}
