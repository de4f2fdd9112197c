//! The agent API end to end (`support::api`): exit statuses, signals,
//! execs and terminals of a container's processes.

mod support;

use std::io::{Read, Write};

use anyhow::Result;
use husk_protocol::agent::TtyWinResizeRequest;
use husk_protocol::ttrpc::Code;
use support::agent::{ctx, Agent};
use support::api::{
    code_of, create, create_req, exec, is_root, joined, remove, run, signal, spec_json, start,
    stdio, wait, ERR, IN, OUT,
};

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
