//! The agent API end to end: `husk-agent serve` on Unix sockets, driven
//! through the generated ttrpc client and the stdio port, as the shim
//! drives the agent in the guest. Busybox containers; needs root (the
//! tests say SKIPPED without it). On a cgroup v1/hybrid host the agent
//! test build uses libcontainer's v1 manager (a dev-dependency feature).

mod support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, DNSConfig,
    DestroySandboxRequest, ExecProcessRequest, Mount, RemoveContainerRequest, SetGuestTimeRequest,
    SignalProcessRequest, StartContainerRequest, StdioSet, StdioStream, TtyWinResizeRequest,
    WaitProcessRequest, WaitProcessResponse, WriteStdinRequest,
};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use support::agent::{ctx, ctx_secs, health_ok, Agent};
use support::busybox_bundle;

const OUT: StdioStream = StdioStream::STDIO_STREAM_STDOUT;
const ERR: StdioStream = StdioStream::STDIO_STREAM_STDERR;
const IN: StdioStream = StdioStream::STDIO_STREAM_STDIN;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: agent API tests need root (namespaces, mounts, cgroups)");
        return false;
    }
    true
}

fn rootfs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-api-rootfs-{}", std::process::id()));
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    busybox_bundle::busybox_rootfs(&dir).expect("busybox rootfs")
}

fn spec_json(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let spec = busybox_bundle::spec(args).expect("spec");
    let mut json = serde_json::to_value(&spec).expect("spec to json");
    edit(&mut json);
    serde_json::to_vec(&json).expect("json")
}

fn stdio(stdin: bool, stdout: bool, stderr: bool) -> StdioSet {
    let mut s = StdioSet::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    s
}

fn create_req(id: &str, spec: Vec<u8>, set: StdioSet) -> CreateContainerRequest {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = spec;
    req.rootfs_path = rootfs().display().to_string();
    req.stdio = Some(set).into();
    req
}

fn create(c: &AgentClient, id: &str, args: &[&str], set: StdioSet) -> Result<u32> {
    let req = create_req(id, spec_json(args, |_| {}), set);
    Ok(c.create_container(ctx(), &req)
        .with_context(|| format!("create {id}"))?
        .pid)
}

fn start(c: &AgentClient, id: &str) -> Result<()> {
    let mut req = StartContainerRequest::new();
    req.container_id = id.into();
    c.start_container(ctx(), &req)
        .with_context(|| format!("start {id}"))?;
    Ok(())
}

fn wait(c: &AgentClient, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    c.wait_process(ctx_secs(60), &req)
        .with_context(|| format!("wait {id}/{exec_id}"))
}

fn remove(c: &AgentClient, id: &str, force: bool) -> ttrpc::Result<()> {
    let mut req = RemoveContainerRequest::new();
    req.container_id = id.into();
    req.force = force;
    c.remove_container(ctx(), &req).map(|_| ())
}

fn signal(c: &AgentClient, id: &str, exec_id: &str, sig: u32, all: bool) -> ttrpc::Result<()> {
    let mut req = SignalProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.signal = sig;
    req.all = all;
    c.signal_process(ctx(), &req).map(|_| ())
}

fn exec(
    c: &AgentClient,
    id: &str,
    exec_id: &str,
    args: &[&str],
    terminal: bool,
    set: StdioSet,
) -> ttrpc::Result<u32> {
    let process = serde_json::json!({
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
    });
    let mut req = ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process_json = serde_json::to_vec(&process).unwrap();
    req.stdio = Some(set).into();
    c.exec_process(ctx(), &req).map(|r| r.pid)
}

fn joined(h: thread::JoinHandle<std::io::Result<Vec<u8>>>) -> Result<Vec<u8>> {
    Ok(h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??)
}

