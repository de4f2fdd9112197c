//! The host's processes, mounts and files as /proc and the file system show them:
//! processes that mention a directory, a process's children and threads, mount points
//! under a directory, the entries of one. The tests' "nothing left behind" checks and the
//! report's process accounting use them.

use std::path::Path;

/// Every process's pid, from /proc.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// (pid, command line) of processes whose command line contains `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    pids()
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then(|| (pid, cmd.trim().to_owned()))
        })
        .collect()
}

/// The direct children of `pid` (virtiofsd's sandbox forks the process that serves).
pub fn child_pids(pid: i32) -> Vec<i32> {
    pids()
        .filter_map(|p| i32::try_from(p).ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(pid)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_by_parent_and_by_its_command_line() {
        let mark = format!("/husk-host-test-{}", std::process::id());
        // `sh -c 'sleep 30; :' <mark>`: the mark is sh's $0, in its command line only (sh
        // stays: its command does not end in the exec of sleep).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", &mark])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Looked for until seen, for at most 5 s: one `make test` run once found no child
        // in a single /proc walk while the other unit tests were starting processes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (by_parent, by_cmd) = loop {
            let by_parent = child_pids(std::process::id() as i32);
            let by_cmd = processes_mentioning(Path::new(&mark));
            let found = by_parent.contains(&(pid as i32)) && by_cmd.iter().any(|(p, _)| *p == pid);
            if found || std::time::Instant::now() > deadline {
                break (by_parent, by_cmd);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            by_parent.contains(&(pid as i32)),
            "{pid} not in {by_parent:?}"
        );
        // (sh's fork for sleep carries the same command line until it execs.)
        assert!(
            by_cmd.iter().any(|(p, _)| *p == pid),
            "{pid} not in {by_cmd:?}"
        );
        assert!(by_cmd.iter().all(|(_, c)| c.contains(&mark)), "{by_cmd:?}");
        assert!(processes_mentioning(Path::new("/no-such-husk-mark")).is_empty());
    }
}
