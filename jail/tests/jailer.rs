//! husk-jailer for real (root, no VM needed): a static busybox stands in for husk-vmm and
//! reports what it sees from inside; the test reads the rest from /proc on the host.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_jail::{cgroup, Bind, Jail};

const BUSYBOX: &str = "/bin/busybox";
const UID: u32 = 1_499_999_000;
const KEPT_FD: i32 = 5;

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn jailer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_husk-jailer"))
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_jailed_process_sees_only_its_jail_as_an_unprivileged_uid_without_capabilities() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new(BUSYBOX).is_file() {
        panic!("needs root and {BUSYBOX} (busybox-static; scripts/install-deps.sh installs it)");
    }
    // SAFETY: prctl with integer arguments: this test process reaps the jailed one.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tmp = Dir(std::env::temp_dir().join(format!("husk-jailer-test-{}", std::process::id())));
    let pod = tmp.0.join("pod");
    let run = pod.join("vm");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(UID), Some(UID)).unwrap();
    let kernel = tmp.0.join("vmlinux");
    std::fs::write(&kernel, "kernel bytes\n").unwrap();
    let secret = tmp.0.join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();

    let root = Path::new(cgroup::ROOT);
    let rel = cgroup::relative_path(&format!("/husk-jailer-test/{}", std::process::id())).unwrap();
    let cgroups = cgroup::directories(root, &rel);
    assert!(
        !cgroups.is_empty(),
        "no cgroup hierarchy under {}",
        root.display()
    );
    cgroup::create(root, &cgroups).unwrap();

    // What the jailed process reports, then it waits for /run/go to be removed.
    // No PATH and no applet links in the jail: every tool is called as `/busybox X`.
    let script = "b=/busybox; $b ls -a / | $b tr '\\n' ' '; echo; $b id -u; $b id -g; \
                  $b ls -ln /dev/kvm; $b cat /kernel; \
                  (echo x > /probe) 2>/run/err && echo root-writable || echo root-read-only; \
                  (echo x > /kernel) 2>/run/err && echo kernel-writable || echo kernel-read-only; \
                  echo ok > /run/written; echo \"$SHIM_SECRET|$HUSK_LOG|\"; \
                  $b ls /proc 2>&1 | $b head -n1; echo $$; $b touch /run/ready; \
                  while [ -e /run/ready ]; do $b sleep 0.05; done";
    let jail = Jail {
        root: pod.join("jail"),
        exec: BUSYBOX.into(),
        ro: vec![Bind {
            src: kernel.clone(),
            name: "kernel".into(),
        }],
        rw: vec![Bind {
            src: run.clone(),
            name: "run".into(),
        }],
        uid: UID,
        gid: UID,
        cgroup_procs: cgroup::procs_files(&cgroups),
        keep_fds: vec![KEPT_FD],
        env: vec!["HUSK_LOG=debug".into()],
        nofile: 100,
        nproc: 20,
        args: vec!["sh".into(), "-c".into(), script.into()],
    };
    let out_path = tmp.0.join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let kept = std::fs::File::open(&secret).unwrap();
    let stray = std::fs::File::open(&secret).unwrap();
    let (kept_raw, stray_raw) = (
        std::os::fd::AsRawFd::as_raw_fd(&kept),
        std::os::fd::AsRawFd::as_raw_fd(&stray),
    );
    let mut cmd = jailer();
    cmd.args(jail.to_args())
        .env("SHIM_SECRET", "must not pass")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(out);
    // SAFETY: only dup2(2)/fcntl(2) between fork and exec, on fds open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: clear it then.
            if kept_raw == KEPT_FD {
                libc::fcntl(KEPT_FD, libc::F_SETFD, 0);
            } else if libc::dup2(kept_raw, KEPT_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // A stray fd without CLOEXEC: the jailer must close it.
            let flags = libc::fcntl(stray_raw, libc::F_GETFD);
            libc::fcntl(stray_raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = || std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(o.status.success(), "{:?} {report}\n{}", o.status, log());
    let pid: i32 = report.trim().parse().unwrap();

    wait_for("the jailed process's report", || run.join("ready").exists());
    let text = log();
    let lines: Vec<&str> = text.lines().collect();
    let mut listing: Vec<&str> = lines[0].split_whitespace().collect();
    listing.sort_unstable();
    assert_eq!(
        listing,
        [".", "..", "busybox", "dev", "kernel", "run"],
        "{text}"
    );
    assert_eq!(lines[1], UID.to_string(), "{text}");
    assert_eq!(lines[2], UID.to_string(), "{text}");
    let kvm: Vec<&str> = lines[3].split_whitespace().collect();
    assert!(
        kvm[0] == "crw-------" && kvm[2] == UID.to_string() && kvm[3] == UID.to_string(),
        "{text}"
    );
    assert_eq!(lines[4], "kernel bytes", "{text}");
    assert_eq!(lines[5], "root-read-only", "{text}");
    assert_eq!(lines[6], "kernel-read-only", "{text}");
    assert!(lines[7] == "|debug|", "only the given environment: {text}");
    assert!(
        lines[8].contains("No such file"),
        "no /proc in the jail: {text}"
    );
    assert_eq!(lines[9], "1", "PID 1 of its own PID namespace: {text}");
    assert_eq!(
        std::fs::read_to_string(run.join("written")).unwrap(),
        "ok\n"
    );

    // From the host: ids, capabilities, no_new_privs, namespaces, fds, rlimits, cgroup.
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{UID}\t{UID}\t{UID}\t{UID}")
    );
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{kind} namespace"
        );
    }
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, KEPT_FD], "only stdio and the kept fd");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(limit("Max open files").contains("100 100"), "{limits}");
    assert!(limit("Max processes").contains("20 20"), "{limits}");
    assert!(limit("Max core file size").contains("0 0"), "{limits}");
    let procs = std::fs::read_to_string(cgroup::procs_files(&cgroups)[0].clone()).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} in {}: {procs}",
        cgroups[0].display()
    );

    // Let it end; the cgroup is then empty and goes.
    std::fs::remove_file(run.join("ready")).unwrap();
    let mut status = 0;
    // SAFETY: waitpid on a process this test reaps as its subreaper.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status}"
    );
    cgroup::remove(&cgroups).unwrap();
    let _ = std::fs::remove_dir(cgroups[0].parent().unwrap());
}

