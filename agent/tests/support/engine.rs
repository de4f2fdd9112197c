//! The engine fixture of the container tests: one engine per test process
//! under a per-suite temporary dir, a lock so that container tests run one
//! at a time (leak checks see only their own processes), and the busybox
//! rootfs with extra applets.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use husk_agent::container::Engine;

use super::busybox_bundle;

/// The engine and the lock that serialises the suite's containers; `None`
/// (with a SKIPPED line naming the suite) when not root.
pub fn engine(suite: &str) -> Option<(MutexGuard<'static, ()>, &'static Engine)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: container {suite} tests need root (namespaces, mounts, cgroups)");
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let engine = ENGINE
        .get_or_init(|| Engine::new(test_dir(suite).join("engine")).expect("engine state dir"));
    Some((guard, engine))
}

/// This process's temporary dir for the suite.
pub fn test_dir(suite: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-{suite}-test-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// The suite's busybox rootfs with `applets` linked in as well.
pub fn rootfs(suite: &str, applets: &[&str]) -> PathBuf {
    let rootfs = busybox_bundle::busybox_rootfs(&test_dir(suite)).expect("busybox rootfs");
    for applet in applets {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link).expect("applet link");
        }
    }
    rootfs
}
