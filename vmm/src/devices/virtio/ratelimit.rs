//! Rate limiting of log lines the guest can trigger (malformed chains, bad packets, odd
//! register accesses, resets): a guest must not be able to flood the VMM's log, which
//! lives in the pod's directory on the host (Firecracker's `logger/rate_limited.rs` is the
//! model). Two bounds, both needed:
//!
//! - per call site ([`guest_warn!`](crate::guest_warn) and its siblings, each with a
//!   static [`LogLimiter`]) or per device instance ([`WarnLimiter`]): a burst, then
//!   nothing until the period is over; the next line says how many were dropped;
//! - per VM: all guest-triggered lines together take from one budget of
//!   [`GUEST_LOG_BUDGET`] lines over the VM's life, so that a guest cycling through every
//!   call site forever still writes a bounded log. The line that spends it says so; the
//!   devices' counters and the SIGUSR1 state dump go on counting what is not logged.
//!
//! Lines the host side causes (start-up, the operator's state dumps, the exit) are not
//! limited. The `log` records of the rust-vmm crates reach `tracing` through
//! [`install_log_bridge`], which limits those of `virtio_queue` the same way: every line
//! that crate writes is about guest-controlled queue state (an available index too far
//! ahead, a head index out of range, an unaligned ring, a queue size that is no power of
//! two), once per offending access.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most guest-triggered lines a VM writes over its life (at ~150 bytes a line, ~300 KiB).
pub const GUEST_LOG_BUDGET: u64 = 2000;
/// Lines a call site may write in a burst, and the period after which it may again.
pub const SITE_BURST: u32 = 10;
pub const SITE_PERIOD: Duration = Duration::from_secs(5);

/// A number of lines, spent one at a time.
#[derive(Debug)]
pub struct LogBudget {
    left: AtomicU64,
}

impl LogBudget {
    pub const fn new(lines: u64) -> Self {
        Self {
            left: AtomicU64::new(lines),
        }
    }

    /// Takes one line; false once the budget is spent. Taking the last line logs that
    /// no more will follow.
    pub fn take(&self) -> bool {
        let taken = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if taken == Ok(1) {
            tracing::warn!(
                "guest-triggered log lines reached this VM's budget; no more are logged \
                 (the device counters and the SIGUSR1 state dump still count them)"
            );
        }
        taken.is_ok()
    }

    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }
}

/// The budget of this process's VM (one VM per husk-vmm).
pub static GUEST_LOG: LogBudget = LogBudget::new(GUEST_LOG_BUDGET);

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Option<Instant>,
    dropped: u64,
}

/// The limit of one call site: `burst` lines per `period` (refilled whole when a period
/// has passed since the last refill), each also taken from [`GUEST_LOG`]. `const`, so it
/// can be a `static` at the call site.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    period: Duration,
    bucket: Mutex<Bucket>,
}

impl LogLimiter {
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period,
            bucket: Mutex::new(Bucket {
                tokens: 0,
                refilled: None,
                dropped: 0,
            }),
        }
    }

    /// Returns how many lines were dropped since the last one if this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        self.allow_from(&GUEST_LOG)
    }

    fn allow_from(&self, budget: &LogBudget) -> Option<u64> {
        let now = Instant::now();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if b.refilled
            .is_none_or(|t| now.duration_since(t) >= self.period)
        {
            b.tokens = self.burst;
            b.refilled = Some(now);
        }
        if b.tokens == 0 || !budget.take() {
            b.dropped += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.dropped))
    }
}

/// Logs a guest-triggered event at `$level` through a limiter of its own call site
/// ([`SITE_BURST`] lines per [`SITE_PERIOD`], and the VM's [`GUEST_LOG`] budget); the
/// line carries a `dropped` field when lines were dropped before it. The level is
/// checked first, so a disabled level costs what a plain `tracing` macro does.
#[macro_export]
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        if ::tracing::enabled!($level) {
            static LIMIT: $crate::devices::virtio::ratelimit::LogLimiter =
                $crate::devices::virtio::ratelimit::LogLimiter::new(
                    $crate::devices::virtio::ratelimit::SITE_BURST,
                    $crate::devices::virtio::ratelimit::SITE_PERIOD,
                );
            match LIMIT.allow() {
                Some(0) => ::tracing::event!($level, $($arg)+),
                Some(dropped) => ::tracing::event!($level, dropped, $($arg)+),
                None => {}
            }
        }
    }};
}

/// [`guest_log!`] at error level.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::guest_log!(::tracing::Level::ERROR, $($arg)+) };
}

/// [`guest_log!`] at warn level.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::guest_log!(::tracing::Level::WARN, $($arg)+) };
}

/// [`guest_log!`] at debug level (reasons for resets and refusals, for debugging).
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::guest_log!(::tracing::Level::DEBUG, $($arg)+) };
}

