//! Rate limiting of log lines the guest can trigger (malformed chains, bad packets): a
//! guest must not be able to flood the VMM's log.

use std::time::{Duration, Instant};

/// Logs a guest-triggered warning at most once per interval, counting what it drops.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns how many warnings were dropped since the last one if this one may be logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for WarnLimiter {
    /// One line per second.
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let mut w = WarnLimiter::new(Duration::from_secs(3600));
        assert_eq!(w.allow(), Some(0));
        assert_eq!(w.allow(), None);
        assert_eq!(w.allow(), None);
        w.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(w.allow(), Some(2));
    }
}
