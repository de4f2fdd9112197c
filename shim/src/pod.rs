//! What the Task service needs of the world around it, as traits: the pod VM it runs
//! containers in ([`Pod`], a [`Sandbox`] for real), how one is started ([`Launcher`])
//! and where its events go ([`Publisher`], containerd for real). The service's unit
//! tests put fakes behind them (`service::fake`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use husk_protocol::agent::StdioStream;
use husk_protocol::ttrpc::context::Context as RpcContext;
use husk_protocol::{hybrid_vsock, stdio_attach, STDIO_VSOCK_PORT};

use crate::agent::AgentApi;
use crate::config::Config;
use crate::mounts::HostOps;
use crate::sandbox::{PodRequest, Sandbox, SandboxError, VmmExitHook};

/// A running pod VM, as the Task service uses it.
pub trait Pod: Send + Sync {
    /// The pod's id (its sandbox's).
    fn id(&self) -> &str;
    /// The pod's directory on the host.
    fn dir(&self) -> &Path;
    /// The host dir the guest sees through virtio-fs (containers' rootfs and volumes).
    fn shared(&self) -> &Path;
    /// A CRI pod's shared-memory dir on the host (see `spec::sandbox_shm_source`).
    fn shm_host(&self) -> Option<&Path>;
    /// The pod's agent.
    fn agent(&self) -> &dyn AgentApi;
    /// The deadline of an ordinary RPC.
    fn ctx(&self) -> RpcContext;
    /// A byte stream of process `exec` (empty: the init) of `container`: `which` of its
    /// stdin, stdout or stderr.
    fn attach_stream(
        &self,
        container: &str,
        exec: &str,
        which: StdioStream,
        timeout: Duration,
    ) -> Result<UnixStream, String>;
    /// Whether husk-vmm has ended, and how.
    fn vmm_exit(&self) -> Option<String>;
    /// Powers the VM off and removes everything the pod made on the host.
    fn stop(&self, ops: &dyn HostOps) -> Result<(), SandboxError>;
}

impl Pod for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn shared(&self) -> &Path {
        &self.shared
    }
    fn shm_host(&self) -> Option<&Path> {
        self.shm_host.as_deref()
    }
    fn agent(&self) -> &dyn AgentApi {
        Sandbox::agent(self)
    }
    fn ctx(&self) -> RpcContext {
        Sandbox::ctx(self)
    }
    fn attach_stream(
        &self,
        container: &str,
        exec: &str,
        which: StdioStream,
        timeout: Duration,
    ) -> Result<UnixStream, String> {
        let s = hybrid_vsock::connect(&self.vsock, STDIO_VSOCK_PORT, timeout)
            .map_err(|e| husk_errors::chain(&e))?;
        stdio_attach::attach(s, container, exec, which, timeout).map_err(|e| husk_errors::chain(&e))
    }
    fn vmm_exit(&self) -> Option<String> {
        Sandbox::vmm_exit(self)
    }
    fn stop(&self, ops: &dyn HostOps) -> Result<(), SandboxError> {
        Sandbox::stop(self, ops)
    }
}

/// Starts pod VMs.
pub trait Launcher: Send + Sync {
    /// Starts the VM of a new pod; `on_vmm_exit` is called once should husk-vmm end
    /// while the pod is not being stopped.
    fn start(
        &self,
        config: &Config,
        req: &PodRequest<'_>,
        on_vmm_exit: VmmExitHook,
    ) -> Result<Arc<dyn Pod>, SandboxError>;
}

/// The real thing: husk-vmm and virtiofsd ([`Sandbox::start`]).
pub struct VmLauncher;

impl Launcher for VmLauncher {
    fn start(
        &self,
        config: &Config,
        req: &PodRequest<'_>,
        on_vmm_exit: VmmExitHook,
    ) -> Result<Arc<dyn Pod>, SandboxError> {
        Ok(Arc::new(Sandbox::start(config, req, on_vmm_exit)?))
    }
}

/// Where task events go.
pub trait Publisher: Send + Sync {
    fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> Result<(), String>;
}

impl Publisher for RemotePublisher {
    fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> Result<(), String> {
        RemotePublisher::publish(self, Context::default(), topic, namespace, event)
            .map_err(|e| e.to_string())
    }
}
