//! PID 1 duties: mounting the guest's file systems, setting up the console,
//! reaping orphans and powering the VM off.

pub mod console;
pub mod mounts;
pub mod shutdown;
pub mod switch_root;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use self::console::ReadyInfo;
use self::mounts::{MountError, MountOutcome, SysMountOps, GUEST_MOUNTS};
use self::shutdown::ShutdownError;
use crate::config::{self, TestAction};
use crate::log;
use crate::reaper::{Reaper, ReaperError};
use crate::rpc::{self, ListenAddr};
use crate::sandbox::setup::Target;
use crate::sys::{self, SignalFd};
use tracing::{debug, info, warn};

/// The message printed when the binary is started as anything but PID 1.
pub const NOT_PID1_MESSAGE: &str =
    "husk-agent: not PID 1; to serve the agent API on the host run: husk-agent serve --listen unix:<path>";

/// Exit status of PID 1 for `husk.test=panic`; the kernel then panics with
/// "Attempted to kill init! exitcode=0x00000300".
pub const TEST_PANIC_EXIT_CODE: i32 = 3;

/// Signals PID 1 handles: child exits, and the three ways to ask for a
/// shutdown (SIGTERM; SIGPWR, the power-failure convention; SIGINT, which
/// the kernel sends on ctrl-alt-del once CAD is off).
pub const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGPWR, libc::SIGINT];

/// How long DestroySandbox's reply has to leave before the power-off.
const POWER_OFF_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Rate limiting of /dev/kmsg writers (`on`, `off` or `ratelimit`).
const PRINTK_DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("Failed to set up the signalfd")]
    Signals(#[source] io::Error),
    #[error("Failed to read a signal")]
    ReadSignal(#[source] io::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
}

/// Whether this process is PID 1 (of the guest, or of a PID namespace).
pub fn is_pid1() -> bool {
    sys::getpid() == 1
}

/// What the main loop does on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    Reap,
    PowerOff(&'static str),
    Ignore,
}

/// Maps a signal number to what PID 1 does about it.
pub fn action_for_signal(signal: libc::c_int) -> SignalAction {
    match signal {
        libc::SIGCHLD => SignalAction::Reap,
        libc::SIGTERM => SignalAction::PowerOff("SIGTERM"),
        libc::SIGPWR => SignalAction::PowerOff("SIGPWR"),
        libc::SIGINT => SignalAction::PowerOff("SIGINT (ctrl-alt-del)"),
        _ => SignalAction::Ignore,
    }
}

/// Runs the agent as PID 1. Returns only when PID 1 is meant to exit (the
/// `husk.test=panic` hook), with the exit code, or on a fatal error; both end
/// in a kernel panic.
pub fn run() -> Result<i32, InitError> {
    // When PID 1 began: the kernel's share of the boot (the ready line reports it).
    let init_ms = sys::boottime_ms();
    // Block the signals first so none sent during boot is lost: unblocked,
    // the kernel drops signals to init that init does not handle.
    let signals = SignalFd::new(&HANDLED_SIGNALS).map_err(InitError::Signals)?;

    // Before opening any other file, so a closed stdio slot is not taken.
    if let Err(e) = console::ensure_stdio() {
        // /dev/console may only appear with devtmpfs; retried below.
        debug!("{}", husk_errors::chain(&e));
    }

    // Before the mounts, so they are made in the new root.
    let switched = switch_root::leave_initramfs();

    let outcomes = mounts::mount_all(&mut SysMountOps, GUEST_MOUNTS)?;

    match console::ensure_stdio() {
        Ok(fds) if !fds.is_empty() => debug!("Stdio {fds:?} now on {}", console::CONSOLE),
        Ok(_) => {}
        Err(e) => warn!("{}", husk_errors::chain(&e)),
    }
    // Unlimited, so /dev/kmsg keeps every line: the kernel silently drops
    // rate-limited records, and lines it echoes are not written twice.
    if let Err(e) = std::fs::write(PRINTK_DEVKMSG, "on") {
        debug!("Failed to write {PRINTK_DEVKMSG}: {e}");
    }
    if let Err(e) = log::attach_kmsg() {
        warn!("{}", husk_errors::chain(&e));
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        warn!("Failed to read /proc/cmdline: {e}");
        String::new()
    });
    let (config, warnings) = config::parse_cmdline(&cmdline);
    log::set_level(config.log_level);
    for w in &warnings {
        warn!("{w}");
    }
    for (spec, outcome) in &outcomes {
        match outcome {
            MountOutcome::Mounted => debug!("Mounted {} on {}", spec.fstype, spec.target),
            MountOutcome::AlreadyMounted => {
                debug!("{} already mounted on {}", spec.fstype, spec.target)
            }
            MountOutcome::Failed(e) => warn!("{}", husk_errors::chain(e)),
        }
    }

    match switched {
        Ok(true) => debug!("Left the initramfs for a tmpfs root"),
        Ok(false) => {}
        // Containers cannot pivot_root then; the agent still serves.
        Err(e) => warn!("{}", husk_errors::chain(&e)),
    }

    if let Err(e) = shutdown::route_ctrl_alt_del_to_init() {
        warn!("{}", husk_errors::chain(&e));
    }
    // The kernel leaves lo down; UpdateNetwork brings it up too.
    if let Err(e) = crate::network::loopback_up_at_boot() {
        warn!("{}", husk_errors::chain(&e));
    }
    expedite_rcu();

    let reaper = Arc::new(Reaper::new());
    reaper.reap_orphans()?;

    console::print_line(&ReadyInfo::collect(init_ms).line());

    match config.test {
        Some(TestAction::PowerOff) => {
            console::print_line("husk-agent: powering off");
            return power_off().map(|never| match never {});
        }
        Some(TestAction::Panic) => {
            console::print_line("husk-agent: exiting to test kernel panic");
            return Ok(TEST_PANIC_EXIT_CODE);
        }
        None => {}
    }

    // ttrpc serves on its own threads, which inherit this thread's blocked
    // signals (so SIGCHLD still reaches only the signalfd) and never wait
    // for children: reaping stays in main_loop. A guest without vsock keeps
    // running as an init, just without the API.
    let config = rpc::ServeConfig {
        listen: ListenAddr::GUEST,
        stdio: rpc::default_stdio_addr(&ListenAddr::GUEST),
        forward: rpc::default_forward_addr(&ListenAddr::GUEST),
        root: rpc::GUEST_ROOT.into(),
        target: Target::Guest,
        reaper: reaper.clone(),
        power_off: Some(Box::new(power_off_soon)),
    };
    let _server = match rpc::serve(config) {
        Ok(server) => {
            info!(
                "Serving {} on {}",
                husk_protocol::API_VERSION,
                server.addr()
            );
            Some(server)
        }
        Err(e) => {
            warn!("{}", husk_errors::chain(&e));
            None
        }
    };

    main_loop(&signals, &reaper).map(|never| match never {})
}