/// The code of a ttrpc error status.
fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Create, attach stdout and stderr, start, wait, remove.
fn run(
    agent: &Agent,
    c: &AgentClient,
    id: &str,
    args: &[&str],
) -> Result<(Vec<u8>, Vec<u8>, WaitProcessResponse)> {
    create(c, id, args, stdio(false, true, true))?;
    let out = agent.read_stream(id, "", OUT)?;
    let err = agent.read_stream(id, "", ERR)?;
    start(c, id)?;
    let status = wait(c, id, "")?;
    // WaitProcess answered: both streams must already be complete.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(out.is_finished() && err.is_finished()) {
        if Instant::now() > deadline {
            bail!("WaitProcess answered before the output streams were closed");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let (out, err) = (joined(out)?, joined(err)?);
    remove(c, id, false)?;
    Ok((out, err, status))
}

#[test]
fn create_start_wait_with_separate_stdout_and_stderr() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("basic")?;
    let c = agent.client()?;
    let (out, err, status) = run(
        &agent,
        &c,
        "api-basic",
        &[
            "sh",
            "-c",
            "printf 'hello\\nworld\\n'; printf oops >&2; exit 3",
        ],
    )?;
    assert_eq!(out, b"hello\nworld\n");
    assert_eq!(err, b"oops");
    assert_eq!(status.exit_status, 3);
    assert_eq!(status.signal, 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    assert!(status.exited_at_unix_nano > 0 && status.exited_at_unix_nano <= now);
    agent.assert_alive()
}

#[test]
fn exactly_one_mib_of_stdout() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("mib")?;
    let c = agent.client()?;
    // 16-byte lines, 65536 of them: exactly 1 MiB.
    let (out, err, status) = run(
        &agent,
        &c,
        "api-mib",
        &["sh", "-c", "yes abcdefghijklmno | head -c 1048576"],
    )?;
    assert_eq!(out.len(), 1 << 20);
    assert!(
        out == b"abcdefghijklmno\n".repeat(65536),
        "stdout bytes differ"
    );
    assert_eq!(err, b"");
    assert_eq!(status.exit_status, 0);
    Ok(())
}

#[test]
fn exit_42_kill_9_and_sigterm_to_init() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("status")?;
    let c = agent.client()?;
    let (_, _, s) = run(&agent, &c, "api-exit42", &["sh", "-c", "exit 42"])?;
    assert_eq!((s.exit_status, s.signal), (42, 0));

    create(&c, "api-kill9", &["sleep", "100"], stdio(false, true, true))?;
    let out = agent.read_stream("api-kill9", "", OUT)?;
    start(&c, "api-kill9")?;
    signal(&c, "api-kill9", "", 9, false)?;
    let s = wait(&c, "api-kill9", "")?;
    assert_eq!((s.exit_status, s.signal), (137, 9));
    assert_eq!(joined(out)?, b"");
    remove(&c, "api-kill9", false)?;

    // The container's init gets SIGTERM (its signal mask is not the
    // agent's) and its handler runs.
    let script = "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.1; done";
    create(
        &c,
        "api-term",
        &["sh", "-c", script],
        stdio(false, true, false),
    )?;
    let mut out = agent.attach("api-term", "", OUT)?;
    start(&c, "api-term")?;
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready)?;
    assert_eq!(&ready, b"ready\n");
    signal(&c, "api-term", "", 15, false)?;
    let s = wait(&c, "api-term", "")?;
    let mut rest = Vec::new();
    out.read_to_end(&mut rest)?;
    assert_eq!(rest, b"got TERM\n");
    assert_eq!((s.exit_status, s.signal), (0, 0));
    // Signalling an exited init is refused, the agent keeps serving.
    let (code, _) = code_of(signal(&c, "api-term", "", 15, false));
    assert_eq!(code, Code::FAILED_PRECONDITION);
    remove(&c, "api-term", false)?;
    agent.assert_alive()
}

/// A field of /proc/<pid>/status, as hex.
fn status_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
}

#[test]
fn container_processes_do_not_inherit_the_agents_signal_setup() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("sigmask")?;
    let c = agent.client()?;
    // The agent blocks SIGCHLD (its signalfd) and ignores SIGPIPE (Rust's
    // runtime); a container's init and execs must have neither.
    let (out, _, s) = run(&agent, &c, "api-sigmask", &["cat", "/proc/self/status"])?;
    assert_eq!(s.exit_status, 0);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_mask(&text, "SigBlk:"), 0, "{text}");
    assert_eq!(status_mask(&text, "SigIgn:"), 0, "{text}");

    create(
        &c,
        "api-sigmask2",
        &["sleep", "100"],
        stdio(false, false, false),
    )?;
    start(&c, "api-sigmask2")?;
    exec(
        &c,
        "api-sigmask2",
        "e",
        &["cat", "/proc/self/status"],
        false,
        stdio(false, true, false),
    )?;
    let out = agent.read_stream("api-sigmask2", "e", OUT)?;
    assert_eq!(wait(&c, "api-sigmask2", "e")?.exit_status, 0);
    let text = String::from_utf8_lossy(&joined(out)?).into_owned();
    assert_eq!(status_mask(&text, "SigBlk:"), 0, "{text}");
    assert_eq!(status_mask(&text, "SigIgn:"), 0, "{text}");
    remove(&c, "api-sigmask2", true)?;
    Ok(())
}

