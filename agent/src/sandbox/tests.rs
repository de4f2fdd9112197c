//! The sandbox's checks (ids, arguments, set-up requests) before anything is created.

use super::*;

/// A sandbox with no containers (no root needed: nothing is created).
fn sandbox() -> Sandbox {
    let root = std::env::temp_dir().join(format!("husk-sandbox-unit-{}", std::process::id()));
    Sandbox::new(
        &root,
        Arc::new(Reaper::new()),
        Target::Host(root.join("sandbox")),
    )
    .unwrap()
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.unwrap_err().kind()
}

#[test]
fn ids_are_checked() {
    assert!(check_id("container id", "abc-1_2.3").is_ok());
    for bad in ["", "a/b", ".", "..", "a\0b", &"x".repeat(MAX_ID_LEN + 1)] {
        assert!(check_id("container id", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn unknown_ids_are_not_found() {
    let sb = sandbox();
    assert_eq!(kind(sb.process("nope", "")), ErrorKind::NotFound);
    assert_eq!(kind(sb.process("nope", "e")), ErrorKind::NotFound);
    assert_eq!(kind(sb.start_container("nope")), ErrorKind::NotFound);
    assert_eq!(kind(sb.remove_container("nope", true)), ErrorKind::NotFound);
    assert_eq!(
        kind(sb.signal_process("nope", "", 9, false)),
        ErrorKind::NotFound
    );
    assert_eq!(kind(sb.close_stdin("nope", "")), ErrorKind::NotFound);
    assert_eq!(kind(sb.resize_tty("nope", "", 1, 1)), ErrorKind::NotFound);
    let stdio = StdioSet::new();
    assert_eq!(
        kind(sb.exec_process(
            "nope",
            "e",
            br#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
            &stdio
        )),
        ErrorKind::NotFound
    );
    assert!(sb.lookup("nope", "").unwrap_err().contains("not found"));
    assert_eq!(
        kind(sb.with_container("nope", |c| c.pid())),
        ErrorKind::NotFound
    );
}

#[test]
fn bad_arguments_are_invalid_before_anything_is_created() {
    let sb = sandbox();
    let stdio = StdioSet::new();
    let create = |id: &str, json: &[u8], rootfs: &str| {
        kind(sb.create_container(id, json, rootfs, false, &stdio))
    };
    assert_eq!(create("c", b"{", "/x"), ErrorKind::InvalidArgument);
    assert_eq!(create("", b"{}", "/x"), ErrorKind::InvalidArgument);
    // No rootfs_path and no root.path.
    let no_root =
        br#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;
    let err = sb
        .create_container("c", no_root, "", false, &stdio)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("No root"), "{err}");
    assert_eq!(
        create("c", no_root, "relative/rootfs"),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.exec_process("c", "", b"{}", &stdio)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.exec_process("c", "e", b"not json", &stdio)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.exec_process(
            "c",
            "e",
            br#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#,
            &stdio
        )),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.signal_process("c", "", 0, false)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.signal_process("c", "", 65, false)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.write_stdin("c", "", &vec![0; MAX_STDIN_WRITE + 1])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.resize_tty("c", "", 70_000, 1)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sb.set_time(1, 1_000_000_000)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind(sb.set_time(-1, 0)), ErrorKind::InvalidArgument);
    // On the host the clock is left alone, successfully.
    sb.set_time(1, 0).unwrap();
    assert!(sb.container_ids().is_empty());
}

#[test]
fn sandbox_setup_checks_everything_before_applying() {
    let sb = sandbox();
    let mut req = CreateSandboxRequest::new();
    req.hostname = "ok-host".into();
    let mut m = husk_protocol::agent::Mount::new();
    m.destination = "/run/../etc".into();
    req.shared_mounts = vec![m];
    let err = sb.setup(&req).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // The hostname was not written: the bad mount was found first.
    let Target::Host(root) = &sb.target else {
        panic!("host target")
    };
    assert!(!root.join("etc/hostname").exists());
}

#[test]
fn restored_checks_everything_before_applying() {
    use husk_protocol::agent::RestoredRequest;
    // Each test gets a root of its own: `sandbox()` shares one per process.
    let root = std::env::temp_dir().join(format!(
        "husk-sandbox-restored-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let sb = Sandbox::new(
        &root,
        Arc::new(Reaper::new()),
        Target::Host(root.join("sandbox")),
    )
    .unwrap();
    let hostname = root.join("sandbox/etc/hostname");
    let good = || {
        let mut r = RestoredRequest::new();
        r.sec = 1_700_000_000;
        r.entropy = vec![0x5a; 32];
        r.hostname = "pod-7".into();
        r
    };
    let mut r = good();
    r.entropy = vec![1; 31];
    let e = sb.restored(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("entropy: 31 bytes"), "{e}");
    r.entropy = vec![1; 513];
    assert_eq!(kind(sb.restored(&r)), ErrorKind::InvalidArgument);
    let mut r = good();
    r.nsec = 1_000_000_000;
    assert_eq!(kind(sb.restored(&r)), ErrorKind::InvalidArgument);
    let mut r = good();
    r.hostname = "bad/host".into();
    assert_eq!(kind(sb.restored(&r)), ErrorKind::InvalidArgument);
    // Nothing was applied by the refused requests.
    assert!(!hostname.exists());

    // A good one, on the host: the host's clock and RNG are left alone, the hostname
    // lands in the state root with /etc/hosts.
    sb.restored(&good()).unwrap();
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "pod-7\n");
    let hosts = std::fs::read_to_string(root.join("sandbox/etc/hosts")).unwrap();
    assert!(hosts.contains("localhost"), "{hosts}");
    // No hostname: left as it was.
    let mut r = good();
    r.hostname.clear();
    sb.restored(&r).unwrap();
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "pod-7\n");
    let _ = std::fs::remove_dir_all(&root);
}
