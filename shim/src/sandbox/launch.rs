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
use husk_vm_config::{ConsoleConfig, FsConfig, RestoreConfig, VmConfig, VsockConfig};

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

/// What a VMM starts from.
#[derive(Debug, Clone, Copy)]
pub enum VmSource<'a> {
    /// The configured kernel and initramfs, booted; with `snapshot_to`, a template VM
    /// that writes its snapshot there on SIGUSR2.
    Boot { snapshot_to: Option<&'a Path> },
    /// The template snapshot in this directory, restored (read-only in the jail).
    Restore(&'a Path),
}

/// husk-vmm's config, for a VM booted or restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStart {
    Boot(VmConfig),
    Restore(RestoreConfig),
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
    pub source: VmSource<'a>,
}

impl Launch<'_> {
    /// The pod's VM as husk-vmm's config (one typed contract, `husk-vm-config`): booted,
    /// or restored from a template (whose size, kernel and command line are the
    /// snapshot's); `jailed` gives the paths as the jail shows them.
    pub fn vm_config(&self, jailed: bool) -> VmStart {
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
        let snapshot = |dir: &Path| {
            if jailed {
                PathBuf::from(jail::SNAPSHOT_IN_JAIL)
            } else {
                dir.to_owned()
            }
        };
        let console = ConsoleConfig::File(run.join(CONSOLE_LOG));
        let vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: run.join(VSOCK_SOCKET),
        });
        let fs = vec![FsConfig {
            tag: SHARED_FS_TAG.into(),
            socket: run.join(FS_SOCKET),
            num_request_queues: 1,
            queue_size: 1024,
        }];
        let net = self
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| network::plan::vmm_net(network::tap::FIRST_CHILD_FD + i as i32, nic))
            .collect();
        match self.source {
            VmSource::Boot { snapshot_to } => VmStart::Boot(VmConfig {
                kernel,
                initramfs: Some(initramfs),
                cmdline: self.config.kernel_cmdline.clone(),
                vcpus: self.req.vcpus,
                memory_mib: self.req.memory_mib,
                console,
                vsock,
                fs,
                block: Vec::new(),
                net,
                snapshot_to: snapshot_to.map(snapshot),
            }),
            VmSource::Restore(dir) => VmStart::Restore(RestoreConfig {
                restore_from: snapshot(dir),
                console,
                vsock,
                fs,
                block: Vec::new(),
                net,
                snapshot_to: None,
            }),
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
        let text = match self.vm_config(jailed) {
            VmStart::Boot(c) => serde_json::to_vec_pretty(&c),
            VmStart::Restore(c) => serde_json::to_vec_pretty(&c),
        }
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

    /// What the jailer is given: the VM's files by how it starts (kernel and initramfs,
    /// or the template read-only; a template VM's snapshot dir writable).
    fn jail_plan(&self, id: u32, keep_fds: Vec<i32>) -> JailPlan<'_> {
        let (ro, rw) = match self.source {
            VmSource::Boot { snapshot_to } => (
                jail::boot_binds(&self.config.kernel, &self.config.initramfs),
                snapshot_to.map(jail::snapshot_bind).into_iter().collect(),
            ),
            VmSource::Restore(dir) => (vec![jail::snapshot_bind(dir)], Vec::new()),
        };
        JailPlan {
            jailer: &self.config.jailer,
            vmm: &self.config.vmm,
            ro,
            rw,
            pod_dir: self.pod_dir,
            vm_dir: vm_dir(self.pod_dir),
            id,
            cgroups: self.cgroups,
            keep_fds,
            vmm_args: self.vmm_args(true),
        }
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
        let plan = self.jail_plan(id, at);
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

    const POD: &str = "/run/husk/default/p";
    const TEMPLATE: &str = "/run/husk/.templates/1cpu-256mib-1nic/current";
    const COLD: VmSource<'static> = VmSource::Boot { snapshot_to: None };

    fn nic(mac: [u8; 6], mtu: u32) -> Nic {
        Nic {
            veth: "eth0".into(),
            veth_index: 2,
            tap: "tap0_husk".into(),
            mac,
            mtu,
        }
    }

    fn pod_nic() -> Nic {
        nic([0x0a, 0x58, 0x0a, 0x58, 0, 5], 1450)
    }

    fn launch_of(jailed: bool, source: VmSource<'_>, nics: &[Nic], f: impl FnOnce(&Launch<'_>)) {
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
            pod_dir: Path::new(POD),
            jail_id: jailed.then_some(1_500_000_000),
            cgroups: &[],
            nics,
            taps: &[],
            source,
        };
        f(&launch);
    }

    fn boot(l: &Launch<'_>, jailed: bool) -> VmConfig {
        match l.vm_config(jailed) {
            VmStart::Boot(c) => c,
            other => panic!("not a boot: {other:?}"),
        }
    }

    /// The jail's read-only and writable binds, as `name=src`.
    fn binds(l: &Launch<'_>) -> (Vec<String>, Vec<String>) {
        let j = l.jail_plan(1_500_000_000, Vec::new()).jail();
        let names = |b: &[husk_jail::Bind]| {
            b.iter()
                .map(|b| format!("{}={}", b.name, b.src.display()))
                .collect()
        };
        (names(&j.ro), names(&j.rw))
    }

    #[test]
    fn a_jailed_vmm_is_given_the_jails_paths_and_an_unjailed_one_the_hosts() {
        launch_of(true, COLD, &[pod_nic()], |l| {
            let args: Vec<String> = l
                .vmm_args(true)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert_eq!(args, ["--id", POD, "--config", "/run/vm.json"]);
            let c = boot(l, true);
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
            assert_eq!(c.snapshot_to, None);
            let (ro, rw) = binds(l);
            assert_eq!(
                ro,
                [
                    "kernel=/usr/share/husk/vmlinux",
                    "initramfs=/usr/share/husk/initramfs.cpio"
                ]
            );
            assert_eq!(rw, [format!("run={POD}/vm")]);
        });
        launch_of(false, COLD, &[pod_nic()], |l| {
            let c = boot(l, false);
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

    #[test]
    fn a_restore_names_the_template_and_nothing_the_snapshot_fixes() {
        let source = VmSource::Restore(Path::new(TEMPLATE));
        launch_of(true, source, &[pod_nic()], |l| {
            let VmStart::Restore(c) = l.vm_config(true) else {
                panic!("a restore");
            };
            assert_eq!(c.restore_from, PathBuf::from("/snapshot"));
            assert_eq!(c.console, ConsoleConfig::File("/run/console.log".into()));
            assert_eq!(c.fs[0].socket, PathBuf::from("/run/virtiofsd.sock"));
            assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
            // The pod's own tap and MAC (the guest's link keeps the template's until
            // Restored), and its MTU.
            assert_eq!(
                c.net[0].mac.map(|m| m.to_string()).as_deref(),
                Some("0a:58:0a:58:00:05")
            );
            assert_eq!(c.net[0].mtu, Some(1450));
            assert_eq!(c.snapshot_to, None);
            // The template read-only; no kernel or initramfs in the jail.
            let (ro, rw) = binds(l);
            assert_eq!(ro, [format!("snapshot={TEMPLATE}")]);
            assert_eq!(rw, [format!("run={POD}/vm")]);
        });
        launch_of(false, source, &[], |l| {
            let VmStart::Restore(c) = l.vm_config(false) else {
                panic!("a restore");
            };
            assert_eq!(c.restore_from, PathBuf::from(TEMPLATE));
        });
    }

    #[test]
    fn a_template_vm_boots_and_writes_its_snapshot_with_nics_of_no_mtu() {
        let out = Path::new("/run/husk/.templates/1cpu-256mib-1nic/build-7/snapshot");
        let source = VmSource::Boot {
            snapshot_to: Some(out),
        };
        let tpl = nic(crate::template::template_mac(0), 0);
        launch_of(true, source, std::slice::from_ref(&tpl), |l| {
            let c = boot(l, true);
            assert_eq!(c.snapshot_to, Some(PathBuf::from("/snapshot")));
            assert_eq!(
                c.net[0].mac.map(|m| m.to_string()).as_deref(),
                Some("02:68:75:73:6b:00")
            );
            assert_eq!(c.net[0].mtu, None, "no MTU offered to a template's guest");
            let (ro, rw) = binds(l);
            assert_eq!(ro.len(), 2, "{ro:?}");
            assert_eq!(
                rw,
                [
                    format!("run={POD}/vm"),
                    format!("snapshot={}", out.display())
                ]
            );
        });
        launch_of(false, source, &[tpl], |l| {
            assert_eq!(boot(l, false).snapshot_to.as_deref(), Some(out));
        });
    }

    /// What the shim writes is what husk-vmm reads: the same serde structs both ways (a
    /// boot, and a restore, which husk-vmm tells by its `restore_from`).
    #[test]
    fn the_config_the_shim_writes_is_one_husk_vmm_reads() {
        let dir = std::env::temp_dir().join(format!("husk-launch-{}", std::process::id()));
        let pod = dir.join("pod");
        std::fs::create_dir_all(vm_dir(&pod)).unwrap();
        let config = Config::default();
        for source in [COLD, VmSource::Restore(Path::new(TEMPLATE))] {
            let req = PodRequest {
                namespace: "default",
                pod: "p",
                hostname: "p",
                vcpus: 1,
                memory_mib: 256,
                netns: None,
                cgroups_path: None,
                port_forward: false,
                shm: None,
            };
            let l = Launch {
                config: &config,
                req: &req,
                pod_dir: &pod,
                jail_id: None,
                cgroups: &[],
                nics: &[],
                taps: &[],
                source,
            };
            l.write_vm_config(false).unwrap();
            let back =
                husk_vm_config::ConfigFile::from_json_file(&vm_dir(&pod).join(VM_CONFIG)).unwrap();
            match (back, l.vm_config(false)) {
                (husk_vm_config::ConfigFile::Boot(a), VmStart::Boot(b)) => assert_eq!(a, b),
                (husk_vm_config::ConfigFile::Restore(a), VmStart::Restore(b)) => assert_eq!(a, b),
                (a, b) => panic!("wrote {b:?}, read {a:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