#[test]
fn wait_twice_and_output_of_a_process_that_exited_before_attach() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("early")?;
    let c = agent.client()?;
    create(
        &c,
        "api-early",
        &["sh", "-c", "echo quick; echo fast >&2; exit 7"],
        stdio(false, true, true),
    )?;
    start(&c, "api-early")?;
    // Let it exit before anyone reads: the bytes wait in the pipes.
    thread::sleep(Duration::from_millis(300));
    let out = agent.read_stream("api-early", "", OUT)?;
    let err = agent.read_stream("api-early", "", ERR)?;
    let first = wait(&c, "api-early", "")?;
    let second = wait(&c, "api-early", "")?;
    let third = wait(&agent.client()?, "api-early", "")?;
    assert_eq!(first.exit_status, 7);
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(joined(out)?, b"quick\n");
    assert_eq!(joined(err)?, b"fast\n");
    // A stream is attached once.
    let again = agent.attach("api-early", "", OUT).unwrap_err().to_string();
    assert!(again.contains("already attached"), "{again}");
    remove(&c, "api-early", false)?;
    Ok(())
}

#[test]
fn wait_answers_only_after_the_declared_output_is_attached_and_drained() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("drain")?;
    let c = agent.client()?;
    let id = "api-drain";
    create(
        &c,
        id,
        &["sh", "-c", "echo late; exit 4"],
        stdio(false, true, false),
    )?;
    start(&c, id)?;
    let waiter = {
        let c = agent.client()?;
        thread::spawn(move || wait(&c, id, ""))
    };
    // The process has exited, but its declared stdout was not attached.
    thread::sleep(Duration::from_millis(700));
    assert!(
        !waiter.is_finished(),
        "WaitProcess answered before the output was attached"
    );
    let out = agent.read_stream(id, "", OUT)?;
    let status = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
    assert_eq!(status.exit_status, 4);
    assert_eq!(joined(out)?, b"late\n");
    remove(&c, id, false)?;
    Ok(())
}

#[test]
fn stdin_is_forwarded_and_its_close_ends_cat() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("stdin")?;
    let c = agent.client()?;
    // Stream: bytes in, connection closed, cat sees EOF and exits 0.
    create(&c, "api-cat", &["cat"], stdio(true, true, false))?;
    let out = agent.read_stream("api-cat", "", OUT)?;
    let mut input = agent.attach("api-cat", "", IN)?;
    start(&c, "api-cat")?;
    let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    input.write_all(&data)?;
    drop(input);
    let s = wait(&c, "api-cat", "")?;
    assert_eq!(s.exit_status, 0);
    assert!(joined(out)? == data, "cat's output differs from its input");
    remove(&c, "api-cat", false)?;

    // RPC fallback: WriteStdin, then CloseStdin.
    create(&c, "api-cat2", &["cat"], stdio(true, true, false))?;
    let out = agent.read_stream("api-cat2", "", OUT)?;
    start(&c, "api-cat2")?;
    let mut w = WriteStdinRequest::new();
    w.container_id = "api-cat2".into();
    w.data = b"via rpc\n".to_vec();
    assert_eq!(c.write_stdin(ctx(), &w)?.written, 8);
    let mut close = CloseStdinRequest::new();
    close.container_id = "api-cat2".into();
    c.close_stdin(ctx(), &close)?;
    assert_eq!(wait(&c, "api-cat2", "")?.exit_status, 0);
    assert_eq!(joined(out)?, b"via rpc\n");
    // Writing to a closed stdin is refused.
    let (code, _) = code_of(c.write_stdin(ctx(), &w));
    assert_eq!(code, Code::FAILED_PRECONDITION);
    remove(&c, "api-cat2", false)?;
    Ok(())
}

