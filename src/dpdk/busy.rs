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
}

impl LcoreBusy {
    const fn new() -> LcoreBusy {
        LcoreBusy {
            lcore: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            turn_cycles: AtomicU64::new(0),
            busy_turns: AtomicU64::new(0),
            turns: AtomicU64::new(0),
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
    type Field = fn(&LcoreBusy) -> &AtomicU64;
    let families: [(&str, &str, Field); 4] = [
        (
            "hioload_dpdk_busy_cycles_total",
            "TSC cycles of the lcore's loop turns that received or sent packets: its busy time (a polling lcore is always at 100 % CPU).",
            |s| &s.busy_cycles,
        ),
        (
            "hioload_dpdk_turn_cycles_total",
            "TSC cycles of all the lcore's loop turns, busy or not (idle sleeps left out).",
            |s| &s.turn_cycles,
        ),
        (
            "hioload_dpdk_busy_turns_total",
            "Loop turns of the lcore that received or sent packets.",
            |s| &s.busy_turns,
        ),
        (
            "hioload_dpdk_turns_total",
            "Loop turns of the lcore.",
            |s| &s.turns,
        ),
    ];
    for (name, help, field) in families {
        crate::control::prometheus::header(out, name, "counter", help);
        for (i, slot) in TABLE[..workers].iter().enumerate() {
            let worker = i.to_string();
            let lcore = slot.lcore.load(Ordering::Relaxed).to_string();
            crate::control::prometheus::sample(
                out,
                name,
                &[("worker", &worker), ("lcore", &lcore)],
                field(slot).load(Ordering::Relaxed) as f64,
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
    }
}
