//! Snapshot and restore at the VMM level, with real guests: a guest snapshotted while it
//! counts (in integer and SSE registers, sleeping on its timer between batches) goes on
//! counting from the same state in a new husk-vmm process; its memory, vCPUs and devices
//! survive (a vsock listener of the probe and of the real agent answer again); two clones
//! of one snapshot each have their own memory and share the snapshot's pages; damaged
//! snapshot files are refused with the reason. And the figures: restore-to-ready against
//! cold boot-to-ready, side by side (printed, never asserted).
//! These boot guests: `#[ignore]`d for a plain `cargo test`, run by `make test` (in the
//! test host where needed).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_guest_probe::{hash_reader, stream_hash, write_stream, Count, Hasher, PROBE_PORT};
use husk_protocol::agent::{self, ServingStatus};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::{ttrpc, AGENT_VSOCK_PORT};
use husk_tests::guest::{Guest, GuestOptions, TempDir, Virtiofsd};
use husk_tests::tap::{ip, HostTap};
use husk_tests::{boot_timeout, guest_initramfs, kvm_available, run_with_watchdog, vmm_bin};

/// Prints a figure or a finding on stderr itself, past libtest's capture of `eprintln!`,
/// so that the integration log has it whether the test passes or fails.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "snapshot: {line}");
}

/// Boots the probe with `--snapshot-to <snap>`.
fn probe_guest(snap: &Path, vcpus: u8) -> Guest {
    Guest::start(GuestOptions {
        vcpus,
        memory_mib: 256,
        args: vec!["--snapshot-to".into(), snap.display().to_string()],
        ..Default::default()
    })
    .unwrap()
}

/// Boots the probe (one vCPU) with `--snapshot-to <snap>` and more devices.
fn probe_guest_with(snap: &Path, devices: &[String]) -> Guest {
    let mut args = vec!["--snapshot-to".into(), snap.display().to_string()];
    args.extend_from_slice(devices);
    Guest::start(GuestOptions {
        vcpus: 1,
        memory_mib: 256,
        args,
        ..Default::default()
    })
    .unwrap()
}

/// SIGUSR2, then the VMM must end with 0 and say where the snapshot went.
fn snapshot(mut g: Guest, snap: &Path) {
    g.signal(libc::SIGUSR2).unwrap();
    let code = g.wait_exit(boot_timeout()).unwrap();
    assert_eq!(code, 0, "{}", g.explain());
    let stderr = g.stderr_text();
    assert!(
        stderr.contains(&format!("snapshot written to {}", snap.display())),
        "{stderr}"
    );
    for line in stderr.lines().filter(|l| l.contains("snapshot written")) {
        report(line);
    }
}

/// The probe's published count, checked against a recomputation on the host.
fn count(g: &Guest) -> u64 {
    let reply = g.command("COUNT").unwrap();
    let f: Vec<u64> = reply
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    let [i, acc, fbits] = f[..] else {
        panic!("COUNT answered {reply:?}");
    };
    if i > 0 {
        let want = Count::at(i);
        assert_eq!(
            (acc, fbits),
            (want.acc, want.f.to_bits()),
            "the guest's count is wrong at step {i}\n{}",
            g.explain()
        );
    }
    i
}