#[test]
fn exec_with_and_without_a_terminal() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("exec")?;
    let c = agent.client()?;
    let id = "api-exec";
    create(&c, id, &["sleep", "1000"], stdio(false, false, false))?;
    start(&c, id)?;

    // Without a terminal: separate streams, exit code.
    exec(
        &c,
        id,
        "e1",
        &["sh", "-c", "echo hi; echo err >&2; exit 5"],
        false,
        stdio(false, true, true),
    )?;
    let out = agent.read_stream(id, "e1", OUT)?;
    let err = agent.read_stream(id, "e1", ERR)?;
    let s = wait(&c, id, "e1")?;
    assert_eq!(s.exit_status, 5);
    assert_eq!(joined(out)?, b"hi\n");
    assert_eq!(joined(err)?, b"err\n");
    // The exec id is taken.
    let (code, _) = code_of(exec(
        &c,
        id,
        "e1",
        &["true"],
        false,
        stdio(false, false, false),
    ));
    assert_eq!(code, Code::ALREADY_EXISTS);

    // With a terminal: the process waits for a line, then prints the size
    // the resize set and its terminal's name.
    exec(
        &c,
        id,
        "tty1",
        &["sh", "-c", "read x; stty size; tty"],
        true,
        stdio(true, true, false),
    )?;
    let out = agent.read_stream(id, "tty1", OUT)?;
    let mut input = agent.attach(id, "tty1", IN)?;
    let mut resize = TtyWinResizeRequest::new();
    resize.container_id = id.into();
    resize.exec_id = "tty1".into();
    resize.rows = 33;
    resize.columns = 77;
    c.tty_win_resize(ctx(), &resize)?;
    input.write_all(b"go\n")?;
    let s = wait(&c, id, "tty1")?;
    let text = String::from_utf8_lossy(&joined(out)?).into_owned();
    assert_eq!(s.exit_status, 0, "{text}");
    assert!(text.contains("33 77"), "stty size after resize: {text:?}");
    assert!(text.contains("/dev/pts/"), "tty: {text:?}");
    // A process without a terminal cannot be resized.
    resize.exec_id = "e1".into();
    assert_eq!(
        code_of(c.tty_win_resize(ctx(), &resize)).0,
        Code::FAILED_PRECONDITION
    );

    // Signal an exec: kill -9 is 137.
    exec(
        &c,
        id,
        "e2",
        &["sleep", "100"],
        false,
        stdio(false, false, false),
    )?;
    signal(&c, id, "e2", 9, false)?;
    let s = wait(&c, id, "e2")?;
    assert_eq!((s.exit_status, s.signal), (137, 9));

    // Stop the container (all processes), then exec is refused.
    signal(&c, id, "", 9, true)?;
    assert_eq!(wait(&c, id, "")?.exit_status, 137);
    let (code, msg) = code_of(exec(
        &c,
        id,
        "late",
        &["true"],
        false,
        stdio(false, false, false),
    ));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("not running"), "{msg}");
    remove(&c, id, false)?;
    agent.assert_alive()
}

#[test]
fn container_init_with_a_terminal() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("tty-init")?;
    let c = agent.client()?;
    let id = "api-tty-init";
    let mut req = create_req(
        id,
        spec_json(&["sh", "-c", "tty; stty size"], |_| {}),
        stdio(false, true, false),
    );
    req.terminal = true;
    c.create_container(ctx(), &req)?;
    let mut resize = TtyWinResizeRequest::new();
    resize.container_id = id.into();
    resize.rows = 24;
    resize.columns = 100;
    c.tty_win_resize(ctx(), &resize)?;
    let out = agent.read_stream(id, "", OUT)?;
    // stderr joins stdout on a terminal: there is no stderr stream.
    assert!(agent.attach(id, "", ERR).is_err());
    start(&c, id)?;
    let s = wait(&c, id, "")?;
    let text = String::from_utf8_lossy(&joined(out)?).into_owned();
    assert_eq!(s.exit_status, 0, "{text}");
    assert!(
        text.contains("/dev/console") || text.contains("/dev/pts/"),
        "{text:?}"
    );
    assert!(text.contains("24 100"), "{text:?}");
    remove(&c, id, false)?;
    Ok(())
}

