//! The `husk.agent.v1` service: the RPCs mapped onto the [`Sandbox`].

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use husk_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest,
    DestroySandboxRequest, Empty, ExecProcessRequest, ExecProcessResponse, GetOOMEventRequest,
    HealthRequest, HealthResponse, ListProcessesRequest, ListProcessesResponse, OOMEvent,
    PauseContainerRequest, PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveContainerRequest,
    RestoredRequest, ResumeContainerRequest, ServingStatus, SetGuestTimeRequest,
    SignalProcessRequest, StartContainerRequest, StatsContainerRequest, StatsContainerResponse,
    TtyWinResizeRequest, UpdateContainerRequest, UpdateNetworkRequest, VersionRequest,
    VersionResponse, WaitProcessRequest, WaitProcessResponse, WriteStdinRequest,
    WriteStdinResponse,
};
use husk_protocol::ttrpc::{self, Code, TtrpcContext};
use husk_protocol::{agent_ttrpc, API_VERSION};

use crate::container::ExitStatus;
use crate::sandbox::resources::OomWait;
use crate::sandbox::{ErrorKind, Sandbox, SandboxError};
use tracing::{debug, info, warn};

/// The agent's build version, reported by Version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ttrpc error of an RPC that is not implemented yet.
pub fn unimplemented(rpc: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{rpc} is not implemented yet by husk-agent {AGENT_VERSION} ({API_VERSION})"),
    ))
}

