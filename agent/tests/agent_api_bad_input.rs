//! The agent API end to end (`support::api`): malformed specs, unknown ids,
//! refused calls and oversized messages get clear errors, and the agent
//! keeps serving.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::agent::{
    ExecProcessRequest, SetGuestTimeRequest, WaitProcessRequest, WriteStdinRequest,
};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use support::agent::{ctx, health_ok, Agent};
use support::api::{
    code_of, create, create_req, exec, is_root, remove, signal, spec_json, start, stdio, OUT,
};

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
