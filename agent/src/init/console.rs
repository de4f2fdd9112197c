//! The console: stdio set-up for PID 1 and the ready line.

use std::fs;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::Path;

use crate::sys::{self, FdState};

/// The console device.
pub const CONSOLE: &str = "/dev/console";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("Failed to open {CONSOLE}")]
    Open(#[source] io::Error),
    #[error("Failed to make {CONSOLE} file descriptor {fd}")]
    Dup {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

/// The stdio descriptors (0, 1, 2) that should be pointed at the console.
///
/// A closed one needs it, and so does one open on /dev/null: the Rust runtime
/// opens /dev/null on closed stdio descriptors before `main`, which is what a
/// closed descriptor looks like by the time the agent runs.
pub fn fds_needing_console(states: [FdState; 3]) -> Vec<RawFd> {
    states
        .iter()
        .zip(0..)
        .filter(|(s, _)| matches!(s, FdState::Closed | FdState::DevNull))
        .map(|(_, fd)| fd)
        .collect()
}

/// Points stdio descriptors that are closed (or on /dev/null) at
/// /dev/console. Returns the descriptors it replaced.
pub fn ensure_stdio() -> Result<Vec<RawFd>, ConsoleError> {
    let fds = fds_needing_console([0, 1, 2].map(sys::fd_state));
    if fds.is_empty() {
        return Ok(fds);
    }
    let console = sys::open_console(Path::new(CONSOLE)).map_err(ConsoleError::Open)?;
    for &fd in &fds {
        sys::dup2(&console, fd).map_err(|source| ConsoleError::Dup { fd, source })?;
    }
    // If open() landed on one of the stdio numbers, it already is stdio and
    // must stay open; otherwise dropping it closes the spare descriptor.
    if fds.contains(&std::os::fd::AsRawFd::as_raw_fd(&console)) {
        sys::leak_fd(console);
    }
    Ok(fds)
}

/// Milliseconds since boot from the contents of /proc/uptime
/// (`"<seconds>.<fraction> <idle seconds>"`).
pub fn parse_uptime_ms(proc_uptime: &str) -> Option<u64> {
    let first = proc_uptime.split_ascii_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    // Milliseconds are the first three fractional digits, right-padded.
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    secs.checked_mul(1000)?.checked_add(ms)
}

/// What the ready line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInfo {
    pub uptime_ms: Option<u64>,
    /// The uptime when PID 1 began (the kernel's boot up to /init; the rest of
    /// `uptime_ms` is the agent's own start), for the boot benchmark's phases.
    pub init_ms: Option<u64>,
    pub cpus_online: String,
    pub kernel: String,
}

/// Placeholder for a value that could not be read.
const UNKNOWN: &str = "unknown";

impl ReadyInfo {
    /// Reads the values from /proc, /sys and uname(2); `init_ms` is the uptime PID 1
    /// noted when it began.
    pub fn collect(init_ms: Option<u64>) -> Self {
        let uptime_ms = fs::read_to_string("/proc/uptime")
            .ok()
            .as_deref()
            .and_then(parse_uptime_ms);
        let cpus_online = fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let kernel = sys::kernel_release().unwrap_or_default();
        Self {
            uptime_ms,
            init_ms,
            cpus_online,
            kernel,
        }
    }

    /// `husk-agent: ready uptime_ms=<ms> cpus_online=<list> kernel=<release> init_ms=<ms>`
    /// (no newline). Integration tests and the boot benchmark read it: keep the format
    /// (new fields go at the end).
    pub fn line(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| UNKNOWN.to_owned(), |ms| ms.to_string());
        format!(
            "husk-agent: ready uptime_ms={} cpus_online={} kernel={} init_ms={}",
            ms(self.uptime_ms),
            field(&self.cpus_online),
            field(&self.kernel),
            ms(self.init_ms)
        )
    }
}

/// A value as one whitespace-free word.
fn field(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_owned()
    } else {
        value.split_whitespace().collect::<Vec<_>>().join("_")
    }
}

/// Writes a line to stdout (the console) in one write and flushes it.
pub fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_fds_need_the_console() {
        use FdState::*;
        assert_eq!(
            fds_needing_console([Other, Other, Other]),
            Vec::<RawFd>::new()
        );
        assert_eq!(fds_needing_console([Closed, Closed, Closed]), vec![0, 1, 2]);
        assert_eq!(
            fds_needing_console([DevNull, DevNull, DevNull]),
            vec![0, 1, 2]
        );
        assert_eq!(fds_needing_console([Other, Closed, DevNull]), vec![1, 2]);
        assert_eq!(fds_needing_console([DevNull, Other, Other]), vec![0]);
    }

    #[test]
    fn uptime_parsing() {
        assert_eq!(parse_uptime_ms("0.52 0.80\n"), Some(520));
        assert_eq!(parse_uptime_ms("123.45 678.90\n"), Some(123_450));
        assert_eq!(parse_uptime_ms("1.5 0.0"), Some(1500));
        assert_eq!(parse_uptime_ms("1.23456 0.0"), Some(1234));
        assert_eq!(parse_uptime_ms("7 0"), Some(7000));
        assert_eq!(parse_uptime_ms("7."), Some(7000));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("abc"), None);
        assert_eq!(parse_uptime_ms("-1.00 2.00"), None);
        assert_eq!(parse_uptime_ms(".5 2.00"), None);
        assert_eq!(parse_uptime_ms("1.x 2.00"), None);
        assert_eq!(parse_uptime_ms("99999999999999999999.00"), None);
    }

    #[test]
    fn ready_line_format() {
        let info = ReadyInfo {
            uptime_ms: Some(1234),
            init_ms: Some(1100),
            cpus_online: "0-1".into(),
            kernel: "6.1.0-husk".into(),
        };
        assert_eq!(
            info.line(),
            "husk-agent: ready uptime_ms=1234 cpus_online=0-1 kernel=6.1.0-husk init_ms=1100"
        );
    }

    #[test]
    fn ready_line_with_missing_values_keeps_its_shape() {
        let info = ReadyInfo {
            uptime_ms: None,
            init_ms: None,
            cpus_online: String::new(),
            kernel: "weird kernel".into(),
        };
        assert_eq!(
            info.line(),
            "husk-agent: ready uptime_ms=unknown cpus_online=unknown kernel=weird_kernel \
             init_ms=unknown"
        );
    }

    #[test]
    fn collect_on_this_host() {
        let init = crate::sys::boottime_ms();
        let info = ReadyInfo::collect(init);
        assert!(info.uptime_ms.is_some());
        assert!(init.is_some());
        // /proc/uptime and CLOCK_BOOTTIME are one clock: read later, not earlier.
        assert!(info.uptime_ms.unwrap() + 10 >= init.unwrap());
        assert!(!info.kernel.is_empty());
        assert!(info.line().starts_with("husk-agent: ready uptime_ms="));
    }
}