/// The ttrpc status of a failed RPC: the code from the error's kind, the
/// message the whole error chain.
pub fn status(rpc: &str, err: &SandboxError) -> ttrpc::Error {
    let code = match err.kind() {
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Internal => Code::INTERNAL,
    };
    let message = husk_errors::chain(err);
    if code == Code::INTERNAL {
        warn!("{rpc} failed: {message}");
    } else {
        debug!("{rpc} refused: {message}");
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// What DestroySandbox does after the containers are gone: in the guest,
/// power off (on another thread, shortly, so the reply goes out first).
pub type PowerOff = Box<dyn Fn() + Send + Sync>;

/// The agent API's state.
pub struct AgentService {
    started: Instant,
    sandbox: Arc<Sandbox>,
    power_off: Option<PowerOff>,
}

impl AgentService {
    pub fn new(sandbox: Arc<Sandbox>, power_off: Option<PowerOff>) -> Self {
        Self {
            started: Instant::now(),
            sandbox,
            power_off,
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
        version()
    }
}

/// The Version answer.
pub fn version() -> VersionResponse {
    let kernel_release = crate::sys::kernel_release().unwrap_or_else(|e| {
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

fn wait_response(exited: crate::container::Exited) -> WaitProcessResponse {
    let signal = match exited.status {
        ExitStatus::Signaled(n) => n as u32,
        ExitStatus::Exited(_) => 0,
    };
    let nanos = exited
        .at
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    WaitProcessResponse {
        exit_status: exited.status.code(),
        signal,
        exited_at_unix_nano: nanos,
        ..Default::default()
    }
}

impl agent_ttrpc::Agent for AgentService {
    fn health(&self, _ctx: &TtrpcContext, _req: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(AgentService::health(self))
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        debug!("RPC Version");
        Ok(AgentService::version(self))
    }

    fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .setup(&req)
            .map(|()| Empty::new())
            .map_err(|e| status("CreateSandbox", &e))
    }

    fn update_network(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .update_network(&req)
            .map(|()| Empty::new())
            .map_err(|e| status("UpdateNetwork", &e))
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        info!("Destroying the sandbox");
        self.sandbox
            .destroy(Duration::from_millis(u64::from(req.timeout_ms)));
        if let Some(power_off) = &self.power_off {
            power_off();
        }
        Ok(Empty::new())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let stdio = req.stdio.clone().unwrap_or_default();
        self.sandbox
            .create_container(
                &req.container_id,
                &req.oci_spec_json,
                &req.rootfs_path,
                req.terminal,
                &stdio,
            )
            .map(|pid| CreateContainerResponse {
                pid: pid as u32,
                ..Default::default()
            })
            .map_err(|e| status("CreateContainer", &e))
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .start_container(&req.container_id)
            .map(|()| Empty::new())
            .map_err(|e| status("StartContainer", &e))
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .remove_container(&req.container_id, req.force)
            .map(|()| Empty::new())
            .map_err(|e| status("RemoveContainer", &e))
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let stdio = req.stdio.clone().unwrap_or_default();
        self.sandbox
            .exec_process(&req.container_id, &req.exec_id, &req.process_json, &stdio)
            .map(|pid| ExecProcessResponse {
                pid: pid as u32,
                ..Default::default()
            })
            .map_err(|e| status("ExecProcess", &e))
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        debug!(
            "SignalProcess {}/{}: signal {}",
            req.container_id, req.exec_id, req.signal
        );
        self.sandbox
            .signal_process(&req.container_id, &req.exec_id, req.signal, req.all)
            .map(|()| Empty::new())
            .map_err(|e| status("SignalProcess", &e))
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let proc = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status("WaitProcess", &e))?;
        debug!("WaitProcess {}/{}: waiting", req.container_id, req.exec_id);
        let exited = proc.wait();
        debug!(
            "WaitProcess {}/{}: answering {:?}",
            req.container_id, req.exec_id, exited.status
        );
        Ok(wait_response(exited))
    }

    fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStdinRequest,
    ) -> ttrpc::Result<WriteStdinResponse> {
        self.sandbox
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .map(|n| WriteStdinResponse {
                written: n as u32,
                ..Default::default()
            })
            .map_err(|e| status("WriteStdin", &e))
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .map(|()| Empty::new())
            .map_err(|e| status("CloseStdin", &e))
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .resize_tty(&req.container_id, &req.exec_id, req.rows, req.columns)
            .map(|()| Empty::new())
            .map_err(|e| status("TtyWinResize", &e))
    }

    fn set_guest_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestTimeRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .set_time(req.sec, req.nsec)
            .map(|()| Empty::new())
            .map_err(|e| status("SetGuestTime", &e))
    }

    fn restored(&self, _ctx: &TtrpcContext, req: RestoredRequest) -> ttrpc::Result<Empty> {
        self.sandbox
            .restored(&req)
            .map(|()| Empty::new())
            .map_err(|e| status("Restored", &e))
    }

    fn prepare_snapshot(
        &self,
        _ctx: &TtrpcContext,
        _req: PrepareSnapshotRequest,
    ) -> ttrpc::Result<PrepareSnapshotResponse> {
        self.sandbox
            .prepare_snapshot()
            .map(|z| PrepareSnapshotResponse {
                zeroed_bytes: z.zeroed,
                left_bytes: z.left,
                ..Default::default()
            })
            .map_err(|e| status("PrepareSnapshot", &e))
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .pause_container(&req.container_id)
            .map(|()| Empty::new())
            .map_err(|e| status("PauseContainer", &e))
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .resume_container(&req.container_id)
            .map(|()| Empty::new())
            .map_err(|e| status("ResumeContainer", &e))
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.sandbox
            .stats_container(&req.container_id)
            .map(StatsContainerResponse::from)
            .map_err(|e| status("StatsContainer", &e))
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .update_container(&req.container_id, &req.resources_json)
            .map(|()| Empty::new())
            .map_err(|e| status("UpdateContainer", &e))
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.sandbox
            .list_processes(&req.container_id)
            .map(|pids| ListProcessesResponse {
                pids,
                ..Default::default()
            })
            .map_err(|e| status("ListProcesses", &e))
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        // A long poll: until an OOM kill, the caller's deadline, or shutdown.
        // The answer leaves a tenth of the deadline early (at most 1 s), so
        // that it reaches a caller still waiting for it.
        let timeout = (ctx.timeout_nano > 0).then(|| {
            let t = Duration::from_nanos(u64::try_from(ctx.timeout_nano).unwrap_or(0));
            t.saturating_sub((t / 10).min(Duration::from_secs(1)))
        });
        match self.sandbox.next_oom_event(timeout) {
            Ok(ev) => Ok(OOMEvent {
                container_id: ev.container_id,
                ..Default::default()
            }),
            Err(OomWait::Timeout) => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::DEADLINE_EXCEEDED,
                "No OOM event before the deadline",
            ))),
            Err(OomWait::Shutdown) => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::UNAVAILABLE,
                "The agent is shutting down",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> AgentService {
        let root = std::env::temp_dir().join(format!("husk-svc-test-{}", std::process::id()));
        let sandbox = Sandbox::new(
            &root,
            Arc::new(crate::reaper::Reaper::new()),
            crate::sandbox::setup::Target::Host(root.join("sandbox")),
        )
        .unwrap();
        AgentService::new(Arc::new(sandbox), None)
    }

    #[test]
    fn health_reports_serving_and_growing_uptime() {
        let svc = service();
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
        let v = version();
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
