//! The machine a report ran on: CPU, memory, kernel, the versions of everything measured,
//! and whether it ran nested under software emulation.

use std::process::Command;
use std::time::Duration;

use crate::run_with_watchdog;

/// The first line of `cmd --version`-style output, or why there is none.
pub fn version_of(cmd: &str, args: &[&str]) -> String {
    match run_with_watchdog(Command::new(cmd).args(args), Duration::from_secs(30)) {
        Ok(o) if o.code() == Some(0) => {
            let text = if o.stdout.trim().is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            text.lines().next().unwrap_or("").trim().to_owned()
        }
        Ok(o) => format!(
            "exit {:?}: {}",
            o.code(),
            o.stderr.lines().next().unwrap_or("")
        ),
        Err(e) => format!("not available ({})", e.root_cause()),
    }
}

/// `model name` of /proc/cpuinfo and the number of CPUs.
pub fn cpu(cpuinfo: &str) -> (String, usize) {
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let n = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    (model, n)
}

/// Whether this run is nested under software emulation: `HUSK_KVM_RAN_IN=testhost` (set by
/// scripts/in-kvm.sh when it used the test host) or an emulated CPU's model name.
pub fn emulated(mode: Option<&str>, cpu_model: &str) -> bool {
    mode == Some("testhost") || cpu_model.contains("QEMU") || cpu_model.contains("TCG")
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// (what, value) lines for the report's machine table.
pub fn facts(husk_version: String) -> (Vec<(String, String)>, bool) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (model, n) = cpu(&cpuinfo);
    let mode = std::env::var("HUSK_KVM_RAN_IN").ok();
    let emulated = emulated(mode.as_deref(), &model);
    let mem = first_line("/proc/meminfo");
    let kvm = match crate::kvm_unusable_reason() {
        None => "usable (a standard guest boots)".to_owned(),
        Some(why) => format!("not usable: {why}"),
    };
    let cgroups = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        "hybrid (v1 + v2 unified)"
    } else {
        "v1"
    };
    let f = |k: &str, v: String| (k.to_owned(), v);
    let facts = vec![
        f(
            "nested under emulation",
            if emulated {
                format!(
                    "yes: the test host (QEMU TCG, emulated AMD-V); HUSK_KVM_RAN_IN={}",
                    mode.as_deref().unwrap_or("-")
                )
            } else {
                "no".into()
            },
        ),
        f("CPU", format!("{model} x {n}")),
        f(
            "memory",
            mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        ),
        f("kernel", version_of("uname", &["-srvm"])),
        f("KVM", kvm),
        f("cgroups", cgroups.into()),
        f("containerd", version_of("containerd", &["--version"])),
        f("runc", version_of("runc", &["--version"])),
        f("crun", version_of("crun", &["--version"])),
        f("husk", husk_version),
        f(
            "virtiofsd",
            crate::containerd::virtiofsd_bin()
                .map(|p| version_of(&p.display().to_string(), &["--version"]))
                .unwrap_or_else(|| "not installed".into()),
        ),
        f(
            "QEMU (boot peer)",
            version_of("qemu-system-x86_64", &["--version"]),
        ),
    ];
    (facts, emulated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_emulation() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC Processor\nprocessor\t: 1\nmodel name\t: AMD EPYC Processor\n";
        assert_eq!(cpu(info), ("AMD EPYC Processor".into(), 2));
        assert_eq!(cpu(""), ("unknown".into(), 0));
        assert!(emulated(Some("testhost"), "AMD EPYC Processor"));
        assert!(emulated(None, "QEMU Virtual CPU version 2.5+"));
        assert!(!emulated(Some("direct"), "Intel(R) Xeon(R)"));
        assert!(version_of("sh", &["-c", "echo one; echo two"]) == "one");
        assert!(version_of("/nonexistent/x", &[]).starts_with("not available"));
    }
}
