//! A pod dir whose shim is gone: what `shim delete` finds there (the recorded pids, the
//! network, the jail's id and cgroups) and undoes.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{kill, prune_empty_parent, SandboxError};
use crate::config::Config;
use crate::jail::JailState;
use crate::mounts::{self, HostOps};
use crate::network;
use crate::persist::{self, PodPids};

pub(crate) fn process_is(pid: i32, name: &str) -> bool {
    pid > 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                Path::new(std::str::from_utf8(argv0).unwrap_or_default())
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy() == name)
            })
            .unwrap_or(false)
}

/// Cleans a pod directory after its shim died (`shim delete`): kills the husk-vmm and
/// virtiofsd it recorded (checked by name, so a reused pid is left alone), removes the
/// taps and tc filters it recorded in the pod's netns, unmounts everything below it and
/// removes it. Does nothing if the pod's shim is still alive.
pub fn cleanup_dead_pod(
    ops: &dyn HostOps,
    dir: &Path,
    config: &Config,
) -> Result<(), SandboxError> {
    if !dir.exists() {
        return Ok(());
    }
    let pids = persist::read::<PodPids>(dir).unwrap_or_else(|e| {
        warn!("{}; killing nothing by pid", husk_errors::chain(&e));
        None
    });
    let me = std::process::id() as i32;
    if let Some(shim) = pids.as_ref().map(|p| p.shim) {
        if shim != me && process_is(shim, "containerd-shim-husk-v2") {
            info!("pod shim {shim} still runs; leaving {}", dir.display());
            return Ok(());
        }
    }
    let names = [
        ("vmm", pids.as_ref().map(|p| p.vmm), config.vmm.file_name()),
        (
            "virtiofsd",
            pids.as_ref().map(|p| p.virtiofsd),
            config.virtiofsd.file_name(),
        ),
    ];
    for (key, pid, name) in names {
        if let (Some(pid), Some(name)) = (pid, name) {
            if process_is(pid, &name.to_string_lossy()) {
                info!("killing the dead shim's {key} (pid {pid})");
                kill(pid, libc::SIGKILL);
                let start = Instant::now();
                while Path::new(&format!("/proc/{pid}")).exists()
                    && process_is(pid, &name.to_string_lossy())
                    && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let net_err = network::read_state(dir).and_then(|n| {
        info!("removing the dead shim's network in {}", n.netns.display());
        network::detach(&n).err()
    });
    let jail_err = match JailState::read(dir) {
        Ok(Some(j)) => j.undo(&config.state_dir, dir).err(),
        Ok(None) => None,
        Err(e) => Some(e),
    };
    mounts::unmount_under(ops, dir)?;
    std::fs::remove_dir_all(dir).map_err(|source| SandboxError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    prune_empty_parent(dir);
    if let Some(e) = net_err {
        return Err(e.into());
    }
    jail_err.map_or(Ok(()), |e| Err(e.into()))
}
