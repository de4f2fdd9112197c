//! What the Task service needs of the world around it, as traits: the pod VM it runs
//! containers in ([`Pod`], a [`Sandbox`] for real), how one is started ([`Launcher`])
//! and where its events go ([`Publisher`], containerd for real). The service's unit
//! tests put fakes behind them (`service::fake`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
use crate::sandbox::{PodBoot, PodRequest, Sandbox, SandboxError, VmmExitHook};
use tracing::warn;

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

/// The real thing: husk-vmm and virtiofsd ([`Sandbox::start`]), restored from the pod's
/// template where there is one; a pod whose template fails it is started again, booted.
pub struct VmLauncher;

impl Launcher for VmLauncher {
    fn start(
        &self,
        config: &Config,
        req: &PodRequest<'_>,
        on_vmm_exit: VmmExitHook,
    ) -> Result<Arc<dyn Pod>, SandboxError> {
        let hook = Arc::new(Mutex::new(Some(on_vmm_exit)));
        let first = ExitGate::new(Arc::clone(&hook));
        let failed = match Sandbox::start(config, req, PodBoot::Template, first.hook()) {
            Ok(sb) => {
                first.open();
                return Ok(Arc::new(sb));
            }
            Err(SandboxError::Template(e)) => e,
            Err(e) => return Err(e),
        };
        drop(first);
        warn!(
            "pod {}: booting it cold: {}",
            req.pod,
            husk_errors::chain(&SandboxError::Template(failed))
        );
        let second = ExitGate::new(hook);
        let sb = Sandbox::start(config, req, PodBoot::Cold, second.hook())?;
        second.open();
        Ok(Arc::new(sb))
    }
}

/// Hands husk-vmm's end to the service's hook only for the start attempt that gave the
/// pod its VM: an attempt that failed (its VMM gone) must not use up the hook. An end
/// reported while the attempt still runs is held until [`ExitGate::open`].
struct ExitGate {
    hook: Arc<Mutex<Option<VmmExitHook>>>,
    state: Arc<Mutex<Gate>>,
}

enum Gate {
    Starting(Option<String>),
    Open,
    Closed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExitGate {
    fn new(hook: Arc<Mutex<Option<VmmExitHook>>>) -> Self {
        Self {
            hook,
            state: Arc::new(Mutex::new(Gate::Starting(None))),
        }
    }

    /// The hook for this attempt's VMM.
    fn hook(&self) -> VmmExitHook {
        let state = Arc::clone(&self.state);
        let hook = Arc::clone(&self.hook);
        Box::new(move |reason| {
            let mut g = lock(&state);
            match &mut *g {
                Gate::Starting(held) => *held = Some(reason),
                Gate::Open => {
                    drop(g);
                    fire(&hook, reason);
                }
                Gate::Closed => {}
            }
        })
    }

    /// The attempt started the pod: from now on its VMM's end reaches the service.
    fn open(&self) {
        let held = match std::mem::replace(&mut *lock(&self.state), Gate::Open) {
            Gate::Starting(held) => held,
            _ => None,
        };
        if let Some(reason) = held {
            fire(&self.hook, reason);
        }
    }
}

impl Drop for ExitGate {
    /// Unopened: the attempt failed, its VMM's end is nobody's news.
    fn drop(&mut self) {
        let mut g = lock(&self.state);
        if let Gate::Starting(_) = *g {
            *g = Gate::Closed;
        }
    }
}

fn fire(hook: &Mutex<Option<VmmExitHook>>, reason: String) {
    let h = lock(hook).take();
    if let Some(h) = h {
        h(reason);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn gate() -> (
        ExitGate,
        Arc<Mutex<Option<VmmExitHook>>>,
        mpsc::Receiver<String>,
    ) {
        let (tx, rx) = mpsc::channel();
        let hook: VmmExitHook = Box::new(move |r| tx.send(r).unwrap());
        let slot = Arc::new(Mutex::new(Some(hook)));
        (ExitGate::new(Arc::clone(&slot)), slot, rx)
    }

    #[test]
    fn a_failed_attempts_vmm_end_does_not_use_up_the_hook() {
        let (first, slot, rx) = gate();
        first.hook()("first VMM gone".into());
        drop(first);
        assert!(rx.try_recv().is_err(), "a failed attempt reports nothing");
        let second = ExitGate::new(slot);
        let h = second.hook();
        second.open();
        h("second VMM gone".into());
        assert_eq!(rx.try_recv().unwrap(), "second VMM gone");
    }

    #[test]
    fn an_end_while_starting_is_told_once_the_attempt_succeeded() {
        let (g, _slot, rx) = gate();
        let h = g.hook();
        h("gone at once".into());
        assert!(rx.try_recv().is_err(), "held while starting");
        g.open();
        assert_eq!(rx.try_recv().unwrap(), "gone at once");
        // A late hook of a closed gate (a dropped attempt) stays silent.
        let (g2, _s2, rx2) = gate();
        let h2 = g2.hook();
        drop(g2);
        h2("late".into());
        assert!(rx2.try_recv().is_err());
    }
}
