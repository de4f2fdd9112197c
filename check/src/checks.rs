//! The decisions: each function turns what [`crate::host`] gathered into a PASS or a
//! FAIL with its reason and the fix. Nothing here touches the host.

use std::path::Path;

use crate::containerd::{self, RUNTIME_TYPE};
use crate::mounts::{self, CgroupLayout, Mount};
use crate::Check;

/// What opening a device node gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dev {
    Missing,
    NotCharDevice,
    /// open(2) failed: the error text.
    OpenFailed(String),
    Opened,
}

/// The hardware virtualisation flag in `/proc/cpuinfo`: `vmx` (Intel VT-x) or `svm` (AMD-V).
pub fn cpu_virt(cpuinfo: &str) -> Option<&'static str> {
    let mut found = None;
    for l in cpuinfo.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.trim() != "flags" {
            continue;
        }
        for f in v.split_whitespace() {
            match f {
                "vmx" => return Some("vmx"),
                "svm" => found = Some("svm"),
                _ => {}
            }
        }
    }
    found
}

/// Whether KVM is PVM: module `kvm_pvm` in `/proc/modules` (absent on some kernels) or
/// `/sys/module/kvm_pvm` present.
pub fn pvm_loaded(proc_modules: Option<&str>, sys_module_kvm_pvm: bool) -> bool {
    sys_module_kvm_pvm
        || proc_modules.is_some_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().next() == Some("kvm_pvm"))
        })
}

const NEED_HW: &str = "run husk on a host with Intel VT-x or AMD-V (bare metal, or a VM with nested virtualization turned on)";

/// /dev/kvm usable for a standard (unpatched) Linux guest.
pub fn kvm(dev: &Dev, api_version: Option<i32>, pvm: bool, virt: Option<&str>) -> Check {
    const N: &str = "kvm";
    match dev {
        Dev::Missing => {
            return Check::fail(
                N,
                "/dev/kvm does not exist",
                match virt {
                    Some("svm") => "modprobe kvm_amd".to_owned(),
                    Some(_) => "modprobe kvm_intel".to_owned(),
                    None => NEED_HW.to_owned(),
                },
            )
        }
        Dev::NotCharDevice => {
            return Check::fail(
                N,
                "/dev/kvm is not a character device",
                "remove it and load kvm_intel or kvm_amd",
            )
        }
        Dev::OpenFailed(e) => {
            return Check::fail(
                N,
                format!("/dev/kvm cannot be opened read-write: {e}"),
                "run containerd (and husk-check) as root, or give the user the kvm group",
            )
        }
        Dev::Opened => {}
    }
    if pvm {
        return Check::fail(
            N,
            "/dev/kvm is PVM (module kvm_pvm is loaded): it runs only guest kernels built with the PVM patches, not husk's standard guest kernel",
            NEED_HW,
        );
    }
    let Some(virt) = virt else {
        return Check::fail(
            N,
            "/dev/kvm opens but the CPU shows neither vmx nor svm, so it is not hardware KVM (PVM or another software backend) and cannot boot husk's standard guest",
            NEED_HW,
        );
    };
    match api_version {
        Some(12) => Check::pass(
            N,
            format!("/dev/kvm opens read-write, KVM API 12, hardware virtualization ({virt})"),
        ),
        Some(v) => Check::fail(
            N,
            format!("KVM_GET_API_VERSION says {v}, not 12"),
            "use a Linux kernel whose KVM has API version 12 (every kernel since 2.6.22)",
        ),
        None => Check::fail(
            N,
            "KVM_GET_API_VERSION failed on /dev/kvm",
            "check dmesg for KVM errors; reload kvm_intel or kvm_amd",
        ),
    }
}

/// The CPU's virtualisation extension.
pub fn cpu(virt: Option<&str>) -> Check {
    const N: &str = "cpu";
    match virt {
        Some("vmx") => Check::pass(N, "Intel VT-x (vmx flag)"),
        Some(_) => Check::pass(N, "AMD-V (svm flag)"),
        None => Check::fail(
            N,
            "the CPU flags have neither vmx (Intel VT-x) nor svm (AMD-V)",
            "turn on virtualization in the firmware (or nested virtualization for this VM)",
        ),
    }
}