/// Waits for signals forever: reaps on SIGCHLD, powers off on a shutdown
/// signal.
fn main_loop(signals: &SignalFd, reaper: &Reaper) -> Result<Infallible, InitError> {
    loop {
        let signal = signals.read_signal().map_err(InitError::ReadSignal)?;
        match action_for_signal(signal) {
            SignalAction::Reap => reaper.reap_orphans()?,
            SignalAction::PowerOff(why) => {
                console::print_line(&format!("husk-agent: powering off on {why}"));
                return power_off();
            }
            SignalAction::Ignore => debug!("Ignoring signal {signal}"),
        }
    }
}

/// DestroySandbox's end: power off on another thread after a moment, so
/// the RPC's reply is written first.
fn power_off_soon() {
    let spawned = std::thread::Builder::new()
        .name("power-off".into())
        .spawn(|| {
            std::thread::sleep(POWER_OFF_DELAY);
            console::print_line("husk-agent: powering off (DestroySandbox)");
            let Err(e) = power_off();
            tracing::error!("{}", husk_errors::chain(&e));
        });
    if let Err(e) = spawned {
        tracing::error!("Cannot start the power-off thread: {e}");
    }
}

fn power_off() -> Result<Infallible, InitError> {
    Ok(shutdown::power_off()?)
}

/// Expedited RCU grace periods (`/sys/kernel/rcu_expedited`). Building a container waits
/// for grace periods (namespaces, mounts, cgroups); in a guest restored from a snapshot the
/// normal ones took ~0.5 s longer per container, the guest idle meanwhile (README, "The pod
/// template"), and an expedited one on a VM of a few vCPUs costs a few IPIs. Set before the
/// ready line, so that a template's snapshot has it too.
fn expedite_rcu() {
    const KNOB: &str = "/sys/kernel/rcu_expedited";
    match std::fs::write(KNOB, "1") {
        Ok(()) => debug!("RCU grace periods expedited"),
        Err(e) => warn!("Cannot expedite RCU grace periods ({KNOB}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_actions() {
        assert_eq!(action_for_signal(libc::SIGCHLD), SignalAction::Reap);
        for sig in [libc::SIGTERM, libc::SIGPWR, libc::SIGINT] {
            assert!(matches!(action_for_signal(sig), SignalAction::PowerOff(_)));
        }
        assert_eq!(action_for_signal(libc::SIGHUP), SignalAction::Ignore);
        assert!(HANDLED_SIGNALS
            .iter()
            .all(|&s| action_for_signal(s) != SignalAction::Ignore));
    }

    #[test]
    fn error_chains_on_one_line() {
        let e = InitError::Signals(io::Error::from_raw_os_error(libc::EPERM));
        assert!(husk_errors::chain(&e).starts_with("Failed to set up the signalfd: "));
        assert!(husk_errors::chain(&e).contains("Operation not permitted"));
    }

    #[test]
    fn not_pid1_in_tests() {
        assert!(!is_pid1());
    }
}
