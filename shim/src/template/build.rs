//! Building a template: a VM of the template's shape, started as a pod's is (virtiofsd on
//! an empty share, husk-vmm through husk-jailer as a uid of its own, its snapshot dir
//! the one writable bind besides its `/run`), booted until the agent answers Health and
//! Version, told to zero its free memory (PrepareSnapshot), then snapshotted (SIGUSR2:
//! husk-vmm writes `vm.state` and `vm.mem`, zero pages left out, and exits 0). Nothing
//! per pod is in it: no container, no mount of the share (the guest mounts its pod's
//! share after the restore), no hostname, its NICs never configured and on taps of a
//! throwaway network namespace.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};
use husk_protocol::agent;
use husk_protocol::agent_client::AgentClient;
use husk_protocol::API_VERSION;
use tracing::{info, warn};

use super::{io, BuildRequest, BuildVm, TemplateError};
use crate::config::Config;
use crate::jail;
use crate::network::{tap, Nic};
use crate::persist::{self, PodPids};
use crate::sandbox::launch::{self, Launch, VmSource};
use crate::sandbox::{
    agent_health, check_socket_path, describe_exit, kill, process_is, rpc_ctx, tail,
    virtiofsd_command, Exits, PodRequest, SandboxError, HEALTH_POLL,
};

/// The real builder.
pub struct TemplateVm;

impl BuildVm for TemplateVm {
    fn build(&self, req: &BuildRequest<'_>) -> Result<(), TemplateError> {
        let mut vm = TemplateBoot::new(req.config, req.work);
        let r = vm.run(req);
        vm.stop();
        r
    }
}

fn vm_err(e: SandboxError) -> TemplateError {
    TemplateError::Vm(Box::new(e))
}

/// The template VM's processes and what they hold, undone by [`TemplateBoot::stop`].
struct TemplateBoot<'a> {
    config: &'a Config,
    work: PathBuf,
    jail_id: Option<u32>,
    exits: Arc<Exits>,
    watching: Arc<AtomicBool>,
    vmm: i32,
    virtiofsd: i32,
    /// The throwaway network namespace of the template's taps (kept alive by this fd).
    netns: Option<OwnedFd>,
}

