//! The template cache without a VM: its key, the states of a shape's directory (missing,
//! building, ready, stale, corrupt), who builds, and what a pod is told, with a fake
//! builder that writes snapshot files as husk-vmm would.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch dir with a kernel, an initramfs and a VMM, and a config pointing at them
/// and at a template dir inside it.
struct Scratch {
    dir: PathBuf,
    config: Config,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "husk-template-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["vmlinux", "initramfs.cpio", "husk-vmm"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let config = Config {
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            vmm: dir.join("husk-vmm"),
            state_dir: dir.join("state"),
            template: true,
            template_dir: Some(dir.join("templates")),
            ..Config::default()
        };
        Self { dir, config }
    }

    fn key(&self, shape: Shape) -> TemplateKey {
        key_with(&self.config, shape, "boot-1").unwrap()
    }

    fn cache(&self, shape: Shape) -> Cache {
        Cache::open(&self.config.template_dir(), shape).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SHAPE: Shape = Shape {
    vcpus: 1,
    memory_mib: 256,
    nics: 1,
};

/// Writes what husk-vmm would; counts its builds; fails when told to.
#[derive(Default)]
struct FakeBuilder {
    builds: Cell<u32>,
    fail: Cell<bool>,
}

impl BuildVm for FakeBuilder {
    fn build(&self, req: &BuildRequest<'_>) -> Result<(), TemplateError> {
        self.builds.set(self.builds.get() + 1);
        assert_eq!(req.macs.len(), req.shape.nics);
        assert!(req
            .macs
            .iter()
            .enumerate()
            .all(|(i, m)| *m == template_mac(i)));
        assert!(
            req.out.starts_with(req.work),
            "the snapshot dir is the build's"
        );
        if self.fail.get() {
            return Err(TemplateError::Snapshot("the guest never answered".into()));
        }
        let n = self.builds.get();
        std::fs::write(req.out.join(STATE_FILE), format!("state {n}")).unwrap();
        std::fs::write(req.out.join(MEMORY_FILE), vec![n as u8; 8192]).unwrap();
        Ok(())
    }
}

fn restore(a: Acquired) -> Lease {
    match a {
        Acquired::Restore(l) => l,
        Acquired::Cold(why) => panic!("cold: {why}"),
    }
}

fn cold(a: Acquired) -> String {
    match a {
        Acquired::Restore(l) => panic!("restored from {}", l.dir().display()),
        Acquired::Cold(why) => why,
    }
}

/// Timestamps move in clock ticks (a few ms): a change right after a stat could keep
/// them.
fn tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn the_key_changes_with_every_input_and_says_which() {
    let s = Scratch::new("key");
    let k = s.key(SHAPE);
    assert_eq!(k, s.key(SHAPE), "the same files, the same key");
    assert_eq!(k.differs(&k), None);
    let other = Shape { nics: 0, ..SHAPE };
    assert_eq!(k.differs(&s.key(other)), Some("another VM shape"));
    assert_eq!(
        k.differs(&key_with(&s.config, SHAPE, "boot-2").unwrap()),
        Some("the host rebooted")
    );
    let mut c = s.config.clone();
    c.kernel_cmdline = "quiet husk.log=debug".into();
    assert_eq!(
        k.differs(&key_with(&c, SHAPE, "boot-1").unwrap()),
        Some("the kernel command line changed")
    );
    // A file rewritten in place (same size, same inode), and one replaced by a rename
    // (as an install does).
    tick();
    std::fs::write(&s.config.kernel, "VMLINUX").unwrap();
    assert_eq!(k.differs(&s.key(SHAPE)), Some("the kernel changed"));
    let k = s.key(SHAPE);
    let new = s.dir.join("initramfs.new");
    std::fs::write(&new, "initramfs.cpio").unwrap();
    std::fs::rename(&new, &s.config.initramfs).unwrap();
    assert_eq!(k.differs(&s.key(SHAPE)), Some("the initramfs changed"));
    let k = s.key(SHAPE);
    tick();
    std::fs::write(&s.config.vmm, "husk-vmm 2").unwrap();
    assert_eq!(k.differs(&s.key(SHAPE)), Some("husk-vmm changed"));
    // A file that is not there is an error naming it.
    let mut c = s.config.clone();
    c.kernel = s.dir.join("missing");
    let e = key_with(&c, SHAPE, "b").unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    // The real key reads this host's boot id.
    assert_eq!(key(&s.config, SHAPE).unwrap().host_boot.len(), 36);
}

#[test]
fn a_shape_dir_is_missing_ready_stale_or_corrupt() {
    let s = Scratch::new("states");
    let key = s.key(SHAPE);
    let cache = s.cache(SHAPE);
    assert_eq!(inspect(&cache.dir, &key), State::Missing);
    let b = FakeBuilder::default();
    drop(restore(cache.acquire(&s.config, &key, &b).unwrap()));
    let State::Ready(t) = inspect(&cache.dir, &key) else {
        panic!("{:?}", inspect(&cache.dir, &key));
    };
    assert_eq!(t.dir, cache.dir.join("current"));
    assert_eq!(t.meta.key, key);
    assert_eq!(t.meta.macs, ["02:68:75:73:6b:00"]);

    // Stale: built for another kernel.
    tick();
    std::fs::write(&s.config.kernel, "another kernel").unwrap();
    let new_key = s.key(SHAPE);
    assert_eq!(
        inspect(&cache.dir, &new_key),
        State::Stale("the kernel changed".into())
    );
    // Corrupt: the memory file written since, the state file gone, the description
    // unreadable or missing, a refusal recorded.
    let mem = t.dir.join(MEMORY_FILE);
    std::fs::set_permissions(&mem, PermissionsExt::from_mode(0o644)).unwrap();
    tick();
    std::fs::write(&mem, vec![0xffu8; 8192]).unwrap();
    let State::Corrupt(why) = inspect(&cache.dir, &key) else {
        panic!("a changed vm.mem is corrupt");
    };
    assert!(why.contains("vm.mem changed"), "{why}");
    std::fs::remove_file(t.dir.join(STATE_FILE)).unwrap();
    let State::Corrupt(why) = inspect(&cache.dir, &key) else {
        panic!("a missing vm.state is corrupt");
    };
    assert!(why.contains("vm.state"), "{why}");
    std::fs::write(t.dir.join(TemplateMeta::FILE), "{").unwrap();
    let State::Corrupt(why) = inspect(&cache.dir, &key) else {
        panic!("a torn template.json is corrupt");
    };
    assert!(why.contains("template.json"), "{why}");
    std::fs::remove_file(t.dir.join(TemplateMeta::FILE)).unwrap();
    assert_eq!(
        inspect(&cache.dir, &key),
        State::Corrupt("template.json is missing".into())
    );
}

#[test]
fn the_first_pod_builds_the_next_ones_restore_and_a_refused_template_is_rebuilt() {
    let s = Scratch::new("build");
    let key = s.key(SHAPE);
    let cache = s.cache(SHAPE);
    let b = FakeBuilder::default();
    let first = restore(cache.acquire(&s.config, &key, &b).unwrap());
    assert_eq!(b.builds.get(), 1);
    // Published whole: read-only files, nothing of the build left.
    for f in [STATE_FILE, MEMORY_FILE] {
        let m = std::fs::metadata(first.dir().join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o444, "{f}");
    }
    let left: Vec<String> = std::fs::read_dir(&cache.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| n == "lock" || n == "current"),
        "{left:?}"
    );
    // Pods share it (shared locks).
    let second = restore(cache.acquire(&s.config, &key, &b).unwrap());
    assert_eq!(b.builds.get(), 1, "built once");
    assert_eq!(second.template, first.template);
    drop(second);
    // A pod it failed: every shim sees it as corrupt; the next one builds anew.
    let refused_state = first.template.meta.state.clone();
    first.refused("husk-vmm: cannot restore: bad magic");
    let State::Corrupt(why) = inspect(&cache.dir, &key) else {
        panic!("a refused template is corrupt");
    };
    assert!(why.contains("bad magic"), "{why}");
    let third = restore(cache.acquire(&s.config, &key, &b).unwrap());
    assert_eq!(b.builds.get(), 2);
    assert_ne!(third.template.meta.state, refused_state, "a new template");
    assert!(
        !cache.dir.join(Refusal::FILE).exists(),
        "the refusal goes with the template"
    );
}

