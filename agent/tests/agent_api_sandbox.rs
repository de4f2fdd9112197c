//! The agent API end to end (`support::api`): CreateSandbox's hostname,
//! DNS, shared mounts and sysctls on the host, and DestroySandbox stopping
//! the containers and undoing the mounts.

mod support;

use std::fs;

use anyhow::Result;
use husk_protocol::agent::{CreateSandboxRequest, DNSConfig, DestroySandboxRequest, Mount};
use husk_protocol::ttrpc::Code;
use support::agent::{ctx, health_ok, Agent};
use support::api::{cgroup_dirs, code_of, create, is_root, remove, start, stdio};

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
