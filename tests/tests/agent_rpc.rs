//! The real husk-agent as PID 1 of a real guest serves the agent API (ttrpc) on vsock port
//! 1024, reached from the host through husk-vmm's hybrid vsock socket, as the shim will.
//! Boots a guest: `#[ignore]`d for a plain `cargo test`, run by `make test`.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use husk_protocol::agent::{self, ServingStatus};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use husk_protocol::{stdio_attach, AGENT_VSOCK_PORT, API_VERSION, STDIO_VSOCK_PORT};
use husk_tests::busybox_bundle::{self, SpecOptions};
use husk_tests::guest::{io_timeout, Guest, GuestOptions, TempDir, Virtiofsd};
use husk_tests::{boot_timeout, guest_initramfs, kvm_available, ready_field};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(boot_timeout().as_nanos() as i64)
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn agent_serves_health_and_version_over_vsock() {
    if !kvm_available("agent_serves_health_and_version_over_vsock") {
        return;
    }
    let g = Guest::start(GuestOptions {
        vcpus: 1,
        memory_mib: 256,
        initramfs: Some(guest_initramfs()),
        ready_line: Some("husk-agent: ready".into()),
        ..Default::default()
    })
    .unwrap();
    let stream = g.connect(AGENT_VSOCK_PORT).unwrap();
    stream.set_read_timeout(None).unwrap();
    stream.set_write_timeout(None).unwrap();
    let client = AgentClient::new(ttrpc::Client::new(stream.into_raw_fd()).unwrap());

    let h = client
        .health(ctx(), &agent::HealthRequest::new())
        .unwrap_or_else(|e| panic!("Health: {e:?}\n{}", g.explain()));
    assert_eq!(
        h.status.enum_value(),
        Ok(ServingStatus::SERVING_STATUS_SERVING)
    );
    let v = client
        .version(ctx(), &agent::VersionRequest::new())
        .unwrap();
    assert_eq!(v.api_version, API_VERSION);
    // The kernel the guest runs, as the agent's ready line also says.
    let console = g.console_text();
    assert_eq!(
        Some(v.kernel_release.as_str()),
        ready_field(&console, "kernel"),
        "{console}"
    );
    // An unknown container is NOT_FOUND.
    match client.start_container(ctx(), &agent::StartContainerRequest::new()) {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), Code::NOT_FOUND),
        other => panic!("StartContainer: {other:?}"),
    }
    client.health(ctx(), &agent::HealthRequest::new()).unwrap();
}

/// A busybox root file system under `dir/rootfs`.
fn busybox_rootfs(dir: &Path) -> std::path::PathBuf {
    busybox_bundle::rootfs(
        dir,
        &["sh", "echo", "sleep", "stty", "cat", "true", "hostname"],
    )
    .unwrap()
}

/// A minimal OCI runtime spec running `args`.
fn spec(args: &[&str]) -> Vec<u8> {
    let options = SpecOptions {
        hostname: "in-guest",
        devpts: true,
        ..Default::default()
    };
    serde_json::to_vec(&busybox_bundle::spec(args, &options)).unwrap()
}

fn stdio_set(stdin: bool, stdout: bool, stderr: bool) -> agent::StdioSet {
    let mut s = agent::StdioSet::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    s
}

/// Opens one stdio stream on vsock port 1025 (framed StdioAttach).
fn attach(g: &Guest, id: &str, exec_id: &str, stream: agent::StdioStream) -> UnixStream {
    let s = g.connect(STDIO_VSOCK_PORT).unwrap();
    stdio_attach::attach(s, id, exec_id, stream, io_timeout())
        .unwrap_or_else(|e| panic!("attach {id}/{exec_id} {stream:?}: {e}"))
}

fn read_all(mut s: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf
    })
}

fn exec_req(
    id: &str,
    exec_id: &str,
    args: &[&str],
    terminal: bool,
    set: agent::StdioSet,
) -> agent::ExecProcessRequest {
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process_json = serde_json::to_vec(&serde_json::json!({
        "args": args, "env": ["PATH=/bin"], "cwd": "/", "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
    }))
    .unwrap();
    req.stdio = Some(set).into();
    req
}

