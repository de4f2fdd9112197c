//! Where a husk pod's start goes, from the shim's own log lines in containerd's log
//! (`time="<RFC 3339>" ... msg="..."`): the times of a `ctr run --rm` pod's milestones,
//! and the phases between them.

/// The milestones of a `ctr run --rm` pod `id` in the order they happen (Create, husk-vmm
/// spawned, agent ready, Start, the init process's exit, Delete): the text of the shim's
/// line that marks each.
const MILESTONES: [fn(&str) -> String; 6] = [
    |id| format!("msg=\"Create {id} "),
    |id| format!("msg=\"pod {id}: husk-vmm pid "),
    |id| format!("msg=\"pod {id}: agent "),
    |id| format!("msg=\"Start {id} "),
    // The init process's exec id is empty.
    |id| format!("msg=\"{id} : exit status "),
    |id| format!("msg=\"Delete {id} "),
];

/// The phases between consecutive milestones, named for what happens in them (no commas:
/// the names are CSV fields too).
pub const PHASES: [&str; 5] = [
    "Create to husk-vmm spawned (template check + jail + virtiofsd)",
    "husk-vmm spawned to agent ready (boot or restore)",
    "agent ready to Start (CreateSandbox + CreateContainer)",
    "Start to exit (the process runs and its exit reaches the shim)",
    "exit to Delete (ctr's wait and kill)",
];

/// The durations in ms of [`PHASES`] for pod `id`, from the first line of each milestone
/// in `log`; `None` if a milestone is missing or its time unreadable.
pub fn phases(log: &str, id: &str) -> Option<[f64; 5]> {
    let mut at = [0f64; 6];
    for (i, needle) in MILESTONES.iter().enumerate() {
        let needle = needle(id);
        let line = log.lines().find(|l| l.contains(&needle))?;
        at[i] = line_time(line)?;
    }
    let mut out = [0f64; 5];
    for i in 0..5 {
        out[i] = (at[i + 1] - at[i]) * 1e3;
        if out[i] < 0.0 {
            return None;
        }
    }
    Some(out)
}

/// Seconds since the epoch of a logrus line's `time="2026-12-07T06:24:21.395218144Z"`.
pub fn line_time(line: &str) -> Option<f64> {
    let t = line.split("time=\"").nth(1)?.split('"').next()?;
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_logrus_lines() {
        let epoch = line_time("time=\"1970-01-01T00:00:01.5Z\" level=info").unwrap();
        assert!((epoch - 1.5).abs() < 1e-9, "{epoch}");
        let a = line_time("time=\"2026-12-07T23:59:59.5Z\" level=info msg=\"x\"").unwrap();
        let b = line_time("time=\"2026-12-08T00:00:00.25Z\" level=info msg=\"y\"").unwrap();
        assert!((b - a - 0.75).abs() < 1e-6, "{}", b - a);
        assert_eq!(line_time("level=info msg=\"no time\""), None);
        assert_eq!(line_time("time=\"yesterday\""), None);
    }

    #[test]
    fn phase_names_are_plain_csv_fields() {
        for p in PHASES {
            assert!(!p.contains(',') && !p.contains('"'), "{p}");
        }
    }

    #[test]
    fn phases_of_one_pod() {
        let log = "\
time=\"2026-12-07T10:00:00.000Z\" level=info msg=\"Create p1 (bundle /b)\"
time=\"2026-12-07T10:00:00.050Z\" level=info msg=\"Create p10 (bundle /b)\"
time=\"2026-12-07T10:00:00.300Z\" level=info msg=\"pod p1: husk-vmm pid 7 (1 vCPUs, 256 MiB), virtiofsd pid 6\"
time=\"2026-12-07T10:00:01.000Z\" level=info msg=\"pod p1: agent 0.1.0 ready after 700ms (booted), guest kernel 6.1\"
time=\"2026-12-07T10:00:01.500Z\" level=info msg=\"Start p1 \"
time=\"2026-12-07T10:00:01.600Z\" level=info msg=\"p1 : exit status 0 (exited)\"
time=\"2026-12-07T10:00:01.900Z\" level=info msg=\"Delete p1 \"
";
        let p = phases(log, "p1").unwrap();
        let want = [300.0, 700.0, 500.0, 100.0, 300.0];
        for (got, want) in p.iter().zip(want) {
            assert!((got - want).abs() < 1e-3, "{p:?}");
        }
        // p10's Create is not p1's; a pod without every milestone has no phases.
        assert_eq!(phases(log, "p10"), None);
    }
}
