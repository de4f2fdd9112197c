//! A running husk-vmm guest for device tests: the probe initramfs as /init, a hybrid vsock
//! device whose host socket lives in a private temp dir, optional virtio-fs and virtio-blk
//! devices, the console in a file, and a watchdog (every call has a deadline; dropping the
//! guest kills it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{boot_timeout, guest_kernel, kill_group, require_file, vmm_bin, workspace_root};

/// The probe initramfs (`HUSK_PROBE_INITRAMFS`, default `build/guest/probe-initramfs.cpio`).
pub fn probe_initramfs() -> PathBuf {
    std::env::var_os("HUSK_PROBE_INITRAMFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/guest/probe-initramfs.cpio"))
}

/// A private scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        let base = std::env::var_os("HUSK_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "husk-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// A dir with a short name, `<base>/<tag><pid>-<n>`, for trees that hold Unix
    /// sockets (at most 107 bytes): a CRI pod's is `<dir>/hs/k8s.io/<64-char id>/...`.
    pub fn short(tag: &str) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = std::env::var_os("HUSK_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = base.join(format!("{tag}{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u128 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u128::from(u64::from_le_bytes(b))
}

/// How to start a guest.
#[derive(Default)]
pub struct GuestOptions {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Extra husk-vmm arguments (e.g. `--fs tag=...`, `--block path=...`).
    pub args: Vec<String>,
    /// Extra kernel command line.
    pub cmdline: String,
    /// The initramfs (default: the probe's, [`probe_initramfs`]).
    pub initramfs: Option<PathBuf>,
    /// The console line that says the guest is up (default `husk-probe: ready`).
    pub ready_line: Option<String>,
    /// The guest kernel (default: [`guest_kernel`]).
    pub kernel: Option<PathBuf>,
    /// husk-vmm's `HUSK_LOG` (default: the caller's, else vsock reasons at debug).
    pub log: Option<String>,
}

/// A running guest.
pub struct Guest {
    child: Option<Child>,
    pub dir: TempDir,
    pub console: PathBuf,
    pub vsock_uds: PathBuf,
    pub stderr_path: PathBuf,
    started: Instant,
}

impl Guest {
    /// Starts husk-vmm (by default with the probe initramfs) and waits for the ready line.
    pub fn start(opts: GuestOptions) -> Result<Self> {
        let initramfs = opts.initramfs.clone().unwrap_or_else(probe_initramfs);
        let ready = opts
            .ready_line
            .clone()
            .unwrap_or_else(|| "husk-probe: ready".to_owned());
        let kernel = opts.kernel.clone().unwrap_or_else(guest_kernel);
        for f in [vmm_bin(), kernel.clone(), initramfs.clone()] {
            require_file(&f);
        }
        let mut args: Vec<std::ffi::OsString> = vec![
            "--kernel".into(),
            kernel.into(),
            "--initramfs".into(),
            initramfs.into(),
            "--vcpus".into(),
            opts.vcpus.max(1).to_string().into(),
            "--memory".into(),
            opts.memory_mib.max(256).to_string().into(),
        ];
        args.extend(opts.args.iter().map(Into::into));
        args.extend(["--cmdline".into(), format!("quiet {}", opts.cmdline).into()]);
        let mut g = Self::spawn(args, opts.log.as_deref())?;
        g.wait_console(&ready, boot_timeout())?;
        Ok(g)
    }

    /// Restores the snapshot in `snapshot` (`husk-vmm --restore-from`) with a new console,
    /// a new vsock socket and `args` (the snapshot's other devices), and waits until the
    /// guest answers on vsock `port` (its program was already up when it was snapshotted;
    /// the restored console stays silent until the guest prints again).
    pub fn restore(snapshot: &Path, args: &[String], port: u32) -> Result<Self> {
        require_file(&vmm_bin());
        let mut all: Vec<std::ffi::OsString> = vec!["--restore-from".into(), snapshot.into()];
        all.extend(args.iter().map(Into::into));
        let mut g = Self::spawn(all, None)?;
        let start = Instant::now();
        loop {
            if let Some(status) = g.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "husk-vmm exited ({status}) after --restore-from\n{}",
                    g.explain()
                );
            }
            match try_connect_vsock(&g.vsock_uds, port) {
                Ok(_) => return Ok(g),
                Err(e) if start.elapsed() > boot_timeout() => {
                    bail!(
                        "watchdog: the restored guest never answered: {e:#}\n{}",
                        g.explain()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Starts husk-vmm with `args` plus a console file and a vsock device in a new dir;
    /// `log` its HUSK_LOG filter if not the default.
    fn spawn(args: Vec<std::ffi::OsString>, log: Option<&str>) -> Result<Self> {
        let dir = TempDir::new("guest")?;
        let console = dir.path().join("console.log");
        let stderr_path = dir.path().join("vmm.stderr");
        let vsock_uds = dir.path().join("vsock.sock");
        let mut cmd = Command::new(vmm_bin());
        cmd.args(&args)
            .arg("--console")
            .arg(format!("file:{}", console.display()))
            .arg("--vsock")
            .arg(format!("cid=3,uds={}", vsock_uds.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?);
        // Unless told otherwise, the VMM says why any vsock connection was reset (debug
        // lines, one per reset), so a failing device test carries the reason.
        if let Some(log) = log {
            cmd.env("HUSK_LOG", log);
        } else if std::env::var_os("HUSK_LOG").is_none() {
            cmd.env(
                "HUSK_LOG",
                "warn,husk_vmm::devices::virtio::vsock=debug,husk_vmm::devices::virtio::fs=info,\
                 husk_vmm::vcpu=info,husk_vmm::vm=info",
            );
        }
        let child = cmd.spawn().context("spawn husk-vmm")?;
        Ok(Self {
            child: Some(child),
            dir,
            console,
            vsock_uds,
            stderr_path,
            started: Instant::now(),
        })
    }

    /// Sends `signal` to husk-vmm.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid().context("husk-vmm already ended")?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The VMM's stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Console and stderr, for failure messages.
    pub fn explain(&self) -> String {
        format!(
            "--- console ---\n{}\n--- husk-vmm stderr ---\n{}",
            self.console_text(),
            self.stderr_text()
        )
    }

    fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.console_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "husk-vmm exited ({status}) before {needle:?}\n{}",
                    self.explain()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "watchdog: no {needle:?} after {timeout:?}\n{}",
                    self.explain()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens a stream to guest `port` through the hybrid vsock socket (`CONNECT`/`OK`),
    /// with read and write timeouts ([`io_timeout`]) so a stalled transfer fails the test.
    pub fn connect(&self, port: u32) -> Result<UnixStream> {
        let s = connect_vsock(&self.vsock_uds, port, boot_timeout())?;
        s.set_read_timeout(Some(io_timeout()))?;
        s.set_write_timeout(Some(io_timeout()))?;
        Ok(s)
    }

    /// Sends one probe command and returns its reply line (without the newline).
    pub fn command(&self, line: &str) -> Result<String> {
        let s = self.connect(husk_guest_probe::PROBE_PORT)?;
        (&s).write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply)?;
        let reply = reply.trim_end().to_owned();
        if !reply.starts_with("OK") {
            bail!(
                "probe command {line:?} answered {reply:?}\n{}",
                self.explain()
            );
        }
        Ok(reply)
    }

    /// Asks the probe to power off and waits for husk-vmm to exit; returns its exit code.
    pub fn power_off(mut self) -> Result<i32> {
        let _ = self.command("POWEROFF");
        self.wait_exit(boot_timeout())
    }

    /// Waits for husk-vmm to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let start = Instant::now();
        let child = self.child.as_mut().context("already waited")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return status
                    .code()
                    .with_context(|| format!("husk-vmm killed by a signal: {status}"));
            }
            if start.elapsed() > timeout {
                bail!(
                    "watchdog: husk-vmm still running after {timeout:?}\n{}",
                    self.explain()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// husk-vmm's exit status if it has ended (reaping it), without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id());
            let _ = c.wait();
        }
        // HUSK_TEST_LOGS=DIR keeps each guest's console and VMM log for a post-mortem.
        if let Some(dir) = std::env::var_os("HUSK_TEST_LOGS") {
            let dir = PathBuf::from(dir);
            let name = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::copy(&self.console, dir.join(format!("{name}.console")));
                let _ = std::fs::copy(&self.stderr_path, dir.join(format!("{name}.vmm")));
            }
        }
    }
}

/// How long one read or write on a guest connection may block (`HUSK_IO_TIMEOUT` seconds,
/// default 300): generous for emulation, but a stall fails instead of hanging.
pub fn io_timeout() -> Duration {
    let secs = std::env::var("HUSK_IO_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// The host side of a hybrid vsock connection: connect to the VMM's socket, send
/// `CONNECT <port>`, expect `OK <hostport>`. Retries while the guest does not listen yet
/// (the VMM closes the connection) until `timeout`.
pub fn connect_vsock(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let start = Instant::now();
    loop {
        match try_connect_vsock(uds, port) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > timeout => {
                return Err(e.context(format!("vsock port {port} via {}", uds.display())))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One attempt of [`connect_vsock`].
pub fn try_connect_vsock(uds: &Path, port: u32) -> Result<UnixStream> {
    Ok(husk_protocol::hybrid_vsock::connect(
        uds,
        port,
        Duration::from_secs(30),
    )?)
}

/// A running virtiofsd sharing `dir`, killed on drop.
pub struct Virtiofsd {
    child: Child,
    pub socket: PathBuf,
}

impl Virtiofsd {
    pub fn start(dir: &Path, socket: PathBuf) -> Self {
        let bin = virtiofsd_bin();
        let child = Command::new(&bin)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .args(["--sandbox=none", "--cache=never"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "virtiofsd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, socket }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// virtiofsd ([`crate::containerd::virtiofsd_bin`] finds it), or a panic saying how to
/// install it.
pub fn virtiofsd_bin() -> PathBuf {
    crate::containerd::virtiofsd_bin().unwrap_or_else(|| {
        panic!("virtiofsd is not installed: run scripts/install-virtiofsd.sh (make test does)")
    })
}
