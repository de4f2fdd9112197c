//! The agent in guests restored from one snapshot (a template): its Restored RPC makes
//! each guest its own. A template is booted to "agent ready" with a virtio-fs device it
//! never mounted and snapshotted; each clone is restored with its own virtiofsd serving a
//! busybox root, told Restored (or, for the control, not), then runs a container that
//! prints 64 bytes of /dev/urandom and the time. Clones told Restored must differ from
//! each other and keep the host's time; what the clones that were not told print is
//! reported (the danger the RPC removes), not asserted.
//! Boots guests: `#[ignore]`d for a plain `cargo test`, run by `make test`.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use husk_protocol::agent::{self, RestoredRequest};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::{stdio_attach, ttrpc, AGENT_VSOCK_PORT, STDIO_VSOCK_PORT};
use husk_tests::busybox_bundle::{self, SpecOptions};
use husk_tests::guest::{io_timeout, Guest, GuestOptions, TempDir, Virtiofsd};
use husk_tests::{boot_timeout, guest_initramfs, kvm_available};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(boot_timeout().as_nanos() as i64)
}

fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "snapshot_agent: {line}");
}

fn host_random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn now() -> (i64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// What one clone printed: 64 random bytes in hex, and its time in seconds.
struct Drawn {
    random: String,
    time: i64,
}

/// Restores `snap` with a virtiofsd serving a busybox root, optionally calls Restored,
/// and runs the container. Returns what it printed and the host's time around the run.
fn clone_draws(snap: &Path, restored: bool, name: &str) -> (Drawn, i64, i64) {
    let share = TempDir::new(&format!("clone-{name}")).unwrap();
    busybox_bundle::rootfs(share.path(), &["sh", "head", "od", "tr", "date", "echo"]).unwrap();
    let vfs = Virtiofsd::start(share.path(), share.path().join("vfs.sock"));
    let g = Guest::restore(
        snap,
        &[
            "--fs".into(),
            format!("tag=share,socket={}", vfs.socket.display()),
        ],
        AGENT_VSOCK_PORT,
    )
    .unwrap();
    let s = g.connect(AGENT_VSOCK_PORT).unwrap();
    s.set_read_timeout(None).unwrap();
    s.set_write_timeout(None).unwrap();
    let client = AgentClient::new(ttrpc::Client::new(s.into_raw_fd()).unwrap());
    let before = now().0;
    if restored {
        let mut r = RestoredRequest::new();
        (r.sec, r.nsec) = now();
        r.entropy = host_random(32);
        r.hostname = format!("clone-{name}");
        client
            .restored(ctx(), &r)
            .unwrap_or_else(|e| panic!("Restored: {e:?}\n{}", g.explain()));
    }
    let mut sb = agent::CreateSandboxRequest::new();
    let mut m = agent::Mount::new();
    m.type_ = "virtiofs".into();
    m.source = "share".into();
    m.destination = "/run/share".into();
    sb.shared_mounts = vec![m];
    client
        .create_sandbox(ctx(), &sb)
        .unwrap_or_else(|e| panic!("CreateSandbox: {e:?}\n{}", g.explain()));
    let id = "rng";
    let mut create = agent::CreateContainerRequest::new();
    create.container_id = id.into();
    let script = "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    create.oci_spec_json = serde_json::to_vec(&busybox_bundle::spec(
        &["sh", "-c", script],
        &SpecOptions {
            hostname: "c",
            ..Default::default()
        },
    ))
    .unwrap();
    create.rootfs_path = "/run/share/rootfs".into();
    let mut set = agent::StdioSet::new();
    set.stdout = true;
    create.stdio = Some(set).into();
    client
        .create_container(ctx(), &create)
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", g.explain()));
    let out = g.connect(STDIO_VSOCK_PORT).unwrap();
    let mut out = stdio_attach::attach(
        out,
        id,
        "",
        agent::StdioStream::STDIO_STREAM_STDOUT,
        io_timeout(),
    )
    .unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.start_container(ctx(), &start).unwrap();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let after = now().0;
    let mut lines = text.lines();
    let random = lines.next().unwrap_or_default().to_owned();
    let time = lines
        .next()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("container printed {text:?}\n{}", g.explain()));
    assert_eq!(random.len(), 128, "{text:?}");
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    let mut g = g;
    assert_eq!(g.wait_exit(boot_timeout()).unwrap(), 0, "{}", g.explain());
    (Drawn { random, time }, before, after)
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn clones_told_restored_draw_their_own_random_numbers_and_keep_the_hosts_time() {
    if !kvm_available("clones_told_restored_draw_their_own_random_numbers_and_keep_the_hosts_time")
    {
        return;
    }
    let dir = TempDir::new("snap-rng").unwrap();
    let template_share = dir.path().join("template-share");
    std::fs::create_dir(&template_share).unwrap();
    let snap = dir.path().join("snap");
    let vfs = Virtiofsd::start(&template_share, dir.path().join("t.sock"));
    let mut g = Guest::start(GuestOptions {
        vcpus: 1,
        memory_mib: 256,
        initramfs: Some(guest_initramfs()),
        ready_line: Some("husk-agent: ready".into()),
        args: vec![
            "--fs".into(),
            format!("tag=share,socket={}", vfs.socket.display()),
            "--snapshot-to".into(),
            snap.display().to_string(),
        ],
        ..Default::default()
    })
    .unwrap();
    g.signal(libc::SIGUSR2).unwrap();
    assert_eq!(g.wait_exit(boot_timeout()).unwrap(), 0, "{}", g.explain());
    drop(vfs);

    let (a, a0, a1) = clone_draws(&snap, true, "a");
    let (b, b0, b1) = clone_draws(&snap, true, "b");
    assert_ne!(
        a.random, b.random,
        "two clones told Restored drew the same bytes"
    );
    for (d, t0, t1, n) in [(&a, a0, a1, "a"), (&b, b0, b1, "b")] {
        assert!(
            t0 - 1 <= d.time && d.time <= t1 + 1,
            "clone {n}'s clock says {}, the host's was {t0}..{t1}",
            d.time
        );
    }
    report(&format!(
        "told Restored: clone a {}.. at {}, clone b {}.. at {} (host {a0}..{b1})",
        &a.random[..16],
        a.time,
        &b.random[..16],
        b.time
    ));
    // The control: clones not told. What they draw is the snapshot's RNG state's.
    let (c, _, _) = clone_draws(&snap, false, "c");
    let (d, _, _) = clone_draws(&snap, false, "d");
    report(&format!(
        "not told: clone c {}.., clone d {}..: {}; their clocks {} and {} (the template's \
         time, host now {})",
        &c.random[..16],
        &d.random[..16],
        if c.random == d.random {
            "THE SAME bytes"
        } else {
            "different bytes (the kernel reseeded on its own)"
        },
        c.time,
        d.time,
        now().0
    ));
}