/// Waits until the probe's count passes `above`.
fn count_past(g: &Guest, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let i = count(g);
        if i > above {
            return i;
        }
        assert!(
            start.elapsed() < boot_timeout(),
            "the count stays at {i}\n{}",
            g.explain()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ticks(g: &Guest) -> u64 {
    let reply = g.command("TICK").unwrap();
    reply.trim_start_matches("OK ").parse().unwrap()
}

/// Host memory of a process: (PSS, private) in KiB, from smaps_rollup.
fn pss_private_kib(pid: u32) -> (u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| -> u64 {
        t.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    (
        field("Pss"),
        field("Private_Clean") + field("Private_Dirty"),
    )
}

/// On-disk and apparent sizes of a file, in KiB.
fn file_kib(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.blocks() / 2, m.len() >> 10)
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn a_restored_guest_goes_on_counting_from_where_it_was() {
    if !kvm_available("a_restored_guest_goes_on_counting_from_where_it_was") {
        return;
    }
    let snap = TempDir::new("snap").unwrap();
    let g = probe_guest(snap.path(), 2);
    g.command("COUNTER").unwrap();
    let before = count_past(&g, 3 * husk_guest_probe::COUNT_BATCH);
    for want in 1..=3 {
        assert_eq!(ticks(&g), want);
    }
    snapshot(g, snap.path());
    let (state_disk, state_len) = file_kib(&snap.path().join("vm.state"));
    let (mem_disk, mem_len) = file_kib(&snap.path().join("vm.mem"));
    report(&format!(
        "snapshot files: vm.state {state_len} KiB, vm.mem {} MiB apparent, {} MiB on disk \
         ({state_disk} KiB for the state)",
        mem_len >> 10,
        mem_disk >> 10
    ));
    assert!(mem_disk < mem_len, "the memory file is sparse");

    let r = Guest::restore(snap.path(), &[], PROBE_PORT).unwrap();
    // Memory and the probe's state: the tick counter goes on from 3.
    assert_eq!(ticks(&r), 4, "{}", r.explain());
    // The counting thread: not reset, and its registers were right (checked by `count`).
    let after = count(&r);
    assert!(after >= before, "{after} < {before}\n{}", r.explain());
    // Still counting: timers and the scheduler work after the restore.
    let later = count_past(&r, after + 2 * husk_guest_probe::COUNT_BATCH);
    report(&format!(
        "count: {before} before the snapshot, {after} at the restore, {later} later"
    ));
    // The guest powers off cleanly.
    assert_eq!(r.power_off().unwrap(), 0);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn the_agent_answers_after_a_restore() {
    if !kvm_available("the_agent_answers_after_a_restore") {
        return;
    }
    let snap = TempDir::new("snap-agent").unwrap();
    let g = Guest::start(GuestOptions {
        vcpus: 1,
        memory_mib: 256,
        initramfs: Some(guest_initramfs()),
        ready_line: Some("husk-agent: ready".into()),
        args: vec!["--snapshot-to".into(), snap.path().display().to_string()],
        ..Default::default()
    })
    .unwrap();
    let ctx = || ttrpc::context::with_timeout(boot_timeout().as_nanos() as i64);
    let client = |g: &Guest| {
        let s = g.connect(AGENT_VSOCK_PORT).unwrap();
        s.set_read_timeout(None).unwrap();
        s.set_write_timeout(None).unwrap();
        AgentClient::new(ttrpc::Client::new(s.into_raw_fd()).unwrap())
    };
    // A connection open across the snapshot: its host end dies with the old VMM, and the
    // guest must drop its end (transport reset) without losing the listener.
    let old = client(&g);
    old.health(ctx(), &agent::HealthRequest::new()).unwrap();
    snapshot(g, snap.path());

    let r = Guest::restore(snap.path(), &[], AGENT_VSOCK_PORT).unwrap();
    let c = client(&r);
    let h = c
        .health(ctx(), &agent::HealthRequest::new())
        .unwrap_or_else(|e| panic!("Health after restore: {e:?}\n{}", r.explain()));
    assert_eq!(
        h.status.enum_value(),
        Ok(ServingStatus::SERVING_STATUS_SERVING)
    );
    let v = c.version(ctx(), &agent::VersionRequest::new()).unwrap();
    assert!(!v.kernel_release.is_empty());
    // Several connections in a row: the listener keeps accepting.
    for _ in 0..3 {
        client(&r)
            .health(ctx(), &agent::HealthRequest::new())
            .unwrap();
    }
    drop(old);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn two_clones_of_one_snapshot_have_their_own_memory_and_share_its_pages() {
    if !kvm_available("two_clones_of_one_snapshot_have_their_own_memory_and_share_its_pages") {
        return;
    }
    let snap = TempDir::new("snap-clones").unwrap();
    let g = probe_guest(snap.path(), 1);
    assert_eq!(ticks(&g), 1);
    let (cold_pss, cold_private) = pss_private_kib(g.pid().unwrap());
    snapshot(g, snap.path());

    let a = Guest::restore(snap.path(), &[], PROBE_PORT).unwrap();
    let b = Guest::restore(snap.path(), &[], PROBE_PORT).unwrap();
    // Each clone goes on from the snapshot's 1, on its own.
    assert_eq!(ticks(&a), 2);
    assert_eq!(ticks(&a), 3);
    assert_eq!(ticks(&b), 2, "a write in one clone showed in the other");
    // A file written in one clone's root (the initramfs, in guest RAM) is not in the
    // other's.
    let mut s = a.connect(PROBE_PORT).unwrap();
    s.write_all(b"WRITE /clone-a 5\nAAAAA").unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert_eq!(reply.trim(), "OK");
    assert!(a.command("READ /clone-a").is_ok());
    assert!(b.command("READ /clone-a").is_err());

    let (a_pss, a_private) = pss_private_kib(a.pid().unwrap());
    let (b_pss, b_private) = pss_private_kib(b.pid().unwrap());
    report(&format!(
        "host memory (KiB): cold-booted guest PSS {cold_pss} private {cold_private}; \
         clone A PSS {a_pss} private {a_private}; clone B PSS {b_pss} private {b_private}"
    ));
    assert_eq!(a.power_off().unwrap(), 0);
    assert_eq!(b.power_off().unwrap(), 0);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn a_restored_guest_uses_its_own_virtiofsd_and_disk() {
    if !kvm_available("a_restored_guest_uses_its_own_virtiofsd_and_disk") {
        return;
    }
    const MIB: usize = 1 << 20;
    let dir = TempDir::new("snap-devices").unwrap();
    let snap = dir.path().join("snap");
    let (share_a, share_b) = (dir.path().join("share-a"), dir.path().join("share-b"));
    for d in [&share_a, &share_b] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(share_b.join("pod.txt"), b"the pod's own file\n").unwrap();
    let (img_a, img_b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&img_a, vec![b'A'; MIB]).unwrap();
    std::fs::write(&img_b, vec![b'B'; MIB]).unwrap();
    let fs = |sock: &Path| format!("tag=shared,socket={}", sock.display());
    let block = |img: &Path| format!("path={}", img.display());

    // The template: a virtio-fs device the guest probed but never mounted, and a disk it
    // never read.
    let vfs_a = Virtiofsd::start(&share_a, dir.path().join("a.sock"));
    let g = probe_guest_with(
        &snap,
        &[
            "--fs".into(),
            fs(&vfs_a.socket),
            "--block".into(),
            block(&img_a),
        ],
    );
    assert_eq!(ticks(&g), 1);
    snapshot(g, &snap);
    drop(vfs_a);

    // A tag the guest does not know is refused.
    let vfs_b = Virtiofsd::start(&share_b, dir.path().join("b.sock"));
    let (code, stderr) = restore_outcome(
        &snap,
        &[
            "--fs",
            &format!("tag=other,socket={}", vfs_b.socket.display()),
            "--block",
            &block(&img_b),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("tag \"shared\""), "{stderr}");
    // The refused restore took virtiofsd's one connection: a new one for the real restore.
    drop(vfs_b);
    let vfs_b = Virtiofsd::start(&share_b, dir.path().join("b2.sock"));

    let r = Guest::restore(
        &snap,
        &[
            "--fs".into(),
            fs(&vfs_b.socket),
            "--block".into(),
            block(&img_b),
        ],
        PROBE_PORT,
    )
    .unwrap();
    assert_eq!(ticks(&r), 2);
    // The mount sends FUSE_INIT to the new virtiofsd, which serves the pod's share.
    r.command("MOUNT virtiofs shared /mnt/shared").unwrap();
    let mut s = r.connect(PROBE_PORT).unwrap();
    s.write_all(b"READ /mnt/shared/pod.txt\n").unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "OK 19\nthe pod's own file\n",
        "{}",
        r.explain()
    );
    let mut s = r.connect(PROBE_PORT).unwrap();
    s.write_all(b"WRITE /mnt/shared/from-guest.txt 2\nhi")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert_eq!(reply.trim(), "OK", "{}", r.explain());
    assert_eq!(
        std::fs::read(share_b.join("from-guest.txt")).unwrap(),
        b"hi"
    );
    // The disk is the new image.
    let mut h = Hasher::default();
    h.update(&vec![b'B'; MIB]);
    assert_eq!(
        r.command("HASHFILE /dev/vda").unwrap(),
        format!("OK {MIB} {}", h.value())
    );
    // Guest RAM is the snapshot's memory file mapped copy-on-write, virtio-fs or not:
    // virtiofsd works on the relay's window and maps none of it.
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", r.pid().unwrap())).unwrap();
    assert!(
        smaps
            .lines()
            .any(|l| l.contains(" rw-p ") && l.ends_with("/vm.mem")),
        "no private mapping of vm.mem in husk-vmm's smaps"
    );
    assert!(
        !smaps.contains("/memfd:husk-guest-ram"),
        "a restored VM copied its memory into a memfd"
    );
    r.command("UMOUNT /mnt/shared").unwrap();
    assert_eq!(r.power_off().unwrap(), 0);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn a_restored_guest_sends_and_receives_on_its_own_tap() {
    let test = "a_restored_guest_sends_and_receives_on_its_own_tap";
    if !kvm_available(test) {
        return;
    }
    const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 78, 1);
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 78, 2);
    const MAC_A: &str = "02:48:55:53:4b:0a";
    const MAC_B: &str = "02:48:55:53:4b:0b";
    let n: u64 = 4 << 20;
    let snap = TempDir::new("snap-net").unwrap();
    // The template's tap: the guest probed the device but never configured eth0.
    let Some(tap_a) = HostTap::for_test(test, "hksa") else {
        return;
    };
    let g = probe_guest_with(
        snap.path(),
        &[
            "--net".into(),
            format!("fd={},mac={MAC_A}", tap_a.fd.as_raw_fd()),
        ],
    );
    snapshot(g, snap.path());
    drop(tap_a);

    // The pod's tap, with the host side of its network.
    let Some(tap_b) = HostTap::for_test(test, "hksb") else {
        return;
    };
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", &tap_b.name]);
    ip(&["link", "set", "dev", &tap_b.name, "up"]);
    let r = Guest::restore(
        snap.path(),
        &[
            "--net".into(),
            format!("fd={},mac={MAC_B}", tap_b.fd.as_raw_fd()),
        ],
        PROBE_PORT,
    )
    .unwrap();
    // The guest's interface keeps the address it read at probe time (the agent's to
    // change, issue 13 item 3); frames go out through the new tap whatever it is.
    let mut s = r.connect(PROBE_PORT).unwrap();
    s.write_all(b"READ /sys/class/net/eth0/address\n").unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    report(&format!(
        "eth0 after the restore: {} (template {MAC_A}, pod {MAC_B})",
        out.lines().nth(1).unwrap_or("?")
    ));
    r.command(&format!("IFUP eth0 {GUEST_IP} 24")).unwrap();

    // Host -> guest.
    let mut ctl = BufReader::new(r.connect(PROBE_PORT).unwrap());
    ctl.get_mut().write_all(b"TCPSINK 7100\n").unwrap();
    let mut line = String::new();
    ctl.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY", "{}", r.explain());
    let mut t = TcpStream::connect_timeout(&SocketAddr::from((GUEST_IP, 7100)), boot_timeout())
        .unwrap_or_else(|e| panic!("TCP connect to the restored guest: {e}\n{}", r.explain()));
    write_stream(&mut t, n, 21).unwrap();
    t.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    ctl.read_line(&mut reply).unwrap();
    assert_eq!(
        reply.trim(),
        format!("OK {n} {}", stream_hash(n, 21)),
        "{}",
        r.explain()
    );
    // Guest -> host.
    let listener = TcpListener::bind((HOST_IP, 7101)).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(boot_timeout())).unwrap();
        hash_reader(&mut c).unwrap()
    });
    r.command(&format!("TCPSOURCE {HOST_IP} 7101 {n} 22"))
        .unwrap();
    let h = reader.join().unwrap();
    assert_eq!((h.bytes(), h.value()), (n, stream_hash(n, 22)));
    assert_eq!(r.power_off().unwrap(), 0);
    drop(tap_b);
}

/// Runs `husk-vmm --restore-from dir` with a vsock device and returns (exit code, stderr).
fn restore_outcome(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let tmp = TempDir::new("bad-restore").unwrap();
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--restore-from")
        .arg(dir)
        .args(["--console", "off"])
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", tmp.path().join("v.sock").display()))
        .args(extra);
    let out = run_with_watchdog(&mut cmd, boot_timeout()).unwrap();
    (out.code(), out.stderr)
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn damaged_or_foreign_snapshots_are_refused_with_the_reason() {
    if !kvm_available("damaged_or_foreign_snapshots_are_refused_with_the_reason") {
        return;
    }
    let snap = TempDir::new("snap-bad").unwrap();
    let g = probe_guest(snap.path(), 1);
    snapshot(g, snap.path());
    let state = snap.path().join("vm.state");
    let memory = snap.path().join("vm.mem");
    let good = std::fs::read(&state).unwrap();
    let refused = |what: &str, want: &str| {
        let (code, stderr) = restore_outcome(snap.path(), &[]);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(want),
            "{what}: wanted {want:?} in\n{stderr}"
        );
        report(&format!("{what}: {}", stderr.trim()));
    };

    std::fs::write(&state, &good[..good.len() - 100]).unwrap();
    refused("truncated state", "truncated or appended to");
    let mut bad = good.clone();
    let i = bad.len() / 2;
    bad[i] ^= 1;
    std::fs::write(&state, &bad).unwrap();
    refused("one bit flipped", "SHA-256");
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&state, &bad).unwrap();
    refused("another format version", "version 99");
    std::fs::write(
        &state,
        b"\x7fELF\x02\x01\x01\0 not a snapshot, but long enough to have a header",
    )
    .unwrap();
    refused("a foreign file", "wrong magic");
    std::fs::write(&state, &good).unwrap();

    // The memory file: another snapshot's (its id changed), then cut short.
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&memory)
        .unwrap();
    let mut id = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut id, 16).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&mem, &[id[0] ^ 0xff], 16).unwrap();
    refused("a foreign memory file", "another snapshot");
    std::os::unix::fs::FileExt::write_all_at(&mem, &id, 16).unwrap();
    // Cut short, then put back as it was (the cut pages kept aside).
    let len = mem.metadata().unwrap().len();
    let mut tail = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut tail, len - (1 << 20)).unwrap();
    mem.set_len(len - (1 << 20)).unwrap();
    refused("a truncated memory file", "truncated or appended to");
    mem.set_len(len).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&mem, &tail, len - (1 << 20)).unwrap();

    // Devices other than the snapshot's: a second vsock is not possible, but a block
    // device that the snapshot did not have is.
    let img = snap.path().join("extra.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (code, stderr) = restore_outcome(
        snap.path(),
        &["--block", &format!("path={}", img.display())],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("do not fit the snapshot"), "{stderr}");
    report(&format!("other devices: {}", stderr.trim()));

    // And the untouched snapshot still restores.
    let r = Guest::restore(snap.path(), &[], PROBE_PORT).unwrap();
    assert_eq!(r.power_off().unwrap(), 0);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Cold boot to a first answer on vsock against restore to a first answer, interleaved,
