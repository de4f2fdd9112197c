//! The pod template (issue 13): a VM booted once to "agent ready, no container" and
//! snapshotted, from which each new pod of its shape is restored instead of booted. The
//! shim builds it on first use, in the pod's own start, and keeps it in a cache keyed by
//! what the snapshot depends on ([`TemplateKey`]).
//!
//! One directory per shape under `template_dir` (default `<state_dir>/.templates`):
//!
//! | entry | what |
//! |---|---|
//! | `lock` | flock: shared while a pod restores from `current`, exclusive while a shim builds |
//! | `current/` | the template: husk-vmm's `vm.state` and `vm.mem` (root's, read-only) and `template.json` ([`TemplateMeta`]) |
//! | `build-<pid>/` | a build in progress (the template VM's dir); its `snapshot/` becomes `current` by one rename |
//! | `failed.json` | the last failed build ([`BuildFailure`]): not retried for [`RETRY_AFTER`] |
//! | `refused.json` | a template husk-vmm refused or that did not come up ([`Refusal`]): rebuilt |
//!
//! A shim that finds the lock taken (another shim builds) boots its pod cold rather than
//! wait; a template is published whole (rename) or not at all; one whose key no longer
//! matches (a new kernel, initramfs or husk-vmm, another kernel command line, another
//! host boot) is stale, one whose files changed since it was built (or that husk-vmm
//! refused) is corrupt: both are rebuilt, never used.

mod build;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_protocol::agent::{RestoredInterface, RestoredRequest};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use self::build::TemplateVm;
use crate::config::Config;
use crate::network::plan::format_mac;
use crate::network::Nic;
use crate::persist::{self, PersistError, Persisted};

/// What the shim puts into a template VM (its devices, how it is booted and left):
/// raised when that changes, so that older templates are stale.
pub const LAYOUT: u32 = 1;
/// Most NICs a template is made with (a pod with more boots cold).
pub const MAX_NICS: usize = 4;
/// A failed build is not tried again for this long (unless its key changes).
pub const RETRY_AFTER: Duration = Duration::from_secs(600);
/// The published template in a shape's directory.
const CURRENT: &str = "current";
const LOCK: &str = "lock";
/// husk-vmm's files in a snapshot directory (vmm/src/snapshot/files.rs).
pub const STATE_FILE: &str = "vm.state";
pub const MEMORY_FILE: &str = "vm.mem";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("Cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] PersistError),
    #[error("The template VM did not come up")]
    Vm(#[source] Box<crate::sandbox::SandboxError>),
    #[error("The template VM was not snapshotted: {0}")]
    Snapshot(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io { what, path, source }
}

/// What a template is made for: the VM's size and its NICs (the devices of a restored VM
/// must be the snapshot's, in kind and number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub vcpus: u8,
    pub memory_mib: u64,
    pub nics: usize,
}

impl Shape {
    /// Its directory's name.
    pub fn name(&self) -> String {
        format!("{}cpu-{}mib-{}nic", self.vcpus, self.memory_mib, self.nics)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vCPU(s), {} MiB, {} NIC(s)",
            self.vcpus, self.memory_mib, self.nics
        )
    }
}

/// Which file a path is: a file replaced or written since has another inode, size,
/// modification or change time (the change time cannot be set back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: [i64; 2],
    pub ctime: [i64; 2],
}

impl Fingerprint {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: [m.mtime(), m.mtime_nsec()],
            ctime: [m.ctime(), m.ctime_nsec()],
        })
    }
}

/// A file the template depends on: its path and which file was there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    pub path: PathBuf,
    pub file: Fingerprint,
}

impl FileId {
    fn of(path: &Path) -> Result<Self, TemplateError> {
        Ok(Self {
            path: path.to_owned(),
            file: Fingerprint::of(path).map_err(io("stat", path))?,
        })
    }
}

/// Everything a template's snapshot depends on. Computed for every pod from file
/// metadata only (no hashing of the files: a pod start must stay cheap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateKey {
    pub layout: u32,
    pub shape: Shape,
    pub kernel: FileId,
    pub initramfs: FileId,
    /// husk-vmm: its version is the binary (a new build or install is a new file).
    pub vmm: FileId,
    pub cmdline: String,
    /// The host's boot id: a template never outlives a host boot. Its KVM state is this
    /// host's (CPUID, TSC), and clones share its kernel's ASLR layout: a new one per boot
    /// bounds how long one layout lives (SECURITY.md).
    pub host_boot: String,
}