/// Passes `log` records on to `tracing` (as `tracing-log`'s `LogTracer` does), those of
/// `virtio_queue` through one [`LogLimiter`].
pub struct LogBridge {
    tracer: tracing_log::LogTracer,
    queue_limit: LogLimiter,
}

impl Default for LogBridge {
    fn default() -> Self {
        Self {
            tracer: tracing_log::LogTracer::new(),
            queue_limit: LogLimiter::new(SITE_BURST, SITE_PERIOD),
        }
    }
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.tracer.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.tracer.enabled(record.metadata()) {
            return;
        }
        if record.target().starts_with("virtio_queue") && self.queue_limit.allow().is_none() {
            return;
        }
        self.tracer.log(record);
    }

    fn flush(&self) {}
}

/// Installs [`LogBridge`] as the process's `log` logger (once, after the `tracing`
/// subscriber).
pub fn install_log_bridge() -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::<LogBridge>::default())?;
    log::set_max_level(log::LevelFilter::Trace);
    Ok(())
}

/// Logs a guest-triggered warning of one device at most once per interval, counting what
/// it drops; each line also takes from the VM's [`GUEST_LOG`] budget.
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
        self.allow_from(&GUEST_LOG)
    }

    fn allow_from(&mut self, budget: &LogBudget) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ if !budget.take() => {
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
    use std::sync::Arc;

    use tracing::subscriber::with_default;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let budget = LogBudget::new(100);
        let mut w = WarnLimiter::new(Duration::from_secs(3600));
        assert_eq!(w.allow_from(&budget), Some(0));
        assert_eq!(w.allow_from(&budget), None);
        assert_eq!(w.allow_from(&budget), None);
        w.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(w.allow_from(&budget), Some(2));
        assert_eq!(budget.left(), 98);
    }

    #[test]
    fn a_site_writes_its_burst_then_nothing_until_the_period_is_over() {
        let budget = LogBudget::new(100);
        let site = LogLimiter::new(3, Duration::from_secs(3600));
        let allowed: Vec<_> = (0..10).map(|_| site.allow_from(&budget)).collect();
        assert_eq!(allowed[..3], [Some(0); 3]);
        assert!(allowed[3..].iter().all(Option::is_none));
        // A period later: a new burst, the first line counting the 7 dropped.
        site.bucket.lock().unwrap().refilled = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(site.allow_from(&budget), Some(7));
        assert_eq!(site.allow_from(&budget), Some(0));
        assert_eq!(budget.left(), 95);
    }

    #[test]
    fn the_vm_budget_bounds_every_site_together() {
        let budget = LogBudget::new(5);
        let sites: Vec<_> = (0..4)
            .map(|_| LogLimiter::new(10, Duration::from_secs(3600)))
            .collect();
        let mut per_device = WarnLimiter::new(Duration::ZERO);
        let mut logged = 0;
        for _ in 0..100 {
            for s in &sites {
                logged += usize::from(s.allow_from(&budget).is_some());
            }
            logged += usize::from(per_device.allow_from(&budget).is_some());
        }
        assert_eq!(logged, 5);
        assert_eq!(budget.left(), 0);
        assert!(!budget.take());
    }

    /// Collects formatted log output.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What `f` logs at up to `level`, formatted.
    fn captured(level: tracing::Level, f: impl FnOnce()) -> String {
        let out = Capture::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        with_default(sub, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn virtio_queue_records_are_limited_and_others_pass() {
        use log::Log;
        let bridge = LogBridge::default();
        let text = captured(tracing::Level::DEBUG, || {
            for target in ["virtio_queue::queue", "vhost::vhost_user"] {
                for i in 0..100 {
                    bridge.log(
                        &log::Record::builder()
                            .args(format_args!("line {i} of {target}"))
                            .level(log::Level::Error)
                            .target(target)
                            .build(),
                    );
                }
            }
        });
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("of virtio_queue"), SITE_BURST as usize, "{text}");
        assert_eq!(count("of vhost"), 100, "{text}");
    }

    #[test]
    fn the_macros_log_a_burst_per_site_and_name_what_they_dropped() {
        let text = captured(tracing::Level::DEBUG, || {
            for i in 0..1000 {
                crate::guest_warn!(n = i, "site one");
                crate::guest_debug!("site two {i}");
            }
        });
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("site one"), SITE_BURST as usize, "{text}");
        assert_eq!(count("site two"), SITE_BURST as usize, "{text}");
        let ones: Vec<&str> = text.lines().filter(|l| l.contains("site one")).collect();
        assert!(
            ones[0].ends_with("n=0") && ones[9].ends_with("n=9"),
            "{text}"
        );
        // Nothing is formatted for a level that is off.
        assert!(captured(tracing::Level::WARN, || crate::guest_debug!("never")).is_empty());
    }
}
