//! A pod's VM: virtiofsd sharing `<pod>/shared`, husk-vmm booting the guest image, the
//! agent reached over hybrid vsock, and teardown. The shim is the child subreaper and
//! containerd-shim's reaper thread reaps every child, so exits are learnt from its
//! monitor (subscribed before spawning), never from `Child::wait`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};
use husk_protocol::agent;
use husk_protocol::agent_client::AgentClient;
use husk_protocol::deadline::guest_text;
use husk_protocol::{ttrpc, API_VERSION};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::jail::{self, JailError, JailState};
use crate::mounts::{self, HostOps};
use crate::network::{self, Attached, NetError, NetState};
use crate::persist::{self, PodPids};
use crate::port_forward::PortForwarder;
use crate::spec::{self, GUEST_SHARED_DIR, SHARED_FS_TAG};
use crate::template::{self, TemplateVm};
pub use cleanup::cleanup_dead_pod;
pub(crate) use cleanup::process_is;
pub use procs::describe_exit;
pub(crate) use procs::{agent_health, kill, rpc_ctx, tail, virtiofsd_command, Exits, HEALTH_POLL};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "husk needs KVM and cannot open {KVM}: load kvm_intel or kvm_amd (on a virtual \
         machine, enable nested virtualization); `husk-check` checks the whole host"
    )]
    NoKvm(#[source] std::io::Error),
    #[error("Cannot prepare the pod directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start {what} ({path})")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot make {path} a shared mount point for virtiofsd")]
    SharedMount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd did not create {0} in time")]
    VirtiofsdSocket(PathBuf),
    #[error(
        "The pod's socket path {path} is {len} bytes, longer than a Unix socket allows \
         ({max}): choose a shorter state_dir in husk.toml"
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("{what} exited while the pod started: {reason}\n{log}")]
    EarlyExit {
        what: &'static str,
        reason: String,
        log: String,
    },
    #[error("The guest agent did not answer within {secs} s: {last}\n{log}")]
    AgentTimeout {
        secs: u64,
        last: String,
        log: String,
    },
    #[error("The guest agent speaks {0:?}, this shim {API_VERSION:?}")]
    ApiVersion(String),
    #[error("Agent call {call} failed: {message}")]
    Rpc { call: &'static str, message: String },
    #[error("Cannot subscribe to child exits")]
    Monitor(String),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The pod restored from a template did not come up (its VM, or the calls that make
    /// it the pod's): the pod is started again, cold.
    #[error("The pod's VM did not come up from its template")]
    Template(#[source] Box<SandboxError>),
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

/// A socket the pod binds fits in `sun_path`; CRI's 64-character sandbox ids make
/// `<state_dir>/k8s.io/<id>/vm/virtiofsd.sock` 98 bytes with the default `/run/husk`.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), SandboxError> {
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(SandboxError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: SOCKET_PATH_MAX,
        });
    }
    Ok(())
}

/// The device husk-vmm needs.
const KVM: &str = "/dev/kvm";

/// Called once if husk-vmm ends while the pod is not being stopped.
pub type VmmExitHook = Box<dyn FnOnce(String) + Send>;

/// A running pod VM.
pub struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub vsock: PathBuf,
    client: Option<AgentClient>,
    vmm_pid: i32,
    virtiofsd_pid: i32,
    exits: Arc<Exits>,
    stopping: Arc<Mutex<bool>>,
    rpc_timeout: Duration,
    /// The pod's network (taps and tc filters in its netns), torn down at stop.
    net: Option<NetState>,
    /// The VMM's jail id and the pod's cgroups, undone at stop.
    jail: JailState,
    /// The pod's shared-memory dir on the host that containers' `/dev/shm` binds name
    /// (the guest's pod tmpfs stands in for it).
    pub shm_host: Option<PathBuf>,
    /// `kubectl port-forward`'s relay into the guest (CRI pods), stopped at stop.
    forwarder: Mutex<Option<PortForwarder>>,
    state_dir: PathBuf,
}

/// Whether a pod may start from a template ([`crate::template`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodBoot {
    /// Restored from the template of its shape if there is one (built on first use).
    Template,
    /// Booted (a template failed this pod once already).
    Cold,
}

/// The pod's directory for containerd namespace `ns`.
pub fn pod_dir(config: &Config, ns: &str, pod: &str) -> PathBuf {
    config.state_dir.join(ns).join(pod)
}

