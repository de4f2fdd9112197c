//! The husk agent API, `husk.agent.v1`, shared by the agent (server) and the
//! shim (client).
//!
//! The messages and the ttrpc service are generated at build time from
//! `proto/agent.proto`, which documents every RPC and field:
//! - [`agent`]: the messages (`HealthRequest`, `VersionResponse`, ...).
//! - [`agent_ttrpc`]: the service trait [`agent_ttrpc::Agent`], its
//!   `create_agent` to register it with a `ttrpc::Server`, and the
//!   [`agent_ttrpc::AgentClient`].
//!
//! - [`agent_client`]: the shim's ttrpc client of the agent, for an agent that is not
//!   trusted (bounded frames, deadlines on every frame, no `Status.details`).
//! - [`deadline`]: reads and writes that finish by a deadline, and [`deadline::guest_text`]
//!   for guest-supplied text shown on the host.
//! - [`frame`]: the stdio port's handshake framing (length-prefixed protobuf).
//! - [`stdio_attach`]: the client side of that handshake.
//! - [`hybrid_vsock`]: the host side of husk-vmm's `CONNECT <port>` handshake.
//! - [`port_forward`]: the port-forward port's handshake and the relay both ends use.
//!
//! These wire formats live here once; the agent, the shim and the tests all use them.
//!
//! [`ttrpc`] and [`protobuf`] are re-exported so both sides use the exact
//! versions the generated code was made for.

#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub mod agent_client;
pub mod deadline;
pub mod frame;
pub mod hybrid_vsock;
pub mod port_forward;
pub mod stdio_attach;

pub use generated::{agent, agent_ttrpc};
pub use {protobuf, ttrpc};

/// The API version string the agent reports and the shim checks.
pub const API_VERSION: &str = "husk.agent.v1";

/// The vsock port the agent serves the API on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port of the per-process stdio streams (see the .proto).
pub const STDIO_VSOCK_PORT: u32 = 1025;

/// The vsock port of forwarded TCP connections (`kubectl port-forward`; see the .proto).
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1026;

#[cfg(test)]
mod tests {
    use protobuf::Message;

    use super::agent::{ServingStatus, VersionResponse};
    use super::*;

    #[test]
    fn proto_package_is_the_api_version() {
        let file = agent::file_descriptor();
        assert_eq!(file.proto().package(), API_VERSION);
        assert!(file
            .message_by_package_relative_name("VersionResponse")
            .is_some());
    }

    #[test]
    fn messages_round_trip() {
        let mut v = VersionResponse::new();
        v.agent_version = "1.2.3".into();
        v.api_version = API_VERSION.into();
        v.kernel_release = "6.1.0".into();
        let bytes = v.write_to_bytes().unwrap();
        assert_eq!(VersionResponse::parse_from_bytes(&bytes).unwrap(), v);
    }

    /// Field-by-field documentation is part of the API: every field, enum
    /// value and RPC in the .proto has a comment on the line above it.
    #[test]
    fn every_field_and_rpc_is_documented() {
        let proto = include_str!("../proto/agent.proto");
        let lines: Vec<&str> = proto.lines().map(str::trim).collect();
        let mut undocumented = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let is_field = line.ends_with(';')
                && line.contains(" = ")
                && line
                    .trim_end_matches(';')
                    .rsplit(' ')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
            let is_rpc = line.starts_with("rpc ");
            if (is_field || is_rpc) && !(i > 0 && lines[i - 1].starts_with("//")) {
                undocumented.push(format!("line {}: {line}", i + 1));
            }
        }
        assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");
    }

    #[test]
    fn serving_status_numbers_are_stable() {
        assert_eq!(ServingStatus::SERVING_STATUS_SERVING as i32, 1);
    }

    #[test]
    fn service_lists_every_rpc() {
        let file = agent::file_descriptor();
        let svc = &file.proto().service[0];
        assert_eq!(svc.name(), "Agent");
        let names: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
        for rpc in [
            "CreateSandbox",
            "DestroySandbox",
            "UpdateNetwork",
            "CreateContainer",
            "StartContainer",
            "RemoveContainer",
            "PauseContainer",
            "ResumeContainer",
            "StatsContainer",
            "UpdateContainer",
            "ListProcesses",
            "GetOOMEvent",
            "ExecProcess",
            "SignalProcess",
            "WaitProcess",
            "WriteStdin",
            "CloseStdin",
            "TtyWinResize",
            "SetGuestTime",
            "Health",
            "Version",
            "Restored",
            "PrepareSnapshot",
        ] {
            assert!(names.contains(&rpc), "{rpc} missing from the service");
        }
        assert_eq!(names.len(), 23);
    }
}
