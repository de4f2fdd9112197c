//! The agent's log: a `tracing` subscriber ([`install`]) for the agent's own events and
//! libcontainer's, at the configured level ([`set_level`], `husk.log=` on the kernel
//! command line).
//!
//! Every line goes to the console (the agent's stderr, which is
//! /dev/console when it runs as PID 1) and, once [`attach_kmsg`] has been
//! called, to /dev/kmsg with a `<N>` syslog priority prefix, so it also ends
//! up in the kernel log (`dmesg`).
//!
//! The kernel itself prints kmsg records whose priority is below the console
//! loglevel (first field of /proc/sys/kernel/printk) on its consoles. Such a
//! line is not written to the console a second time: under emulation the
//! serial console is what makes boots slow.
//!
//! Use `tracing`'s macros: `error!`, `warn!`, `info!`, `debug!` (`trace!` is dropped).
//! An event from another crate (libcontainer) names its target in the line.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Name every line starts with.
pub const PREFIX: &str = "husk-agent";

const KMSG_PATH: &str = "/dev/kmsg";
const PRINTK_PATH: &str = "/proc/sys/kernel/printk";

/// Severity of a log line; a line is written when its level is at most the
/// configured one (`Error` < `Warn` < `Info` < `Debug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    Error = 0,
    Warn = 1,
    #[default]
    Info = 2,
    Debug = 3,
}