fn assert_invalid(c: &AgentClient, what: &str, spec: Vec<u8>, want: &str) -> Result<()> {
    let req = create_req("api-bad", spec, stdio(false, false, false));
    let (code, msg) = code_of(c.create_container(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{what}: {msg}");
    assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
    health_ok(c).with_context(|| format!("after {what}"))?;
    Ok(())
}

#[test]
fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("bad")?;
    let c = agent.client()?;
    assert_invalid(
        &c,
        "malformed JSON",
        b"{\"ociVersion\": ".to_vec(),
        "Malformed OCI runtime spec JSON",
    )?;
    assert_invalid(
        &c,
        "not a spec",
        b"[1,2,3]".to_vec(),
        "Malformed OCI runtime spec JSON",
    )?;
    assert_invalid(
        &c,
        "dotdot mount",
        spec_json(&["true"], |j| {
            j["mounts"].as_array_mut().unwrap().push(
                serde_json::json!({"destination": "/tmp/../../etc", "type": "tmpfs", "source": "tmpfs"}),
            );
        }),
        "contains '..'",
    )?;
    assert_invalid(
        &c,
        "unknown namespace",
        spec_json(&["true"], |j| {
            j["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "bogus"}));
        }),
        "bogus",
    )?;
    assert_invalid(
        &c,
        "soft rlimit above hard",
        spec_json(&["true"], |j| {
            j["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 1024}]);
        }),
        "soft limit 4096 is above the hard limit 1024",
    )?;
    assert_invalid(
        &c,
        "huge nofile",
        spec_json(&["true"], |j| {
            j["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1u64 << 40, "hard": 1u64 << 40}]);
        }),
        "fs.nr_open",
    )?;
    assert_invalid(
        &c,
        "unknown rlimit",
        spec_json(&["true"], |j| {
            j["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]);
        }),
        "RLIMIT_BOGUS",
    )?;
    assert_invalid(
        &c,
        "no args",
        spec_json(&["true"], |j| {
            j["process"]["args"] = serde_json::json!([]);
        }),
        "no args",
    )?;
    // No root anywhere: neither rootfs_path nor root.path.
    let mut req = create_req(
        "api-bad",
        spec_json(&["true"], |j| {
            j.as_object_mut().unwrap().remove("root");
        }),
        stdio(false, false, false),
    );
    req.rootfs_path.clear();
    let (code, msg) = code_of(c.create_container(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("No root"), "{msg}");
    // A rootfs that is not there.
    req.rootfs_path = "/nonexistent/rootfs".into();
    let (code, msg) = code_of(c.create_container(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("/nonexistent/rootfs"), "{msg}");
    // Bad ids.
    for bad in ["", "a/b", ".."] {
        let mut req = create_req(
            bad,
            spec_json(&["true"], |_| {}),
            stdio(false, false, false),
        );
        req.container_id = bad.into();
        assert_eq!(
            code_of(c.create_container(ctx(), &req)).0,
            Code::INVALID_ARGUMENT,
            "{bad:?}"
        );
    }

    // Unknown ids: NOT_FOUND everywhere.
    assert_eq!(
        code_of(start(&c, "nope").map_err(|e| e.downcast::<ttrpc::Error>().unwrap())).0,
        Code::NOT_FOUND
    );
    assert_eq!(code_of(remove(&c, "nope", true)).0, Code::NOT_FOUND);
    assert_eq!(code_of(signal(&c, "nope", "", 9, false)).0, Code::NOT_FOUND);
    let mut w = WaitProcessRequest::new();
    w.container_id = "nope".into();
    assert_eq!(code_of(c.wait_process(ctx(), &w)).0, Code::NOT_FOUND);
    assert_eq!(
        code_of(exec(
            &c,
            "nope",
            "x",
            &["true"],
            false,
            stdio(false, false, false)
        ))
        .0,
        Code::NOT_FOUND
    );
    assert!(agent
        .attach("nope", "", OUT)
        .unwrap_err()
        .to_string()
        .contains("not found"));

    // A known container, an unknown exec; a duplicate container id.
    create(
        &c,
        "api-known",
        &["sleep", "100"],
        stdio(false, false, false),
    )?;
    w.container_id = "api-known".into();
    w.exec_id = "ghost".into();
    let (code, msg) = code_of(c.wait_process(ctx(), &w));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    let (code, _) = code_of(c.create_container(
        ctx(),
        &create_req(
            "api-known",
            spec_json(&["true"], |_| {}),
            stdio(false, false, false),
        ),
    ));
    assert_eq!(code, Code::ALREADY_EXISTS);
    // Exec before start, stream not declared, bad signal.
    assert_eq!(
        code_of(exec(
            &c,
            "api-known",
            "x",
            &["true"],
            false,
            stdio(false, false, false)
        ))
        .0,
        Code::FAILED_PRECONDITION
    );
    let refused = agent.attach("api-known", "", OUT).unwrap_err().to_string();
    assert!(refused.contains("without this stream"), "{refused}");
    assert_eq!(
        code_of(signal(&c, "api-known", "", 0, false)).0,
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code_of(signal(&c, "api-known", "", 99, false)).0,
        Code::INVALID_ARGUMENT
    );
    // Malformed exec process.
    let mut req = ExecProcessRequest::new();
    req.container_id = "api-known".into();
    req.exec_id = "bad".into();
    req.process_json = b"{not json".to_vec();
    assert_eq!(
        code_of(c.exec_process(ctx(), &req)).0,
        Code::INVALID_ARGUMENT
    );
    start(&c, "api-known")?;
    req.process_json = br#"{"args": ["true"], "cwd": "relative"}"#.to_vec();
    let (code, msg) = code_of(c.exec_process(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    // A running container is removed only with force.
    assert_eq!(
        code_of(remove(&c, "api-known", false)).0,
        Code::FAILED_PRECONDITION
    );
    remove(&c, "api-known", true)?;
    assert_eq!(code_of(remove(&c, "api-known", true)).0, Code::NOT_FOUND);

    // Bad times.
    let mut t = SetGuestTimeRequest::new();
    t.sec = 1;
    t.nsec = 1_000_000_000;
    assert_eq!(
        code_of(c.set_guest_time(ctx(), &t)).0,
        Code::INVALID_ARGUMENT
    );

    // Oversized request: a 5 MiB spec is over ttrpc's 4 MiB message limit.
    let huge = create_req("api-huge", vec![b' '; 5 << 20], stdio(false, false, false));
    assert!(c.create_container(ctx(), &huge).is_err());
    // A 2 MiB WriteStdin is over the API's 1 MiB.
    let mut big = WriteStdinRequest::new();
    big.container_id = "x".into();
    big.data = vec![0; 2 << 20];
    let (code, msg) = code_of(c.write_stdin(ctx(), &big));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");

    // A garbage stdio handshake.
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.stdio_sock)?;
    raw.write_all(&u32::MAX.to_be_bytes())?;
    let mut answer = Vec::new();
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = raw.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("over the limit"));

    health_ok(&c)?;
    health_ok(&agent.client()?)?;
    agent.assert_alive()
}

/// Pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest.split_whitespace().nth(1) == Some(parent.to_string().as_str()) {
            children.push(pid);
        }
    }
    children
}

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        hierarchies.push(e.path());
    }
    for h in hierarchies {
        let p = h.join("husk").join(id);
        if p.exists() {
            found.push(p);
        }
    }
    found
}

#[test]
fn hundred_create_remove_cycles_leave_nothing_behind() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("cycles")?;
    let c = agent.client()?;
    // One warm-up cycle, so lazily opened files are open before counting.
    let (_, _, s) = run(&agent, &c, "api-cyc-warm", &["true"])?;
    assert_eq!(s.exit_status, 0);
    let mounts_before = fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid()))?;
    let host_mounts_before = fs::read_to_string("/proc/self/mountinfo")?;
    let fds_before = fd_count(agent.pid());
    for i in 0..100 {
        let id = format!("api-cyc-{i}");
        match i % 4 {
            // Run to the end with both streams attached.
            0 => {
                let (out, _, s) = run(&agent, &c, &id, &["echo", "x"])?;
                assert_eq!((out.as_slice(), s.exit_status), (&b"x\n"[..], 0));
            }
            // Created, never started, removed.
            1 => {
                create(&c, &id, &["true"], stdio(true, true, true))?;
                remove(&c, &id, false)?;
            }
            // Running, with an exec, force-removed.
            2 => {
                create(&c, &id, &["sleep", "100"], stdio(false, true, false))?;
                let out = agent.read_stream(&id, "", OUT)?;
                start(&c, &id)?;
                exec(
                    &c,
                    &id,
                    "e",
                    &["sleep", "100"],
                    false,
                    stdio(false, true, false),
                )?;
                let eout = agent.read_stream(&id, "e", OUT)?;
                remove(&c, &id, true)?;
                joined(out)?;
                joined(eout)?;
            }
            // A terminal exec, then stop and remove.
            _ => {
                create(&c, &id, &["sleep", "100"], stdio(false, false, false))?;
                start(&c, &id)?;
                exec(
                    &c,
                    &id,
                    "t",
                    &["echo", "tty"],
                    true,
                    stdio(false, true, false),
                )?;
                let out = agent.read_stream(&id, "t", OUT)?;
                assert_eq!(wait(&c, &id, "t")?.exit_status, 0);
                assert!(String::from_utf8_lossy(&joined(out)?).contains("tty"));
                signal(&c, &id, "", 9, false)?;
                wait(&c, &id, "")?;
                remove(&c, &id, false)?;
            }
        }
        let left = cgroup_dirs(&id);
        assert!(left.is_empty(), "cycle {i}: cgroups left behind: {left:?}");
    }
    // Exit statuses reach the reaper asynchronously: give stragglers a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(agent.pid()).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        children_of(agent.pid()),
        Vec::<i32>::new(),
        "processes left behind"
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid()))?,
        mounts_before
    );
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo")?,
        host_mounts_before
    );
    let fds_after = fd_count(agent.pid());
    assert!(
        fds_after <= fds_before,
        "fds: {fds_before} before, {fds_after} after"
    );
    let root = agent.dir.join("root");
    for sub in ["state", "bundles", "tty"] {
        let left: Vec<_> = fs::read_dir(root.join(sub))?
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
    health_ok(&c)?;
    agent.assert_alive()
}

