//! The agent RPCs the Task service makes, as a trait: the ttrpc client implements it
//! for a real pod, and the service's unit tests put a fake behind it
//! (`service::fake`), so that create, start, exec, kill, delete, pause and the events
//! they publish are tested without a VM (runtime-rs: `crates/agent/src/lib.rs`).
//!
//! The methods are the client's, one for one: a request, the deadline in `ctx`, the
//! agent's answer or a ttrpc error with its status code. The client is
//! `husk_protocol::agent_client`'s, not the generated ttrpc one: the agent is not trusted,
//! and that client bounds what its answers can cost the shim.

use husk_protocol::agent::*;
use husk_protocol::agent_client::AgentClient;
use husk_protocol::ttrpc::context::Context;
use husk_protocol::ttrpc::Result;

/// What the Task service asks of a pod's agent.
pub trait AgentApi: Send + Sync {
    fn create_container(
        &self,
        ctx: Context,
        req: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse>;
    fn start_container(&self, ctx: Context, req: &StartContainerRequest) -> Result<Empty>;
    fn remove_container(&self, ctx: Context, req: &RemoveContainerRequest) -> Result<Empty>;
    fn pause_container(&self, ctx: Context, req: &PauseContainerRequest) -> Result<Empty>;
    fn resume_container(&self, ctx: Context, req: &ResumeContainerRequest) -> Result<Empty>;
    fn stats_container(
        &self,
        ctx: Context,
        req: &StatsContainerRequest,
    ) -> Result<StatsContainerResponse>;
    fn update_container(&self, ctx: Context, req: &UpdateContainerRequest) -> Result<Empty>;
    fn list_processes(
        &self,
        ctx: Context,
        req: &ListProcessesRequest,
    ) -> Result<ListProcessesResponse>;
    fn get_oom_event(&self, ctx: Context, req: &GetOOMEventRequest) -> Result<OOMEvent>;
    fn exec_process(&self, ctx: Context, req: &ExecProcessRequest) -> Result<ExecProcessResponse>;
    fn signal_process(&self, ctx: Context, req: &SignalProcessRequest) -> Result<Empty>;
    fn wait_process(&self, ctx: Context, req: &WaitProcessRequest) -> Result<WaitProcessResponse>;
    fn close_stdin(&self, ctx: Context, req: &CloseStdinRequest) -> Result<Empty>;
    fn tty_win_resize(&self, ctx: Context, req: &TtyWinResizeRequest) -> Result<Empty>;
    /// Why the connection to the agent is closed for good, once it is (after a framing
    /// violation every call fails; see `husk_protocol::agent_client`).
    fn closed(&self) -> Option<String> {
        None
    }
}

impl AgentApi for AgentClient {
    fn create_container(
        &self,
        ctx: Context,
        req: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        AgentClient::create_container(self, ctx, req)
    }
    fn start_container(&self, ctx: Context, req: &StartContainerRequest) -> Result<Empty> {
        AgentClient::start_container(self, ctx, req)
    }
    fn remove_container(&self, ctx: Context, req: &RemoveContainerRequest) -> Result<Empty> {
        AgentClient::remove_container(self, ctx, req)
    }
    fn pause_container(&self, ctx: Context, req: &PauseContainerRequest) -> Result<Empty> {
        AgentClient::pause_container(self, ctx, req)
    }
    fn resume_container(&self, ctx: Context, req: &ResumeContainerRequest) -> Result<Empty> {
        AgentClient::resume_container(self, ctx, req)
    }
    fn stats_container(
        &self,
        ctx: Context,
        req: &StatsContainerRequest,
    ) -> Result<StatsContainerResponse> {
        AgentClient::stats_container(self, ctx, req)
    }
    fn update_container(&self, ctx: Context, req: &UpdateContainerRequest) -> Result<Empty> {
        AgentClient::update_container(self, ctx, req)
    }
    fn list_processes(
        &self,
        ctx: Context,
        req: &ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        AgentClient::list_processes(self, ctx, req)
    }
    fn get_oom_event(&self, ctx: Context, req: &GetOOMEventRequest) -> Result<OOMEvent> {
        AgentClient::get_oom_event(self, ctx, req)
    }
    fn exec_process(&self, ctx: Context, req: &ExecProcessRequest) -> Result<ExecProcessResponse> {
        AgentClient::exec_process(self, ctx, req)
    }
    fn signal_process(&self, ctx: Context, req: &SignalProcessRequest) -> Result<Empty> {
        AgentClient::signal_process(self, ctx, req)
    }
    fn wait_process(&self, ctx: Context, req: &WaitProcessRequest) -> Result<WaitProcessResponse> {
        AgentClient::wait_process(self, ctx, req)
    }
    fn close_stdin(&self, ctx: Context, req: &CloseStdinRequest) -> Result<Empty> {
        AgentClient::close_stdin(self, ctx, req)
    }
    fn tty_win_resize(&self, ctx: Context, req: &TtyWinResizeRequest) -> Result<Empty> {
        AgentClient::tty_win_resize(self, ctx, req)
    }
    fn closed(&self) -> Option<String> {
        AgentClient::closed(self)
    }
}
