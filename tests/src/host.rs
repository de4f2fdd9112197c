//! What a runtime leaves on the host, read from /proc and the file system: processes that
//! mention a directory, mount points under one, the entries of one. The tests' "nothing
//! left behind" checks and the report's process accounting use them.

use std::path::Path;

/// (pid, command line) of processes whose command line contains `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push((pid, cmd.trim().to_owned()));
        }
    }
    out
}

/// A process's threads as `name: kernel wait channel`, for messages about processes that
/// did not end (a shim stuck in a join shows which thread it waits for).
pub fn threads(pid: u32) -> String {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".into();
    };
    rd.flatten()
        .map(|t| {
            let r = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            format!("{}: {}", r("comm").trim(), r("wchan").trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&needle))
        .map(str::to_owned)
        .collect()
}

/// Every entry under `dir`, recursively (files and dirs), as paths.
pub fn walk(dir: &Path, out: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
}