#[test]
fn a_dynamic_binary_or_a_root_uid_is_refused_before_anything_runs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root");
    }
    let tmp = Dir(std::env::temp_dir().join(format!("husk-jailer-refuse-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).unwrap();
    let base = Jail {
        root: tmp.0.join("jail"),
        exec: "/bin/sh".into(),
        ro: vec![],
        rw: vec![],
        uid: UID,
        gid: UID,
        cgroup_procs: vec![],
        keep_fds: vec![],
        env: vec![],
        nofile: 100,
        nproc: 20,
        args: vec![],
    };
    let o = jailer().args(base.to_args()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("/bin/sh is dynamically linked"), "{err}");
    assert!(o.stdout.is_empty());
    assert!(
        !tmp.0.join("jail").exists(),
        "nothing made before the checks"
    );

    let mut args = base.to_args();
    let at = args.iter().position(|a| a == "--uid").unwrap();
    args[at + 1] = "0".into();
    let o = jailer().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("never runs as root"), "{err}");

    let missing = Jail {
        exec: BUSYBOX.into(),
        ro: vec![Bind {
            src: "/nonexistent/vmlinux".into(),
            name: "kernel".into(),
        }],
        ..base
    };
    let o = jailer().args(missing.to_args()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot stat /nonexistent/vmlinux: No such file or directory"),
        "{err}"
    );
}