#[test]
fn while_one_shim_builds_others_boot_cold_and_never_see_half_a_template() {
    let s = Scratch::new("busy");
    let key = s.key(SHAPE);
    let cache = s.cache(SHAPE);
    let b = FakeBuilder::default();
    // Another shim's build: the exclusive lock.
    let builder_lock = cache.lock().unwrap();
    assert!(flock(&builder_lock, libc::LOCK_EX | libc::LOCK_NB).unwrap());
    // Its half-written build dir is not the template.
    std::fs::create_dir_all(cache.dir.join("build-1/snapshot")).unwrap();
    std::fs::write(cache.dir.join("build-1/snapshot/vm.state"), "half").unwrap();
    let why = cold(cache.acquire(&s.config, &key, &b).unwrap());
    assert!(why.contains("another shim is building"), "{why}");
    assert_eq!(b.builds.get(), 0);
    // That shim died: its lock went with it, its leftovers go with the next build.
    drop(builder_lock);
    drop(restore(cache.acquire(&s.config, &key, &b).unwrap()));
    assert!(!cache.dir.join("build-1").exists());
    assert_eq!(b.builds.get(), 1);

    // A stale template in use by a pod restoring from it is not replaced under it.
    let in_use = restore(cache.acquire(&s.config, &key, &b).unwrap());
    let later = key_with(&s.config, SHAPE, "boot-2").unwrap();
    let why = cold(cache.acquire(&s.config, &later, &b).unwrap());
    assert!(why.contains("stale (the host rebooted)"), "{why}");
    assert!(why.contains("restoring from it"), "{why}");
    assert_eq!(b.builds.get(), 1);
    drop(in_use);
    let rebuilt = restore(cache.acquire(&s.config, &later, &b).unwrap());
    assert_eq!(b.builds.get(), 2);
    assert_eq!(rebuilt.template.meta.key, later);
}