impl Level {
    /// The syslog priority used as `<N>` prefix on /dev/kmsg.
    pub fn kmsg_priority(self) -> u8 {
        match self {
            Level::Error => 3, // LOG_ERR
            Level::Warn => 4,  // LOG_WARNING
            Level::Info => 6,  // LOG_INFO
            Level::Debug => 7, // LOG_DEBUG
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Unknown log level {0:?} (expected debug, info, warn or error)")]
    UnknownLevel(String),
    #[error("Failed to open {KMSG_PATH}")]
    OpenKmsg(#[source] io::Error),
}

impl FromStr for Level {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(LogError::UnknownLevel(s.to_owned())),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Set in the processes that build containers: they log to kmsg only.
static CONSOLE_OFF: AtomicBool = AtomicBool::new(false);
static KMSG: OnceLock<File> = OnceLock::new();
/// The kernel's console loglevel; 0 (echo nothing) until known.
static CONSOLE_LOGLEVEL: AtomicU8 = AtomicU8::new(0);

/// Sets the most verbose level that is written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The most verbose level that is written.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

/// Whether a line of `level` would be written.
pub fn enabled(level: Level) -> bool {
    level <= self::level()
}

/// From now on, this process writes log lines to /dev/kmsg only, never to its stderr:
/// for the forked children that build containers, whose stderr becomes a container's
/// (a line there would be in the container's output). Without kmsg (on the host) they
/// log nothing.
pub fn console_off() {
    CONSOLE_OFF.store(true, Ordering::Relaxed);
}

/// Also send every line to /dev/kmsg from now on. Only PID 1 should do
/// this: on a host it would write into the host's kernel log.
pub fn attach_kmsg() -> Result<(), LogError> {
    if KMSG.get().is_some() {
        return Ok(());
    }
    let file = OpenOptions::new()
        .write(true)
        .open(KMSG_PATH)
        .map_err(LogError::OpenKmsg)?;
    // A concurrent caller may have won the race; either file is fine.
    let _ = KMSG.set(file);
    let console_loglevel = std::fs::read_to_string(PRINTK_PATH)
        .ok()
        .as_deref()
        .and_then(parse_console_loglevel)
        .unwrap_or(0);
    CONSOLE_LOGLEVEL.store(console_loglevel, Ordering::Relaxed);
    Ok(())
}

/// The console loglevel from the contents of /proc/sys/kernel/printk
/// (`"<console> <default> <minimum> <boot-default>"`).
pub fn parse_console_loglevel(printk: &str) -> Option<u8> {
    printk.split_ascii_whitespace().next()?.parse().ok()
}

/// Whether the kernel prints a kmsg record of `level` on its consoles.
pub fn kernel_echoes(level: Level, console_loglevel: u8) -> bool {
    level.kmsg_priority() < console_loglevel
}

/// The console form of a line: `husk-agent: <level>: <msg>\n`.
pub fn console_line(level: Level, msg: &str) -> String {
    format!("{PREFIX}: {level}: {msg}\n")
}

/// The /dev/kmsg records for a message: one `<N>husk-agent: <level>: ...`
/// record per line of `msg` (each write to /dev/kmsg is one record).
pub fn kmsg_records(level: Level, msg: &str) -> Vec<String> {
    let prio = level.kmsg_priority();
    let mut lines: Vec<&str> = msg.lines().collect();
    if lines.is_empty() {
        lines.push("");
    }
    lines
        .into_iter()
        .map(|line| format!("<{prio}>{PREFIX}: {level}: {line}\n"))
        .collect()
}

/// Writes `args` at `level` to the console and, if attached, /dev/kmsg.
/// Logging never fails the caller: write errors are ignored.
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let msg = args.to_string();
    let mut echoed = false;
    if let Some(mut kmsg) = KMSG.get() {
        echoed = kernel_echoes(level, CONSOLE_LOGLEVEL.load(Ordering::Relaxed));
        for record in kmsg_records(level, &msg) {
            // If a write fails, the console gets the line directly.
            echoed &= kmsg.write_all(record.as_bytes()).is_ok();
        }
    }
    if !echoed && !CONSOLE_OFF.load(Ordering::Relaxed) {
        // One write per line keeps lines from concurrent writers whole.
        let _ = io::stderr().write_all(console_line(level, &msg).as_bytes());
    }
}

/// The agent's tracing subscriber: every event at or above the configured level goes
/// through [`log`]. Spans are not recorded (nothing in the guest reads them).
pub struct AgentSubscriber;

/// Makes [`AgentSubscriber`] the process's subscriber (once, before any thread starts).
pub fn install() {
    let _ = tracing::subscriber::set_global_default(AgentSubscriber);
}

fn level_of(l: &tracing::Level) -> Option<Level> {
    match *l {
        tracing::Level::ERROR => Some(Level::Error),
        tracing::Level::WARN => Some(Level::Warn),
        tracing::Level::INFO => Some(Level::Info),
        tracing::Level::DEBUG => Some(Level::Debug),
        _ => None,
    }
}

/// An event's message and other fields, `message key=value ...`.
#[derive(Default)]
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        let sep = if self.0.is_empty() { "" } else { " " };
        let _ = if field.name() == "message" {
            write!(self.0, "{sep}{value:?}")
        } else {
            write!(self.0, "{sep}{}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            let sep = if self.0.is_empty() { "" } else { " " };
            self.0.push_str(sep);
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// The text of an event as the agent logs it: its fields, and its target when it comes
/// from another crate.
pub fn event_text(target: &str, fields: &str) -> String {
    if target.starts_with("husk_agent") {
        fields.to_owned()
    } else {
        format!("{target}: {fields}")
    }
}

impl tracing::Subscriber for AgentSubscriber {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        level_of(metadata.level()).is_some_and(enabled)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        // Levels change at run time (`set_level`): callsites must keep asking.
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let Some(level) = level_of(meta.level()) else {
            return;
        };
        if !enabled(level) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        log(
            level,
            format_args!("{}", event_text(meta.target(), &fields.0)),
        );
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}

    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per event: the level can change after a callsite is first seen.
        tracing::subscriber::Interest::sometimes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("debug".parse::<Level>().unwrap(), Level::Debug);
        assert_eq!("INFO".parse::<Level>().unwrap(), Level::Info);
        assert_eq!("warn".parse::<Level>().unwrap(), Level::Warn);
        assert_eq!("warning".parse::<Level>().unwrap(), Level::Warn);
        assert_eq!("error".parse::<Level>().unwrap(), Level::Error);
        assert!("trace".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
    }

    #[test]
    fn levels_are_ordered_by_verbosity() {
        assert!(Level::Error < Level::Warn);
        assert!(Level::Warn < Level::Info);
        assert!(Level::Info < Level::Debug);
        assert_eq!(Level::default(), Level::Info);
    }

    #[test]
    fn level_round_trips_through_u8() {
        for l in [Level::Error, Level::Warn, Level::Info, Level::Debug] {
            assert_eq!(Level::from_u8(l as u8), l);
        }
    }

    #[test]
    fn console_line_format() {
        assert_eq!(
            console_line(Level::Warn, "disk on fire"),
            "husk-agent: warn: disk on fire\n"
        );
    }

    #[test]
    fn kmsg_records_carry_syslog_priorities() {
        assert_eq!(
            kmsg_records(Level::Error, "boom"),
            vec!["<3>husk-agent: error: boom\n"]
        );
        assert_eq!(
            kmsg_records(Level::Warn, "w")[0],
            "<4>husk-agent: warn: w\n"
        );
        assert_eq!(
            kmsg_records(Level::Info, "i")[0],
            "<6>husk-agent: info: i\n"
        );
        assert_eq!(
            kmsg_records(Level::Debug, "d")[0],
            "<7>husk-agent: debug: d\n"
        );
    }

    #[test]
    fn console_loglevel_parsing() {
        assert_eq!(parse_console_loglevel("7\t4\t1\t7\n"), Some(7));
        assert_eq!(parse_console_loglevel("4 4 1 7"), Some(4));
        assert_eq!(parse_console_loglevel(""), None);
        assert_eq!(parse_console_loglevel("x 4"), None);
    }

    #[test]
    fn which_records_the_kernel_echoes() {
        // Default loglevel 7: everything but debug.
        assert!(kernel_echoes(Level::Error, 7));
        assert!(kernel_echoes(Level::Info, 7));
        assert!(!kernel_echoes(Level::Debug, 7));
        // `quiet` (4): errors only.
        assert!(kernel_echoes(Level::Error, 4));
        assert!(!kernel_echoes(Level::Warn, 4));
        // Unknown: assume nothing is echoed.
        assert!(!kernel_echoes(Level::Error, 0));
    }

    #[test]
    fn events_of_other_crates_name_their_target() {
        assert_eq!(event_text("husk_agent::sandbox", "created"), "created");
        assert_eq!(
            event_text("libcontainer::process", "failed x=1"),
            "libcontainer::process: failed x=1"
        );
    }

    #[test]
    fn fields_are_the_message_then_the_rest() {
        use tracing::field::Visit;
        // A callsite's fields, as an event would record them.
        struct Cs;
        impl tracing::callsite::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                &META
            }
        }
        static CS: Cs = Cs;
        static META: tracing::Metadata<'static> = tracing::Metadata::new(
            "e",
            "t",
            tracing::Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&["message", "err"], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        );
        let fs = META.fields();
        let mut f = Fields::default();
        f.record_str(&fs.field("message").unwrap(), "failed");
        f.record_debug(&fs.field("err").unwrap(), &"EPERM");
        assert_eq!(f.0, "failed err=\"EPERM\"");
    }

    #[test]
    fn kmsg_splits_multi_line_messages_into_records() {
        assert_eq!(
            kmsg_records(Level::Info, "a\nb\n"),
            vec!["<6>husk-agent: info: a\n", "<6>husk-agent: info: b\n"]
        );
        assert_eq!(
            kmsg_records(Level::Info, ""),
            vec!["<6>husk-agent: info: \n"]
        );
    }
}
