//! Workloads inside a container, timed by the container itself (`husk-bench-probe` in
//! the test image), so the figures are the workload's and not the container's start:
//! CPU (a hash over N MiB), syscalls (ns per call), file I/O on the rootfs and on a
//! bind-mounted volume.

use super::{Ctx, CTR_RUNTIMES};
use crate::cni::probe_field;
use crate::report::ctr::{self, Runtime};
use crate::report::{Better, Metric, Plot, SectionResult};

const PROBE: &str = "/bin/husk-bench-probe";

/// Runs the probe with `args` under `rt`; its output line, or the failure recorded.
fn probe(
    ctx: &mut Ctx,
    s: &mut SectionResult,
    rt: &Runtime,
    id: &str,
    extra: &[String],
    args: &[&str],
) -> Option<String> {
    // The container's start plus the workload; a stuck run's error carries the probe's
    // progress lines (stderr).
    let timeout = ctx.timeout * 2;
    let c = ctx.containerd().ok()?;
    let mut a = vec![PROBE];
    a.extend_from_slice(args);
    match ctr::run(c, rt, id, false, extra, &a, timeout) {
        Ok((_, o)) => {
            let line = o.stdout.lines().last().unwrap_or("").to_owned();
            eprintln!("report: {} {id}: {line}", rt.name);
            Some(line)
        }
        Err(e) => {
            s.fail(e);
            None
        }
    }
}

/// Records each `(field, metric, unit, better)` of a probe line.
fn record(
    s: &mut SectionResult,
    rt: &str,
    line: &str,
    fields: &[(&str, &str, &str, Better, bool)],
) {
    for (field, name, unit, better, headline) in fields {
        match probe_field(line, field).and_then(|v| v.parse::<f64>().ok()) {
            Some(v) => s
                .metric(name, None, || {
                    Metric::new(name, unit, *better).headline_if(*headline)
                })
                .push(rt, v),
            None => s.fail(format!("{rt}: no {field} in the probe's output {line:?}")),
        }
    }
}

pub fn cpu(ctx: &mut Ctx) -> SectionResult {
    let (mib, runs) = (ctx.sizes.cpu_mib, ctx.sizes.cpu_runs);
    let mut s = SectionResult::new(
        "cpu",
        "CPU: a fixed compute workload",
        "runc",
        Plot::Bars,
        &format!(
            "`husk-bench-probe cpu {mib}` in the container: an FNV-style hash over a 1 MiB \
             buffer {mib} times ({mib} MiB hashed), wall time measured inside, {runs} runs per \
             runtime, interleaved. Under husk the work runs on a guest vCPU."
        ),
    );
    let Some(rts) = ctx.begin(&mut s, &CTR_RUNTIMES) else {
        return s;
    };
    let arg = mib.to_string();
    for i in 1..=runs {
        for rt in &super::rotated(&rts, i) {
            if let Some(l) = probe(
                ctx,
                &mut s,
                rt,
                &format!("cpu-{}-{i}", rt.name),
                &[],
                &["cpu", &arg],
            ) {
                let name = format!("hash {mib} MiB");
                record(
                    &mut s,
                    &rt.name,
                    &l,
                    &[("secs", &name, "s", Better::Lower, true)],
                );
            }
        }
    }
    s
}

pub fn syscalls(ctx: &mut Ctx) -> SectionResult {
    let (iters, runs) = (ctx.sizes.syscall_iters, ctx.sizes.syscall_runs);
    let mut s = SectionResult::new(
        "syscalls",
        "Syscalls: ns per call inside the container",
        "runc",
        Plot::Bars,
        &format!(
            "`husk-bench-probe syscalls {iters}` (a static program of ours in the test image): \
             {iters} raw getpid calls, {iters} 4 KiB preads of a file on /dev/shm (tmpfs), \
             {} open+close pairs of it, {} fork+exit+waitpid; {runs} runs per runtime, \
             interleaved.",
            iters / 4,
            (iters / 100).max(1)
        ),
    );
    let Some(rts) = ctx.begin(&mut s, &CTR_RUNTIMES) else {
        return s;
    };
    let arg = iters.to_string();
    for i in 1..=runs {
        for rt in &super::rotated(&rts, i) {
            let id = format!("sys-{}-{i}", rt.name);
            if let Some(l) = probe(ctx, &mut s, rt, &id, &[], &["syscalls", &arg]) {
                record(
                    &mut s,
                    &rt.name,
                    &l,
                    &[
                        ("getpid_ns", "getpid", "ns/call", Better::Lower, true),
                        (
                            "read4k_ns",
                            "4 KiB read (tmpfs)",
                            "ns/call",
                            Better::Lower,
                            true,
                        ),
                        ("openclose_ns", "open+close", "ns/call", Better::Lower, true),
                        ("forkexit_ns", "fork+exit", "ns/call", Better::Lower, true),
                    ],
                );
            }
        }
    }
    s
}

