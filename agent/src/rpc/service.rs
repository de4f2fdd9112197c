//! The `husk.agent.v1` service. Health and Version are real; every other RPC
//! answers UNIMPLEMENTED, naming itself, until the engine behind it lands.

use std::time::Instant;

use husk_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest,
    DestroySandboxRequest, Empty, ExecProcessRequest, ExecProcessResponse, GetOOMEventRequest,
    HealthRequest, HealthResponse, ListProcessesRequest, ListProcessesResponse, OOMEvent,
    PauseContainerRequest, RemoveContainerRequest, ResumeContainerRequest, ServingStatus,
    SetGuestTimeRequest, SignalProcessRequest, StartContainerRequest, StatsContainerRequest,
    StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest, VersionRequest,
    VersionResponse, WaitProcessRequest, WaitProcessResponse, WriteStdinRequest,
    WriteStdinResponse,
};
use husk_protocol::ttrpc::{self, Code, TtrpcContext};
use husk_protocol::{agent_ttrpc, API_VERSION};

use crate::{debug, sys, warn};

/// The agent's build version, reported by Version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ttrpc error of an RPC that is not implemented yet.
pub fn unimplemented(rpc: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{rpc} is not implemented yet by husk-agent {AGENT_VERSION} ({API_VERSION})"),
    ))
}

/// The agent API's state. For now only when it started serving.
pub struct AgentService {
    started: Instant,
}

impl AgentService {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    /// The Health answer: serving, and for how long.
    pub fn health(&self) -> HealthResponse {
        let uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        HealthResponse {
            status: ServingStatus::SERVING_STATUS_SERVING.into(),
            uptime_ms,
            ..Default::default()
        }
    }

    /// The Version answer.
    pub fn version(&self) -> VersionResponse {
        let kernel_release = sys::kernel_release().unwrap_or_else(|e| {
            warn!("Failed to read the kernel release: {e}");
            String::new()
        });
        VersionResponse {
            agent_version: AGENT_VERSION.to_string(),
            api_version: API_VERSION.to_string(),
            kernel_release,
            ..Default::default()
        }
    }
}

impl Default for AgentService {
    fn default() -> Self {
        Self::new()
    }
}

/// Trait methods that answer UNIMPLEMENTED with the RPC's name.
macro_rules! not_implemented_yet {
    ($($method:ident($req:ty) -> $resp:ty = $rpc:literal;)*) => {
        $(
            fn $method(&self, _ctx: &TtrpcContext, _req: $req) -> ttrpc::Result<$resp> {
                debug!("RPC {} (not implemented yet)", $rpc);
                Err(unimplemented($rpc))
            }
        )*
    };
}

impl agent_ttrpc::Agent for AgentService {
    fn health(&self, _ctx: &TtrpcContext, _req: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(AgentService::health(self))
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        debug!("RPC Version");
        Ok(AgentService::version(self))
    }

    not_implemented_yet! {
        create_sandbox(CreateSandboxRequest) -> Empty = "CreateSandbox";
        destroy_sandbox(DestroySandboxRequest) -> Empty = "DestroySandbox";
        create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
        start_container(StartContainerRequest) -> Empty = "StartContainer";
        remove_container(RemoveContainerRequest) -> Empty = "RemoveContainer";
        pause_container(PauseContainerRequest) -> Empty = "PauseContainer";
        resume_container(ResumeContainerRequest) -> Empty = "ResumeContainer";
        stats_container(StatsContainerRequest) -> StatsContainerResponse = "StatsContainer";
        update_container(UpdateContainerRequest) -> Empty = "UpdateContainer";
        list_processes(ListProcessesRequest) -> ListProcessesResponse = "ListProcesses";
        get_oom_event(GetOOMEventRequest) -> OOMEvent = "GetOOMEvent";
        exec_process(ExecProcessRequest) -> ExecProcessResponse = "ExecProcess";
        signal_process(SignalProcessRequest) -> Empty = "SignalProcess";
        wait_process(WaitProcessRequest) -> WaitProcessResponse = "WaitProcess";
        write_stdin(WriteStdinRequest) -> WriteStdinResponse = "WriteStdin";
        close_stdin(CloseStdinRequest) -> Empty = "CloseStdin";
        tty_win_resize(TtyWinResizeRequest) -> Empty = "TtyWinResize";
        set_guest_time(SetGuestTimeRequest) -> Empty = "SetGuestTime";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_serving_and_growing_uptime() {
        let svc = AgentService::new();
        let first = svc.health();
        assert_eq!(
            first.status.enum_value(),
            Ok(ServingStatus::SERVING_STATUS_SERVING)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(svc.health().uptime_ms >= first.uptime_ms + 20);
    }

    #[test]
    fn version_reports_api_and_kernel() {
        let v = AgentService::new().version();
        assert_eq!(v.api_version, "husk.agent.v1");
        assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(!v.kernel_release.is_empty());
    }

    #[test]
    fn unimplemented_error_names_the_rpc() {
        match unimplemented("ExecProcess") {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::UNIMPLEMENTED);
                assert!(s
                    .message()
                    .starts_with("ExecProcess is not implemented yet"));
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}
