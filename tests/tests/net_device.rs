//! husk-vmm's virtio-net device in a real guest. The test makes a tap on this host (a
//! unique name, a private /24), opens it itself and hands the fd to husk-vmm as the shim
//! does (`--net fd=N,mac=...,mtu=...`), then drives the guest probe over vsock: the guest's
//! eth0 must have the configured MAC and MTU, and TCP streams of a few MiB must cross both
//! ways with matching checksums. Needs root (CAP_NET_ADMIN) and a KVM that boots standard
//! guests: `#[ignore]`d for a plain `cargo test`, run by `make test` (in the test host).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_guest_probe::{hash_reader, stream_hash, write_stream, PROBE_PORT};
use husk_tests::guest::{io_timeout, Guest, GuestOptions};
use husk_tests::kvm_available;
use husk_tests::tap::{ip, HostTap};

const MIB: u64 = 1 << 20;
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 77, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 77, 2);
const MAC: &str = "02:48:55:53:4b:01";
const MTU: u32 = 1400;

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn eth0_has_the_mac_and_mtu_and_tcp_crosses_both_ways() {
    let test = "eth0_has_the_mac_and_mtu_and_tcp_crosses_both_ways";
    if !kvm_available(test) {
        return;
    }
    let Some(tap) = HostTap::for_test(test, "hknet") else {
        return;
    };
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", &tap.name]);
    ip(&[
        "link",
        "set",
        "dev",
        &tap.name,
        "mtu",
        &MTU.to_string(),
        "up",
    ]);
    // The device's info line (acked features) and warnings, whatever HUSK_LOG the run has.
    let log = std::env::var("HUSK_LOG").unwrap_or_else(|_| "warn".into());
    std::env::set_var(
        "HUSK_LOG",
        format!("{log},husk_vmm::devices::virtio::net=info"),
    );
    let g = Guest::start(GuestOptions {
        vcpus: 2,
        memory_mib: 512,
        args: vec![
            "--net".into(),
            format!("fd={},mac={MAC},mtu={MTU}", tap.fd.as_raw_fd()),
        ],
        ..Default::default()
    })
    .unwrap();
    // husk-vmm has its own copy of the fd; ours keeps the tap alive for the test's end.

    let read = |path: &str| -> String {
        let mut s = g.connect(PROBE_PORT).unwrap();
        s.write_all(format!("READ {path}\n").as_bytes()).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let (head, body) = all.split_once('\n').unwrap_or((&all, ""));
        assert!(
            head.starts_with("OK"),
            "READ {path}: {all}\n{}",
            g.explain()
        );
        body.trim().to_owned()
    };
    assert_eq!(read("/sys/class/net/eth0/address"), MAC, "{}", g.explain());
    assert_eq!(read("/sys/class/net/eth0/mtu"), MTU.to_string());
    let features = read("/sys/class/net/eth0/device/features");
    eprintln!("guest eth0 virtio features (bit 0 first): {features}");
    g.command(&format!("IFUP eth0 {GUEST_IP} 24")).unwrap();
    // The carrier (VIRTIO_NET_S_LINK_UP) and the interface are up (the kernel's link
    // watch updates operstate a little later: a deadline, not a timing assertion).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = read("/sys/class/net/eth0/operstate");
        if state == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eth0 operstate {state:?}\n{}",
            g.explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let n = std::env::var("HUSK_NET_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
        * MIB;

    // Host -> guest: the probe listens, the host connects (the first frames also resolve
    // ARP both ways) and sends; the probe hashes what it received.
    let mut ctl = g.connect(PROBE_PORT).unwrap();
    ctl.write_all(b"TCPSINK 7000\n").unwrap();
    let mut ctl = BufReader::new(ctl);
    let mut line = String::new();
    ctl.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY", "{}", g.explain());
    let addr = SocketAddr::from((GUEST_IP, 7000));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("TCP connect to the guest: {e}\n{}", g.explain()));
    s.set_write_timeout(Some(io_timeout())).unwrap();
    let t = Instant::now();
    write_stream(&mut s, n, 11).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    ctl.read_line(&mut reply).unwrap();
    let up = t.elapsed();
    assert_eq!(
        reply.trim(),
        format!("OK {n} {}", stream_hash(n, 11)),
        "{}",
        g.explain()
    );
    drop(s);

    // Guest -> host: the host listens, the probe connects and sends.
    let listener = TcpListener::bind((HOST_IP, 7001)).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(io_timeout())).unwrap();
        hash_reader(&mut c).unwrap()
    });
    let t = Instant::now();
    g.command(&format!("TCPSOURCE {HOST_IP} 7001 {n} 12"))
        .unwrap();
    let h = reader.join().unwrap();
    let down = t.elapsed();
    assert_eq!(h.bytes(), n, "{}", g.explain());
    assert_eq!(h.value(), stream_hash(n, 12));
    eprintln!(
        "virtio-net {} MiB over TCP: host->guest {:.1} MiB/s, guest->host {:.1} MiB/s \
         (emulated test host: compare, do not read as speeds)",
        n / MIB,
        mib_per_s(n, up),
        mib_per_s(n, down)
    );
    let stderr = g.stderr_text();
    let acked = stderr
        .lines()
        .find(|l| l.contains("driver acked"))
        .unwrap_or_else(|| panic!("no acked-features line\n{}", g.explain()))
        .to_owned();
    eprintln!("{acked}");
    assert!(acked.contains("VERSION_1"), "{acked}");
    assert!(acked.contains("MAC") && acked.contains("MTU"), "{acked}");
    assert_eq!(g.power_off().unwrap(), 0);
    drop(tap);
}

#[test]
#[ignore = "creates a VM on KVM: `make test` runs it, in the test host where needed"]
fn an_fd_that_is_not_a_tap_is_a_clear_error() {
    if !kvm_available("an_fd_that_is_not_a_tap_is_a_clear_error") {
        return;
    }
    // /dev/null, inherited (no close-on-exec).
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    assert!(fd >= 0);
    // SAFETY: just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let out = Command::new(husk_tests::vmm_bin())
        .arg("--kernel")
        .arg(husk_tests::guest_kernel())
        .args(["--console", "off", "--net"])
        .arg(format!("fd={}", fd.as_raw_fd()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a tun/tap device (TUNGETIFF)"),
        "{stderr}"
    );
    // A closed fd is refused before any VM is made.
    let closed = fd.as_raw_fd();
    drop(fd);
    let out = Command::new(husk_tests::vmm_bin())
        .arg("--kernel")
        .arg(husk_tests::guest_kernel())
        .args(["--net", &format!("fd={closed}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not an open file descriptor"),
        "{stderr}"
    );
}
