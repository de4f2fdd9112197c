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
use husk_vm_config::{ConsoleConfig, FsConfig, VmConfig, VsockConfig};

/// The VMM's own files, in `<pod>/vm` (the jailed VMM's `/run`).
pub const VSOCK_SOCKET: &str = "vsock.sock";
pub const FS_SOCKET: &str = "virtiofsd.sock";
pub const CONSOLE_LOG: &str = "console.log";
/// husk-vmm's config (`husk-vm-config`'s JSON), written by the shim.
pub const VM_CONFIG: &str = "vm.json";
/// The guest's vsock CID (one VM per vsock device: any CID above the host's will do).
const GUEST_CID: u32 = 3;

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
    /// The pod's VM as husk-vmm's config (one typed contract, `husk-vm-config`);
    /// `jailed` gives the paths as the jail shows them.
    pub fn vm_config(&self, jailed: bool) -> VmConfig {
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
                vm_dir(self.pod_dir),
            )
        };
        VmConfig {
            kernel,
            initramfs: Some(initramfs),
            cmdline: self.config.kernel_cmdline.clone(),
            vcpus: self.req.vcpus,
            memory_mib: self.req.memory_mib,
            console: ConsoleConfig::File(run.join(CONSOLE_LOG)),
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: run.join(VSOCK_SOCKET),
            }),
            fs: vec![FsConfig {
                tag: SHARED_FS_TAG.into(),
                socket: run.join(FS_SOCKET),
                num_request_queues: 1,
                queue_size: 1024,
            }],
            block: Vec::new(),
            net: self
                .nics
                .iter()
                .enumerate()
                .map(|(i, nic)| {
                    network::plan::vmm_net(network::tap::FIRST_CHILD_FD + i as i32, nic)
                })
                .collect(),
            snapshot_to: None,
        }
    }

    /// Writes the VM's config into the pod's `vm` dir ([`VM_CONFIG`], the jailed VMM's
    /// `/run/vm.json`), readable by the VMM.
    pub fn write_vm_config(&self, jailed: bool) -> Result<(), SandboxError> {
        let path = vm_dir(self.pod_dir).join(VM_CONFIG);
        let err = |source| SandboxError::Dir {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(&self.vm_config(jailed))
            .map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::write(&path, text).map_err(err)?;
        if let Some(id) = self.jail_id {
            chown(&path, id)?;
        }
        Ok(())
    }

    /// husk-vmm's arguments: the pod dir (its name in ps) and its config file;
    /// `jailed` gives the path as the jail shows it.
    pub fn vmm_args(&self, jailed: bool) -> Vec<OsString> {
        let run = if jailed {
            PathBuf::from(jail::RUN_IN_JAIL)
        } else {
            vm_dir(self.pod_dir)
        };
        vec![
            "--id".into(),
            self.pod_dir.into(),
            "--config".into(),
            run.join(VM_CONFIG).into(),
        ]
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
        self.write_vm_config(self.jail_id.is_some())?;
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

    fn launch_of(jailed: bool, f: impl FnOnce(&Launch<'_>)) {
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
        let nics = [crate::network::Nic {
            veth: "eth0".into(),
            veth_index: 2,
            tap: "tap0_husk".into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, 5],
            mtu: 1450,
        }];
        let launch = Launch {
            config: &config,
            req: &req,
            pod_dir: Path::new("/run/husk/default/p"),
            jail_id: jailed.then_some(1_500_000_000),
            cgroups: &[],
            nics: &nics,
            taps: &[],
        };
        f(&launch);
    }

    #[test]
    fn a_jailed_vmm_is_given_the_jails_paths_and_an_unjailed_one_the_hosts() {
        launch_of(true, |l| {
            let args: Vec<String> = l
                .vmm_args(true)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                args,
                ["--id", "/run/husk/default/p", "--config", "/run/vm.json"]
            );
            let c = l.vm_config(true);
            assert_eq!(c.kernel, PathBuf::from("/kernel"));
            assert_eq!(c.initramfs, Some(PathBuf::from("/initramfs")));
            assert_eq!((c.vcpus, c.memory_mib), (2, 512));
            assert_eq!(c.console, ConsoleConfig::File("/run/console.log".into()));
            let v = c.vsock.as_ref().unwrap();
            assert_eq!(
                (v.guest_cid, v.uds_path.as_path()),
                (3, Path::new("/run/vsock.sock"))
            );
            assert_eq!(c.fs[0].tag, "husk-shared");
            assert_eq!(c.fs[0].socket, PathBuf::from("/run/virtiofsd.sock"));
            assert_eq!(c.net[0].fd, Some(network::tap::FIRST_CHILD_FD));
            assert_eq!(
                c.net[0].mac.map(|m| m.to_string()).as_deref(),
                Some("0a:58:0a:58:00:05")
            );
            assert_eq!(c.net[0].mtu, Some(1450));
        });
        launch_of(false, |l| {
            let c = l.vm_config(false);
            assert_eq!(c.kernel, PathBuf::from("/usr/share/husk/vmlinux"));
            assert_eq!(
                c.console,
                ConsoleConfig::File("/run/husk/default/p/vm/console.log".into())
            );
            assert_eq!(
                c.fs[0].socket,
                PathBuf::from("/run/husk/default/p/vm/virtiofsd.sock")
            );
            assert_eq!(
                l.vmm_args(false).last().unwrap(),
                &OsString::from("/run/husk/default/p/vm/vm.json")
            );
        });
    }

    /// What the shim writes is what husk-vmm reads: the same serde structs both ways, and
    /// it passes the VMM's own checks but for the files (the jail's paths).
    #[test]
    fn the_config_the_shim_writes_is_one_husk_vmm_reads() {
        launch_of(false, |l| {
            let text = serde_json::to_string(&l.vm_config(false)).unwrap();
            let back: husk_vm_config::ConfigFile = serde_json::from_str::<VmConfig>(&text)
                .map(husk_vm_config::ConfigFile::Boot)
                .unwrap();
            let husk_vm_config::ConfigFile::Boot(c) = back else {
                panic!("not a boot config");
            };
            assert_eq!(c, l.vm_config(false));
        });
    }
}
