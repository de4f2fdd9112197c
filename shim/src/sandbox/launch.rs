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

/// What a VMM starts from.
#[derive(Debug, Clone, Copy)]
pub enum VmSource<'a> {
    /// The configured kernel and initramfs, booted; with `snapshot_to`, a template VM
    /// that writes its snapshot there on SIGUSR2.
    Boot { snapshot_to: Option<&'a Path> },
    /// The template snapshot in this directory, restored (read-only in the jail).
    Restore(&'a Path),
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
        let snapshot = |dir: &Path| -> OsString {
            if jailed {
                jail::SNAPSHOT_IN_JAIL.into()
            } else {
                dir.into()
            }
        };
        match self.source {
            VmSource::Boot { snapshot_to } => {
                push("--kernel", kernel.into());
                push("--initramfs", initramfs.into());
                push("--vcpus", self.req.vcpus.to_string().into());
                push("--memory", self.req.memory_mib.to_string().into());
                push("--cmdline", self.config.kernel_cmdline.clone().into());
                if let Some(dir) = snapshot_to {
                    push("--snapshot-to", snapshot(dir));
                }
            }
            // Size, kernel and command line are the snapshot's.
            VmSource::Restore(dir) => push("--restore-from", snapshot(dir)),
        }
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
    const TEMPLATE: &str = "/run/husk/templates/1cpu-256mib-1nic/current";

    fn req() -> PodRequest<'static> {
        PodRequest {
            namespace: "default",
            pod: "p",
            hostname: "p",
            vcpus: 2,
            memory_mib: 512,
            netns: None,
            cgroups_path: None,
            port_forward: false,
            shm: None,
        }
    }

    fn nic(mac: [u8; 6], mtu: u32) -> Nic {
        Nic {
            veth: "eth0".into(),
            veth_index: 2,
            tap: "tap0_husk".into(),
            mac,
            mtu,
        }
    }

    /// husk-vmm's arguments and (jailed) the names of the jail's read-only and writable
    /// binds, for a VM started from `source` with `nics`.
    fn launched(
        jailed: bool,
        source: VmSource<'_>,
        nics: &[Nic],
    ) -> (String, Vec<String>, Vec<String>) {
        let config = Config::default();
        let req = req();
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
        let args: Vec<String> = launch
            .vmm_args(jailed)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let j = launch.jail_plan(1_500_000_000, Vec::new()).jail();
        let names = |b: &[husk_jail::Bind]| {
            b.iter()
                .map(|b| format!("{}={}", b.name, b.src.display()))
                .collect()
        };
        (args.join(" "), names(&j.ro), names(&j.rw))
    }

    const COLD: VmSource<'static> = VmSource::Boot { snapshot_to: None };

    #[test]
    fn a_jailed_vmm_is_given_the_jails_paths_and_an_unjailed_one_the_hosts() {
        let (j, ro, rw) = launched(true, COLD, &[]);
        assert!(
            j.starts_with("--id /run/husk/default/p --kernel /kernel --initramfs /initramfs"),
            "{j}"
        );
        for want in [
            "--vcpus 2 --memory 512",
            "--cmdline quiet",
            "--console file:/run/console.log",
            "--vsock cid=3,uds=/run/vsock.sock",
            "--fs tag=husk-shared,socket=/run/virtiofsd.sock",
        ] {
            assert!(j.contains(want), "{want}: {j}");
        }
        assert!(!j.contains("snapshot") && !j.contains("restore"), "{j}");
        assert_eq!(
            ro,
            [
                "kernel=/usr/share/husk/vmlinux",
                "initramfs=/usr/share/husk/initramfs.cpio"
            ]
        );
        assert_eq!(rw, [format!("run={POD}/vm")]);
        let (h, _, _) = launched(false, COLD, &[]);
        for want in [
            "--kernel /usr/share/husk/vmlinux",
            "--console file:/run/husk/default/p/vm/console.log",
            "--vsock cid=3,uds=/run/husk/default/p/vm/vsock.sock",
            "socket=/run/husk/default/p/vm/virtiofsd.sock",
        ] {
            assert!(h.contains(want), "{want}: {h}");
        }
    }

    #[test]
    fn a_restore_names_the_template_and_nothing_the_snapshot_fixes() {
        let pod_nic = nic([0x0a, 0x58, 0x0a, 0x59, 0, 5], 1450);
        let source = VmSource::Restore(Path::new(TEMPLATE));
        let (j, ro, rw) = launched(true, source, std::slice::from_ref(&pod_nic));
        assert!(
            j.starts_with("--id /run/husk/default/p --restore-from /snapshot --console"),
            "{j}"
        );
        // Size, kernel and command line are the snapshot's: husk-vmm refuses them.
        for refused in [
            "--kernel",
            "--initramfs",
            "--vcpus",
            "--memory",
            "--cmdline",
        ] {
            assert!(!j.contains(refused), "{refused}: {j}");
        }
        for want in [
            "--vsock cid=3,uds=/run/vsock.sock",
            "--fs tag=husk-shared,socket=/run/virtiofsd.sock",
            "--net fd=3,mac=0a:58:0a:59:00:05,mtu=1450",
        ] {
            assert!(j.contains(want), "{want}: {j}");
        }
        // The template read-only, no kernel or initramfs.
        assert_eq!(ro, [format!("snapshot={TEMPLATE}")]);
        assert_eq!(rw, [format!("run={POD}/vm")]);
        let (h, _, _) = launched(false, source, &[pod_nic]);
        assert!(h.contains(&format!("--restore-from {TEMPLATE} ")), "{h}");
    }

    #[test]
    fn a_template_vm_boots_and_writes_its_snapshot_with_nics_of_no_mtu() {
        let out = Path::new("/run/husk/templates/1cpu-256mib-1nic/build-7/snapshot");
        let source = VmSource::Boot {
            snapshot_to: Some(out),
        };
        let tpl_nic = nic(crate::template::template_mac(0), 0);
        let (j, ro, rw) = launched(true, source, std::slice::from_ref(&tpl_nic));
        for want in [
            "--kernel /kernel --initramfs /initramfs --vcpus 2 --memory 512",
            "--snapshot-to /snapshot",
            "--net fd=3,mac=02:68:75:73:6b:00",
        ] {
            assert!(j.contains(want), "{want}: {j}");
        }
        assert!(!j.contains("mtu="), "{j}");
        assert_eq!(ro.len(), 2, "{ro:?}");
        assert_eq!(
            rw,
            [
                format!("run={POD}/vm"),
                format!("snapshot={}", out.display())
            ]
        );
        let (h, _, _) = launched(false, source, &[tpl_nic]);
        assert!(
            h.contains(&format!("--snapshot-to {}", out.display())),
            "{h}"
        );
    }
}
