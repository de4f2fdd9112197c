//! A private containerd for the shim's tests and the demo: Debian's containerd with its
//! own config, root, state and sockets under a scratch dir, `io.containerd.husk.v2`
//! reachable through PATH, a husk.toml pointing at this workspace's binaries and guest
//! image, and a busybox OCI image built here from Debian's busybox-static (no registry).
//! Dropping it stops containerd and whatever it left, and removes the dir.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::TempDir;
use crate::host::{mounts_under, processes_mentioning, threads, walk};
use crate::{
    guest_initramfs, guest_kernel, jailer_bin, kill_group, run_with_watchdog, vmm_bin,
    workspace_root, Outcome,
};

/// The image name the busybox archive is imported as.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/husk-busybox:latest";
/// The runtime name.
pub const RUNTIME: &str = "io.containerd.husk.v2";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "husk-test";

/// The shim binary (`HUSK_SHIM`, default the static release build `make vmm` makes,
/// `target/x86_64-unknown-linux-musl/release/containerd-shim-husk-v2`).
pub fn shim_bin() -> PathBuf {
    crate::path_from_env(
        "HUSK_SHIM",
        &format!("{}/containerd-shim-husk-v2", crate::RELEASE_DIR),
    )
}

/// virtiofsd, where scripts/install-virtiofsd.sh or a package put it.
pub fn virtiofsd_bin() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("HUSK_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        c.push(PathBuf::from(home).join(".cargo/bin/virtiofsd"));
    }
    c.extend(
        [
            "/root/.cargo/bin/virtiofsd",
            "/usr/libexec/virtiofsd",
            "/usr/local/bin/virtiofsd",
        ]
        .map(PathBuf::from),
    );
    c.into_iter().find(|p| p.is_file())
}

pub(crate) fn run(cmd: &mut Command) -> Result<Outcome> {
    let o = run_with_watchdog(cmd, Duration::from_secs(120))?;
    if o.code() != Some(0) {
        bail!("{cmd:?} failed ({}):\n{}{}", o.status, o.stdout, o.stderr);
    }
    Ok(o)
}

/// Builds an OCI image archive of a busybox root: /bin/busybox from the host (Debian's
/// busybox-static) with a link per applet, /etc/passwd and /etc/group for root, and the
/// empty dirs a container expects. Returns the archive's path.
pub fn build_busybox_archive(dir: &Path) -> Result<PathBuf> {
    build_busybox_archive_with(dir, &[])
}