impl TemplateKey {
    /// What differs from `now`, for the log; `None` if nothing.
    pub fn differs(&self, now: &TemplateKey) -> Option<&'static str> {
        [
            (
                self.layout != now.layout,
                "the shim's template layout changed",
            ),
            (self.shape != now.shape, "another VM shape"),
            (self.kernel != now.kernel, "the kernel changed"),
            (self.initramfs != now.initramfs, "the initramfs changed"),
            (self.vmm != now.vmm, "husk-vmm changed"),
            (
                self.cmdline != now.cmdline,
                "the kernel command line changed",
            ),
            (self.host_boot != now.host_boot, "the host rebooted"),
        ]
        .into_iter()
        .find_map(|(d, what)| d.then_some(what))
    }
}

/// Where the host's boot id is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The key of a template of `shape` for this config, on this host boot.
pub fn key(config: &Config, shape: Shape) -> Result<TemplateKey, TemplateError> {
    let boot = std::fs::read_to_string(BOOT_ID).map_err(io("read", Path::new(BOOT_ID)))?;
    key_with(config, shape, boot.trim())
}

fn key_with(config: &Config, shape: Shape, host_boot: &str) -> Result<TemplateKey, TemplateError> {
    Ok(TemplateKey {
        layout: LAYOUT,
        shape,
        kernel: FileId::of(&config.kernel)?,
        initramfs: FileId::of(&config.initramfs)?,
        vmm: FileId::of(&config.vmm)?,
        cmdline: config.kernel_cmdline.clone(),
        host_boot: host_boot.to_owned(),
    })
}

/// A published template's description, written last into its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMeta {
    pub key: TemplateKey,
    /// `vm.state` and `vm.mem` as they were published.
    pub state: Fingerprint,
    pub memory: Fingerprint,
    /// The template's NICs' MACs, in order (what the restored guest's links have until
    /// the agent's Restored gives them the pod's).
    pub macs: Vec<String>,
    /// How long the build took.
    pub build_ms: u64,
}

impl Persisted for TemplateMeta {
    const FILE: &'static str = "template.json";
    const VERSION: u32 = 1;
}

/// The last failed build of a shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFailure {
    pub key: TemplateKey,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

impl Persisted for BuildFailure {
    const FILE: &'static str = "failed.json";
    const VERSION: u32 = 1;
}

/// A published template that failed a pod: husk-vmm refused it, or the guest restored
/// from it did not answer. Names the template by its `vm.state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub state: Fingerprint,
    pub reason: String,
}

impl Persisted for Refusal {
    const FILE: &'static str = "refused.json";
    const VERSION: u32 = 1;
}

/// A template found whole and current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub dir: PathBuf,
    pub meta: Box<TemplateMeta>,
}

/// What a shape's cache holds, as [`inspect`] sees it. ("Being built" is not a state of
/// the files but of the lock: [`Cache::acquire`] says so.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Missing,
    Ready(Template),
    /// Built for something else (the reason).
    Stale(String),
    /// Not what was built, or refused (the reason).
    Corrupt(String),
}

/// The state of the template in `shape_dir` for `key`: read, never changed.
pub fn inspect(shape_dir: &Path, key: &TemplateKey) -> State {
    let dir = shape_dir.join(CURRENT);
    if !dir.exists() {
        return State::Missing;
    }
    let meta = match persist::read::<TemplateMeta>(&dir) {
        Ok(Some(m)) => m,
        Ok(None) => return State::Corrupt(format!("{} is missing", TemplateMeta::FILE)),
        Err(e) => return State::Corrupt(husk_errors::chain(&e)),
    };
    if let Some(what) = meta.key.differs(key) {
        return State::Stale(what.to_owned());
    }
    for (name, want) in [(STATE_FILE, &meta.state), (MEMORY_FILE, &meta.memory)] {
        match Fingerprint::of(&dir.join(name)) {
            Ok(f) if f == *want => {}
            Ok(_) => return State::Corrupt(format!("{name} changed after it was built")),
            Err(e) => return State::Corrupt(format!("{name}: {e}")),
        }
    }
    match persist::read::<Refusal>(shape_dir) {
        Ok(Some(r)) if r.state == meta.state => {
            return State::Corrupt(format!("it failed a pod: {}", r.reason))
        }
        Ok(_) => {}
        Err(e) => warn!("{}", husk_errors::chain(&e)),
    }
    State::Ready(Template {
        dir,
        meta: Box::new(meta),
    })
}