/// /dev/net/tun, for the pods' virtio-net taps.
pub fn tun(dev: &Dev) -> Check {
    const N: &str = "tun";
    match dev {
        Dev::Opened => Check::pass(N, "/dev/net/tun opens read-write"),
        Dev::Missing => Check::fail(
            N,
            "/dev/net/tun does not exist",
            "modprobe tun (and mknod /dev/net/tun c 10 200 if udev does not make it)",
        ),
        Dev::NotCharDevice => Check::fail(
            N,
            "/dev/net/tun is not a character device",
            "replace it: mknod /dev/net/tun c 10 200",
        ),
        Dev::OpenFailed(e) => Check::fail(
            N,
            format!("/dev/net/tun cannot be opened read-write: {e}"),
            "run as root; modprobe tun",
        ),
    }
}

/// Transparent huge pages for shared memory (`/sys/kernel/mm/transparent_hugepage/
/// shmem_enabled`, the selected value in brackets): husk-vmm asks for them for guest RAM
/// (a memfd), which boots a guest with a few dozen nested page faults instead of thousands.
pub fn huge_pages(shmem_enabled: Option<&str>) -> Check {
    const N: &str = "huge-pages";
    const FILE: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
    let selected = shmem_enabled.and_then(|s| {
        let start = s.find('[')? + 1;
        Some(&s[start..start + s[start..].find(']')?])
    });
    match selected {
        Some(v @ ("advise" | "within_size" | "always" | "force")) => Check::pass(
            N,
            format!("shared memory gets huge pages on request ({FILE}: {v})"),
        ),
        Some(v) => Check::warn(
            N,
            format!("guest RAM stays in 4 KiB pages ({FILE}: {v}): cold boots are slower"),
            format!("echo advise >{FILE} (install.sh also installs /etc/tmpfiles.d/husk.conf, which sets it at boot)"),
        ),
        None => Check::warn(
            N,
            format!("{FILE} is missing or unreadable: the kernel has no transparent huge pages"),
            "a kernel built with CONFIG_TRANSPARENT_HUGEPAGE boots guests faster",
        ),
    }
}

/// The config file: `Ok(Some(path))` read, `Ok(None)` absent (defaults), `Err` why not.
pub fn config(loaded: &Result<Option<String>, String>) -> Check {
    const N: &str = "config";
    match loaded {
        Ok(Some(p)) => Check::pass(N, format!("{p} is valid")),
        Ok(None) => Check::pass(
            N,
            "no /etc/husk/husk.toml: every default applies (config/husk.toml lists them)",
        ),
        Err(e) => Check::fail(
            N,
            e.clone(),
            "correct the file (husk.toml.new from the install has every key at its default)",
        ),
    }
}

/// Which boot format a kernel image's first bytes show.
pub fn kernel_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x7fELF") {
        Some("ELF vmlinux")
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some("bzImage")
    } else {
        None
    }
}

/// Which format an initramfs's first bytes show.
pub fn initramfs_format(head: &[u8]) -> Option<&'static str> {
    const M: [(&[u8], &str); 6] = [
        (b"070701", "newc cpio"),
        (b"070702", "newc cpio"),
        (b"\x1f\x8b", "gzip cpio"),
        (b"\x28\xb5\x2f\xfd", "zstd cpio"),
        (b"\xfd7zXZ", "xz cpio"),
        (b"\x02\x21\x4c\x18", "lz4 cpio"),
    ];
    M.iter().find(|(m, _)| head.starts_with(m)).map(|(_, n)| *n)
}

/// A guest file the config names: `head` is its first bytes, or why it can't be read.
pub fn guest_file(
    name: &'static str,
    key: &str,
    path: &Path,
    head: &Result<Vec<u8>, String>,
    format: fn(&[u8]) -> Option<&'static str>,
) -> Check {
    let p = path.display();
    match head {
        Err(e) => Check::fail(name, format!("{key} = {p}: {e}"), format!("install husk (make install or the release tarball's install.sh), or set {key} in husk.toml")),
        Ok(h) => match format(h) {
            Some(f) => Check::pass(name, format!("{p} ({f})")),
            None => Check::fail(name, format!("{p} is neither of the formats husk-vmm boots"), "reinstall it from the release (make image builds it)"),
        },
    }
}

/// What running `<program> --version` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// It exited 0; its first output line.
    Ok(String),
    /// It exited nonzero (status and output) or could not be started (why).
    Failed(String),
}