/// As [`build_busybox_archive`], with more files: (host file, path in the image).
pub fn build_busybox_archive_with(dir: &Path, extra: &[(&Path, &str)]) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let root = dir.join("busybox-root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "run",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = run(Command::new(busybox).arg("--list"))?;
    for applet in list
        .stdout
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        if !applet.contains('/') {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    for (from, to) in extra {
        let to = root.join(to.trim_start_matches('/'));
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy(from, &to)
            .with_context(|| format!("copy {} into the image", from.display()))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"});
    let archive =
        crate::oci_image::build_archive(dir, &root, BUSYBOX_IMAGE, config, "busybox-oci.tar")?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(archive)
}

/// The pause image the tests' CRI plugin uses as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/husk-pause:3.9";

/// husk-pause, built static (`make image`; `HUSK_PAUSE` overrides).
pub fn pause_bin() -> PathBuf {
    crate::path_from_env(
        "HUSK_PAUSE",
        "target/x86_64-unknown-linux-musl/release/husk-pause",
    )
}

/// Builds the pause image as an OCI archive, made like Kubernetes' own: one
/// static binary, `Entrypoint` /pause, user 65535, and no `Env` at all.
pub fn build_pause_archive(dir: &Path) -> Result<PathBuf> {
    let pause = pause_bin();
    anyhow::ensure!(
        pause.is_file(),
        "{} is missing: run `make image`",
        pause.display()
    );
    let root = dir.join("pause-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    std::fs::copy(&pause, root.join("pause"))?;
    let config = serde_json::json!({
        "Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/",
    });
    let archive =
        crate::oci_image::build_archive(dir, &root, PAUSE_IMAGE, config, "pause-oci.tar")?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(archive)
}

/// The shim's templates, in the containerd's dir.
const TEMPLATES: &str = "templates";

/// What the shim's config file says; the defaults point at this workspace.
pub struct HuskToml {
    pub kernel: PathBuf,
    pub extra: String,
}

impl Default for HuskToml {
    /// The test defaults, plus the lines of `HUSK_TEST_SHIM_CONFIG` if set (for
    /// experiments such as `vcpus = 2` without editing the tests).
    fn default() -> Self {
        Self {
            kernel: guest_kernel(),
            extra: std::env::var("HUSK_TEST_SHIM_CONFIG").unwrap_or_default(),
        }
    }
}

/// A running private containerd.
pub struct Containerd {
    child: Option<Child>,
    /// The containerd namespace `ctr` works in (CRI's is `k8s.io`).
    pub namespace: &'static str,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub husk_state: PathBuf,
    pub husk_config: PathBuf,
    /// Set when this containerd goes: ends the watchdog.
    done: Arc<AtomicBool>,
}

impl Containerd {
    /// Starts containerd with the husk runtime; `husk` is the default husk.toml.
    pub fn start(husk: &HuskToml) -> Result<Self> {
        Self::start_with(husk, None)
    }

    /// Starts containerd with its CRI plugin: `deploy/containerd-husk.toml` as users
    /// merge it (its `ConfigPath` pointed at this containerd's husk.toml), our pause
    /// image as `sandbox_image`, `restrict_oom_score_adj` (our machines lack
    /// CAP_SYS_RESOURCE), and the CNI network configs in `cni_conf_dir`. `ctr` then
    /// works in CRI's namespace, `k8s.io`; [`Containerd::cri_socket`] is the endpoint.
    pub fn start_cri(husk: &HuskToml, cni_conf_dir: &Path) -> Result<Self> {
        Self::start_cri_with(husk, cni_conf_dir, "")
    }

    /// As [`Containerd::start_cri`], with `extra` appended to containerd's config (more
    /// CRI runtime handlers, e.g. the report's `crun`).
    pub fn start_cri_with(husk: &HuskToml, cni_conf_dir: &Path, extra: &str) -> Result<Self> {
        let snippet = std::fs::read_to_string(workspace_root().join("deploy/containerd-husk.toml"))
            .context("read deploy/containerd-husk.toml")?;
        let snippet = format!("{snippet}\n{extra}");
        Self::start_with(husk, Some((snippet, cni_conf_dir.to_owned())))
    }

    /// The CRI plugin's gRPC socket (containerd's own).
    pub fn cri_socket(&self) -> &Path {
        &self.socket
    }

    fn start_with(husk: &HuskToml, cri: Option<(String, PathBuf)>) -> Result<Self> {
        for f in [shim_bin(), vmm_bin(), jailer_bin()] {
            anyhow::ensure!(f.is_file(), "{} is missing: run `make vmm`", f.display());
        }
        let containerd =
            which("containerd").context("containerd is not installed: scripts/install-deps.sh")?;
        which("ctr").context("ctr is not installed")?;
        let virtiofsd =
            virtiofsd_bin().context("virtiofsd is not installed: scripts/install-virtiofsd.sh")?;
        // Short: the pods' sockets live below it (see TempDir::short).
        let dir = TempDir::short("hc")?;
        let d = dir.path().to_owned();
        refuse_overlayfs(&d)?;
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin)?;
        symlink(shim_bin(), bin.join("containerd-shim-husk-v2"))?;
        let socket = d.join("c.sock");
        let husk_state = d.join("hs");
        let husk_config = d.join("husk.toml");
        std::fs::write(
            &husk_config,
            format!(
                "kernel = {:?}\ninitramfs = {:?}\nvmm = {:?}\njailer = {:?}\nvirtiofsd = {:?}\nstate_dir = {:?}\n\
                 template_dir = {:?}\nboot_timeout_secs = {}\nlog_level = \"debug\"\n{}\n",
                husk.kernel,
                guest_initramfs(),
                vmm_bin(),
                jailer_bin(),
                virtiofsd,
                husk_state,
                d.join(TEMPLATES),
                crate::boot_timeout().as_secs(),
                husk.extra
            ),
        )?;
        let (plugins, cri_config, namespace) = match &cri {
            None => (
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#.to_owned(),
                String::new(),
                NAMESPACE,
            ),
            Some((snippet, cni_conf_dir)) => {
                const SHIPPED: &str = r#"ConfigPath = "/etc/husk/husk.toml""#;
                anyhow::ensure!(
                    snippet.contains(SHIPPED),
                    "deploy/containerd-husk.toml no longer says {SHIPPED}"
                );
                let snippet = snippet.replace(SHIPPED, &format!("ConfigPath = {husk_config:?}"));
                (
                    String::new(),
                    format!(
                        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{conf_dir}"
{snippet}"#,
                        cni_bin = crate::cni::CNI_PATH,
                        conf_dir = cni_conf_dir.display(),
                    ),
                    "k8s.io",
                )
            }
        };
        let config = d.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
{plugins}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
{cri_config}"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
            ),
        )?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin.display()
        );
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HUSK_CONFIG", &husk_config)
            // husk-vmm (started by the shim, which inherits this) logs why any vsock
            // connection was reset, as in the device tests.
            .env(
                "HUSK_LOG",
                std::env::var("HUSK_LOG")
                    .unwrap_or_else(|_| "warn,husk_vmm::devices::virtio::vsock=debug".into()),
            )
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn containerd")?;
        let mut c = Self {
            child: Some(child),
            namespace,
            dir,
            socket,
            husk_state,
            husk_config,
            done: Arc::new(AtomicBool::new(false)),
        };
        c.spawn_watchdog();
        let start = Instant::now();
        loop {
            if c.socket.exists()
                && c.ctr_timeout_quiet(&["version"], Duration::from_secs(30))
                    .map(|o| o.code() == Some(0))
                    .unwrap_or(false)
            {
                break;
            }
            if let Some(s) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                bail!("containerd exited ({s}):\n{}", c.log());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("containerd did not come up:\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// containerd's own pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd's log (the shims' logs land here too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd, in the test namespace, under a watchdog.
    pub fn ctr(&self, args: &[&str]) -> Result<Outcome> {
        self.ctr_timeout(args, crate::boot_timeout() + Duration::from_secs(120))
    }

    /// As [`Containerd::ctr`] with its own watchdog; a timeout's error carries the
    /// containerd log (with the shims' lines), since the test host's files are gone after.
    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Result<Outcome> {
        let start = Instant::now();
        let r = self.ctr_timeout_quiet(args, timeout);
        // Straight to stderr, past the test harness's capture: each ctr call shows in a
        // long test's live output (and the integration runner's silence watchdog sees it).
        let _ = writeln!(
            std::io::stderr(),
            "ctr {}: {} after {:.1?}",
            args.join(" "),
            match &r {
                Ok(o) => format!("exit {:?}", o.code()),
                Err(_) => "failed".into(),
            },
            start.elapsed()
        );
        r
    }

    fn ctr_timeout_quiet(&self, args: &[&str], timeout: Duration) -> Result<Outcome> {
        run_with_watchdog(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", self.namespace])
                .args(args),
            timeout,
        )
        .map_err(|e| {
            let pods = self.pod_report();
            let log = self.log();
            let tail = tail_chars(&log, 20_000);
            e.context(format!(
                "ctr {args:?}; containerd log tail:\n{tail}\n--- pods still running ---\n{pods}"
            ))
        })
    }

    /// For a post-mortem of a stuck task: asks every husk-vmm of this containerd to log
    /// its vsock state (SIGUSR1), then returns the end of each live pod's guest console
    /// and VMM log (the test host's files are gone after the run).
    pub fn pod_report(&self) -> String {
        pod_report(self.dir.path(), &self.husk_state)
    }

    /// A test that hangs says nothing until the runner gives up on it (its output is
    /// captured until it ends). So after `HUSK_TEST_WATCHDOG` seconds (default 200,
    /// under the integration runner's 300 s idle limit) and every 120 s after, this
    /// writes what is going on to the process's real stderr, past the capture: the
    /// processes, containerd's log tail and the pods' consoles and VMM state dumps.
    fn spawn_watchdog(&self) {
        let first = std::env::var("HUSK_TEST_WATCHDOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200u64);
        let (done, dir, state) = (
            Arc::clone(&self.done),
            self.dir.path().to_owned(),
            self.husk_state.clone(),
        );
        let start = Instant::now();
        let _ = std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || {
                let mut next = Duration::from_secs(first);
                loop {
                    while start.elapsed() < next {
                        if done.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    let ps = Command::new("ps")
                        .args(["-eo", "pid,ppid,stat,etimes,wchan:24,args"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    let log =
                        std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
                    let text = format!(
                        "\n=== test watchdog: still running after {:?} ===\n--- processes ---\n{ps}\
                         --- containerd log tail ---\n{}\n{}=== end of watchdog report ===\n",
                        start.elapsed(),
                        tail_chars(&log, 8_000),
                        pod_report(&dir, &state)
                    );
                    // Straight to fd 2: eprintln! would be captured with the test's output.
                    let _ = std::io::stderr().write_all(text.as_bytes());
                    next += Duration::from_secs(120);
                }
            });
    }

    /// Builds and imports the busybox image.
    pub fn import_busybox(&self) -> Result<()> {
        self.import_busybox_with(&[])
    }

    /// Builds and imports the busybox image with more files (host file, path in the image).
    pub fn import_busybox_with(&self, extra: &[(&Path, &str)]) -> Result<()> {
        let archive = build_busybox_archive_with(self.dir.path(), extra)?;
        let o = self.ctr(&["images", "import", archive.to_str().context("path")?])?;
        anyhow::ensure!(
            o.code() == Some(0),
            "ctr images import failed:\n{}{}",
            o.stdout,
            o.stderr
        );
        let l = self.ctr(&["images", "ls", "-q"])?;
        anyhow::ensure!(
            l.stdout.contains(BUSYBOX_IMAGE),
            "image not listed after import:\n{}",
            l.stdout
        );
        Ok(())
    }

    /// `ctr run --rm --runtime io.containerd.husk.v2 <image> <id> <args...>`.
    pub fn run_rm(&self, id: &str, args: &[&str]) -> Result<Outcome> {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, BUSYBOX_IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run` (`--rm`, or `-d` if `detach`) of the busybox image under `runtime`,
    /// joining the network namespace at `netns` (`--with-ns network:PATH`, as CRI's pods).
    pub fn run_in_netns(
        &self,
        runtime: &str,
        netns: &Path,
        id: &str,
        detach: bool,
        args: &[&str],
    ) -> Result<Outcome> {
        let ns = format!("network:{}", netns.display());
        let mut a = vec![
            "run",
            if detach { "-d" } else { "--rm" },
            "--runtime",
            runtime,
        ];
        a.extend(["--with-ns", &ns, BUSYBOX_IMAGE, id]);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Processes whose command line mentions this containerd's dir (shims, VMMs,
    /// virtiofsd), except containerd itself.
    pub fn leftover_processes(&self) -> Vec<String> {
        let me = self.child.as_ref().map(Child::id);
        processes_mentioning(self.dir.path())
            .into_iter()
            .filter(|(pid, _)| Some(*pid) != me)
            .map(|(pid, cmd)| {
                format!(
                    "{pid} {cmd}\n  threads (name: where blocked): {}",
                    threads(pid)
                )
            })
            .collect()
    }

    /// Mount points under the husk state dir.
    pub fn leftover_mounts(&self) -> Vec<String> {
        mounts_under(&self.husk_state)
    }

    /// Entries left in the husk state dir (recursively, files and dirs).
    pub fn leftover_state(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.husk_state, &mut out);
        out
    }

    /// Everything left behind, for assertions: empty means clean.
    pub fn leftovers(&self) -> String {
        let mut s = String::new();
        for (what, l) in [
            ("process", self.leftover_processes()),
            ("mount", self.leftover_mounts()),
            ("state", self.leftover_state()),
        ] {
            for x in l {
                s.push_str(&format!("{what}: {x}\n"));
            }
        }
        s
    }

    /// Waits until nothing is left behind, up to `timeout`; returns what is left.
    pub fn wait_clean(&self, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let l = self.leftovers();
            if l.is_empty() || start.elapsed() > timeout {
                return l;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The shim's template dir (`template_dir`): this containerd's own, outside the husk
    /// state dir, which must be empty once no pod runs while templates stay.
    pub fn template_dir(&self) -> PathBuf {
        self.dir.path().join(TEMPLATES)
    }

    /// The pod dir of a container run in the test namespace (a pod of one).
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.husk_state.join(NAMESPACE).join(id)
    }

    /// The host cgroup the shim made for a pod run in the test namespace (ctr's
    /// cgroupsPath is `/<namespace>/<id>`): the v2 directory, or v1's first hierarchy.
    pub fn pod_cgroup(&self, id: &str) -> PathBuf {
        use husk_jail::cgroup;
        let root = Path::new(cgroup::ROOT);
        let rel = cgroup::relative_path(&format!("/{NAMESPACE}/{id}")).expect("a plain path");
        cgroup::directories(root, &rel)
            .into_iter()
            .next()
            .unwrap_or_else(|| root.join(rel))
    }

    /// A pid recorded in a pod's `pids.json` (`shim`, `vmm`, `virtiofsd`; the shim's
    /// `persist::PodPids`).
    pub fn pod_pid(&self, id: &str, which: &str) -> Option<i32> {
        let text = std::fs::read(self.pod_dir(id).join("pids.json")).ok()?;
        let pids: serde_json::Value = serde_json::from_slice(&text).ok()?;
        pids.get(which)?
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// A pod's console and VMM log, for failure messages.
    pub fn pod_logs(&self, id: &str) -> String {
        let d = self.pod_dir(id);
        let r = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        format!(
            "--- console ---\n{}\n--- vmm ---\n{}",
            r("vm/console.log"),
            r("vmm.log")
        )
    }

    /// How the shim started pod `id`, from its log lines: `Some(true)` restored from a
    /// template, `Some(false)` booted (cold, with the reason in the log), `None` if the
    /// log says neither or both.
    pub fn pod_restored(&self, id: &str) -> Option<bool> {
        let log = self.log();
        let agent = format!("pod {id}: agent");
        let ready = |how: &str| log.lines().any(|l| l.contains(&agent) && l.contains(how));
        let restoring = log.contains(&format!("pod {id}: restoring from template"));
        match (restoring && ready("(restored)"), ready("(booted)")) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }

    /// Status of a task as `ctr task ls` shows it (RUNNING, STOPPED, ...).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let o = self.ctr(&["task", "ls"]).ok()?;
        o.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(dir) = std::env::var_os("HUSK_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let name = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = std::fs::write(
                PathBuf::from(dir).join(format!("{name}.containerd.log")),
                self.log(),
            );
        }
        if let Some(mut c) = self.child.take() {
            kill_group(c.id());
            let _ = c.wait();
        }
        for (pid, _) in processes_mentioning(self.dir.path()) {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        for m in mounts_under(self.dir.path()) {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// containerd's root (its overlay snapshots) and the shim's pod dirs cannot live on
/// overlayfs: an overlay's upper dir on an overlay fails with "invalid argument" at the
/// first `ctr run`. Say so, and what to do, before starting anything.
fn refuse_overlayfs(dir: &Path) -> Result<()> {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs the call fills, both outliving it.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    #[allow(clippy::useless_conversion)] // f_type is i64 on x86_64 glibc, not everywhere
    let fs_type = i64::from(st.f_type);
    if fs_type == OVERLAYFS_SUPER_MAGIC {
        bail!(
            "{} is on overlayfs, which cannot hold containerd's overlay snapshots (\"failed to mount ...: \
             invalid argument\"): set HUSK_TEST_TMP (or TMPDIR) to a directory on tmpfs or a disk \
             filesystem, e.g. HUSK_TEST_TMP=/run/husk-test",
            dir.display()
        );
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The consoles and VMM logs of the pods under `husk_state`, after asking each husk-vmm
/// of the containerd in `dir` for its state dump (SIGUSR1: every vCPU's registers).
fn pod_report(dir: &Path, husk_state: &Path) -> String {
    // A jailed VMM's command line names its pod dir (`--id`), the rest are jail paths.
    for (pid, cmd) in processes_mentioning(dir) {
        if cmd.contains("husk-vmm") {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGUSR1) };
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut files = Vec::new();
    walk(husk_state, &mut files);
    let mut out = String::new();
    for f in files {
        if f.ends_with("/console.log") || f.ends_with("/vmm.log") {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            out.push_str(&format!("--- {f} ---\n{}\n", tail_chars(&text, 12_000)));
        }
    }
    out
}

/// The last `n` bytes of `s` (from a char boundary).
fn tail_chars(s: &str, n: usize) -> &str {
    let from = (s.len().saturating_sub(n)..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[from..]
}
