//! Rate limits for the log lines a client can cause.
//!
//! A peer decides how often a server logs "protocol error", "handshake rejected" or "connection
//! refused": one line per connection is a line per attacker packet. Each shard therefore lets at
//! most [`LINES_PER_SECOND`] lines per cause through in any one-second window and counts the
//! rest; the first line of the next window says how many were suppressed. Per shard and per
//! cause, no lock: the shard's thread owns it. (The log sink itself is non-blocking: see the
//! facade's logging setup; this only keeps the volume sane.)

use std::time::{Duration, Instant};

use tracing::warn;

/// Lines per cause and per shard let through in one window.
pub const LINES_PER_SECOND: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// What a rate-limited line is about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogCause {
    /// Protocol errors and rejected handshakes (the peer's fault).
    Protocol,
    /// Connections closed for memory: a remainder that cannot be held, the memory budget.
    Memory,
    /// Connections closed for time: message deadline, backpressure, idle drops.
    Time,
    /// Connections refused at the connection cap.
    Refused,
}

const CAUSES: usize = 4;

/// One shard's rate limiter; see the module documentation.
#[derive(Debug)]
pub struct LogLimit {
    window: [Option<Instant>; CAUSES],
    lines: [u32; CAUSES],
    suppressed: [u64; CAUSES],
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    /// A limiter with every window closed.
    pub const fn new() -> Self {
        LogLimit {
            window: [None; CAUSES],
            lines: [0; CAUSES],
            suppressed: [0; CAUSES],
        }
    }

    /// Whether a line about `cause` may be logged at `now`; if not, it is counted as suppressed.
    pub fn allow(&mut self, cause: LogCause, now: Instant) -> bool {
        let i = cause as usize;
        let fresh = match self.window[i] {
            Some(start) => now.duration_since(start) >= WINDOW,
            None => true,
        };
        if fresh {
            if self.suppressed[i] > 0 {
                warn!(
                    "{} similar log lines ({cause:?}) suppressed in the last window",
                    self.suppressed[i]
                );
            }
            self.window[i] = Some(now);
            self.lines[i] = 0;
            self.suppressed[i] = 0;
        }
        if self.lines[i] < LINES_PER_SECOND {
            self.lines[i] += 1;
            true
        } else {
            self.suppressed[i] += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_lines_through_per_window_and_cause() {
        let mut limit = LogLimit::new();
        let t = Instant::now();
        let passed = (0..100)
            .filter(|_| limit.allow(LogCause::Protocol, t))
            .count();
        assert_eq!(passed, LINES_PER_SECOND as usize);
        assert!(
            limit.allow(LogCause::Memory, t),
            "causes are limited separately"
        );
        assert!(
            limit.allow(LogCause::Protocol, t + WINDOW),
            "a new window lets lines through"
        );
    }
}