/// VM size and identity of a new pod.
pub struct PodRequest<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub hostname: &'a str,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The pod's network namespace (the spec's), whose interfaces become guest NICs.
    pub netns: Option<&'a Path>,
    /// The spec's `linux.cgroupsPath`: the pod's cgroup on the host, which husk-vmm and
    /// virtiofsd join.
    pub cgroups_path: Option<&'a str>,
    /// A CRI pod: containerd's port-forward dials 127.0.0.1 in `netns`, which the shim
    /// then relays to the guest ([`PortForwarder`]).
    pub port_forward: bool,
    /// A CRI pod's shared-memory dir on the host (containerd's tmpfs): the guest makes
    /// a tmpfs of its size at [`spec::GUEST_POD_SHM`] for the pod's `/dev/shm`.
    pub shm: Option<&'a Path>,
}

/// The size of the pod's `/dev/shm` for the host dir `shm`: the size of the file system
/// holding it (containerd's tmpfs, 64 MiB unless configured), or that default.
fn shm_size(shm: &Path) -> u64 {
    const DEFAULT: u64 = 64 << 20;
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(shm.as_os_str().as_bytes()) else {
        return DEFAULT;
    };
    // SAFETY: statvfs is plain data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer, both live
    // across the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        warn!(
            "cannot statvfs {}: {}; /dev/shm gets 64 MiB",
            shm.display(),
            std::io::Error::last_os_error()
        );
        return DEFAULT;
    }
    match (st.f_blocks as u64).checked_mul(st.f_frsize as u64) {
        Some(n) if n > 0 => n,
        _ => DEFAULT,
    }
}

