//! Busy time of the polling lcores: TSC cycles of the loop turns that did work.
//!
//! A poll-mode lcore runs its CPU at 100 % whatever the load, so the process's CPU time says
//! nothing about what an echo costs on this path. The loop turns that received or sent packets
//! do: each lcore reads the TSC at the start and at the end of every turn, and adds the turn's
//! cycles to its busy count when the turn received or transmitted a packet, and to its turn
//! count in any case (the time spent in turns, idle sleeps left out). Over a measured window,
//! busy cycles / TSC rate / echoes is the server's time per echo, the figure to put beside the
//! kernel path's CPU time per echo; busy cycles / TSC rate / window is how loaded the lcore was
//! (near 100 %: saturated). Time the CPU was taken from the lcore in the middle of a busy turn
//! counts as busy: the figure is only honest on an lcore that has its CPU to itself.
//!
//! What a turn costs besides its work (the two TSC reads, four relaxed stores) is a few dozen
//! cycles. The counters are exported in `/metrics` (`hioload_dpdk_*`, per worker, with the TSC
//! rate); hioload-bench reads them before and after its measured window.
//!
//! So that a reader can tell whether the lcore had its CPU to itself, the lcore also samples its
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) at its tick, every 100 ms, with the TSC of the
//! sample: between two samples a polling lcore that was never preempted has as much CPU time
//! as TSC time; less means other threads took the CPU, and its busy time reads high by up to
//! the difference.
//!
//! One table per process, in static memory: the EAL, hence the DPDK data path, exists at most
//! once per process. Each lcore writes only its own cache line (plain relaxed stores, one
//! writer); readers load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hioload_dpdk::tsc;

/// Most polling lcores counted (DPDK's default RTE_MAX_LCORE).
const MAX_WORKERS: usize = 128;

/// One lcore's counters, on a cache line of its own.
#[repr(align(64))]
struct LcoreBusy {
    lcore: AtomicU64,
    busy_cycles: AtomicU64,
    turn_cycles: AtomicU64,
    busy_turns: AtomicU64,
    turns: AtomicU64,
    /// The thread's CPU time (ns) at its last sample, and the TSC then.
    cpu_ns: AtomicU64,
    cpu_sampled_at: AtomicU64,
}

impl LcoreBusy {
    const fn new() -> LcoreBusy {
        LcoreBusy {
            lcore: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            turn_cycles: AtomicU64::new(0),
            busy_turns: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            cpu_sampled_at: AtomicU64::new(0),
        }
    }
}

