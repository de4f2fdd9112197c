//! Starting a pod's husk-vmm: its command line, and how it runs: through husk-jailer (the
//! default; the VMM's paths are then the jail's) or directly (`jail = false`). Both join
//! the pod's cgroup; the files the VMM uses live in the pod's `vm` dir either way.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::{info, warn};

use super::{tail, SandboxError};
use crate::config::Config;
use crate::jail::{self, JailPlan, JailState};
use crate::network::{self, Nic};
use crate::sandbox::PodRequest;
use crate::spec::SHARED_FS_TAG;

/// The VMM's own files, in `<pod>/vm` (the jailed VMM's `/run`).
pub const VSOCK_SOCKET: &str = "vsock.sock";
pub const FS_SOCKET: &str = "virtiofsd.sock";
pub const CONSOLE_LOG: &str = "console.log";

/// The pod dir's `vm` dir: the only writable place a jailed VMM has.
pub fn vm_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("vm")
}

/// Leases the VMM's id (when jailed), creates the pod's cgroup, hands the `vm` dir to the
/// VMM's uid, and records it all in the pod dir.
pub fn prepare_jail(
    config: &Config,
    pod_dir: &Path,
    vm_dir: &Path,
    cgroups_path: Option<&str>,
) -> Result<JailState, SandboxError> {
    let id = if config.jail {
        Some(jail::lease_id(
            &config.state_dir,
            config.jail_id_first,
            config.jail_id_count,
            pod_dir,
        )?)
    } else {
        None
    };
    let state = JailState::new(id, Vec::new());
    // Written first, so that a failure below still releases the id.
    state.write(pod_dir)?;
    let cgroups = match jail::create_pod_cgroups(cgroups_path) {
        Ok(c) => c,
        Err(e) => {
            let _ = state.undo(&config.state_dir, pod_dir);
            return Err(e.into());
        }
    };
    let state = JailState::new(id, cgroups);
    let done = state
        .write(pod_dir)
        .map_err(SandboxError::from)
        .and_then(|()| {
            if let Some(id) = id {
                chown(vm_dir, id)?;
                std::fs::set_permissions(
                    vm_dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
                .map_err(|source| SandboxError::Dir {
                    path: vm_dir.to_owned(),
                    source,
                })?;
            }
            Ok(())
        });
    if let Err(e) = done {
        let _ = state.undo(&config.state_dir, pod_dir);
        return Err(e);
    }
    Ok(state)
}

/// Hands `path` to the VMM's uid and gid (the `vm` dir; virtiofsd's socket, which root
/// created and the jailed VMM must connect to).
pub fn chown(path: &Path, id: u32) -> Result<(), SandboxError> {
    std::os::unix::fs::chown(path, Some(id), Some(id)).map_err(|source| SandboxError::Dir {
        path: path.to_owned(),
        source,
    })
}

/// Spawns `cmd` with its output appended to `log`; returns the pid. The reaper thread owns
/// the wait.
pub fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    what: &'static str,
) -> Result<i32, SandboxError> {
    let f = log_file(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|source| SandboxError::Dir {
            path: log.to_owned(),
            source,
        })?)
        .stderr(f)
        .spawn()
        .map_err(|source| SandboxError::Spawn {
            what,
            path: cmd.get_program().into(),
            source,
        })?;
    // Dropping the handle neither kills nor waits.
    Ok(child.id() as i32)
}

fn log_file(log: &Path) -> Result<std::fs::File, SandboxError> {
    std::fs::File::create(log).map_err(|source| SandboxError::Dir {
        path: log.to_owned(),
        source,
    })
}

/// One pod's VMM start.
pub struct Launch<'a> {
    pub config: &'a Config,
    pub req: &'a PodRequest<'a>,
    pub pod_dir: &'a Path,
    /// The leased uid/gid: jailed; `None`: not.
    pub jail_id: Option<u32>,
    pub cgroups: &'a [PathBuf],
    pub nics: &'a [Nic],
    pub taps: &'a [OwnedFd],
}