fn wait(client: &AgentClient, id: &str, exec_id: &str) -> agent::WaitProcessResponse {
    let mut req = agent::WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    client.wait_process(ctx(), &req).unwrap()
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn agent_runs_containers_from_a_virtio_fs_rootfs() {
    if !kvm_available("agent_runs_containers_from_a_virtio_fs_rootfs") {
        return;
    }
    let shared = TempDir::new("agent-share").unwrap();
    let sock_dir = TempDir::new("agent-vfs").unwrap();
    busybox_rootfs(shared.path());
    let vfs = Virtiofsd::start(shared.path(), sock_dir.path().join("vfs.sock"));
    let mut g = Guest::start(GuestOptions {
        vcpus: 2,
        memory_mib: 512,
        initramfs: Some(guest_initramfs()),
        ready_line: Some("husk-agent: ready".into()),
        args: vec![
            "--fs".into(),
            format!("tag=share,socket={}", vfs.socket.display()),
        ],
        ..Default::default()
    })
    .unwrap();
    let stream = g.connect(AGENT_VSOCK_PORT).unwrap();
    stream.set_read_timeout(None).unwrap();
    stream.set_write_timeout(None).unwrap();
    let client = AgentClient::new(ttrpc::Client::new(stream.into_raw_fd()).unwrap());

    // The sandbox: the virtio-fs share mounted where the rootfs will be.
    let mut sb = agent::CreateSandboxRequest::new();
    sb.hostname = "pod".into();
    let mut m = agent::Mount::new();
    m.type_ = "virtiofs".into();
    m.source = "share".into();
    m.destination = "/run/share".into();
    sb.shared_mounts = vec![m];
    client
        .create_sandbox(ctx(), &sb)
        .unwrap_or_else(|e| panic!("CreateSandbox: {e:?}\n{}", g.explain()));

    let id = "c1";
    let mut create = agent::CreateContainerRequest::new();
    create.container_id = id.into();
    create.oci_spec_json = spec(&["sh", "-c", "echo started; hostname; exec sleep 1000"]);
    create.rootfs_path = "/run/share/rootfs".into();
    create.stdio = Some(stdio_set(false, true, false)).into();
    client
        .create_container(ctx(), &create)
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", g.explain()));
    let init_out = read_all(attach(&g, id, "", agent::StdioStream::STDIO_STREAM_STDOUT));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.start_container(ctx(), &start).unwrap();

    // An exec with separate stdout and stderr.
    client
        .exec_process(
            ctx(),
            &exec_req(
                id,
                "e1",
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                false,
                stdio_set(false, true, true),
            ),
        )
        .unwrap_or_else(|e| panic!("ExecProcess: {e:?}\n{}", g.explain()));
    let out = read_all(attach(
        &g,
        id,
        "e1",
        agent::StdioStream::STDIO_STREAM_STDOUT,
    ));
    let err = read_all(attach(
        &g,
        id,
        "e1",
        agent::StdioStream::STDIO_STREAM_STDERR,
    ));
    let s = wait(&client, id, "e1");
    assert_eq!(s.exit_status, 3);
    assert_eq!(out.join().unwrap(), b"out\n");
    assert_eq!(err.join().unwrap(), b"err\n");

    // An exec with a terminal, resized before it reports its size.
    client
        .exec_process(
            ctx(),
            &exec_req(
                id,
                "t1",
                &["sh", "-c", "read x; stty size"],
                true,
                stdio_set(true, true, false),
            ),
        )
        .unwrap();
    let out = read_all(attach(
        &g,
        id,
        "t1",
        agent::StdioStream::STDIO_STREAM_STDOUT,
    ));
    let mut input = attach(&g, id, "t1", agent::StdioStream::STDIO_STREAM_STDIN);
    let mut resize = agent::TtyWinResizeRequest::new();
    resize.container_id = id.into();
    resize.exec_id = "t1".into();
    resize.rows = 40;
    resize.columns = 120;
    client.tty_win_resize(ctx(), &resize).unwrap();
    input.write_all(b"go\n").unwrap();
    assert_eq!(wait(&client, id, "t1").exit_status, 0);
    let text = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    assert!(text.contains("40 120"), "{text:?}");

    // The guest's cgroup v2: ps, stats, update, pause/resume.
    let mut ps = agent::ListProcessesRequest::new();
    ps.container_id = id.into();
    let pids = client.list_processes(ctx(), &ps).unwrap().pids;
    assert!(!pids.is_empty(), "no processes listed");
    let mut update = agent::UpdateContainerRequest::new();
    update.container_id = id.into();
    update.resources_json = br#"{"memory":{"limit":134217728},"pids":{"limit":64}}"#.to_vec();
    client.update_container(ctx(), &update).unwrap();
    let mut stats = agent::StatsContainerRequest::new();
    stats.container_id = id.into();
    let st = client.stats_container(ctx(), &stats).unwrap();
    assert!(st.memory.usage > 0, "{st:?}");
    assert_eq!((st.memory.limit, st.pids.limit), (128 << 20, 64), "{st:?}");
    assert_eq!(st.pids.current, pids.len() as u64, "{st:?}");
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = id.into();
    client.pause_container(ctx(), &pause).unwrap();
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = id.into();
    client.resume_container(ctx(), &resume).unwrap();

    // SIGKILL to the init: 137, after its output.
    let mut kill = agent::SignalProcessRequest::new();
    kill.container_id = id.into();
    kill.signal = 9;
    client.signal_process(ctx(), &kill).unwrap();
    let s = wait(&client, id, "");
    assert_eq!((s.exit_status, s.signal), (137, 9));
    assert_eq!(init_out.join().unwrap(), b"started\nin-guest\n");
    let mut rm = agent::RemoveContainerRequest::new();
    rm.container_id = id.into();
    client.remove_container(ctx(), &rm).unwrap();

    // DestroySandbox answers, then the guest powers off cleanly.
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    assert_eq!(g.wait_exit(boot_timeout()).unwrap(), 0, "{}", g.explain());
}