/// The MAC of a template's NIC `i` (locally administered; "husk" in ASCII).
pub fn template_mac(i: usize) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x73, 0x6b, i as u8]
}

/// What [`BuildVm::build`] is asked for.
pub struct BuildRequest<'a> {
    pub config: &'a Config,
    pub shape: Shape,
    /// An empty directory of the build's own (the template VM's dir).
    pub work: &'a Path,
    /// An empty directory where husk-vmm writes `vm.state` and `vm.mem`.
    pub out: &'a Path,
    /// The MACs of the template's NICs.
    pub macs: &'a [[u8; 6]],
}

/// Boots a template VM to "agent ready, no container" and snapshots it.
pub trait BuildVm {
    fn build(&self, req: &BuildRequest<'_>) -> Result<(), TemplateError>;
}

/// A pod's claim on a ready template: the shared lock, held until the restored VMM has
/// read the snapshot (dropping it releases the lock).
pub struct Lease {
    lock: File,
    shape_dir: PathBuf,
    pub template: Template,
}

impl Lease {
    pub fn dir(&self) -> &Path {
        &self.template.dir
    }

    /// The template failed this pod (husk-vmm refused it, or the guest restored from it
    /// did not answer): recorded, so that every shim sees it as corrupt and the next
    /// builds a new one.
    pub fn refused(self, reason: &str) {
        warn!(
            "template {}: {reason}; it will be rebuilt",
            self.template.dir.display()
        );
        let r = Refusal {
            state: self.template.meta.state.clone(),
            reason: reason.to_owned(),
        };
        if let Err(e) = persist::write(&self.shape_dir, &r) {
            warn!("{}", husk_errors::chain(&e));
        }
        drop(self.lock);
    }
}

/// Why a pod boots cold, or the template it restores from.
pub enum Acquired {
    Restore(Lease),
    Cold(String),
}

/// flock(2) `op`; `Ok(false)` if it would block.
fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on an fd the File owns; no pointers.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// One shape's directory under `template_dir`.
pub struct Cache {
    pub dir: PathBuf,
    shape: Shape,
}

impl Cache {
    /// The cache of `shape` under `root`, both created (`root` root's only: the jail
    /// binds a template into a VMM's root, nobody else on the host reads it).
    pub fn open(root: &Path, shape: Shape) -> Result<Self, TemplateError> {
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        std::fs::set_permissions(root, PermissionsExt::from_mode(0o700))
            .map_err(io("chmod", root))?;
        let dir = root.join(shape.name());
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Self { dir, shape })
    }

