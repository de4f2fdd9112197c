//! The engine fixture of the container tests: one engine per test process
//! under a per-suite temporary dir, a lock so that container tests run one
//! at a time (leak checks see only their own processes), and the busybox
//! rootfs with extra applets.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use husk_agent::container::{self, Container, Engine, ExitCell, ExitStatus, ProcessStdio};
use husk_agent::stdio::ProcessIo;
use husk_protocol::agent::StdioSet;
use oci_spec::runtime::Spec;

use super::busybox_bundle;

/// The engine and the lock that serialises the suite's containers; `None`
/// (with a SKIPPED line naming the suite) when not root.
pub fn engine(suite: &str) -> Option<(MutexGuard<'static, ()>, &'static Engine)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: container {suite} tests need root (namespaces, mounts, cgroups)");
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let engine = ENGINE
        .get_or_init(|| Engine::new(test_dir(suite).join("engine")).expect("engine state dir"));
    Some((guard, engine))
}

/// This process's temporary dir for the suite.
pub fn test_dir(suite: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-{suite}-test-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// The suite's busybox rootfs with `applets` linked in as well.
pub fn rootfs(suite: &str, applets: &[&str]) -> PathBuf {
    let rootfs = busybox_bundle::busybox_rootfs(&test_dir(suite)).expect("busybox rootfs");
    for applet in applets {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link).expect("applet link");
        }
    }
    rootfs
}

/// A container created the way the agent creates one (`Sandbox::create_container`):
/// its stdout and stderr are [`ProcessIo`]'s pipes, pumped by the agent's own pumps (as
/// to the shim's streams) into pipes whose read ends the test holds.
pub struct Created {
    pub container: Container,
    pub stdout: File,
    pub stderr: File,
    io: ProcessIo,
    exit: Arc<ExitCell>,
}

/// Creates container `id` running `spec` on `rootfs` (see [`Created`]).
pub fn create(
    engine: &Engine,
    id: &str,
    spec: Spec,
    rootfs: &Path,
) -> Result<Created, container::Error> {
    let mut set = StdioSet::new();
    set.stdout = true;
    set.stderr = true;
    let (io, child) = ProcessIo::pipes(&set).expect("stdio pipes");
    let (container, spawned) = engine.create_with_stdio(id, spec, rootfs, child)?;
    let exit = Arc::clone(&spawned.exit);
    let mut ends = Vec::new();
    for slot in [&io.stdout, &io.stderr] {
        let (r, w) = std::io::pipe().expect("pipe");
        let pump = slot.attach(Arc::clone(&exit)).expect("attach the output");
        std::thread::spawn(move || pump.run(File::from(OwnedFd::from(w))));
        ends.push(File::from(OwnedFd::from(r)));
    }
    let stderr = ends.pop().expect("two ends");
    let stdout = ends.pop().expect("two ends");
    Ok(Created {
        container,
        stdout,
        stderr,
        io,
        exit,
    })
}

impl Created {
    /// Waits for the init, then for its output to be drained to the readers, as the
    /// agent's WaitProcess does; then returns the exit status.
    pub fn wait(&mut self) -> Result<ExitStatus, container::Error> {
        let status = self.container.wait()?;
        self.io.wait(&self.exit);
        Ok(status)
    }
}

/// Creates a container from a bundle dir (`config.json`, `rootfs/`) with no stdio, to
/// see what the agent says of its spec.
pub fn create_from_bundle(
    engine: &Engine,
    id: &str,
    bundle: &Path,
) -> Result<Container, container::Error> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|source| container::Error::LoadSpec { path, source })?;
    engine
        .create_with_stdio(id, spec, &bundle.join("rootfs"), ProcessStdio::default())
        .map(|(c, _)| c)
}
