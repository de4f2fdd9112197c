//! The port-forward port end to end against `husk-agent serve`: a forwarded connection
//! reaches a server on the agent's loopback and carries both directions with their
//! half-closes; a port nothing listens on comes back refused with its errno; garbage
//! instead of a request is answered with an error, not a hang or a crash.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::frame;
use husk_protocol::port_forward::{self, ForwardError};
use support::agent::Agent;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_forwarded_connection_reaches_a_loopback_server_both_ways() -> Result<()> {
    let agent = Agent::start("forward")?;
    let server = TcpListener::bind("127.0.0.1:0")?;
    let port = server.local_addr()?.port();
    let echo = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = server.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        s.write_all(b"after your end: ")?;
        s.write_all(&got[..16])?;
        Ok(got)
    });
    let conn = UnixStream::connect(&agent.forward_sock).context("forward socket")?;
    let mut s = port_forward::open(conn, u32::from(port), TIMEOUT)?;
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    s.write_all(&sent)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    assert_eq!(echo.join().unwrap()?, sent);
    let mut want = b"after your end: ".to_vec();
    want.extend_from_slice(&sent[..16]);
    assert_eq!(back, want);
    Ok(())
}

#[test]
fn a_port_nobody_listens_on_is_refused_with_its_errno() -> Result<()> {
    let agent = Agent::start("forward-refused")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conn = UnixStream::connect(&agent.forward_sock)?;
    match port_forward::open(conn, u32::from(port), TIMEOUT) {
        Err(ForwardError::Refused { errno, reason, .. }) => {
            assert_eq!(errno, Some(libc::ECONNREFUSED), "{reason}");
            assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Port 0 is no port.
    let conn = UnixStream::connect(&agent.forward_sock)?;
    match port_forward::open(conn, 0, TIMEOUT) {
        Err(ForwardError::Refused { errno, .. }) => assert_eq!(errno, Some(libc::EINVAL)),
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

#[test]
fn garbage_instead_of_a_request_is_answered_and_the_agent_keeps_serving() -> Result<()> {
    let agent = Agent::start("forward-garbage")?;
    for junk in [
        vec![0xff, 0xff, 0xff, 0xff],
        frame::encode_frame(&[0xff; 40])?,
        vec![0, 0],
    ] {
        let mut conn = UnixStream::connect(&agent.forward_sock)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(&junk)?;
        conn.shutdown(Shutdown::Write)?;
        // An error frame, then the end: never a hang.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        let resp = frame::read_frame(&mut rest.as_slice())?;
        assert!(!resp.is_empty(), "no error for {junk:?}");
    }
    let server = TcpListener::bind("127.0.0.1:0")?;
    let port = server.local_addr()?.port();
    let conn = UnixStream::connect(&agent.forward_sock)?;
    let _s = port_forward::open(conn, u32::from(port), TIMEOUT)?;
    server.accept()?;
    Ok(())
}
