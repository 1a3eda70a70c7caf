//! What to tell a user whose EAL did not start: `rte_eal_init` says "Permission denied" or
//! "Cannot allocate memory", and the cause is usually one of a few set-up steps (hugepages not
//! reserved, no hugetlbfs mounted, not root) or another DPDK process holding every hugepage. This reads the machine's state and names the
//! missing step and its fix.

/// The machine's state that the EAL depends on.
#[derive(Debug, Default, Clone)]
pub(super) struct HugepageState {
    /// Hugepages reserved (all sizes).
    pub reserved: u64,
    /// Reserved hugepages not in use (all sizes).
    pub free: u64,
    /// A hugetlbfs is mounted.
    pub mounted: bool,
    /// Running as root.
    pub root: bool,
}

impl HugepageState {
    /// Reads this machine's state (Linux; elsewhere everything reads as missing).
    pub fn read() -> Self {
        let count = |file: &str| -> u64 {
            std::fs::read_dir("/sys/kernel/mm/hugepages")
                .map(|dirs| {
                    dirs.flatten()
                        .filter_map(|d| std::fs::read_to_string(d.path().join(file)).ok())
                        .filter_map(|n| n.trim().parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0)
        };
        let (reserved, free) = (count("nr_hugepages"), count("free_hugepages"));
        let mounted = std::fs::read_to_string("/proc/mounts")
            .map(|m| {
                m.lines()
                    .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
            })
            .unwrap_or(false);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        HugepageState {
            reserved,
            free,
            mounted,
            root,
        }
    }
}

/// The likely cause of an EAL failure and its fix, given the EAL arguments and the machine's
/// state; `None` when nothing looks missing.
pub(super) fn eal_hint(eal_args: &[String], state: &HugepageState) -> Option<String> {
    let no_huge = eal_args.iter().any(|a| a == "--no-huge");
    if !state.root {
        return Some(
            "DPDK needs root here (hugepages, device access): run as root, or grant the \
             capabilities listed in docker/README.md"
                .into(),
        );
    }
    if no_huge {
        return None;
    }
    if state.reserved == 0 {
        return Some(
            "no hugepages are reserved: `echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` \
             (scripts/bind-nic.sh does it), or pass --no-huge to the EAL for a test run"
                .into(),
        );
    }
    // With --in-memory the EAL maps hugepages through memfd: no mount is needed.
    let in_memory = eal_args.iter().any(|a| a == "--in-memory");
    if !state.mounted && !in_memory {
        return Some(format!(
            "{} hugepages are reserved but no hugetlbfs is mounted: `mkdir -p /dev/hugepages && \
             mount -t hugetlbfs nodev /dev/hugepages` (scripts/bind-nic.sh does it)",
            state.reserved
        ));
    }
    if state.free == 0 {
        return Some(format!(
            "all {} reserved hugepages are in use (by another DPDK process?): stop it, or reserve \
             more (`echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`)",
            state.reserved
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reserved: u64, mounted: bool, root: bool) -> HugepageState {
        HugepageState {
            reserved,
            free: reserved,
            mounted,
            root,
        }
    }

    #[test]
    fn names_the_missing_step() {
        let args: Vec<String> = vec!["-l".into(), "0".into()];
        let hint = eal_hint(&args, &state(1024, false, true)).unwrap();
        assert!(
            hint.contains("no hugetlbfs is mounted") && hint.contains("mount -t hugetlbfs"),
            "{hint}"
        );
        let hint = eal_hint(&args, &state(0, true, true)).unwrap();
        assert!(hint.contains("no hugepages are reserved"), "{hint}");
        let hint = eal_hint(&args, &state(1024, true, false)).unwrap();
        assert!(hint.contains("root"), "{hint}");
        assert_eq!(eal_hint(&args, &state(1024, true, true)), None);
        let no_huge: Vec<String> = vec!["--no-huge".into()];
        assert_eq!(eal_hint(&no_huge, &state(0, false, true)), None);
        // --in-memory needs no mount; every page in use is named.
        let in_memory: Vec<String> = vec!["--in-memory".into()];
        assert_eq!(eal_hint(&in_memory, &state(1024, false, true)), None);
        let used_up = HugepageState {
            free: 0,
            ..state(1024, true, true)
        };
        let hint = eal_hint(&args, &used_up).unwrap();
        assert!(
            hint.contains("all 1024 reserved hugepages are in use"),
            "{hint}"
        );
    }
}