#[test]
fn a_failed_build_boots_cold_and_is_not_retried_for_a_while() {
    let s = Scratch::new("fail");
    let key = s.key(SHAPE);
    let cache = s.cache(SHAPE);
    let b = FakeBuilder::default();
    b.fail.set(true);
    let why = cold(cache.acquire(&s.config, &key, &b).unwrap());
    assert!(why.contains("the guest never answered"), "{why}");
    assert_eq!(
        inspect(&cache.dir, &key),
        State::Missing,
        "nothing published"
    );
    let why = cold(cache.acquire(&s.config, &key, &b).unwrap());
    assert!(
        why.contains("last build") && why.contains("failed"),
        "{why}"
    );
    assert_eq!(b.builds.get(), 1, "not retried at once");
    // A new key (a fixed kernel) is tried at once; and an old failure is retried.
    b.fail.set(false);
    tick();
    std::fs::write(&s.config.kernel, "fixed kernel").unwrap();
    drop(restore(
        cache.acquire(&s.config, &s.key(SHAPE), &b).unwrap(),
    ));
    assert_eq!(b.builds.get(), 2);
    assert!(!cache.dir.join(BuildFailure::FILE).exists());
    let old = BuildFailure {
        key: s.key(SHAPE),
        reason: "x".into(),
        at: unix_now() - RETRY_AFTER.as_secs() - 1,
    };
    persist::write(&cache.dir, &old).unwrap();
    std::fs::remove_dir_all(cache.dir.join("current")).unwrap();
    drop(restore(
        cache.acquire(&s.config, &s.key(SHAPE), &b).unwrap(),
    ));
    assert_eq!(b.builds.get(), 3);
    // A torn failed.json (a shim killed mid-write, another version) is as if there were
    // none: the pod is not failed by it, the template is built.
    std::fs::write(cache.dir.join(BuildFailure::FILE), "{\"version\": 1, \"da").unwrap();
    std::fs::remove_dir_all(cache.dir.join("current")).unwrap();
    drop(restore(
        cache.acquire(&s.config, &s.key(SHAPE), &b).unwrap(),
    ));
    assert_eq!(b.builds.get(), 4);
}

#[test]
fn templates_only_for_the_configured_size_and_never_when_off() {
    let s = Scratch::new("policy");
    let b = FakeBuilder::default();
    let mut off = s.config.clone();
    off.template = false;
    let why = cold(acquire(&off, SHAPE, &b));
    assert!(why.contains("template = false"), "{why}");
    let bigger = Shape {
        memory_mib: 512,
        ..SHAPE
    };
    let why = cold(acquire(&s.config, bigger, &b));
    assert!(why.contains("not the configured size"), "{why}");
    let many = Shape {
        nics: MAX_NICS + 1,
        ..SHAPE
    };
    assert!(cold(acquire(&s.config, many, &b)).contains("NICs"));
    assert!(
        !s.config.template_dir().exists(),
        "nothing is made for a pod that boots cold"
    );
    assert_eq!(b.builds.get(), 0);
    drop(restore(acquire(&s.config, SHAPE, &b)));
    assert_eq!(b.builds.get(), 1);
    assert!(s
        .config
        .template_dir()
        .join("1cpu-256mib-1nic/current")
        .is_dir());
    let mode = std::fs::metadata(s.config.template_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "templates are root's only");
}

#[test]
fn restored_is_told_the_time_entropy_hostname_and_each_nics_mac() {
    let s = Scratch::new("restored");
    let b = FakeBuilder::default();
    let shape = Shape { nics: 1, ..SHAPE };
    let lease = restore(acquire(&s.config, shape, &b));
    let nic = Nic {
        veth: "eth0".into(),
        veth_index: 2,
        tap: "tap0_husk".into(),
        mac: [0x0a, 0x58, 0x0a, 0x59, 0, 5],
        mtu: 1500,
    };
    let e = host_entropy(64).unwrap();
    assert_eq!(e.len(), 64);
    assert_ne!(e, host_entropy(64).unwrap(), "two draws differ");
    let r = restored_request(&lease.template, "pod-a", &[nic], e.clone());
    assert_eq!(r.hostname, "pod-a");
    assert_eq!(r.entropy, e);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - r.sec).abs() <= 2, "{} vs {now}", r.sec);
    assert!(r.nsec < 1_000_000_000);
    assert_eq!(r.interfaces.len(), 1);
    assert_eq!(r.interfaces[0].template_hw_addr, "02:68:75:73:6b:00");
    assert_eq!(r.interfaces[0].hw_addr, "0a:58:0a:59:00:05");
}