impl Launch<'_> {
    /// husk-vmm's arguments; `jailed` gives the paths as the jail shows them.
    pub fn vmm_args(&self, jailed: bool) -> Vec<OsString> {
        let vm = vm_dir(self.pod_dir);
        let (kernel, initramfs, run) = if jailed {
            (
                PathBuf::from(jail::KERNEL_IN_JAIL),
                PathBuf::from(jail::INITRAMFS_IN_JAIL),
                PathBuf::from(jail::RUN_IN_JAIL),
            )
        } else {
            (
                self.config.kernel.clone(),
                self.config.initramfs.clone(),
                vm.clone(),
            )
        };
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        push("--id", self.pod_dir.into());
        push("--kernel", kernel.into());
        push("--initramfs", initramfs.into());
        push("--vcpus", self.req.vcpus.to_string().into());
        push("--memory", self.req.memory_mib.to_string().into());
        push(
            "--console",
            format!("file:{}", run.join(CONSOLE_LOG).display()).into(),
        );
        push(
            "--vsock",
            format!("cid=3,uds={}", run.join(VSOCK_SOCKET).display()).into(),
        );
        push(
            "--fs",
            format!(
                "tag={SHARED_FS_TAG},socket={}",
                run.join(FS_SOCKET).display()
            )
            .into(),
        );
        push("--cmdline", self.config.kernel_cmdline.clone().into());
        for (i, nic) in self.nics.iter().enumerate() {
            let fd = network::tap::FIRST_CHILD_FD + i as i32;
            push("--net", network::plan::vmm_net_arg(fd, nic).into());
        }
        a
    }

    fn tap_fds(&self) -> (Vec<i32>, Vec<i32>) {
        let raw: Vec<i32> = self.taps.iter().map(AsRawFd::as_raw_fd).collect();
        let at: Vec<i32> = (0..raw.len())
            .map(|i| network::tap::FIRST_CHILD_FD + i as i32)
            .collect();
        (raw, at)
    }

    /// Starts husk-vmm; returns its pid (the shim's child, jailed or not).
    pub fn spawn(&self) -> Result<i32, SandboxError> {
        let log = self.pod_dir.join("vmm.log");
        let (raw, at) = self.tap_fds();
        let Some(id) = self.jail_id else {
            let mut cmd = Command::new(&self.config.vmm);
            cmd.args(self.vmm_args(false));
            network::tap::pass_fds(&mut cmd, &raw);
            jail::join_cgroups_on_exec(&mut cmd, jail::open_procs(self.cgroups)?);
            return spawn_logged(&mut cmd, &log, "husk-vmm");
        };
        let plan = JailPlan {
            jailer: &self.config.jailer,
            vmm: &self.config.vmm,
            kernel: &self.config.kernel,
            initramfs: &self.config.initramfs,
            pod_dir: self.pod_dir,
            vm_dir: &vm_dir(self.pod_dir),
            id,
            cgroups: self.cgroups,
            keep_fds: at,
            vmm_args: self.vmm_args(true),
        };
        let mut cmd = plan.command();
        // The jailer passes on only what it is told to; the shim's environment stays here.
        cmd.env_clear();
        network::tap::pass_fds(&mut cmd, &raw);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                what: "husk-jailer",
                path: self.config.jailer.clone(),
                source,
            })?;
        // The jailer prints the VMM's pid and exits (the reaper thread reaps it); EOF
        // without a pid is its failure, told in the VMM log.
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout {
            if let Err(e) = stdout.read_to_string(&mut out) {
                warn!("reading husk-jailer's report: {e}");
            }
        }
        match out.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => {
                info!("pod {}: husk-vmm jailed as uid {id}", self.req.pod);
                Ok(pid)
            }
            _ => Err(SandboxError::EarlyExit {
                what: "husk-jailer",
                reason: format!("it started no VMM (it printed {:?})", out.trim()),
                log: tail(&log, 2000),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(jailed: bool) -> Vec<String> {
        let config = Config::default();
        let req = PodRequest {
            namespace: "default",
            pod: "p",
            hostname: "p",
            vcpus: 2,
            memory_mib: 512,
            netns: None,
            cgroups_path: None,
            port_forward: false,
            shm: None,
        };
        let launch = Launch {
            config: &config,
            req: &req,
            pod_dir: Path::new("/run/husk/default/p"),
            jail_id: jailed.then_some(1_500_000_000),
            cgroups: &[],
            nics: &[],
            taps: &[],
        };
        launch
            .vmm_args(jailed)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_jailed_vmm_is_given_the_jails_paths_and_an_unjailed_one_the_hosts() {
        let j = args_of(true).join(" ");
        assert!(
            j.starts_with("--id /run/husk/default/p --kernel /kernel --initramfs /initramfs"),
            "{j}"
        );
        for want in [
            "--vcpus 2 --memory 512",
            "--console file:/run/console.log",
            "--vsock cid=3,uds=/run/vsock.sock",
            "--fs tag=husk-shared,socket=/run/virtiofsd.sock",
        ] {
            assert!(j.contains(want), "{want}: {j}");
        }
        let h = args_of(false).join(" ");
        for want in [
            "--kernel /usr/share/husk/vmlinux",
            "--console file:/run/husk/default/p/vm/console.log",
            "--vsock cid=3,uds=/run/husk/default/p/vm/vsock.sock",
            "socket=/run/husk/default/p/vm/virtiofsd.sock",
        ] {
            assert!(h.contains(want), "{want}: {h}");
        }
    }
}