/// A program the shim starts (husk-vmm, virtiofsd) or containerd starts (the shim).
pub fn program(name: &'static str, path: &Path, ran: &Ran, fix: &str) -> Check {
    match ran {
        Ran::Ok(line) => Check::pass(name, format!("{} runs: {line}", path.display())),
        Ran::Failed(e) => Check::fail(name, format!("{} --version: {e}", path.display()), fix),
    }
}

/// containerd's version: 1.6 and 1.7 speak the shim's Task API v2.
pub fn containerd_version(ran: &Ran) -> Check {
    const N: &str = "containerd";
    let out = match ran {
        Ran::Ok(o) => o,
        Ran::Failed(e) => {
            return Check::fail(
                N,
                format!("containerd --version: {e}"),
                "apt-get install containerd (1.6 or 1.7)",
            )
        }
    };
    match containerd::parse_version(out) {
        Some((1, minor @ (6 | 7), v)) => Check::pass(N, format!("containerd {v} (1.{minor}: shim Task API v2)")),
        Some((major, minor, v)) => Check::fail(
            N,
            format!("containerd {v}: husk's shim speaks the Task API v2 of containerd 1.6/1.7, and {major}.{minor} is not tested with it"),
            "use containerd 1.6 or 1.7",
        ),
        None => Check::fail(N, format!("cannot read a version in {out:?}"), "check that `containerd --version` works"),
    }
}

/// Whether containerd's config registers `io.containerd.husk.v2` (for the CRI plugin).
pub fn containerd_runtime(dump: &Result<String, String>, snippet: &str) -> Check {
    const N: &str = "containerd-config";
    let fix = format!(
        "merge {snippet} into /etc/containerd/config.toml (version = 2) and restart containerd"
    );
    let text = match dump {
        Ok(t) => t,
        Err(e) => return Check::fail(N, format!("containerd config dump: {e}"), fix),
    };
    let d = match containerd::parse_dump(text) {
        Ok(d) => d,
        Err(e) => return Check::fail(N, format!("containerd config dump is not TOML: {e}"), fix),
    };
    if d.husk_runtimes.is_empty() {
        return Check::fail(N, format!("no runtime with runtime_type = \"{RUNTIME_TYPE}\" in containerd's config (ctr run --runtime {RUNTIME_TYPE} works without it, Kubernetes does not)"), fix);
    }
    let handlers: Vec<&str> = d
        .husk_runtimes
        .iter()
        .map(|p| containerd::handler_name(p))
        .collect();
    if d.cri_disabled {
        return Check::fail(N, format!("runtime {} is registered but the CRI plugin is in disabled_plugins", handlers.join(", ")), "remove \"cri\" from disabled_plugins in /etc/containerd/config.toml and restart containerd");
    }
    if let Some(def) = d.cri_default_missing {
        return Check::fail(
            N,
            format!("the CRI plugin's default_runtime_name = \"{def}\" has no runtimes.{def} entry, so containerd 1.6 will not load the CRI plugin"),
            format!("add [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{def}] (for runc: runtime_type = \"io.containerd.runc.v2\", as {snippet} has)"),
        );
    }
    Check::pass(
        N,
        format!(
            "{RUNTIME_TYPE} registered as CRI handler {}",
            handlers.join(", ")
        ),
    )
}

