//! The shim's pod template through a private containerd, driven with `ctr` as a user
//! would: the first pod of the configured size builds the template and is restored from
//! it, later ones are restored without a build, each its own guest (random numbers,
//! hostname, MAC and address); a corrupt template is rebuilt, one husk-vmm refuses is
//! left for a cold boot and rebuilt, never used; `template = false` and a pod of another
//! size boot cold. What the shim did is read from its log lines (containerd's log).
//! `HUSK_TEMPLATE_PODS` (default 3 in `make test`, 20 in `make test-template`) pods on one
//! bridge, each restored, each with its own random numbers, hostname, MAC, address and
//! the host's clock.
//!
//! Boots guests: `#[ignore]`d for a plain `cargo test`, run by `make test` (in the test
//! host where needed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::cni::Network;
use husk_tests::containerd::{Containerd, HuskToml, RUNTIME};
use husk_tests::{kvm_available, Outcome};

/// The template of `ctr run` pods: the default size, no network namespace, no NIC.
const PLAIN: &str = "1cpu-256mib-0nic";
/// The template of pods on a CNI network (one NIC).
const NETWORKED: &str = "1cpu-256mib-1nic";
/// Templates are on by default; these tests say so anyway, so that they test templates
/// whatever the default or `HUSK_TEST_SHIM_CONFIG` says.
const ON: &str = "template = true";
/// What a container prints: a line of 32 random bytes in hex, its hostname, and exits 7.
const SCRIPT: &str =
    "echo hello; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; exit 7";

fn containerd(extra: &str) -> Containerd {
    let c = Containerd::start(&HuskToml {
        extra: extra.into(),
        ..Default::default()
    })
    .unwrap();
    c.import_busybox().unwrap();
    c
}

fn assert_clean(c: &Containerd, when: &str) {
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "{when}: left behind:\n{left}\n{}", c.log());
}

/// The lines of the shim's log that mention `needle`.
fn log_lines(c: &Containerd, needle: &str) -> Vec<String> {
    c.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// `ctr run --rm` of [`SCRIPT`]: exit code 7, "hello"; returns (random hex, hostname).
fn run_script(c: &Containerd, id: &str, extra: &[&str]) -> (String, String) {
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.extend([
        husk_tests::containerd::BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        SCRIPT,
    ]);
    let o = c.ctr(&a).unwrap();
    script_output(c, id, &o)
}

fn script_output(c: &Containerd, id: &str, o: &Outcome) -> (String, String) {
    assert_eq!(
        o.code(),
        Some(7),
        "{id}: {o:?}\n{}\n{}",
        c.pod_logs(id),
        c.log()
    );
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{id}: {:?}", o.stdout);
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1].len(), 64, "{id}: 32 bytes in hex: {:?}", lines[1]);
    (lines[1].to_owned(), lines[2].to_owned())
}

/// The published template's description, as JSON.
fn meta(c: &Containerd, shape: &str) -> serde_json::Value {
    let p = c.template_dir().join(shape).join("current/template.json");
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}\n{}", p.display(), c.log()));
    serde_json::from_str(&text).unwrap()
}

/// KiB of data (not holes) in a snapshot's memory file.
fn data_kib(mem: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(mem).unwrap();
    let len = f.metadata().unwrap().len();
    let extents = husk_vmm::guest_ram::data_extents(f.as_raw_fd(), 0, len).unwrap();
    extents.iter().map(|(a, b)| b - a).sum::<u64>() >> 10
}

