//! The runtimes the report compares and how a workload runs under each through one
//! private containerd (`ctr run`): runc (`io.containerd.runc.v2`), crun (the same shim
//! with `--runc-binary` pointing at a wrapper, see [`crun_wrapper`]) and husk
//! (`io.containerd.husk.v2`). A failed or hung `ctr` is explained (the guest console from
//! its first oops, the VMM's and containerd's last lines), cleaned up and left out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, BUSYBOX_IMAGE, RUNTIME};
use crate::host::processes_mentioning;
use crate::Outcome;

/// containerd's runc shim, for runc and crun.
pub const RUNC_SHIM: &str = "io.containerd.runc.v2";

/// One runtime of the comparison, as `ctr run` selects it.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The name in tables: `runc`, `crun`, `husk`, `husk-nojail`.
    pub name: String,
    /// `ctr run --runtime`.
    pub shim: &'static str,
    /// `ctr run --runc-binary` (crun's wrapper).
    pub runc_binary: Option<PathBuf>,
    /// `ctr run --runtime-config-path` (husk with another husk.toml).
    pub config_path: Option<PathBuf>,
}

impl Runtime {
    pub fn runc() -> Self {
        Self {
            name: "runc".into(),
            shim: RUNC_SHIM,
            runc_binary: None,
            config_path: None,
        }
    }

    pub fn husk() -> Self {
        Self {
            name: "husk".into(),
            shim: RUNTIME,
            runc_binary: None,
            config_path: None,
        }
    }

    pub fn is_husk(&self) -> bool {
        self.shim == RUNTIME
    }

    /// The `ctr run` flags that select this runtime.
    pub fn flags(&self) -> Vec<String> {
        let mut a = vec!["--runtime".to_owned(), self.shim.to_owned()];
        if let Some(b) = &self.runc_binary {
            a.extend(["--runc-binary".into(), b.display().to_string()]);
        }
        if let Some(c) = &self.config_path {
            a.extend(["--runtime-config-path".into(), c.display().to_string()]);
        }
        a
    }
}

/// The wrapper crun runs through: crun 1.8 refuses a hybrid cgroup layout ("cgroups in
/// hybrid mode not supported"), so where cgroup v2's `unified` mount sits beside the v1
/// hierarchies the wrapper unmounts it in a private mount namespace first (DESIGN.md);
/// on a pure v1 or v2 host it runs crun as it is.
pub fn crun_wrapper(crun: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # crun 1.8 refuses hybrid cgroups: hide cgroup v2's unified mount from it.\n\
         if grep -q ' /sys/fs/cgroup/unified ' /proc/self/mountinfo; then\n\
         \x20 exec unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\"' {crun} \"$@\"\n\
         fi\n\
         exec {crun} \"$@\"\n",
        crun = crun.display()
    )
}

/// crun behind its wrapper (written into `dir`), or why it cannot run.
pub fn crun(dir: &Path) -> Result<Runtime, String> {
    let crun = ["/usr/bin/crun", "/usr/local/bin/crun"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("crun is not installed (apt-get install crun; scripts/install-deps.sh does)")?;
    let wrapper = dir.join("crun-wrapper");
    std::fs::write(&wrapper, crun_wrapper(&crun)).map_err(|e| format!("write the wrapper: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod the wrapper: {e}"))?;
    Ok(Runtime {
        name: "crun".into(),
        shim: RUNC_SHIM,
        runc_binary: Some(wrapper),
        config_path: None,
    })
}

/// Lines, indented, for failure reports.
pub fn indent(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("    | {l}\n")).collect()
}

/// The last `n` non-empty lines of `s`, indented.
pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    indent(&lines[lines.len().saturating_sub(n)..])
}

/// What a guest console shows about a failure: from the first kernel oops, warning or
/// panic (40 lines: the reason, RIP and call trace), else its last lines.
pub fn console_excerpt(console: &str) -> String {
    const MARKERS: [&str; 7] = [
        "BUG:",
        "Oops",
        "general protection fault",
        "Unable to handle",
        "WARNING:",
        "Kernel panic",
        "corruption",
    ];
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    match lines
        .iter()
        .position(|l| MARKERS.iter().any(|m| l.contains(m)))
    {
        Some(i) => indent(&lines[i..lines.len().min(i + 40)]),
        None => tail_lines(console, 15),
    }
}

