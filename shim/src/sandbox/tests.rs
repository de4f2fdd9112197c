//! The shim sandbox's pure parts: socket path limits, pid files, exit descriptions and
//! waits, process-name checks, clean-up of a pod that is gone.

use super::cleanup::process_is;
use super::*;

#[test]
fn socket_paths_must_fit_sun_path() {
    let id = "a".repeat(64);
    let ok = PathBuf::from(format!("/run/husk/k8s.io/{id}/virtiofsd.sock"));
    check_socket_path(&ok).unwrap();
    let long = PathBuf::from(format!(
        "/tmp/husk-ctrd-587-5015850933808377403/hs/k8s.io/{id}/virtiofsd.sock"
    ));
    let e = check_socket_path(&long).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("128 bytes") && text.contains("state_dir"),
        "{text}"
    );
}

#[test]
fn exits_are_described() {
    assert_eq!(describe_exit(137), "killed by signal 9");
    assert!(describe_exit(159).contains("SIGSYS: a seccomp violation"));
    assert_eq!(describe_exit(2), "exited with status 2");
}

#[test]
fn exits_wait_times_out_and_sees_records() {
    let e = Arc::new(Exits::default());
    assert_eq!(e.wait(5, Duration::from_millis(20)), None);
    let e2 = Arc::clone(&e);
    let t = std::thread::spawn(move || e2.wait(5, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(20));
    e.record(5, 137);
    assert_eq!(t.join().unwrap(), Some(137));
}

#[test]
fn process_names_are_checked() {
    let me = std::process::id() as i32;
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    assert!(process_is(me, &name));
    assert!(!process_is(me, "husk-vmm"));
    assert!(!process_is(0, "x"));
}

#[test]
fn cleanup_of_a_missing_pod_is_a_no_op() {
    let c = Config::default();
    cleanup_dead_pod(
        &crate::mounts::tests::FakeHost::default(),
        Path::new("/nonexistent/husk/pod"),
        &c,
    )
    .unwrap();
}