fn current(c: &Containerd, shape: &str) -> PathBuf {
    c.template_dir().join(shape).join("current")
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn pods_restored_from_one_template_are_each_their_own() {
    if !kvm_available("pods_restored_from_one_template_are_each_their_own") {
        return;
    }
    let c = containerd(ON);
    let (r1, h1) = run_script(&c, "tpl-a", &[]);
    assert_eq!(c.pod_restored("tpl-a"), Some(true), "{}", c.log());
    let built = log_lines(&c, "there is none: building it");
    assert_eq!(built.len(), 1, "one build: {built:?}");
    let m = meta(&c, PLAIN);
    // The guest zeroed its free memory before the snapshot (PrepareSnapshot), which then
    // holds only pages in use.
    let zeroed = log_lines(&c, "MiB of free memory in");
    let mib: Vec<u64> = zeroed
        .iter()
        .filter_map(|l| {
            l.split("guest zeroed ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        mib.len() == 1 && mib[0] > 0,
        "PrepareSnapshot zeroed nothing: {zeroed:?}\n{}",
        c.log()
    );
    eprintln!(
        "template: built in {} ms; guest zeroed {} MiB; {} KiB of data in vm.mem; {}",
        m["build_ms"],
        mib[0],
        data_kib(&current(&c, PLAIN).join("vm.mem")),
        log_lines(&c, "ready after").join("\n")
    );
    let (r2, h2) = run_script(&c, "tpl-b", &[]);
    assert_eq!(c.pod_restored("tpl-b"), Some(true), "{}", c.log());
    assert_eq!(
        log_lines(&c, "building it").len(),
        1,
        "the second pod built nothing"
    );
    assert_eq!(meta(&c, PLAIN), m, "the same template");
    assert_ne!(
        r1, r2,
        "two pods from one template drew the same random bytes"
    );
    assert_eq!((h1.as_str(), h2.as_str()), ("tpl-a", "tpl-b"));
    // The template is root's and read-only; nothing of a pod is left, the template is.
    for f in ["vm.state", "vm.mem"] {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let md = std::fs::metadata(current(&c, PLAIN).join(f)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o444, "{f}");
        assert_eq!(md.uid(), 0, "{f}");
    }
    assert_clean(&c, "after two restored pods");

    // Exec and a detached task's exit on a restored pod, as on a booted one (`cat`
    // here waited for an EOF on stdin that `ctr task exec` never sends).
    let o = c
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            husk_tests::containerd::BUSYBOX_IMAGE,
            "tpl-c",
            "sleep",
            "600",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.log());
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "tpl-c",
            "sh",
            "-c",
            "echo in-exec; exit 4",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(4), "{o:?}\n{}", c.log());
    assert_eq!(o.stdout, "in-exec\n", "{o:?}");
    assert_eq!(c.pod_restored("tpl-c"), Some(true), "{}", c.log());
    let o = c.ctr(&["task", "rm", "-f", "tpl-c"]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    let o = c.ctr(&["container", "rm", "tpl-c"]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert_clean(&c, "after exec in a restored pod");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn pods_restored_on_one_bridge_have_their_own_mac_and_address() {
    if !kvm_available("pods_restored_on_one_bridge_have_their_own_mac_and_address") {
        return;
    }
    let c = containerd(ON);
    let net = Network::new(None).unwrap();
    let a = net.add_pod().unwrap();
    let b = net.add_pod().unwrap();
    // Pod a serves; pod b reads its page over the bridge: two clones of one template on
    // one L2 segment, which works only with a MAC each. (`timeout`, not wget's -T: this
    // busybox's `wget -T` dies of SIGSEGV at once, in booted pods too.)
    let serve = "echo from-a > /tmp/index.html && httpd -f -p 8080 -h /tmp";
    let o = c
        .run_in_netns(RUNTIME, &a.netns, "net-a", true, &["sh", "-c", serve])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.log());
    let script = format!(
        "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; \
         for i in $(seq 1 60); do timeout 5 wget -q -O - http://{}:8080/ && exit 0; sleep 1; done; exit 1",
        a.ip
    );
    let o = c
        .run_in_netns(RUNTIME, &b.netns, "net-b", false, &["sh", "-c", &script])
        .unwrap();
    assert_eq!(
        o.code(),
        Some(0),
        "{o:?}\n{}\n{}",
        c.pod_logs("net-b"),
        c.log()
    );
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some(b.mac.as_str()), "{}", o.stdout);
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains(&format!("{}/", b.ip))),
        "{}",
        o.stdout
    );
    assert_eq!(lines.last().copied(), Some("from-a"), "{}", o.stdout);
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "mac",
            "net-a",
            "cat",
            "/sys/class/net/eth0/address",
        ])
        .unwrap();
    assert_eq!(o.stdout.trim(), a.mac, "{o:?}");
    for id in ["net-a", "net-b"] {
        assert_eq!(c.pod_restored(id), Some(true), "{id}\n{}", c.log());
    }
    assert!(current(&c, NETWORKED).join("template.json").is_file());
    assert_eq!(
        meta(&c, NETWORKED)["macs"],
        serde_json::json!(["02:68:75:73:6b:00"])
    );
    for cmd in [
        &["task", "rm", "-f", "net-a"][..],
        &["container", "rm", "net-a"],
    ] {
        let o = c.ctr(cmd).unwrap();
        assert_eq!(o.code(), Some(0), "{o:?}");
    }
    assert_clean(&c, "after two networked pods");
}