    fn lock(&self) -> Result<File, TemplateError> {
        let p = self.dir.join(LOCK);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io("open", &p))
    }

    /// A ready template for `key`, built first if there is none, a stale or a corrupt
    /// one; or why the pod boots cold: another shim is building it, its last build
    /// failed a short while ago, or this build failed.
    pub fn acquire(
        &self,
        config: &Config,
        key: &TemplateKey,
        builder: &dyn BuildVm,
    ) -> Result<Acquired, TemplateError> {
        let lock = self.lock()?;
        let lock_err = io("lock", &self.dir.join(LOCK));
        if !flock(&lock, libc::LOCK_SH | libc::LOCK_NB).map_err(lock_err)? {
            return Ok(Acquired::Cold(
                "another shim is building its template".into(),
            ));
        }
        let why = match inspect(&self.dir, key) {
            State::Ready(template) => return Ok(self.lease(lock, template)),
            State::Missing => "there is none".to_owned(),
            State::Stale(why) => format!("the template is stale ({why})"),
            State::Corrupt(why) => format!("the template is corrupt ({why})"),
        };
        // Exclusive (an upgrade is not atomic: check again once it is held).
        let lock_err = io("lock", &self.dir.join(LOCK));
        if !flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(lock_err)? {
            return Ok(Acquired::Cold(format!(
                "{why}, and another shim is building it or restoring from it"
            )));
        }
        if let State::Ready(template) = inspect(&self.dir, key) {
            return self.downgrade(lock, key, template);
        }
        let failed = persist::read::<BuildFailure>(&self.dir).unwrap_or_else(|e| {
            // Unreadable (torn, another version): as if there were none.
            warn!("{}", husk_errors::chain(&e));
            None
        });
        if let Some(f) = failed.filter(|f| f.key == *key) {
            let age = unix_now().saturating_sub(f.at);
            if age < RETRY_AFTER.as_secs() {
                return Ok(Acquired::Cold(format!(
                    "{why}, and its last build {age} s ago failed ({}); next try after {} s",
                    f.reason,
                    RETRY_AFTER.as_secs()
                )));
            }
        }
        self.clean_leftovers(config);
        info!("template {}: {why}: building it", self.shape);
        if let Err(e) = self.build(config, key, builder) {
            let reason = husk_errors::chain(&e);
            let f = BuildFailure {
                key: key.clone(),
                reason: reason.clone(),
                at: unix_now(),
            };
            if let Err(w) = persist::write(&self.dir, &f) {
                warn!("{}", husk_errors::chain(&w));
            }
            return Ok(Acquired::Cold(format!(
                "building its template failed: {reason}"
            )));
        }
        match inspect(&self.dir, key) {
            State::Ready(template) => self.downgrade(lock, key, template),
            other => Ok(Acquired::Cold(format!(
                "the template just built is {other:?}"
            ))),
        }
    }

    fn lease(&self, lock: File, template: Template) -> Acquired {
        Acquired::Restore(Lease {
            lock,
            shape_dir: self.dir.clone(),
            template,
        })
    }

    /// From the builder's exclusive lock to a pod's shared one.
    fn downgrade(
        &self,
        lock: File,
        key: &TemplateKey,
        template: Template,
    ) -> Result<Acquired, TemplateError> {
        flock(&lock, libc::LOCK_SH).map_err(io("lock", &self.dir.join(LOCK)))?;
        // The conversion is not atomic: another builder may have had it in between.
        match inspect(&self.dir, key) {
            State::Ready(now) if now == template => Ok(self.lease(lock, template)),
            State::Ready(now) => Ok(self.lease(lock, now)),
            other => Ok(Acquired::Cold(format!("the template is now {other:?}"))),
        }
    }

    /// Builds into `build-<pid>/`, then publishes its snapshot as `current` (the old
    /// one, if any, moved aside and removed: nobody holds the lock but us).
    fn build(
        &self,
        config: &Config,
        key: &TemplateKey,
        builder: &dyn BuildVm,
    ) -> Result<(), TemplateError> {
        let work = self.dir.join(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let out = work.join("snapshot");
        std::fs::create_dir_all(&out).map_err(io("create", &out))?;
        let macs: Vec<[u8; 6]> = (0..self.shape.nics).map(template_mac).collect();
        let started = Instant::now();
        let built = builder
            .build(&BuildRequest {
                config,
                shape: self.shape,
                work: &work,
                out: &out,
                macs: &macs,
            })
            .and_then(|()| {
                publish(
                    &self.dir,
                    &out,
                    TemplateMeta {
                        key: key.clone(),
                        state: Fingerprint::default(),
                        memory: Fingerprint::default(),
                        macs: macs.iter().map(format_mac).collect(),
                        build_ms: started.elapsed().as_millis() as u64,
                    },
                )
            });
        let _ = std::fs::remove_dir_all(&work);
        built?;
        for stale in [BuildFailure::FILE, Refusal::FILE] {
            let _ = std::fs::remove_file(self.dir.join(stale));
        }
        info!("template {}: built in {:?}", self.shape, started.elapsed());
        Ok(())
    }

    /// Removes what builders that died left (their VMMs and virtiofsd killed first, see
    /// [`build::kill_leftover`]); called with the exclusive lock, so no live builder owns them.
    fn clean_leftovers(&self, config: &Config) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("build-") || name.starts_with("old-") {
                build::kill_leftover(&e.path(), config);
                info!(
                    "template {}: removing {name}, left by a shim that died",
                    self.shape
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Makes the snapshot in `out` the shim's (root's) and read-only, records it in `meta` and
/// renames it to `shape_dir/current`.
fn publish(shape_dir: &Path, out: &Path, mut meta: TemplateMeta) -> Result<(), TemplateError> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    for name in [STATE_FILE, MEMORY_FILE] {
        let p = out.join(name);
        let len = std::fs::metadata(&p).map_err(io("stat", &p))?.len();
        if len == 0 {
            return Err(TemplateError::Snapshot(format!("{} is empty", p.display())));
        }
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io("chown", &p))?;
        std::fs::set_permissions(&p, PermissionsExt::from_mode(0o444)).map_err(io("chmod", &p))?;
    }
    std::os::unix::fs::chown(out, Some(uid), Some(gid)).map_err(io("chown", out))?;
    std::fs::set_permissions(out, PermissionsExt::from_mode(0o755)).map_err(io("chmod", out))?;
    // After the last chown/chmod: those change the change time.
    meta.state = Fingerprint::of(&out.join(STATE_FILE)).map_err(io("stat", out))?;
    meta.memory = Fingerprint::of(&out.join(MEMORY_FILE)).map_err(io("stat", out))?;
    persist::write(out, &meta)?;
    let current = shape_dir.join(CURRENT);
    if current.exists() {
        let old = shape_dir.join(format!("old-{}", std::process::id()));
        std::fs::rename(&current, &old).map_err(io("move aside", &current))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(out, &current).map_err(io("rename into place", &current))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The template a new pod restores from, or `None` (logged with the reason) when it
/// boots cold: templates off, a VM size other than the configured one, too many NICs,
/// or [`Cache::acquire`]'s reasons.
pub fn for_pod(config: &Config, pod: &str, shape: Shape, builder: &dyn BuildVm) -> Option<Lease> {
    match acquire(config, shape, builder) {
        Acquired::Restore(lease) => {
            info!(
                "pod {pod}: restoring from template {} ({shape})",
                lease.dir().display()
            );
            Some(lease)
        }
        Acquired::Cold(why) => {
            info!("pod {pod}: booting cold: {why}");
            None
        }
    }
}

fn acquire(config: &Config, shape: Shape, builder: &dyn BuildVm) -> Acquired {
    if !config.template {
        return Acquired::Cold("templates are off (template = false in husk.toml)".into());
    }
    if (shape.vcpus, shape.memory_mib) != (config.vcpus, config.memory_mib) {
        return Acquired::Cold(format!(
            "its VM ({} vCPU(s), {} MiB) is not the configured size ({}, {}): templates \
             are made for that only",
            shape.vcpus, shape.memory_mib, config.vcpus, config.memory_mib
        ));
    }
    if shape.nics > MAX_NICS {
        return Acquired::Cold(format!(
            "it has {} NICs; templates have at most {MAX_NICS}",
            shape.nics
        ));
    }
    let cached = key(config, shape)
        .and_then(|key| Cache::open(&config.template_dir(), shape)?.acquire(config, &key, builder));
    cached.unwrap_or_else(|e| Acquired::Cold(husk_errors::chain(&e)))
}

/// The first call to a guest restored from `template`: the host's clock, 64 bytes of its
/// entropy, the pod's hostname, and each NIC's MAC (the template's, in order) with the
/// pod's (the veth's).
pub fn restored_request(
    template: &Template,
    hostname: &str,
    nics: &[Nic],
    entropy: Vec<u8>,
) -> RestoredRequest {
    let mut r = RestoredRequest::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    r.sec = now.as_secs() as i64;
    r.nsec = now.subsec_nanos();
    r.entropy = entropy;
    r.hostname = hostname.to_owned();
    r.interfaces = template
        .meta
        .macs
        .iter()
        .zip(nics)
        .map(|(from, nic)| {
            let mut i = RestoredInterface::new();
            i.template_hw_addr = from.clone();
            i.hw_addr = format_mac(&nic.mac);
            i
        })
        .collect();
    r
}

/// `n` bytes from the host's RNG (getrandom(2)).
pub fn host_entropy(n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: getrandom writes at most `n - got` bytes into the buffer we own, from
        // offset `got`.
        let r = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), n - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += r as usize;
    }
    Ok(b)
}