/// Binds `dir` onto itself, nosuid and nodev, in a peer group of its own (private first,
/// so that it does not join its parent's), with shared propagation. Unmounted with the pod dir's other mounts.
fn make_shared_mount(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |source| SandboxError::SharedMount {
        path: dir.to_owned(),
        source,
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // nosuid,nodev: a setuid file or device node the guest writes into the share gives a
    // host process nothing (rootfs and volume mounts below get the same, mounts.rs).
    let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    for flags in [libc::MS_BIND, remount, libc::MS_PRIVATE, libc::MS_SHARED] {
        let src = if flags == libc::MS_BIND {
            c.as_ptr()
        } else {
            std::ptr::null()
        };
        // SAFETY: `c` is a NUL-terminated path that outlives the call; no fs type or data.
        let rc = unsafe { libc::mount(src, c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if flags != libc::MS_BIND {
                let _ = mounts::unmount_under(&mounts::RealHost, dir);
            }
            return Err(err(e));
        }
    }
    Ok(())
}

impl Sandbox {
    /// Starts virtiofsd and husk-vmm for a pod, waits for the agent and creates the
    /// sandbox in the guest. On any error, everything started is stopped again.
    pub fn start(
        config: &Config,
        req: &PodRequest<'_>,
        boot: PodBoot,
        on_vmm_exit: VmmExitHook,
    ) -> Result<Self, SandboxError> {
        config.check_files().map_err(|e| SandboxError::EarlyExit {
            what: "husk",
            reason: e.to_string(),
            log: String::new(),
        })?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM)
            .map_err(SandboxError::NoKvm)?;
        let dir = pod_dir(config, req.namespace, req.pod);
        let vm_dir = launch::vm_dir(&dir);
        let vsock = vm_dir.join(launch::VSOCK_SOCKET);
        let fs_sock = vm_dir.join(launch::FS_SOCKET);
        for sock in [&vsock, &fs_sock] {
            check_socket_path(sock)?;
        }
        let shared = dir.join("shared");
        for d in [&shared, &vm_dir] {
            std::fs::create_dir_all(d).map_err(|source| SandboxError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        let _ = std::fs::remove_file(&vsock);
        let _ = std::fs::remove_file(&fs_sock);
        // The VMM's uid and the pod's cgroup, recorded before anything runs in them.
        let jail_state = match launch::prepare_jail(config, &dir, &vm_dir, req.cgroups_path) {
            Ok(j) => j,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                prune_empty_parent(&dir);
                return Err(e);
            }
        };

        // The taps first: a bad netns fails the pod before anything runs.
        let attached = match req.netns {
            Some(ns) => match network::attach(ns, &dir) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = jail_state.undo(&config.state_dir, &dir);
                    let _ = std::fs::remove_dir_all(&dir);
                    prune_empty_parent(&dir);
                    return Err(e.into());
                }
            },
            None => None,
        };
        let net = attached.as_ref().map(|a| a.state.clone());
        let shape = template::Shape {
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            nics: attached.as_ref().map_or(0, |a| a.nics.len()),
        };
        let lease = match boot {
            PodBoot::Template => template::for_pod(config, req.pod, shape, &TemplateVm),
            PodBoot::Cold => None,
        };
        let abandon = |e: SandboxError| {
            if let Err(j) = jail_state.undo(&config.state_dir, &dir) {
                warn!("pod {}: {}", req.pod, husk_errors::chain(&j));
            }
            if let Some(n) = &net {
                if let Err(d) = network::detach(n) {
                    warn!("pod {}: {}", req.pod, husk_errors::chain(&d));
                }
            }
            let _ = mounts::unmount_under(&mounts::RealHost, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            prune_empty_parent(&dir);
            e
        };

        // virtiofsd sandboxes itself in its own mount namespace (a slave copy of ours):
        // the rootfs mounts made later under the shared dir reach it only if the shared
        // dir is a mount point with shared propagation.
        make_shared_mount(&shared).map_err(abandon)?;

        // Subscribe before spawning: an immediate exit must not be missed.
        let sub = monitor_subscribe(Topic::Pid)
            .map_err(|e| abandon(SandboxError::Monitor(e.to_string())))?;
        let exits = Arc::new(Exits::default());
        let stopping = Arc::new(Mutex::new(false));

        let cgroup_procs = jail::open_procs(&jail_state.cgroups).map_err(|e| abandon(e.into()))?;
        let mut virtiofsd = virtiofsd_command(config, &fs_sock, &shared);
        jail::join_cgroups_on_exec(&mut virtiofsd, cgroup_procs);
        let virtiofsd_pid =
            launch::spawn_logged(&mut virtiofsd, &dir.join("virtiofsd.log"), "virtiofsd")
                .map_err(abandon)?;
        let mut sb = Self {
            id: req.pod.to_owned(),
            dir: dir.clone(),
            shared,
            vsock: vsock.clone(),
            client: None,
            vmm_pid: 0,
            virtiofsd_pid,
            exits: Arc::clone(&exits),
            stopping: Arc::clone(&stopping),
            rpc_timeout: Duration::from_secs(config.rpc_timeout_secs),
            net,
            jail: jail_state.clone(),
            forwarder: Mutex::new(None),
            shm_host: req.shm.map(Path::to_path_buf),
            state_dir: config.state_dir.clone(),
        };
        sb.write_pids();

        // The exit watcher: records every exit of ours; husk-vmm's end outside a stop
        // is reported once through the hook.
        let watched_vfs = virtiofsd_pid;
        let pids: Arc<Mutex<i32>> = Arc::new(Mutex::new(0));
        let vmm_slot = Arc::clone(&pids);
        let ex = Arc::clone(&exits);
        let st = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name("pod-exits".into())
            .spawn(move || {
                let mut hook = Some(on_vmm_exit);
                while let Ok(ExitEvent { subject, exit_code }) = sub.rx.recv() {
                    let Subject::Pid(pid) = subject else { continue };
                    let vmm = *vmm_slot.lock().unwrap_or_else(|e| e.into_inner());
                    if pid != watched_vfs && pid != vmm {
                        continue;
                    }
                    ex.record(pid, exit_code);
                    let stopping = *st.lock().unwrap_or_else(|e| e.into_inner());
                    if pid == vmm {
                        let reason = format!("husk-vmm (pid {pid}) {}", describe_exit(exit_code));
                        if stopping {
                            info!("{reason}");
                        } else {
                            error!("{reason}: the pod's VM is gone");
                            if let Some(h) = hook.take() {
                                h(reason);
                            }
                        }
                    } else if !stopping {
                        error!("virtiofsd (pid {pid}) {}", describe_exit(exit_code));
                    }
                    if ex.get(vmm).is_some() && ex.get(watched_vfs).is_some() {
                        break;
                    }
                }
            })
            .map_err(|source| SandboxError::Spawn {
                what: "exit watcher",
                path: "thread".into(),
                source,
            })?;

        let result = sb.boot(config, req, &fs_sock, &pids, attached, lease.as_ref());
        match result {
            Ok(()) => Ok(sb),
            Err(e) => {
                let e = match (lease, e) {
                    // Refused by husk-vmm, or the restored guest never answered Restored:
                    // the template's fault, marked so that the next pod rebuilds it.
                    (Some(l), SandboxError::Template(cause)) => {
                        l.refused(&husk_errors::chain(cause.as_ref()));
                        SandboxError::Template(cause)
                    }
                    // Anything else in a restored pod (its virtiofsd, CreateSandbox,
                    // UpdateNetwork): tried again booted, since a fault of restores alone
                    // must not fail the pod; the template is not blamed, since a fault of
                    // the pod's own would then rebuild it for every such pod.
                    (Some(_), e) => SandboxError::Template(Box::new(e)),
                    (None, e) => e,
                };
                sb.stop_processes();
                sb.detach_network();
                sb.undo_jail();
                let _ = mounts::unmount_under(&mounts::RealHost, &sb.dir);
                let _ = std::fs::remove_dir_all(&sb.dir);
                prune_empty_parent(&sb.dir);
                Err(e)
            }
        }
    }

    fn boot(
        &mut self,
        config: &Config,
        req: &PodRequest<'_>,
        fs_sock: &Path,
        vmm_slot: &Mutex<i32>,
        attached: Option<Attached>,
        lease: Option<&template::Lease>,
    ) -> Result<(), SandboxError> {
        let start = Instant::now();
        while !fs_sock.exists() {
            if let Some(code) = self.exits.get(self.virtiofsd_pid) {
                return Err(SandboxError::EarlyExit {
                    what: "virtiofsd",
                    reason: describe_exit(code),
                    log: tail(&self.dir.join("virtiofsd.log"), 2000),
                });
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(SandboxError::VirtiofsdSocket(fs_sock.to_owned()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (taps, nics, update) = match attached {
            Some(a) => (a.taps, a.nics, Some(a.request)),
            None => (Vec::new(), Vec::new(), None),
        };
        let launch = launch::Launch {
            config,
            req,
            pod_dir: &self.dir,
            jail_id: self.jail.id,
            cgroups: &self.jail.cgroups,
            nics: &nics,
            taps: &taps,
            source: lease.map_or(launch::VmSource::Boot { snapshot_to: None }, |l| {
                launch::VmSource::Restore(l.dir())
            }),
        };
        if let Some(id) = self.jail.id {
            launch::chown(fs_sock, id)?;
        }
        {
            // Hold the slot while spawning so the watcher cannot miss the pid.
            let mut slot = vmm_slot.lock().unwrap_or_else(|e| e.into_inner());
            let spawned = launch.spawn();
            // husk-vmm holds the taps now: ours must close, so that a tap goes when the
            // VMM does.
            drop(taps);
            self.vmm_pid = spawned?;
            *slot = self.vmm_pid;
        }
        self.write_pids();
        info!(
            "pod {}: husk-vmm pid {} ({} vCPUs, {} MiB), virtiofsd pid {}",
            self.id, self.vmm_pid, req.vcpus, req.memory_mib, self.virtiofsd_pid
        );
        let client = match (self.agent_up(config, req, &nics, lease, start), lease) {
            (Ok(c), _) => c,
            // Until the agent answered Restored, a failure is the template's.
            (Err(e), Some(_)) => return Err(SandboxError::Template(Box::new(e))),
            (Err(e), None) => return Err(e),
        };
        let mut sreq = agent::CreateSandboxRequest::new();
        sreq.hostname = req.hostname.to_owned();
        sreq.sandbox_id = req.pod.to_owned();
        let mut share = agent::Mount::new();
        share.type_ = "virtiofs".into();
        share.source = SHARED_FS_TAG.into();
        share.destination = GUEST_SHARED_DIR.into();
        sreq.shared_mounts.push(share);
        if let Some(shm) = req.shm {
            let mut m = agent::Mount::new();
            m.type_ = "tmpfs".into();
            m.source = "shm".into();
            m.destination = spec::GUEST_POD_SHM.into();
            m.options = ["nosuid", "nodev", "noexec", "mode=1777"]
                .map(String::from)
                .into();
            m.options.push(format!("size={}", shm_size(shm)));
            sreq.shared_mounts.push(m);
        }
        let asked = Instant::now();
        client
            .create_sandbox(self.ctx(), &sreq)
            .map_err(|e| SandboxError::Rpc {
                call: "CreateSandbox",
                message: e.to_string(),
            })?;
        debug!("pod {}: CreateSandbox took {:?}", self.id, asked.elapsed());
        if let Some(update) = update {
            // Before any container: its processes see the pod's network from the start.
            client
                .update_network(self.ctx(), &update)
                .map_err(|e| SandboxError::Rpc {
                    call: "UpdateNetwork",
                    message: e.to_string(),
                })?;
            info!(
                "pod {}: guest network: {}",
                self.id,
                update
                    .interfaces
                    .iter()
                    .map(|i| format!(
                        "{} {} mtu {} [{}]",
                        i.name,
                        i.hw_addr,
                        i.mtu,
                        i.addresses
                            .iter()
                            .map(|a| format!("{}/{}", a.address, a.prefix_len))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.client = Some(client);
        if let (true, Some(netns)) = (req.port_forward, req.netns) {
            // Not fatal: the pod runs as under runc; only port-forward to it would fail.
            match PortForwarder::start(netns, self.vsock.clone(), self.rpc_timeout) {
                Ok(f) => *self.forwarder.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
                Err(e) => warn!(
                    "pod {}: kubectl port-forward to this pod will not work: {}",
                    self.id,
                    husk_errors::chain(&e)
                ),
            }
        }
        Ok(())
    }

    /// The agent, once it answered Health, in a guest restored from `lease`'s template
    /// Restored (the guest's clock, entropy, hostname and MACs: the first call after the
    /// probe that it listens), and Version with our API.
    fn agent_up(
        &self,
        config: &Config,
        req: &PodRequest<'_>,
        nics: &[network::Nic],
        lease: Option<&template::Lease>,
        start: Instant,
    ) -> Result<AgentClient, SandboxError> {
        let client = self.wait_for_agent(Duration::from_secs(config.boot_timeout_secs))?;
        let rpc = |call| {
            move |e: ttrpc::Error| SandboxError::Rpc {
                call,
                message: e.to_string(),
            }
        };
        if let Some(l) = lease {
            let entropy = template::host_entropy(64).map_err(|source| SandboxError::Spawn {
                what: "getrandom, for the restored guest's RNG",
                path: "getrandom".into(),
                source,
            })?;
            let r = template::restored_request(&l.template, req.hostname, nics, entropy);
            client.restored(self.ctx(), &r).map_err(rpc("Restored"))?;
        }
        let v = client
            .version(self.ctx(), &agent::VersionRequest::new())
            .map_err(rpc("Version"))?;
        if v.api_version != API_VERSION {
            return Err(SandboxError::ApiVersion(guest_text(&v.api_version, 64)));
        }
        info!(
            "pod {}: agent {} ready after {:?} ({}), guest kernel {}",
            self.id,
            guest_text(&v.agent_version, 64),
            start.elapsed(),
            if lease.is_some() {
                "restored"
            } else {
                "booted"
            },
            guest_text(&v.kernel_release, 64)
        );
        Ok(client)
    }

    fn wait_for_agent(&self, timeout: Duration) -> Result<AgentClient, SandboxError> {
        let start = Instant::now();
        let mut last = String::from("no attempt yet");
        loop {
            if let Some(code) = self.exits.get(self.vmm_pid) {
                return Err(SandboxError::EarlyExit {
                    what: "husk-vmm",
                    reason: describe_exit(code),
                    log: self.logs(),
                });
            }
            if start.elapsed() > timeout {
                return Err(SandboxError::AgentTimeout {
                    secs: timeout.as_secs(),
                    last,
                    log: self.logs(),
                });
            }
            match self.try_health() {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
            // A refused probe costs the guest one reset packet; the pause is what the
            // pod waits, on average half of it, after the agent starts listening.
            std::thread::sleep(HEALTH_POLL);
        }
    }

    fn try_health(&self) -> Result<AgentClient, String> {
        agent_health(&self.vsock)
    }

    /// The console and VMM log tails, for error messages.
    pub fn logs(&self) -> String {
        self.logs_with(3000)
    }

    fn logs_with(&self, console_bytes: usize) -> String {
        format!(
            "{}\n{}\n{}",
            tail(&self.dir.join("vmm.log"), 2000),
            tail(&self.dir.join("virtiofsd.log"), 2000),
            tail(
                &launch::vm_dir(&self.dir).join(launch::CONSOLE_LOG),
                console_bytes
            )
        )
    }

    /// The agent's client (set once [`Sandbox::start`] returned).
    pub fn agent(&self) -> &AgentClient {
        self.client
            .as_ref()
            .expect("a started sandbox has an agent client")
    }

    /// A context with the ordinary deadline.
    pub fn ctx(&self) -> ttrpc::context::Context {
        rpc_ctx(self.rpc_timeout)
    }

    /// Whether husk-vmm has ended, and how.
    pub fn vmm_exit(&self) -> Option<String> {
        self.exits
            .get(self.vmm_pid)
            .map(|c| format!("husk-vmm (pid {}) {}", self.vmm_pid, describe_exit(c)))
    }

    fn write_pids(&self) {
        let pids = PodPids {
            shim: std::process::id() as i32,
            vmm: self.vmm_pid,
            virtiofsd: self.virtiofsd_pid,
        };
        if let Err(e) = persist::write(&self.dir, &pids) {
            warn!("pod {}: {}", self.id, husk_errors::chain(&e));
        }
    }

    fn stop_processes(&self) {
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.forwarder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A jailed VMM is PID 1 of its PID namespace: a signal it has no handler for
        // (SIGTERM) never reaches it from here, so it gets SIGKILL at once. (Unjailed,
        // SIGTERM's default action ends it just the same: it has nothing to flush.)
        let vmm_signal = if self.jail.id.is_some() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        for (pid, sig, grace) in [
            (self.vmm_pid, vmm_signal, Duration::from_secs(5)),
            (self.virtiofsd_pid, libc::SIGTERM, Duration::from_secs(5)),
        ] {
            if pid <= 0 || self.exits.get(pid).is_some() {
                continue;
            }
            kill(pid, sig);
            if self.exits.wait(pid, grace).is_none() {
                warn!("pid {pid} ignored SIGTERM; killing it");
                kill(pid, libc::SIGKILL);
                if self.exits.wait(pid, Duration::from_secs(10)).is_none() {
                    error!("pid {pid} did not die after SIGKILL");
                }
            }
        }
    }

    /// Removes the pod's cgroups and releases the VMM's id (after both processes ended).
    fn undo_jail(&self) -> Option<JailError> {
        let r = self.jail.undo(&self.state_dir, &self.dir).err();
        if let Some(e) = &r {
            error!("pod {}: {}", self.id, husk_errors::chain(e));
        }
        r
    }

    /// Removes the pod's taps and tc filters (after husk-vmm ended); logs a failure.
    fn detach_network(&self) -> Option<NetError> {
        let n = self.net.as_ref()?;
        let r = network::detach(n).err();
        if let Some(e) = &r {
            error!(
                "pod {}: network teardown: {}",
                self.id,
                husk_errors::chain(e)
            );
        }
        r
    }

    /// Ends the guest's containers (DestroySandbox), stops husk-vmm and virtiofsd,
    /// removes the pod's taps and tc filters, unmounts everything under the pod
    /// directory and removes it.
    pub fn stop(&self, ops: &dyn HostOps) -> Result<(), SandboxError> {
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let (None, Some(client)) = (self.exits.get(self.vmm_pid), self.client.as_ref()) {
            let mut req = agent::DestroySandboxRequest::new();
            req.timeout_ms = 2000;
            // The agent answers once its containers are gone, their mounts undone and the
            // file systems synced: nothing is left in the guest to lose, so husk-vmm is
            // stopped at once rather than after the guest's own power-off (which waits
            // for the reply to leave and then runs the kernel's restart path: ~0.1-0.2 s
            // of every pod's Delete under emulation), as Kata and Firecracker stop theirs.
            if let Err(e) = client.destroy_sandbox(rpc_ctx(Duration::from_secs(10)), &req) {
                warn!("DestroySandbox: {e}; stopping husk-vmm");
            }
        }
        self.stop_processes();
        let net_err = self.detach_network();
        let jail_err = self.undo_jail();
        // The guest's own account (agent log lines) survives the pod dir in the shim log.
        debug!("pod {}: at teardown:\n{}", self.id, self.logs_with(16_000));
        mounts::unmount_under(ops, &self.dir)?;
        std::fs::remove_dir_all(&self.dir).map_err(|source| SandboxError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        prune_empty_parent(&self.dir);
        if let Some(e) = net_err {
            return Err(e.into());
        }
        jail_err.map_or(Ok(()), |e| Err(e.into()))
    }
}

fn prune_empty_parent(dir: &Path) {
    if let Some(ns_dir) = dir.parent() {
        // Fails harmlessly while other pods of the namespace remain.
        let _ = std::fs::remove_dir(ns_dir);
    }
}

mod cleanup;
pub(crate) mod launch;
mod procs;

#[cfg(test)]
mod tests;