impl<'a> TemplateBoot<'a> {
    fn new(config: &'a Config, work: &Path) -> Self {
        Self {
            config,
            work: work.to_owned(),
            jail_id: None,
            exits: Arc::new(Exits::default()),
            watching: Arc::new(AtomicBool::new(true)),
            vmm: 0,
            virtiofsd: 0,
            netns: None,
        }
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            tail(&self.work.join("vmm.log"), 2000),
            tail(&self.work.join("virtiofsd.log"), 1000),
            tail(&launch::vm_dir(&self.work).join(launch::CONSOLE_LOG), 3000)
        )
    }

    fn early_exit(&self, what: &'static str, code: i32) -> TemplateError {
        vm_err(SandboxError::EarlyExit {
            what,
            reason: describe_exit(code),
            log: self.logs(),
        })
    }

    fn record_pids(&self) {
        let pids = PodPids {
            shim: std::process::id() as i32,
            vmm: self.vmm,
            virtiofsd: self.virtiofsd,
        };
        if let Err(e) = persist::write(&self.work, &pids) {
            warn!("template: {}", husk_errors::chain(&e));
        }
    }

    fn run(&mut self, req: &BuildRequest<'_>) -> Result<(), TemplateError> {
        let config = req.config;
        let vm_dir = launch::vm_dir(req.work);
        let share = req.work.join("share");
        for d in [&vm_dir, &share] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let vsock = vm_dir.join(launch::VSOCK_SOCKET);
        let fs_sock = vm_dir.join(launch::FS_SOCKET);
        for sock in [&vsock, &fs_sock] {
            check_socket_path(sock).map_err(vm_err)?;
        }
        if config.jail {
            let id = jail::lease_id(
                &config.state_dir,
                config.jail_id_first,
                config.jail_id_count,
                req.work,
            )
            .map_err(|e| vm_err(e.into()))?;
            self.jail_id = Some(id);
            for d in [&vm_dir, &req.out.to_path_buf()] {
                launch::chown(d, id).map_err(vm_err)?;
                std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(io("chmod", d))?;
            }
        }
        let taps = if req.macs.is_empty() {
            Vec::new()
        } else {
            let (ns, taps) = private_taps(req.macs.len())?;
            self.netns = Some(ns);
            taps
        };
        let nics: Vec<Nic> = req
            .macs
            .iter()
            .map(|mac| Nic {
                veth: String::new(),
                veth_index: 0,
                tap: String::new(),
                mac: *mac,
                mtu: 0,
            })
            .collect();

        let sub = monitor_subscribe(Topic::Pid)
            .map_err(|e| vm_err(SandboxError::Monitor(e.to_string())))?;
        let (exits, watching) = (Arc::clone(&self.exits), Arc::clone(&self.watching));
        std::thread::Builder::new()
            .name("template-exits".into())
            .spawn(move || {
                while watching.load(Ordering::SeqCst) {
                    if let Ok(ExitEvent {
                        subject: Subject::Pid(pid),
                        exit_code,
                    }) = sub.rx.recv_timeout(Duration::from_millis(200))
                    {
                        exits.record(pid, exit_code);
                    }
                }
            })
            .map_err(io("start a thread for", req.work))?;

        self.virtiofsd = launch::spawn_logged(
            &mut virtiofsd_command(config, &fs_sock, &share),
            &req.work.join("virtiofsd.log"),
            "virtiofsd",
        )
        .map_err(vm_err)?;
        self.record_pids();
        let started = Instant::now();
        while !fs_sock.exists() {
            if let Some(code) = self.exits.get(self.virtiofsd) {
                return Err(self.early_exit("virtiofsd", code));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(vm_err(SandboxError::VirtiofsdSocket(fs_sock.clone())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(id) = self.jail_id {
            launch::chown(&fs_sock, id).map_err(vm_err)?;
        }
        let name = format!("template {}", req.shape.name());
        let pod = PodRequest {
            namespace: "",
            pod: &name,
            hostname: "",
            vcpus: req.shape.vcpus,
            memory_mib: req.shape.memory_mib,
            netns: None,
            cgroups_path: None,
            port_forward: false,
            shm: None,
        };
        self.vmm = Launch {
            config,
            req: &pod,
            pod_dir: req.work,
            jail_id: self.jail_id,
            cgroups: &[],
            nics: &nics,
            taps: &taps,
            source: VmSource::Boot {
                snapshot_to: Some(req.out),
            },
        }
        .spawn()
        .map_err(vm_err)?;
        drop(taps);
        self.record_pids();
        let client = self.wait_agent(&vsock, Duration::from_secs(config.boot_timeout_secs))?;
        info!("{name}: agent ready after {:?}", started.elapsed());
        // Zero pages stay out of the snapshot, and every restore copies the rest: the
        // guest zeroes what it does not use first. Only an optimisation: a guest that
        // cannot is snapshotted as it is.
        let prepare = Instant::now();
        match client.prepare_snapshot(
            rpc_ctx(Duration::from_secs(config.boot_timeout_secs)),
            &agent::PrepareSnapshotRequest::new(),
        ) {
            Ok(z) => info!(
                "{name}: guest zeroed {} MiB of free memory in {:?} ({} MiB left); snapshotting",
                z.zeroed_bytes >> 20,
                prepare.elapsed(),
                z.left_bytes >> 20
            ),
            Err(e) => warn!("{name}: PrepareSnapshot: {e}; snapshotting the guest as it is"),
        }
        drop(client);
        kill(self.vmm, libc::SIGUSR2);
        match self
            .exits
            .wait(self.vmm, Duration::from_secs(config.boot_timeout_secs))
        {
            Some(0) => {}
            Some(code) => {
                return Err(TemplateError::Snapshot(format!(
                    "husk-vmm {}\n{}",
                    describe_exit(code),
                    self.logs()
                )))
            }
            None => {
                return Err(TemplateError::Snapshot(format!(
                    "husk-vmm did not end within {} s of SIGUSR2\n{}",
                    config.boot_timeout_secs,
                    self.logs()
                )))
            }
        }
        // Its frontend gone, virtiofsd ends by itself.
        if self
            .exits
            .wait(self.virtiofsd, Duration::from_secs(10))
            .is_none()
        {
            warn!("{name}: virtiofsd outlived husk-vmm; stopping it");
        }
        Ok(())
    }

    /// Until the agent answers Health and Version (with our API), husk-vmm's end or the
    /// boot timeout; returns the client, to be dropped before the snapshot, which keeps
    /// no connection of ours (the restored VMM resets them anyway).
    fn wait_agent(&self, vsock: &Path, timeout: Duration) -> Result<AgentClient, TemplateError> {
        let start = Instant::now();
        let client = loop {
            if let Some(code) = self.exits.get(self.vmm) {
                return Err(self.early_exit("husk-vmm", code));
            }
            let last = match agent_health(vsock) {
                Ok(c) => break c,
                Err(e) => e,
            };
            if start.elapsed() > timeout {
                return Err(vm_err(SandboxError::AgentTimeout {
                    secs: timeout.as_secs(),
                    last,
                    log: self.logs(),
                }));
            }
            std::thread::sleep(HEALTH_POLL);
        };
        let v = client
            .version(
                rpc_ctx(Duration::from_secs(self.config.rpc_timeout_secs)),
                &agent::VersionRequest::new(),
            )
            .map_err(|e| {
                vm_err(SandboxError::Rpc {
                    call: "Version",
                    message: e.to_string(),
                })
            })?;
        if v.api_version != API_VERSION {
            return Err(vm_err(SandboxError::ApiVersion(v.api_version)));
        }
        Ok(client)
    }

    /// Ends what still runs, releases the jail id; the taps' namespace goes with its fd.
    fn stop(&mut self) {
        for (pid, sig) in [(self.vmm, libc::SIGKILL), (self.virtiofsd, libc::SIGTERM)] {
            if pid <= 0 || self.exits.get(pid).is_some() {
                continue;
            }
            kill(pid, sig);
            if self.exits.wait(pid, Duration::from_secs(5)).is_none() {
                kill(pid, libc::SIGKILL);
                if self.exits.wait(pid, Duration::from_secs(10)).is_none() {
                    warn!("template: pid {pid} did not die after SIGKILL");
                }
            }
        }
        self.watching.store(false, Ordering::SeqCst);
        if let Some(id) = self.jail_id.take() {
            jail::release_id(&self.config.state_dir, id, &self.work);
        }
        self.netns = None;
    }
}

/// `n` taps (`tpl0`, ...) in a new network namespace of their own, which nothing else
/// uses: the template's NICs need a backend, and nothing they could send (they are never
/// brought up) reaches a real network. Returns the namespace's fd (holding it) and the
/// taps.
fn private_taps(n: usize) -> Result<(OwnedFd, Vec<OwnedFd>), TemplateError> {
    let made = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<(OwnedFd, Vec<OwnedFd>)> {
            // SAFETY: unshare with a constant flag; it moves only this thread, which ends
            // here and runs nothing else.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ns = std::fs::File::open("/proc/thread-self/ns/net")?;
            let taps = (0..n)
                .map(|i| tap::create_tap(&format!("tpl{i}")))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok((OwnedFd::from(ns), taps))
        })
        .join()
    });
    match made {
        Ok(r) => r.map_err(io(
            "create taps in a private network namespace for",
            Path::new("the template"),
        )),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A dead builder's `build-<pid>/` dir: kills the template VM and virtiofsd it recorded
/// (checked by name: a reused pid is left alone).
pub fn kill_leftover(work: &Path, config: &Config) {
    if let Ok(Some(pids)) = persist::read::<PodPids>(work) {
        for (pid, bin) in [(pids.vmm, &config.vmm), (pids.virtiofsd, &config.virtiofsd)] {
            let name = bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if process_is(pid, &name) {
                warn!("template: killing {name} (pid {pid}) of a builder that died");
                kill(pid, libc::SIGKILL);
            }
        }
    }
    // Its jail id's lease names `work`, which the caller removes: the next lease_id
    // reclaims it.
}