#[test]
fn sandbox_setup_and_destroy_on_the_host() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("sandbox")?;
    let c = agent.client()?;
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "pod-1".into();
    req.hostname = "pod-one".into();
    let mut dns = DNSConfig::new();
    dns.servers = vec!["10.0.0.10".into()];
    dns.searches = vec!["svc.local".into()];
    dns.options = vec!["ndots:5".into()];
    req.dns = Some(dns).into();
    let mut m = Mount::new();
    m.type_ = "tmpfs".into();
    m.source = "shared".into();
    m.destination = "/run/shared".into();
    m.options = vec!["size=1m".into()];
    req.shared_mounts = vec![m];
    req.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    c.create_sandbox(ctx(), &req)?;
    let sandbox = agent.dir.join("root/sandbox");
    assert_eq!(
        fs::read_to_string(sandbox.join("etc/hostname"))?,
        "pod-one\n"
    );
    assert_eq!(
        fs::read_to_string(sandbox.join("etc/resolv.conf"))?,
        "nameserver 10.0.0.10\nsearch svc.local\noptions ndots:5\n"
    );
    let shared = sandbox.join("run/shared");
    let mountinfo = || fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).unwrap();
    assert!(
        mountinfo().contains(shared.to_str().unwrap()),
        "shared mount missing"
    );

    // Bad set-up input.
    let mut bad = CreateSandboxRequest::new();
    bad.hostname = "bad host".into();
    assert_eq!(
        code_of(c.create_sandbox(ctx(), &bad)).0,
        Code::INVALID_ARGUMENT
    );
    let mut bad = CreateSandboxRequest::new();
    bad.sysctls.insert("../../etc/passwd".into(), "x".into());
    assert_eq!(
        code_of(c.create_sandbox(ctx(), &bad)).0,
        Code::INVALID_ARGUMENT
    );

    // A running container; DestroySandbox stops it (SIGTERM first).
    create(&c, "api-sb", &["sleep", "100"], stdio(false, false, false))?;
    start(&c, "api-sb")?;
    let mut destroy = DestroySandboxRequest::new();
    destroy.timeout_ms = 200;
    c.destroy_sandbox(ctx(), &destroy)?;
    assert_eq!(code_of(remove(&c, "api-sb", true)).0, Code::NOT_FOUND);
    assert!(
        !mountinfo().contains(shared.to_str().unwrap()),
        "shared mount left"
    );
    assert!(cgroup_dirs("api-sb").is_empty());
    // On the host the agent keeps serving after DestroySandbox.
    health_ok(&c)?;
    Ok(())
}
