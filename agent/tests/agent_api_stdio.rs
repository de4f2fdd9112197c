//! The agent API end to end (`support::api`): container output and input
//! through the stdio port and WaitProcess's wait for it.

mod support;

use std::io::Write;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::agent::{CloseStdinRequest, WriteStdinRequest};
use husk_protocol::ttrpc::Code;
use support::agent::{ctx, health_ok, Agent};
use support::api::{
    code_of, create, is_root, joined, remove, run, start, stdio, wait, ERR, IN, OUT,
};

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
    // Blocked WaitProcess calls on the same connection do not hold other
    // RPCs back.
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            thread::spawn(move || wait(&c, id, ""))
        })
        .collect();
    // The process has exited, but its declared stdout was not attached.
    thread::sleep(Duration::from_millis(700));
    health_ok(&c).context("Health while WaitProcess calls block")?;
    for waiter in &waiters {
        assert!(
            !waiter.is_finished(),
            "WaitProcess answered before the output was attached"
        );
    }
    let out = agent.read_stream(id, "", OUT)?;
    for waiter in waiters {
        let status = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
        assert_eq!(status.exit_status, 4);
    }
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