/// in one session; the figures are printed, not asserted (`HUSK_SNAPSHOT_RUNS`, default
/// 5 each).
#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn restore_to_ready_against_cold_boot_to_ready() {
    if !kvm_available("restore_to_ready_against_cold_boot_to_ready") {
        return;
    }
    let runs: usize = std::env::var("HUSK_SNAPSHOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let snap = TempDir::new("snap-bench").unwrap();
    let g = probe_guest(snap.path(), 1);
    g.command("SYNC").unwrap();
    snapshot(g, snap.path());

    let mut cold = Vec::new();
    let mut restored = Vec::new();
    let mut cold_mem = Vec::new();
    let mut restored_mem = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let g = Guest::start(GuestOptions {
            vcpus: 1,
            memory_mib: 256,
            ..Default::default()
        })
        .unwrap();
        g.command("TICK").unwrap();
        cold.push(t.elapsed());
        cold_mem.push(pss_private_kib(g.pid().unwrap()));
        assert_eq!(g.power_off().unwrap(), 0);

        let t = Instant::now();
        let r = Guest::restore(snap.path(), &[], PROBE_PORT).unwrap();
        r.command("TICK").unwrap();
        restored.push(t.elapsed());
        restored_mem.push(pss_private_kib(r.pid().unwrap()));
        assert_eq!(r.power_off().unwrap(), 0);
    }
    let (c, r) = (median(&mut cold), median(&mut restored));
    report(&format!(
        "to ready (first vsock answer), {runs} interleaved runs each: cold boot median \
         {c:?}, restore median {r:?}: restore takes {:.3} of a cold boot ({:.1}x faster)",
        r.as_secs_f64() / c.as_secs_f64(),
        c.as_secs_f64() / r.as_secs_f64()
    ));
    report(&format!("cold boots: {cold:?}"));
    report(&format!("restores:   {restored:?}"));
    let avg = |v: &[(u64, u64)]| {
        let n = v.len() as u64;
        (
            v.iter().map(|x| x.0).sum::<u64>() / n,
            v.iter().map(|x| x.1).sum::<u64>() / n,
        )
    };
    let (cp, cv) = avg(&cold_mem);
    let (rp, rv) = avg(&restored_mem);
    report(&format!(
        "husk-vmm host memory when ready (KiB, mean): cold PSS {cp} private {cv}; restored \
         (alone) PSS {rp} private {rv}"
    ));
}