pub fn fileio(ctx: &mut Ctx) -> SectionResult {
    let (mib, files, runs) = (ctx.sizes.file_mib, ctx.sizes.files, ctx.sizes.fileio_runs);
    let mut s = SectionResult::new(
        "fileio",
        "File I/O: rootfs and volume",
        "runc",
        Plot::Bars,
        &format!(
            "`husk-bench-probe fileio DIR {mib} {files}` in the container: write a {mib} MiB \
             file sequentially (1 MiB writes, then fsync), drop it from the page cache \
             (POSIX_FADV_DONTNEED) and read it back; then create, stat and unlink {files} empty \
             files, per-file time. DIR is `/bench` on the container's rootfs (containerd's \
             overlayfs under runc and crun; the same overlay through virtio-fs under husk) and \
             `/vol`, a bind-mounted host directory (virtio-fs under husk). {runs} run(s) per \
             runtime and place, interleaved."
        ),
    );
    let Some(rts) = ctx.begin(&mut s, &CTR_RUNTIMES) else {
        return s;
    };
    let Ok(c) = ctx.containerd() else { return s };
    let host_dir = c.dir.path().join("report-vol");
    if let Err(e) = std::fs::create_dir_all(&host_dir) {
        s.fail(format!("cannot make the volume dir: {e}"));
        return s;
    }
    s.notes.push(format!(
        "The volume's host directory is on {} (and containerd's snapshots beside it); in the \
         test host that is a tmpfs, so runc's and crun's figures there are memory speed.",
        fs_name(&host_dir)
    ));
    let (m, f) = (mib.to_string(), files.to_string());
    for i in 1..=runs {
        for (place, dir) in [("rootfs", "/bench"), ("volume", "/vol")] {
            for rt in &super::rotated(&rts, i) {
                let extra = if place == "volume" {
                    vec![
                        "--mount".to_owned(),
                        format!(
                            "type=bind,src={},dst=/vol,options=rbind:rw",
                            host_dir.display()
                        ),
                    ]
                } else {
                    Vec::new()
                };
                let id = format!("fio-{place}-{}-{i}", rt.name);
                if let Some(l) = probe(ctx, &mut s, rt, &id, &extra, &["fileio", dir, &m, &f]) {
                    let head = place == "rootfs";
                    let n = |what: &str| format!("{place} {what}");
                    record(
                        &mut s,
                        &rt.name,
                        &l,
                        &[
                            (
                                "write_mib_s",
                                &n("seq. write"),
                                "MiB/s",
                                Better::Higher,
                                head,
                            ),
                            ("read_mib_s", &n("seq. read"), "MiB/s", Better::Higher, head),
                            ("create_us", &n("create"), "us/file", Better::Lower, head),
                            ("stat_us", &n("stat"), "us/file", Better::Lower, false),
                            ("unlink_us", &n("unlink"), "us/file", Better::Lower, false),
                        ],
                    );
                }
            }
        }
    }
    s
}

/// The filesystem type of `path`, by its statfs magic.
pub fn fs_name(path: &std::path::Path) -> String {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs that outlive the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    #[allow(clippy::useless_conversion)] // f_type's width differs between libcs
    match i64::from(st.f_type) {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x794c_7630 => "overlayfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        other => format!("filesystem magic {other:#x}"),
    }
}