static TABLE: [LcoreBusy; MAX_WORKERS] = [const { LcoreBusy::new() }; MAX_WORKERS];
/// Workers of the running DPDK path (0: none yet, nothing is rendered).
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Declares `workers` polling lcores (before they run); their counters start at zero.
pub(super) fn start(workers: usize) {
    let workers = workers.min(MAX_WORKERS);
    for slot in &TABLE[..workers] {
        for c in [
            &slot.busy_cycles,
            &slot.turn_cycles,
            &slot.busy_turns,
            &slot.turns,
            &slot.cpu_ns,
            &slot.cpu_sampled_at,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
    WORKERS.store(workers, Ordering::Release);
}

/// One lcore's meter: counts locally, publishes after every turn.
pub(super) struct TurnMeter {
    slot: Option<&'static LcoreBusy>,
    started: u64,
    busy_cycles: u64,
    turn_cycles: u64,
    busy_turns: u64,
    turns: u64,
}

impl TurnMeter {
    /// The meter of worker `index`, polling on lcore `lcore`.
    pub fn new(index: usize, lcore: u32) -> TurnMeter {
        let slot = TABLE.get(index);
        if let Some(s) = slot {
            s.lcore.store(u64::from(lcore), Ordering::Relaxed);
        }
        TurnMeter {
            slot,
            started: tsc(),
            busy_cycles: 0,
            turn_cycles: 0,
            busy_turns: 0,
            turns: 0,
        }
    }

    /// A turn begins.
    #[inline]
    pub fn begin(&mut self) {
        self.started = tsc();
    }

    /// The turn that began at the last [`begin`](Self::begin) ends; `worked`: it received or
    /// transmitted packets.
    #[inline]
    pub fn end(&mut self, worked: bool) {
        let cycles = tsc().wrapping_sub(self.started);
        self.turn_cycles = self.turn_cycles.wrapping_add(cycles);
        self.turns += 1;
        if worked {
            self.busy_cycles = self.busy_cycles.wrapping_add(cycles);
            self.busy_turns += 1;
        }
        if let Some(s) = self.slot {
            s.busy_cycles.store(self.busy_cycles, Ordering::Relaxed);
            s.turn_cycles.store(self.turn_cycles, Ordering::Relaxed);
            s.busy_turns.store(self.busy_turns, Ordering::Relaxed);
            s.turns.store(self.turns, Ordering::Relaxed);
        }
    }

    /// Samples the calling thread's CPU time (call it on the lcore, at its tick).
    pub fn sample_cpu(&mut self) {
        let Some(s) = self.slot else { return };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
            return;
        }
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        s.cpu_ns.store(ns, Ordering::Relaxed);
        s.cpu_sampled_at.store(tsc(), Ordering::Relaxed);
    }
}

/// The `hioload_dpdk_*` families of `/metrics` (nothing before the DPDK path runs).
pub(crate) fn write_metrics(out: &mut String) {
    let workers = WORKERS.load(Ordering::Acquire);
    if workers == 0 {
        return;
    }
    crate::control::prometheus::gauge(
        out,
        "hioload_dpdk_tsc_hz",
        "TSC cycles per second (measured by the EAL at start): divides the hioload_dpdk_*_cycles_total counters into seconds.",
        hioload_dpdk::tsc_hz() as f64,
    );
    type Field = fn(&LcoreBusy) -> f64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "hioload_dpdk_busy_cycles_total",
            "counter",
            "TSC cycles of the lcore's loop turns that received or sent packets: its busy time (a polling lcore is always at 100 % CPU).",
            |s| s.busy_cycles.load(Ordering::Relaxed) as f64,
        ),
        (
            "hioload_dpdk_turn_cycles_total",
            "counter",
            "TSC cycles of all the lcore's loop turns, busy or not (idle sleeps left out).",
            |s| s.turn_cycles.load(Ordering::Relaxed) as f64,
        ),
        (
            "hioload_dpdk_busy_turns_total",
            "counter",
            "Loop turns of the lcore that received or sent packets.",
            |s| s.busy_turns.load(Ordering::Relaxed) as f64,
        ),
        (
            "hioload_dpdk_turns_total",
            "counter",
            "Loop turns of the lcore.",
            |s| s.turns.load(Ordering::Relaxed) as f64,
        ),
        (
            "hioload_dpdk_lcore_cpu_seconds_total",
            "counter",
            "CPU time of the lcore's thread, sampled every 100 ms; against the TSC time between samples it shows whether other threads took the CPU.",
            |s| s.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        ),
        (
            "hioload_dpdk_lcore_cpu_sampled_cycles",
            "gauge",
            "The TSC when hioload_dpdk_lcore_cpu_seconds_total was sampled.",
            |s| s.cpu_sampled_at.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, field) in families {
        crate::control::prometheus::header(out, name, kind, help);
        for (i, slot) in TABLE[..workers].iter().enumerate() {
            let worker = i.to_string();
            let lcore = slot.lcore.load(Ordering::Relaxed).to_string();
            crate::control::prometheus::sample(
                out,
                name,
                &[("worker", &worker), ("lcore", &lcore)],
                field(slot),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The meter adds turn cycles to the busy count only for turns that worked, and publishes.
    /// (Worker index 127: no running DPDK path in the unit tests uses it.)
    #[test]
    fn busy_turns_count_apart_from_idle_ones() {
        let mut m = TurnMeter::new(MAX_WORKERS - 1, 7);
        let spin = |n: u64| {
            let t = tsc();
            while tsc().wrapping_sub(t) < n {
                std::hint::spin_loop();
            }
        };
        m.begin();
        spin(100_000);
        m.end(true);
        m.begin();
        spin(300_000);
        m.end(false);
        let slot = &TABLE[MAX_WORKERS - 1];
        let busy = slot.busy_cycles.load(Ordering::Relaxed);
        let turns = slot.turn_cycles.load(Ordering::Relaxed);
        assert!((100_000..300_000).contains(&busy), "busy {busy}");
        assert!(turns >= busy + 300_000, "turns {turns}, busy {busy}");
        assert_eq!(slot.busy_turns.load(Ordering::Relaxed), 1);
        assert_eq!(slot.turns.load(Ordering::Relaxed), 2);
        assert_eq!(slot.lcore.load(Ordering::Relaxed), 7);
    }

    /// The families in the Prometheus text, per worker with its lcore, once workers exist.
    #[test]
    fn metrics_name_each_worker_and_its_lcore() {
        let mut out = String::new();
        start(1);
        let mut m = TurnMeter::new(0, 3);
        m.begin();
        m.end(true);
        write_metrics(&mut out);
        for family in [
            "hioload_dpdk_busy_cycles_total",
            "hioload_dpdk_turn_cycles_total",
            "hioload_dpdk_busy_turns_total",
            "hioload_dpdk_turns_total",
        ] {
            assert!(
                out.contains(&format!(
                    "# TYPE {family} counter\n{family}{{worker=\"0\",lcore=\"3\"}} "
                )),
                "{family} in {out}"
            );
        }
        assert!(
            out.contains("hioload_dpdk_busy_turns_total{worker=\"0\",lcore=\"3\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE hioload_dpdk_tsc_hz gauge\nhioload_dpdk_tsc_hz "),
            "{out}"
        );
        assert!(
            out.contains("hioload_dpdk_lcore_cpu_seconds_total{worker=\"0\",lcore=\"3\"} "),
            "{out}"
        );
    }

    /// The CPU-time sample is the thread's: a spinning thread gets about its TSC time.
    #[test]
    fn cpu_samples_follow_the_thread() {
        let mut m = TurnMeter::new(MAX_WORKERS - 2, 1);
        m.sample_cpu();
        let slot = &TABLE[MAX_WORKERS - 2];
        let (cpu0, at0) = (
            slot.cpu_ns.load(Ordering::Relaxed),
            slot.cpu_sampled_at.load(Ordering::Relaxed),
        );
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        m.sample_cpu();
        let cpu = slot.cpu_ns.load(Ordering::Relaxed) - cpu0;
        assert!(cpu >= 20_000_000, "50 ms of spinning gave {cpu} ns of CPU");
        assert!(slot.cpu_sampled_at.load(Ordering::Relaxed) > at0);
    }
}
