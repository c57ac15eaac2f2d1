//! Rate-limited warnings about refused connections: a client that opens connections in a loop
//! must not be able to fill the log. The first refusal is logged at once; those that follow
//! within [`REFUSAL_LOG_INTERVAL`] are only counted, and one summary line per interval says
//! how many there were and under which limit (flag).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Length of a refusal log window: the first refusal of a window is logged at once, the rest
/// (under any limit) are counted into one summary line per window.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What to log for a refusal just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Log this refusal in full now.
    Log,
    /// Only counted: it appears in the next summary.
    Counted,
}

/// The refusals counted in one window: how many, per flag (e.g. `--max-connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Refusals per flag, in flag order.
    pub by_flag: BTreeMap<&'static str, u64>,
    /// The window length.
    pub interval: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.by_flag.values().sum();
        write!(
            f,
            "refused {total} connections in the last {} s (",
            self.interval.as_secs()
        )?;
        for (i, (flag, n)) in self.by_flag.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{flag}: {n}")?;
        }
        f.write_str(")")
    }
}

/// The rate limiter's state (time is passed in, so tests need no clock).
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    /// Start of the current window; `None`: quiet (the next refusal is logged at once).
    window: Option<Instant>,
    counted: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    /// A limiter with windows of `interval`.
    pub fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            window: None,
            counted: BTreeMap::new(),
        }
    }

    /// A connection was refused under `flag` at `now`. Call [`tick`](RefusalLog::tick) first
    /// so a window that has ended is summarised before it.
    pub fn refuse(&mut self, now: Instant, flag: &'static str) -> Note {
        match self.window {
            None => {
                self.window = Some(now);
                Note::Log
            }
            Some(_) => {
                *self.counted.entry(flag).or_default() += 1;
                Note::Counted
            }
        }
    }

    /// At `now`: the summary of the window if it has ended with refusals counted (a new
    /// window starts, so refusals that go on are summarised again, never logged one by one);
    /// a window that ended with none counted ends quietly.
    pub fn tick(&mut self, now: Instant) -> Option<Summary> {
        let start = self.window?;
        if now.saturating_duration_since(start) < self.interval {
            return None;
        }
        if self.counted.is_empty() {
            self.window = None;
            return None;
        }
        self.window = Some(now);
        Some(Summary {
            by_flag: std::mem::take(&mut self.counted),
            interval: self.interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_millis(n);
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.tick(s(0)), None);
        assert_eq!(log.refuse(s(0), "--max-connections"), Note::Log);
        for i in 1..=500 {
            assert_eq!(log.tick(s(i)), None);
            assert_eq!(log.refuse(s(i), "--max-connections"), Note::Counted);
        }
        assert_eq!(log.refuse(s(600), "--max-handshakes"), Note::Counted);
        assert_eq!(log.tick(s(9_999)), None, "the window is not over");
        let sum = log
            .tick(s(10_000))
            .expect("summary at the end of the window");
        assert_eq!(
            sum.to_string(),
            "refused 501 connections in the last 10 s (--max-connections: 500, --max-handshakes: 1)"
        );
        // Still refusing: counted into the next window, not logged one by one.
        assert_eq!(log.refuse(s(10_001), "--max-connections"), Note::Counted);
        assert_eq!(log.tick(s(15_000)), None);
        let sum = log.tick(s(20_000)).expect("second summary");
        assert_eq!(sum.by_flag.values().sum::<u64>(), 1);
        // A window without refusals ends quietly; the next refusal is logged at once again.
        assert_eq!(log.tick(s(30_000)), None);
        assert_eq!(log.refuse(s(40_000), "--max-connections"), Note::Log);
    }
}
