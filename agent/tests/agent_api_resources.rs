//! The agent API end to end (`support::api`): the cgroup calls: pause,
//! resume, stats, update and ps, and OOM events.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use husk_protocol::agent::{
    GetOOMEventRequest, ListProcessesRequest, PauseContainerRequest, ResumeContainerRequest,
    StatsContainerRequest, StatsContainerResponse, UpdateContainerRequest,
};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use support::agent::{ctx, ctx_secs, health_ok, Agent};
use support::api::{
    code_of, create, create_req, is_root, remove, signal, spec_json, start, stdio, wait,
};

fn stats(c: &AgentClient, id: &str) -> ttrpc::Result<StatsContainerResponse> {
    let mut req = StatsContainerRequest::new();
    req.container_id = id.into();
    c.stats_container(ctx(), &req)
}

fn cpu_usec(c: &AgentClient, id: &str) -> Result<u64> {
    Ok(stats(c, id)?.cpu.usage_usec)
}

#[test]
fn pause_resume_stats_update_and_ps_through_the_api() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("cgroup-rpcs")?;
    let c = agent.client()?;
    let id = "busy";
    let pid = create(
        &c,
        id,
        &["sh", "-c", "sleep 1000 & while :; do :; done"],
        stdio(false, false, false),
    )?;
    start(&c, id)?;

    // ps: the init and its sleeping child.
    let mut req = ListProcessesRequest::new();
    req.container_id = id.into();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = c.list_processes(ctx(), &req)?.pids;
        if pids.len() >= 2 || Instant::now() > deadline {
            break pids;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(pids.contains(&pid), "init {pid} not in {pids:?}");
    assert_eq!(pids.len(), 2, "{pids:?}");

    // Stats: CPU time grows while it spins.
    let a = cpu_usec(&c, id)?;
    thread::sleep(Duration::from_millis(300));
    let b = cpu_usec(&c, id)?;
    assert!(b > a, "cpu usage did not grow: {a} -> {b}");
    assert!(stats(&c, id)?.pids.current >= 2);

    // Paused: no CPU time at all; pausing again is refused.
    let mut p = PauseContainerRequest::new();
    p.container_id = id.into();
    c.pause_container(ctx(), &p)?;
    let a = cpu_usec(&c, id)?;
    thread::sleep(Duration::from_millis(300));
    let b = cpu_usec(&c, id)?;
    assert_eq!(a, b, "a paused container used CPU");
    assert_eq!(
        code_of(c.pause_container(ctx(), &p)).0,
        Code::FAILED_PRECONDITION
    );
    let mut r = ResumeContainerRequest::new();
    r.container_id = id.into();
    c.resume_container(ctx(), &r)?;
    thread::sleep(Duration::from_millis(300));
    assert!(cpu_usec(&c, id)? > b, "no CPU time after resume");

    // Update: the new limits show in the stats; nonsense is refused.
    let mut u = UpdateContainerRequest::new();
    u.container_id = id.into();
    u.resources_json = br#"{"memory":{"limit":67108864},"pids":{"limit":20}}"#.to_vec();
    c.update_container(ctx(), &u)?;
    let s = stats(&c, id)?;
    assert_eq!((s.memory.limit, s.pids.limit), (64 << 20, 20));
    u.resources_json = br#"{"pids":{"limit":-9}}"#.to_vec();
    let (code, msg) = code_of(c.update_container(ctx(), &u));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("pids.limit"), "{msg}");
    u.resources_json = b"{not json".to_vec();
    assert_eq!(
        code_of(c.update_container(ctx(), &u)).0,
        Code::INVALID_ARGUMENT
    );

    // Unknown containers.
    assert_eq!(code_of(stats(&c, "nope")).0, Code::NOT_FOUND);
    p.container_id = "nope".into();
    assert_eq!(code_of(c.pause_container(ctx(), &p)).0, Code::NOT_FOUND);
    req.container_id = "nope".into();
    assert_eq!(code_of(c.list_processes(ctx(), &req)).0, Code::NOT_FOUND);

    signal(&c, id, "", 9, true)?;
    assert_eq!(wait(&c, id, "")?.exit_status, 137);
    remove(&c, id, false)?;
    health_ok(&c)?;
    Ok(())
}

#[test]
fn an_oom_kill_is_reported_by_get_oom_event() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let agent = Agent::start("oom-rpc")?;
    let c = agent.client()?;
    // Nothing happened yet: the long poll ends at the caller's deadline.
    let (code, _) = code_of(c.get_oom_event(ctx_secs(1), &GetOOMEventRequest::new()));
    assert_eq!(code, Code::DEADLINE_EXCEEDED);

    // 32 MiB limit; tail tries to hold 256 MiB (no newline in its input).
    let spec = spec_json(&["sh", "-c", "head -c 256m /dev/zero | tail"], |j| {
        j["linux"]["resources"] = serde_json::json!({"memory": {"limit": 33554432}});
    });
    c.create_container(ctx(), &create_req("oom", spec, stdio(false, false, false)))?;
    let poll = {
        let c = agent.client()?;
        thread::spawn(move || c.get_oom_event(ctx_secs(120), &GetOOMEventRequest::new()))
    };
    start(&c, "oom")?;
    let event = poll
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))??;
    assert_eq!(event.container_id, "oom");
    let status = wait(&c, "oom", "")?;
    assert_ne!(status.exit_status, 0, "{status:?}");
    remove(&c, "oom", false)?;
    health_ok(&c)?;
    Ok(())
}