/// Seconds since the epoch, now.
fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn many_pods_restored_from_one_template_on_one_bridge() {
    if !kvm_available("many_pods_restored_from_one_template_on_one_bridge") {
        return;
    }
    let n: usize = std::env::var("HUSK_TEMPLATE_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    assert!(n >= 2, "HUSK_TEMPLATE_PODS must be 2 or more");
    let c = containerd(ON);
    let net = Network::new(None).unwrap();
    let pods: Vec<_> = (0..n).map(|_| net.add_pod().unwrap()).collect();
    // Random bytes, hostname, the guest's clock, its MAC and address; then exit 9.
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; \
                  date +%s; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; exit 9";
    let mut randoms = std::collections::BTreeSet::new();
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("many-{i}");
        let before = epoch_secs();
        let o = c
            .run_in_netns(RUNTIME, &pod.netns, &id, false, &["sh", "-c", script])
            .unwrap();
        let after = epoch_secs();
        assert_eq!(o.code(), Some(9), "{id}: {o:?}\n{}", c.log());
        assert_eq!(c.pod_restored(&id), Some(true), "{id}\n{}", c.log());
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert_eq!(lines.len(), 5, "{id}: {:?}", o.stdout);
        assert_eq!(lines[0].len(), 64, "{id}: 32 bytes in hex: {:?}", lines[0]);
        assert!(
            randoms.insert(lines[0].to_owned()),
            "{id} drew random bytes another pod drew: {}",
            lines[0]
        );
        assert_eq!(lines[1], id, "hostname");
        // Within 1 s of the host's clock while the pod ran. The template was snapshotted
        // before the first pod: a clock left as the snapshot had it would be behind by
        // the time since then, which the later pods' runs make seconds.
        let guest: f64 = lines[2].parse().unwrap();
        assert!(
            guest >= before.floor() - 1.0 && guest <= after.ceil() + 1.0,
            "{id}: guest clock {guest}, host {before:.1}..{after:.1}"
        );
        assert_eq!(lines[3], pod.mac, "{id}: MAC");
        assert!(
            lines[4].contains(&format!(" {}/", pod.ip)),
            "{id}: address {:?}, want {}",
            lines[4],
            pod.ip
        );
        eprintln!("{id}: restored, {:.1} s", after - before);
    }
    assert_eq!(
        log_lines(&c, "there is none: building it").len(),
        1,
        "one template build for {n} pods"
    );
    assert_clean(&c, &format!("after {n} restored pods"));
}