/// The host's cgroup layout (all three work: the shim does not put the VM in host
/// cgroups itself; runc's containers beside it need whichever containerd was set up for).
pub fn cgroups(mounts: &[Mount]) -> Check {
    const N: &str = "cgroups";
    match mounts::cgroup_layout(mounts) {
        CgroupLayout::None => Check::fail(
            N,
            "no cgroup filesystem is mounted",
            "mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        ),
        l => Check::pass(N, format!("cgroup {}", l.name())),
    }
}

/// The filesystem under a dir that must hold overlay mounts' upper dirs or our pod dirs.
pub fn filesystem(name: &'static str, what: &str, path: &Path, mounts: &[Mount]) -> Check {
    let p = path.display();
    match mounts::holding(mounts, path) {
        None => Check::fail(name, format!("{what} {p}: no mount in the mount table holds it"), "check /proc/self/mounts"),
        Some(m) if m.fstype == "overlay" => Check::fail(
            name,
            format!("{what} {p} is on overlayfs (mounted at {}), which cannot be an overlay mount's upper dir: containerd's overlay snapshots and husk's pod rootfs mounts fail there with \"invalid argument\"", m.target),
            format!("put it on a real filesystem: mount -t tmpfs tmpfs {p} (state that may be lost at reboot) or a disk filesystem (ext4, xfs)"),
        ),
        Some(m) => Check::pass(name, format!("{what} {p} is on {} (mounted at {})", m.fstype, m.target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::parse;
    use crate::Verdict;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx smx est\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm lahf_lm\n";
    /// A PVM guest like our CI machines: no vmx/svm flag at all.
    const PVM_CPU: &str =
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr hypervisor\n";

    #[test]
    fn cpu_flags() {
        assert_eq!(cpu_virt(INTEL), Some("vmx"));
        assert_eq!(cpu_virt(AMD), Some("svm"));
        assert_eq!(cpu_virt(PVM_CPU), None);
        // "svm" in another field is not a flag.
        assert_eq!(cpu_virt("model name\t: svm vmx cpu\nflags\t: fpu\n"), None);
        assert!(cpu(Some("vmx")).passes());
        assert!(!cpu(None).passes());
    }

    #[test]
    fn pvm_from_modules_or_sysfs() {
        let mods = "kvm_pvm 114688 0 - Live 0x0000000000000000\nkvm 1142784 1 kvm_pvm, Live 0x0\n";
        assert!(pvm_loaded(Some(mods), false));
        assert!(pvm_loaded(None, true));
        assert!(!pvm_loaded(
            Some("kvm_amd 155648 0 - Live 0x0\nkvm 1142784 1 kvm_amd, Live 0x0\n"),
            false
        ));
        // kvm_pvm only as a user of another module is still a line of its own when loaded.
        assert!(!pvm_loaded(
            Some("kvm 1142784 1 kvm_pvm_x, Live 0x0\n"),
            false
        ));
    }

    #[test]
    fn kvm_decisions() {
        let ok = kvm(&Dev::Opened, Some(12), false, Some("svm"));
        assert!(ok.passes(), "{ok:?}");
        // The PVM case says so by name, even if some flag were there.
        let pvm = kvm(&Dev::Opened, Some(12), true, None);
        assert!(!pvm.passes());
        assert!(
            pvm.reason.contains("PVM") && pvm.reason.contains("kvm_pvm"),
            "{}",
            pvm.reason
        );
        assert!(pvm.fix.as_deref().unwrap().contains("VT-x"));
        let noflag = kvm(&Dev::Opened, Some(12), false, None);
        assert!(
            !noflag.passes() && noflag.reason.contains("neither vmx nor svm"),
            "{}",
            noflag.reason
        );
        let missing = kvm(&Dev::Missing, None, false, Some("vmx"));
        assert_eq!(missing.fix.as_deref(), Some("modprobe kvm_intel"));
        assert!(!kvm(
            &Dev::OpenFailed("Permission denied (os error 13)".into()),
            None,
            false,
            Some("vmx")
        )
        .passes());
        assert!(!kvm(&Dev::Opened, Some(11), false, Some("vmx")).passes());
        assert!(!kvm(&Dev::Opened, None, false, Some("vmx")).passes());
    }

    #[test]
    fn tun_decisions() {
        assert!(tun(&Dev::Opened).passes());
        assert!(tun(&Dev::Missing).fix.unwrap().contains("modprobe tun"));
        assert!(!tun(&Dev::OpenFailed("x".into())).passes());
    }

    #[test]
    fn guest_file_formats() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_format(&bz), Some("bzImage"));
        assert_eq!(kernel_format(b"\x7fELF\x02\x01"), Some("ELF vmlinux"));
        assert_eq!(kernel_format(b"070701"), None);
        assert_eq!(initramfs_format(b"07070100000001"), Some("newc cpio"));
        assert_eq!(initramfs_format(b"\x7fELF"), None);
        let p = Path::new("/usr/local/share/husk/vmlinux");
        let c = guest_file(
            "kernel",
            "kernel",
            p,
            &Err("No such file or directory (os error 2)".into()),
            kernel_format,
        );
        assert!(
            !c.passes()
                && c.reason.contains("/usr/local/share/husk/vmlinux")
                && c.reason.contains("os error 2")
        );
        assert!(guest_file(
            "kernel",
            "kernel",
            p,
            &Ok(b"\x7fELF".to_vec()),
            kernel_format
        )
        .passes());
        assert!(!guest_file("kernel", "kernel", p, &Ok(b"junk".to_vec()), kernel_format).passes());
    }

    #[test]
    fn config_and_programs() {
        assert!(config(&Ok(None)).passes());
        assert!(config(&Ok(Some("/etc/husk/husk.toml".into()))).passes());
        assert!(!config(&Err(
            "Bad husk config /etc/husk/husk.toml: unknown field `kernal`".into()
        ))
        .passes());
        let p = Path::new("/usr/local/bin/virtiofsd");
        assert!(program("virtiofsd", p, &Ran::Ok("virtiofsd 1.13.2".into()), "x").passes());
        let f = program(
            "virtiofsd",
            p,
            &Ran::Failed("exit status 127".into()),
            "scripts/install-virtiofsd.sh",
        );
        assert!(!f.passes() && f.fix.as_deref() == Some("scripts/install-virtiofsd.sh"));
    }

    #[test]
    fn containerd_decisions() {
        assert!(containerd_version(&Ran::Ok(
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3".into()
        ))
        .passes());
        assert!(
            containerd_version(&Ran::Ok("containerd containerd.io v1.7.13 7c3aca7".into()))
                .passes()
        );
        assert!(!containerd_version(&Ran::Ok(
            "containerd github.com/containerd/containerd/v2 v2.0.0 207ad71".into()
        ))
        .passes());
        assert!(!containerd_version(&Ran::Ok("containerd 1.5.9".into())).passes());
        assert!(!containerd_version(&Ran::Failed(
            "No such file or directory (os error 2)".into()
        ))
        .passes());

        let snippet = "/usr/local/share/husk/containerd-husk.toml";
        let reg = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n  runtime_type = \"io.containerd.husk.v2\"\n";
        let c = containerd_runtime(&Ok(reg.into()), snippet);
        assert!(c.passes() && c.reason.contains("handler husk"), "{c:?}");
        let c = containerd_runtime(
            &Ok("version = 2\nroot = \"/var/lib/containerd\"\n".into()),
            snippet,
        );
        assert!(!c.passes() && c.fix.unwrap().contains(snippet));
        let no_default = format!("{reg}[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n");
        let c = containerd_runtime(&Ok(no_default), snippet);
        assert!(!c.passes() && c.reason.contains("runtimes.runc"), "{c:?}");
        let off = format!("disabled_plugins = [\"cri\"]\n{reg}");
        assert!(!containerd_runtime(&Ok(off), snippet).passes());
        assert!(!containerd_runtime(&Err("exit status 1".into()), snippet).passes());
    }

    #[test]
    fn huge_page_decisions() {
        let on = huge_pages(Some("always within_size [advise] never deny force\n"));
        assert_eq!(on.verdict, Verdict::Pass, "{on:?}");
        let off = huge_pages(Some("always within_size advise [never] deny force\n"));
        assert!(
            off.verdict == Verdict::Warn && off.reason.contains("never"),
            "{off:?}"
        );
        assert_eq!(
            huge_pages(Some("always within_size advise never [deny] force")).verdict,
            Verdict::Warn
        );
        assert_eq!(huge_pages(None).verdict, Verdict::Warn);
        assert_eq!(huge_pages(Some("garbage")).verdict, Verdict::Warn);
    }

    #[test]
    fn cgroup_and_filesystem_decisions() {
        let t = parse("overlay / overlay rw 0 0\nrun /run tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
        assert!(cgroups(&t).passes());
        assert!(!cgroups(&parse("/dev/vda / ext4 rw 0 0\n")).passes());
        let c = filesystem(
            "containerd-root",
            "containerd's root",
            Path::new("/var/lib/containerd"),
            &t,
        );
        assert!(!c.passes() && c.reason.contains("overlayfs"), "{c:?}");
        assert!(c
            .fix
            .unwrap()
            .contains("mount -t tmpfs tmpfs /var/lib/containerd"));
        assert!(filesystem("state-dir", "husk's state_dir", Path::new("/run/husk"), &t).passes());
        assert!(!filesystem("x", "x", Path::new("/a"), &[]).passes());
    }
}
