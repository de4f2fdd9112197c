//! The real husk-agent as PID 1 of a real guest serves the agent API (ttrpc) on vsock port
//! 1024, reached from the host through husk-vmm's hybrid vsock socket, as the shim will.
//! Boots a guest: `#[ignore]`d for a plain `cargo test`, run by `make test`.

use std::os::fd::IntoRawFd;

use husk_protocol::agent::{self, ServingStatus};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use husk_protocol::{AGENT_VSOCK_PORT, API_VERSION};
use husk_tests::guest::{Guest, GuestOptions};
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
    // What is not built yet says so with UNIMPLEMENTED, and the agent keeps serving.
    match client.start_container(ctx(), &agent::StartContainerRequest::new()) {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), Code::UNIMPLEMENTED),
        other => panic!("StartContainer: {other:?}"),
    }
    client.health(ctx(), &agent::HealthRequest::new()).unwrap();
}
