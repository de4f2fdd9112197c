//! The jailer's command line, built by the shim and parsed by `husk-jailer`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

/// One host path bound into the jail's root under `name` (a plain file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub src: PathBuf,
    pub name: String,
}

/// Everything the jailer needs to start one VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// An empty directory on the host; the jail's tmpfs root is mounted on it (in the
    /// jail's own mount namespace only).
    pub root: PathBuf,
    /// The VMM binary (static: the jail holds no libraries), bound as `/<file name>`.
    pub exec: PathBuf,
    /// Read-only files in the jail (the kernel, the initramfs).
    pub ro: Vec<Bind>,
    /// Writable directories in the jail (the pod's `vm` dir: sockets and the console).
    pub rw: Vec<Bind>,
    /// The VMM's uid and gid; never 0.
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` files the jailer joins before it forks (the pod's cgroup, one per
    /// v1 hierarchy or the one v2 directory).
    pub cgroup_procs: Vec<PathBuf>,
    /// Fds (besides 0-2) the VMM inherits: the taps.
    pub keep_fds: Vec<i32>,
    /// The VMM's whole environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// RLIMIT_NOFILE and RLIMIT_NPROC of the VMM (NPROC counts the uid's threads).
    pub nofile: u64,
    pub nproc: u64,
    /// The VMM's arguments (after argv\[0\]).
    pub args: Vec<OsString>,
}

/// Defaults of the rlimits: Firecracker's jailer allows 2048 files; the threads of a VMM
/// are one per vCPU plus two, and each pod has a uid of its own.
pub const DEFAULT_NOFILE: u64 = 2048;
pub const DEFAULT_NPROC: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// clap's text: a usage error, or (`info`) the asked-for --help or --version.
    #[error("{text}")]
    Cli { text: String, info: bool },
    #[error("--{flag} {value:?}: {why}")]
    Invalid {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
}

#[derive(Parser, Debug)]
#[command(
    name = "husk-jailer",
    version = husk_version::VERSION,
    about = "Starts husk-vmm confined: new namespaces, a tmpfs root holding only what the VM needs, an unprivileged uid, no capabilities (SECURITY.md)"
)]
struct Cli {
    /// Empty host directory the jail's root is mounted on.
    #[arg(long)]
    root: PathBuf,
    /// The static VMM binary to run.
    #[arg(long)]
    exec: PathBuf,
    /// SRC=NAME: a host file, read-only as /NAME in the jail.
    #[arg(long)]
    ro: Vec<String>,
    /// SRC=NAME: a host directory, writable as /NAME in the jail.
    #[arg(long)]
    rw: Vec<String>,
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    /// A cgroup.procs file to join (repeatable).
    #[arg(long = "cgroup-procs")]
    cgroup_procs: Vec<PathBuf>,
    /// An inherited fd the VMM keeps (repeatable).
    #[arg(long = "keep-fd")]
    keep_fds: Vec<i32>,
    /// KEY=VALUE of the VMM's environment (repeatable; nothing else is passed).
    #[arg(long)]
    env: Vec<String>,
    #[arg(long, default_value_t = DEFAULT_NOFILE)]
    nofile: u64,
    #[arg(long, default_value_t = DEFAULT_NPROC)]
    nproc: u64,
    /// The VMM's arguments.
    #[arg(last = true)]
    args: Vec<OsString>,
}

fn bind(flag: &'static str, s: &str) -> Result<Bind, SpecError> {
    let invalid = |why| SpecError::Invalid {
        flag,
        value: s.to_owned(),
        why,
    };
    let (src, name) = s.rsplit_once('=').ok_or_else(|| invalid("not SRC=NAME"))?;
    check_name(name).map_err(invalid)?;
    if !Path::new(src).is_absolute() {
        return Err(invalid("SRC must be an absolute path"));
    }
    Ok(Bind {
        src: src.into(),
        name: name.to_owned(),
    })
}

/// A name in the jail's root: one plain component, not one the jail makes itself.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err("NAME must be a plain file name");
    }
    if name == "dev" {
        return Err("/dev is the jail's own");
    }
    Ok(())
}

impl Jail {
    /// The jailer's arguments (after argv\[0\]) for this jail.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, v: OsString| {
            a.push(flag.into());
            a.push(v);
        };
        push("--root", self.root.clone().into());
        push("--exec", self.exec.clone().into());
        for (flag, binds) in [("--ro", &self.ro), ("--rw", &self.rw)] {
            for b in binds {
                let mut v = b.src.clone().into_os_string();
                v.push("=");
                v.push(&b.name);
                push(flag, v);
            }
        }
        push("--uid", self.uid.to_string().into());
        push("--gid", self.gid.to_string().into());
        for p in &self.cgroup_procs {
            push("--cgroup-procs", p.clone().into());
        }
        for fd in &self.keep_fds {
            push("--keep-fd", fd.to_string().into());
        }
        for e in &self.env {
            push("--env", e.into());
        }
        push("--nofile", self.nofile.to_string().into());
        push("--nproc", self.nproc.to_string().into());
        a.push("--".into());
        a.extend(self.args.iter().cloned());
        a
    }

    /// Parses and checks a jailer command line (`argv` includes argv\[0\]). `--help` and
    /// `--version` come back as [`SpecError::Cli`] with clap's text and `info` set.
    pub fn from_args<I, T>(argv: I) -> Result<Self, SpecError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let c = Cli::try_parse_from(argv).map_err(|e| SpecError::Cli {
            text: e.to_string(),
            info: matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ),
        })?;
        let invalid = |flag, value: String, why| SpecError::Invalid { flag, value, why };
        for (flag, p) in [("root", &c.root), ("exec", &c.exec)] {
            if !p.is_absolute() {
                return Err(invalid(
                    flag,
                    p.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        let exec_name = c
            .exec
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| invalid("exec", c.exec.display().to_string(), "no file name"))?;
        if c.uid == 0 || c.gid == 0 {
            return Err(invalid(
                "uid",
                format!("{}:{}", c.uid, c.gid),
                "the VMM never runs as root (uid or gid 0)",
            ));
        }
        if c.keep_fds.iter().any(|fd| *fd < 3) {
            return Err(invalid(
                "keep-fd",
                format!("{:?}", c.keep_fds),
                "0-2 are always kept",
            ));
        }
        if let Some(e) = c.env.iter().find(|e| !e.contains('=')) {
            return Err(invalid("env", e.clone(), "not KEY=VALUE"));
        }
        if c.nofile < 16 || c.nproc < 2 {
            return Err(invalid(
                "nofile",
                format!("{}/{}", c.nofile, c.nproc),
                "too small for any VMM",
            ));
        }
        let ro =
            c.ro.iter()
                .map(|s| bind("ro", s))
                .collect::<Result<Vec<_>, _>>()?;
        let rw =
            c.rw.iter()
                .map(|s| bind("rw", s))
                .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = ro.iter().chain(&rw).map(|b| b.name.as_str()).collect();
        names.push(exec_name);
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("ro", w[0].to_owned(), "two binds of one name"));
        }
        Ok(Self {
            root: c.root,
            exec: c.exec,
            ro,
            rw,
            uid: c.uid,
            gid: c.gid,
            cgroup_procs: c.cgroup_procs,
            keep_fds: c.keep_fds,
            env: c.env,
            nofile: c.nofile,
            nproc: c.nproc,
            args: c.args,
        })
    }

    /// The VMM's path inside the jail.
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(self.exec.file_name().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Jail {
        Jail {
            root: "/run/husk/default/p/jail".into(),
            exec: "/usr/local/bin/husk-vmm".into(),
            ro: vec![
                Bind {
                    src: "/usr/share/husk/vmlinux".into(),
                    name: "kernel".into(),
                },
                Bind {
                    src: "/usr/share/husk/a=b.cpio".into(),
                    name: "initramfs".into(),
                },
            ],
            rw: vec![Bind {
                src: "/run/husk/default/p/vm".into(),
                name: "run".into(),
            }],
            uid: 1_500_000_000,
            gid: 1_500_000_000,
            cgroup_procs: vec!["/sys/fs/cgroup/default/p/cgroup.procs".into()],
            keep_fds: vec![3, 4],
            env: vec!["HUSK_LOG=debug".into(), "X=a=b".into()],
            nofile: 2048,
            nproc: 64,
            args: vec!["--kernel".into(), "/kernel".into(), "--".into()],
        }
    }

    fn argv(j: &Jail) -> Vec<OsString> {
        std::iter::once(OsString::from("husk-jailer"))
            .chain(j.to_args())
            .collect()
    }

    #[test]
    fn the_command_line_round_trips() {
        let j = sample();
        assert_eq!(Jail::from_args(argv(&j)).unwrap(), j);
        assert_eq!(j.exec_in_jail(), PathBuf::from("/husk-vmm"));
    }

    #[test]
    fn root_and_relative_paths_and_bad_names_are_refused() {
        let check = |f: &dyn Fn(&mut Jail), needle: &str| {
            let mut j = sample();
            f(&mut j);
            let e = Jail::from_args(argv(&j)).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        check(&|j| j.uid = 0, "never runs as root");
        check(&|j| j.gid = 0, "never runs as root");
        check(&|j| j.root = "jail".into(), "absolute");
        check(&|j| j.exec = "husk-vmm".into(), "absolute");
        check(&|j| j.ro[0].name = "../etc".into(), "plain file name");
        check(&|j| j.ro[0].name = "dev".into(), "the jail's own");
        check(&|j| j.ro[0].src = "vmlinux".into(), "absolute");
        check(&|j| j.ro[1].name = "run".into(), "two binds of one name");
        check(
            &|j| j.ro[0].name = "husk-vmm".into(),
            "two binds of one name",
        );
        check(&|j| j.keep_fds = vec![2], "always kept");
        check(&|j| j.env = vec!["NOEQUALS".into()], "KEY=VALUE");
        check(&|j| j.nofile = 3, "too small");
        let e = Jail::from_args(["husk-jailer", "--root", "/x"]).unwrap_err();
        assert!(e.to_string().contains("--exec"), "{e}");
    }
}