/// The root cause of a failed `ctr`, at most 3000 bytes (not the 20 KB of containerd log
/// `ctr_timeout` attaches; [`pod_context`] adds what matters of it).
pub fn brief(e: &anyhow::Error) -> String {
    let s = e.root_cause().to_string();
    let s = s.trim();
    let mut end = s.len().min(3000);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A pod's guest console (its oops, if any), VMM log and containerd's last lines.
pub fn pod_context(c: &Containerd, id: &str) -> String {
    let d = c.pod_dir(id);
    let mut out = String::new();
    for (f, what) in [
        ("vm/console.log", "guest console"),
        ("console.log", "guest console"),
    ] {
        if let Ok(text) = std::fs::read_to_string(d.join(f)) {
            out.push_str(&format!(
                "  --- {id} {what} ---\n{}",
                console_excerpt(&text)
            ));
        }
    }
    if let Ok(text) = std::fs::read_to_string(d.join("vmm.log")) {
        out.push_str(&format!(
            "  --- {id} vmm.log ---\n{}",
            tail_lines(&text, 10)
        ));
    }
    out.push_str(&format!(
        "  --- containerd log ---\n{}",
        tail_lines(&c.log(), 25)
    ));
    out
}

/// Sends SIGKILL to a pod's recorded processes (the last resort after a hung teardown).
fn kill_pod(c: &Containerd, id: &str) {
    for which in ["vmm", "virtiofsd", "shim"] {
        if let Some(pid) = c.pod_pid(id, which) {
            // SAFETY: kill(2) takes plain integers; a stale pid at worst fails with ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes whatever a failed or hung run left (task, container, a stuck pod), so the
/// next runs start from a clean containerd. Returns what stays behind (empty: clean).
pub fn clean_up(c: &Containerd, id: &str) -> String {
    let t = Duration::from_secs(60);
    let _ = c.ctr_timeout(&["task", "kill", "-s", "SIGKILL", id], t);
    let _ = c.ctr_timeout(&["task", "rm", "-f", id], t);
    let _ = c.ctr_timeout(&["container", "rm", id], t);
    let mut left = c.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        kill_pod(c, id);
        let _ = c.ctr_timeout(&["task", "rm", "-f", id], t);
        let _ = c.ctr_timeout(&["container", "rm", id], t);
        left = c.wait_clean(Duration::from_secs(30));
    }
    left
}

/// `ctr run` of the test image under `rt`: `--rm` (waits for the exit) or `-d`, with
/// `extra` flags (mounts, namespaces) before the image. Ok is the wall time of ctr and
/// its output (exit 0); Err explains the failure, after cleaning up.
pub fn run(
    c: &Containerd,
    rt: &Runtime,
    id: &str,
    detach: bool,
    extra: &[String],
    args: &[&str],
    timeout: Duration,
) -> Result<(Duration, Outcome), String> {
    let mut a: Vec<String> = vec!["run".into(), if detach { "-d" } else { "--rm" }.into()];
    a.extend(rt.flags());
    a.extend(extra.iter().cloned());
    a.extend([BUSYBOX_IMAGE.to_owned(), id.to_owned()]);
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let start = Instant::now();
    let err = match c.ctr_timeout(&a, timeout) {
        Ok(o) if o.code() == Some(0) => {
            let took = start.elapsed();
            if !detach {
                // Let the previous pod's teardown finish before the next run starts.
                let left = c.wait_clean(Duration::from_secs(30));
                if !left.is_empty() {
                    eprintln!(
                        "report: note: {id} still left after 30 s:\n{}",
                        tail_lines(&left, 10)
                    );
                }
            }
            return Ok((took, o));
        }
        Ok(o) => format!(
            "ctr exited with {} after {:.1} s; stdout: {}; stderr: {}",
            o.status,
            o.elapsed.as_secs_f64(),
            o.stdout.trim(),
            o.stderr.trim()
        ),
        Err(e) => brief(&e),
    };
    let context = pod_context(c, id);
    eprintln!("report: {} {id} failed: {err}\n{context}", rt.name);
    let left = clean_up(c, id);
    if !left.is_empty() {
        eprintln!(
            "report: left behind after cleaning up {id}:\n{}",
            tail_lines(&left, 20)
        );
    }
    Err(format!("{} {id}: {err}", rt.name))
}

/// Waits until `ctr task ls` shows `id` in state `want`.
pub fn wait_status(c: &Containerd, id: &str, want: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let s = c.task_status(id);
        if s.as_deref() == Some(want) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "task {id}: status {s:?} after {timeout:?}, want {want}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills and removes a detached task and its container; Err says which step failed.
pub fn remove(c: &Containerd, id: &str) -> Result<(), String> {
    let t = Duration::from_secs(120);
    let step = |args: &[&str]| -> Result<(), String> {
        match c.ctr_timeout(args, t) {
            Ok(o) if o.code() == Some(0) => Ok(()),
            Ok(o) => Err(format!("ctr {}: {}", args.join(" "), o.stderr.trim())),
            Err(e) => Err(format!("ctr {}: {}", args.join(" "), brief(&e))),
        }
    };
    step(&["task", "kill", "-s", "SIGKILL", id])?;
    wait_status(c, id, "STOPPED", Duration::from_secs(120))?;
    step(&["task", "rm", id])?;
    step(&["container", "rm", id])
}

/// `Key:  N kB` lines of a smaps-style file, in KiB.
pub fn smaps_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The name husk-vmm gives the memfd of a booted VM's guest RAM (vmm/src/guest_ram.rs).
pub const GUEST_RAM_MEMFD: &str = "/memfd:husk-guest-ram";
/// A snapshot's memory file (vmm/src/snapshot/files.rs), which a restored VM maps
/// privately as its guest RAM.
pub const SNAPSHOT_MEMORY_FILE: &str = "vm.mem";

/// Whether an smaps path is guest RAM: the memfd, or a snapshot's memory file (as the
/// jail or the host names it).
fn is_guest_ram(path: &str) -> bool {
    path.starts_with(GUEST_RAM_MEMFD)
        || path.rsplit('/').next() == Some(SNAPSHOT_MEMORY_FILE) && path.contains('/')
}

/// Sums an smaps field (`Rss`, `Anonymous`, ...; KiB) over the guest RAM mappings (see
/// [`is_guest_ram`]); `None` if there is none. Rss is the guest RAM touched: for a
/// restored VM it includes the template's pages it only read (page cache shared with
/// every pod restored from it, counted in Pss by their share).
pub fn guest_ram_field(smaps: &str, key: &str) -> Option<u64> {
    let (mut sum, mut found, mut in_ram) = (0, false, false);
    for l in smaps.lines() {
        let mut f = l.split_whitespace();
        let first = f.next().unwrap_or("");
        // A mapping's header: "start-end perms offset dev inode [path]".
        if first.contains('-') && !first.ends_with(':') {
            in_ram = is_guest_ram(f.nth(4).unwrap_or(""));
            found |= in_ram;
        } else if in_ram {
            sum += smaps_field(l, key).unwrap_or(0);
        }
    }
    found.then_some(sum)
}

/// Host memory of one process: (PSS, USS) in KiB from /proc/PID/smaps_rollup (USS is
/// its private pages, clean and dirty).
pub fn pss_uss(pid: u32) -> Option<(u64, u64)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let pss = smaps_field(&t, "Pss")?;
    let uss = smaps_field(&t, "Private_Clean")? + smaps_field(&t, "Private_Dirty")?;
    Some((pss, uss))
}

/// The processes a runtime added for this containerd: every process whose command line
/// names its dir (the shims, husk-vmm, virtiofsd), except containerd itself, and all
/// their descendants (the containers' processes under runc and crun): (pid, comm).
pub fn runtime_processes(c: &Containerd, containerd_pid: Option<u32>) -> Vec<(u32, String)> {
    let mut pids: Vec<u32> = processes_mentioning(c.dir.path())
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| Some(*p) != containerd_pid)
        .collect();
    let mut i = 0;
    while i < pids.len() {
        for ch in crate::host::child_pids(pids[i] as i32) {
            let ch = ch as u32;
            if !pids.contains(&ch) {
                pids.push(ch);
            }
        }
        i += 1;
    }
    pids.into_iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            (p, comm.trim().to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 2049                       /memfd:husk-guest-ram (deleted)
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               37376 kB
Pss:               36000 kB
VmFlags: rd wr sh mr mw me ms sd
7f0010000000-7f0010021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
";

    #[test]
    fn guest_ram_is_the_memfd_or_the_snapshot_mapping_only() {
        assert_eq!(guest_ram_field(SMAPS, "Size"), Some(262144));
        assert_eq!(guest_ram_field(SMAPS, "Rss"), Some(37376));
        let restored = "\
7f0000000000-7f0010000000 rw-p 00001000 fd:01 1234                       /snapshot/vm.mem
Size:             262144 kB
Rss:               20480 kB
7f0020000000-7f0020001000 rw-s 00000000 00:01 2050                       /memfd:husk-fs-relay (deleted)
Size:               4352 kB
Rss:                  64 kB
7f0030000000-7f0030001000 r--p 00000000 fd:01 99                         /opt/vm.mem.bak
Rss:                   4 kB
";
        assert_eq!(guest_ram_field(restored, "Size"), Some(262144));
        assert_eq!(guest_ram_field(restored, "Rss"), Some(20480));
        let anon = restored.replace("Rss:               20480 kB", "Anonymous:          8192 kB");
        assert_eq!(guest_ram_field(&anon, "Anonymous"), Some(8192));
        // A guest RAM mapping without the field sums to 0; no guest RAM at all is None.
        assert_eq!(guest_ram_field(SMAPS, "Anonymous"), Some(0));
        assert_eq!(
            guest_ram_field(
                "55d0-55e0 r-xp 00000000 08:01 12 /bin/x\nRss: 4 kB\n",
                "Rss"
            ),
            None
        );
    }

    #[test]
    fn rollup_fields_match_whole_keys() {
        let t = "Rss:  5734 kB\nPss:  4505 kB\nPss_Anon:  4000 kB\n";
        assert_eq!(smaps_field(t, "Pss"), Some(4505));
        assert_eq!(smaps_field(t, "Rss"), Some(5734));
        assert_eq!(smaps_field("Pss_Anon:  4000 kB\n", "Pss"), None);
        // This process has a rollup with private pages.
        let (pss, uss) = pss_uss(std::process::id()).unwrap();
        assert!(pss > 0 && uss > 0 && uss <= pss + 1, "{pss} {uss}");
    }

    #[test]
    fn console_excerpt_starts_at_the_oops() {
        let c = "boot line\r\nmore\r\ngeneral protection fault, probably for non-canonical \
                 address 0xdead000000000125\r\nRIP: 0010:0xffffffff8110350c\r\n";
        let e = console_excerpt(c);
        assert!(e.starts_with("    | general protection fault"), "{e}");
        assert!(e.contains("RIP"), "{e}");
        assert!(!e.contains("boot line"), "{e}");
        assert!(console_excerpt("a\nb\n").contains("| b"));
    }

    #[test]
    fn runtime_flags() {
        assert_eq!(Runtime::runc().flags(), ["--runtime", RUNC_SHIM]);
        let d = std::env::temp_dir().join(format!("husk-crun-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        match crun(&d) {
            Ok(rt) => {
                let f = rt.flags();
                assert_eq!(f[2], "--runc-binary");
                let w = std::fs::read_to_string(&f[3]).unwrap();
                assert!(
                    w.contains("/sys/fs/cgroup/unified") && w.contains("exec /usr"),
                    "{w}"
                );
            }
            Err(why) => assert!(why.contains("not installed"), "{why}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
