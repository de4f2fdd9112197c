//! husk-vmm's virtio devices in a real guest: hybrid vsock, virtio-fs (with the real
//! virtiofsd) and virtio-blk (an ext4 image), driven from the host through the guest probe
//! (`tests/guest-probe`, /init of the probe initramfs).
//! Like the boot tests these need a KVM that can boot a standard guest: `#[ignore]`d for a
//! plain `cargo test`, run by `make test` (in the test host where needed).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_guest_probe::{hash_reader, stream_hash, write_stream, Hasher};
use husk_protocol::hybrid_vsock::ConnectError;
use husk_tests::guest::{io_timeout, try_connect_vsock, Guest, GuestOptions, TempDir, Virtiofsd};
use husk_tests::kvm_available;

const MIB: u64 = 1 << 20;

fn guest(args: Vec<String>) -> Guest {
    Guest::start(GuestOptions {
        vcpus: 2,
        memory_mib: 512,
        args,
        ..Default::default()
    })
    .unwrap()
}

/// Sends `n` bytes of `stream(seed)` into `w`.
fn send_stream(w: &mut impl Write, n: u64, seed: u64) {
    write_stream(w, n, seed).expect("send to the guest");
}

fn hash_all(r: &mut impl Read) -> Hasher {
    hash_reader(r).expect("read from the guest")
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn vsock_256_mib_each_way_with_matching_checksums() {
    if !kvm_available("vsock_256_mib_each_way_with_matching_checksums") {
        return;
    }
    let g = guest(vec![]);
    // HUSK_VSOCK_TEST_MIB shrinks the transfer when debugging by hand.
    let n = std::env::var("HUSK_VSOCK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        * MIB;

    // Host -> guest: the probe hashes what it receives.
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(b"SINK\n").unwrap();
    let t = Instant::now();
    send_stream(&mut s, n, 1);
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let up = t.elapsed();
    assert_eq!(
        reply.trim(),
        format!("OK {n} {}", stream_hash(n, 1)),
        "{}",
        g.explain()
    );

    // Guest -> host on a host-initiated connection.
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(format!("SOURCE {n} 2\n").as_bytes()).unwrap();
    let t = Instant::now();
    let h = hash_all(&mut s);
    let down = t.elapsed();
    assert_eq!(h.bytes(), n, "{}", g.explain());
    assert_eq!(h.value(), stream_hash(n, 2));

    // Guest -> host on a guest-initiated connection (the VMM dials <uds>_<port>).
    let listener = UnixListener::bind(format!("{}_6000", g.vsock_uds.display())).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(husk_tests::guest::io_timeout()))
            .unwrap();
        hash_all(&mut c)
    });
    let dial_n = n;
    let t = Instant::now();
    g.command(&format!("DIAL 6000 {dial_n} 3")).unwrap();
    let h = reader.join().unwrap();
    let dial = t.elapsed();
    assert_eq!(h.bytes(), dial_n);
    assert_eq!(h.value(), stream_hash(dial_n, 3));
    eprintln!(
        "vsock {} MiB: host->guest {:.1} MiB/s, guest->host {:.1} MiB/s, guest-initiated {:.1} MiB/s",
        n / MIB,
        mib_per_s(n, up),
        mib_per_s(n, down),
        mib_per_s(dial_n, dial)
    );
    let t = Instant::now();
    assert_eq!(g.power_off().unwrap(), 0);
    eprintln!("power off took {:?}", t.elapsed());
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn vsock_64_concurrent_connections() {
    if !kvm_available("vsock_64_concurrent_connections") {
        return;
    }
    let g = guest(vec![]);
    let uds = g.vsock_uds.clone();
    let n = 256 * 1024;
    let threads: Vec<_> = (0..64u64)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let s = husk_tests::guest::connect_vsock(
                    &uds,
                    husk_guest_probe::PROBE_PORT,
                    Duration::from_secs(120),
                )
                .unwrap();
                s.set_read_timeout(Some(io_timeout())).unwrap();
                s.set_write_timeout(Some(io_timeout())).unwrap();
                let mut w = s.try_clone().unwrap();
                w.write_all(b"ECHO\n").unwrap();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || hash_all(&mut r));
                send_stream(&mut w, n, 100 + i);
                w.shutdown(Shutdown::Write).unwrap();
                let h = reader.join().unwrap();
                (i, h.bytes(), h.value())
            })
        })
        .collect();
    for t in threads {
        let Ok((i, bytes, hash)) = t.join() else {
            panic!("a connection failed\n{}", g.explain());
        };
        assert_eq!(bytes, n, "connection {i}\n{}", g.explain());
        assert_eq!(hash, stream_hash(n, 100 + i), "connection {i}");
    }
    assert_eq!(g.power_off().unwrap(), 0);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn vsock_refuses_a_port_nobody_listens_on() {
    if !kvm_available("vsock_refuses_a_port_nobody_listens_on") {
        return;
    }
    let g = guest(vec![]);
    let e = try_connect_vsock(&g.vsock_uds, 7777).unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<ConnectError>(),
            Some(ConnectError::Refused { port: 7777 })
        ),
        "{e:#}\n{}",
        g.explain()
    );
    // Garbage instead of CONNECT is refused too, and the VMM keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(&g.vsock_uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"HELLO there\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).starts_with("OK"));
    g.command("SYNC").unwrap();
    assert_eq!(g.power_off().unwrap(), 0);
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn vsock_guest_that_never_reads_does_not_grow_the_vmm() {
    if !kvm_available("vsock_guest_that_never_reads_does_not_grow_the_vmm") {
        return;
    }
    let g = guest(vec![]);
    let rss_before = rss_kib(g.pid().unwrap());
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(b"HOLD 600\n").unwrap();
    s.set_nonblocking(true).unwrap();
    // Push until the VMM stops taking data: the guest's credit and our buffer are bounded.
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(10) && sent < 512 * MIB {
        match s.write(&chunk) {
            Ok(k) => {
                sent += k as u64;
                idle_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let rss_after = rss_kib(g.pid().unwrap());
    assert!(
        sent < 64 * MIB,
        "the VMM accepted {sent} bytes for a guest that never reads"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "VMM RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(s);
    g.command("SYNC").unwrap();
    assert_eq!(g.power_off().unwrap(), 0);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn virtio_fs_shares_files_both_ways() {
    if !kvm_available("virtio_fs_shares_files_both_ways") {
        return;
    }
    let shared = TempDir::new("fs-shared").unwrap();
    let sock_dir = TempDir::new("fs-sock").unwrap();
    std::fs::write(shared.path().join("hello.txt"), b"written by the host\n").unwrap();
    let vfs = Virtiofsd::start(shared.path(), sock_dir.path().join("vfs.sock"));
    let g = guest(vec![
        "--fs".into(),
        format!("tag=shared,socket={}", vfs.socket.display()),
    ]);
    g.command("MOUNT virtiofs shared /mnt/shared").unwrap();

    // The guest reads what the host wrote.
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(b"READ /mnt/shared/hello.txt\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "OK 20\nwritten by the host\n",
        "{}",
        g.explain()
    );

    // The host reads what the guest wrote.
    let data = b"written by the guest";
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(format!("WRITE /mnt/shared/from-guest.txt {}\n", data.len()).as_bytes())
        .unwrap();
    s.write_all(data).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.trim(), "OK", "{}", g.explain());
    assert_eq!(
        std::fs::read(shared.path().join("from-guest.txt")).unwrap(),
        data
    );

    // A file the host creates later shows up in the guest.
    std::fs::write(shared.path().join("later.txt"), b"later").unwrap();
    g.command("WAITFILE /mnt/shared/later.txt 60").unwrap();
    let reply = g.command("HASHFILE /mnt/shared/later.txt").unwrap();
    let mut h = Hasher::default();
    h.update(b"later");
    assert_eq!(reply, format!("OK 5 {}", h.value()));

    g.command("UMOUNT /mnt/shared").unwrap();
    assert_eq!(g.power_off().unwrap(), 0);
}

fn mkfs_ext4(img: &Path, mib: u64) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(mib * MIB).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(img)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is installed by make test");
    assert!(st.success());
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn virtio_blk_ext4_written_in_the_guest_is_seen_by_the_host() {
    if !kvm_available("virtio_blk_ext4_written_in_the_guest_is_seen_by_the_host") {
        return;
    }
    let dir = TempDir::new("blk").unwrap();
    let img = dir.path().join("disk.ext4");
    mkfs_ext4(&img, 64);
    let g = guest(vec!["--block".into(), format!("path={}", img.display())]);
    g.command("MOUNT ext4 /dev/vda /mnt/disk").unwrap();
    let n = 3 * MIB + 512;
    let mut s = g.connect(husk_guest_probe::PROBE_PORT).unwrap();
    s.write_all(format!("WRITE /mnt/disk/data.bin {n}\n").as_bytes())
        .unwrap();
    send_stream(&mut s, n, 9);
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.trim(), "OK", "{}", g.explain());
    g.command("SYNC").unwrap();
    g.command("UMOUNT /mnt/disk").unwrap();
    assert_eq!(g.power_off().unwrap(), 0);

    // The host reads the file back out of the image with debugfs.
    let out = Command::new("debugfs")
        .args(["-R", "cat /data.bin"])
        .arg(&img)
        .stderr(Stdio::null())
        .output()
        .expect("debugfs (e2fsprogs)");
    let mut h = Hasher::default();
    h.update(&out.stdout);
    assert_eq!(h.bytes(), n);
    assert_eq!(h.value(), stream_hash(n, 9));
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn virtio_blk_read_only_refuses_writes() {
    if !kvm_available("virtio_blk_read_only_refuses_writes") {
        return;
    }
    let dir = TempDir::new("blk-ro").unwrap();
    let img = dir.path().join("disk.ext4");
    mkfs_ext4(&img, 16);
    let before = std::fs::read(&img).unwrap();
    let g = guest(vec!["--block".into(), format!("path={},ro", img.display())]);
    // A read-write mount of a read-only disk fails; a read-only one works.
    assert!(g.command("MOUNT ext4 /dev/vda /mnt/disk").is_err());
    g.command("MOUNT ext4 /dev/vda /mnt/ro ro")
        .unwrap_or_else(|e| panic!("{e}"));
    g.command("FIND /mnt/ro").unwrap();
    assert_eq!(g.power_off().unwrap(), 0);
    assert!(std::fs::read(&img).unwrap() == before, "the image changed");
}