/// Flips one byte of `file` at `offset` (root writes a read-only file).
fn flip(file: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn a_corrupt_or_refused_template_is_rebuilt_never_used() {
    if !kvm_available("a_corrupt_or_refused_template_is_rebuilt_never_used") {
        return;
    }
    let c = containerd(ON);
    run_script(&c, "bad-a", &[]);
    let first = meta(&c, PLAIN);
    // Guest memory written after the build: seen before any VMM reads it.
    std::thread::sleep(Duration::from_millis(50));
    flip(&current(&c, PLAIN).join("vm.mem"), 1 << 20);
    let (_, host) = run_script(&c, "bad-b", &[]);
    assert_eq!(host, "bad-b");
    let rebuilt = log_lines(
        &c,
        "the template is corrupt (vm.mem changed after it was built)",
    );
    assert_eq!(rebuilt.len(), 1, "{}", c.log());
    assert_eq!(c.pod_restored("bad-b"), Some(true), "{}", c.log());
    let second = meta(&c, PLAIN);
    assert_ne!(first["memory"], second["memory"], "a new vm.mem");

    // A change its description was made to agree with (as a bug, or a disk, could):
    // husk-vmm refuses the state (its SHA-256). The pod boots cold; the template is
    // marked and the next pod rebuilds it.
    let dir = current(&c, PLAIN);
    let state = dir.join("vm.state");
    std::thread::sleep(Duration::from_millis(50));
    flip(&state, std::fs::metadata(&state).unwrap().len() - 10);
    let mut m = second.clone();
    m["state"] = fingerprint(&state);
    std::fs::write(
        dir.join("template.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let (_, host) = run_script(&c, "bad-c", &[]);
    assert_eq!(host, "bad-c");
    assert_eq!(c.pod_restored("bad-c"), Some(false), "{}", c.log());
    let cold = log_lines(
        &c,
        "pod bad-c: booting it cold: The pod's VM did not come up from its template",
    );
    assert_eq!(cold.len(), 1, "{}", c.log());
    // The reason spans lines (the VMM's log follows the first): the whole message.
    let log = c.log();
    let at = log.find("pod bad-c: booting it cold").unwrap();
    let end = log[at..].find("\"\n").map_or(log.len(), |e| at + e);
    assert!(
        log[at..end].contains("SHA-256"),
        "husk-vmm's reason: {}",
        &log[at..end]
    );
    run_script(&c, "bad-d", &[]);
    assert_eq!(c.pod_restored("bad-d"), Some(true), "{}", c.log());
    assert_eq!(
        log_lines(&c, "the template is corrupt (it failed a pod").len(),
        1,
        "{}",
        c.log()
    );
    assert_ne!(meta(&c, PLAIN)["state"], m["state"], "a new vm.state");
    assert_clean(&c, "after the corrupt templates");
}

/// `template.json`'s record of a file (the shim's `Fingerprint`).
fn fingerprint(p: &Path) -> serde_json::Value {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    serde_json::json!({
        "dev": m.dev(), "ino": m.ino(), "size": m.size(),
        "mtime": [m.mtime(), m.mtime_nsec()], "ctime": [m.ctime(), m.ctime_nsec()],
    })
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn templates_off_and_pods_of_another_size_boot_cold() {
    if !kvm_available("templates_off_and_pods_of_another_size_boot_cold") {
        return;
    }
    let c = containerd("template = false");
    run_script(&c, "off-a", &[]);
    assert_eq!(c.pod_restored("off-a"), Some(false), "{}", c.log());
    assert!(!log_lines(&c, "pod off-a: booting cold: templates are off").is_empty());
    assert!(!c.template_dir().exists(), "no template without templates");
    drop(c);

    let c = containerd(ON);
    // A 64 MiB limit makes a 320 MiB VM: no template is made for it.
    run_script(&c, "big-a", &["--memory-limit", "67108864"]);
    assert_eq!(c.pod_restored("big-a"), Some(false), "{}", c.log());
    assert!(
        !log_lines(
            &c,
            "pod big-a: booting cold: its VM (1 vCPU(s), 320 MiB) is not the configured size"
        )
        .is_empty(),
        "{}",
        c.log()
    );
    assert!(!c.template_dir().exists(), "{}", c.log());
    assert_clean(&c, "after cold pods");
}
