//! Test doubles for the Task service: an agent that keeps its containers in memory and
//! answers WaitProcess when a test says a process exited, a pod around it, a launcher
//! that records what it was asked for and can kill the "VM", and a publisher that keeps
//! the events.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use husk_protocol::agent::*;
use husk_protocol::ttrpc::context::Context;
use husk_protocol::ttrpc::{self, Code};

use crate::agent::AgentApi;
use crate::config::Config;
use crate::mounts::HostOps;
use crate::pod::{Launcher, Pod, Publisher};
use crate::sandbox::{PodRequest, SandboxError, VmmExitHook};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rpc_err(code: Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_owned()))
}

/// The agent's side, in memory.
#[derive(Default)]
pub struct FakeAgent {
    /// Every call, as `Name container[/exec]`.
    pub calls: Mutex<Vec<String>>,
    /// The specs CreateContainer got, by container.
    pub specs: Mutex<HashMap<String, Vec<u8>>>,
    /// Signals sent, as (container, exec, signal, all).
    pub signals: Mutex<Vec<(String, String, u32, bool)>>,
    exits: Mutex<HashMap<(String, String), i32>>,
    exited: Condvar,
    ooms: Mutex<VecDeque<String>>,
    oom_cond: Condvar,
    /// Set when the pod stops: blocked calls fail as over a dead connection.
    closed: AtomicBool,
    /// The next call of this name fails with this status.
    fail: Mutex<Option<(String, Code, String)>>,
    next_pid: AtomicU32,
}

impl FakeAgent {
    /// Process `exec` (empty: the init) of `id` exits with `code`: its WaitProcess answers.
    pub fn exit(&self, id: &str, exec: &str, code: i32) {
        lock(&self.exits).insert((id.to_owned(), exec.to_owned()), code);
        self.exited.notify_all();
    }

    /// The guest reports an OOM kill in container `id`.
    pub fn oom(&self, id: &str) {
        lock(&self.ooms).push_back(id.to_owned());
        self.oom_cond.notify_all();
    }

    /// OOM reports the service has not fetched yet.
    pub fn pending_ooms(&self) -> usize {
        lock(&self.ooms).len()
    }

    /// The next call named `call` fails with `code` and `msg`.
    pub fn fail_next(&self, call: &str, code: Code, msg: &str) {
        *lock(&self.fail) = Some((call.to_owned(), code, msg.to_owned()));
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.exited.notify_all();
        self.oom_cond.notify_all();
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn call(&self, name: &str, id: &str, exec: &str) -> ttrpc::Result<()> {
        let what = if exec.is_empty() {
            format!("{name} {id}")
        } else {
            format!("{name} {id}/{exec}")
        };
        lock(&self.calls).push(what);
        if self.closed.load(Ordering::SeqCst) {
            return Err(ttrpc::Error::LocalClosed);
        }
        let mut fail = lock(&self.fail);
        if fail.as_ref().is_some_and(|(c, _, _)| c == name) {
            let (_, code, msg) = fail.take().expect("checked");
            return Err(rpc_err(code, &msg));
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        100 + self.next_pid.fetch_add(1, Ordering::SeqCst)
    }
}

impl AgentApi for FakeAgent {
    fn create_container(
        &self,
        _: Context,
        req: &CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.call("CreateContainer", &req.container_id, "")?;
        lock(&self.specs).insert(req.container_id.clone(), req.oci_spec_json.clone());
        let mut r = CreateContainerResponse::new();
        r.pid = self.pid();
        Ok(r)
    }
    fn start_container(&self, _: Context, req: &StartContainerRequest) -> ttrpc::Result<Empty> {
        self.call("StartContainer", &req.container_id, "")?;
        Ok(Empty::new())
    }
    fn remove_container(&self, _: Context, req: &RemoveContainerRequest) -> ttrpc::Result<Empty> {
        self.call("RemoveContainer", &req.container_id, "")?;
        Ok(Empty::new())
    }
    fn pause_container(&self, _: Context, req: &PauseContainerRequest) -> ttrpc::Result<Empty> {
        self.call("PauseContainer", &req.container_id, "")?;
        Ok(Empty::new())
    }
    fn resume_container(&self, _: Context, req: &ResumeContainerRequest) -> ttrpc::Result<Empty> {
        self.call("ResumeContainer", &req.container_id, "")?;
        Ok(Empty::new())
    }
    fn stats_container(
        &self,
        _: Context,
        req: &StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.call("StatsContainer", &req.container_id, "")?;
        Ok(StatsContainerResponse::new())
    }
    fn update_container(&self, _: Context, req: &UpdateContainerRequest) -> ttrpc::Result<Empty> {
        self.call("UpdateContainer", &req.container_id, "")?;
        Ok(Empty::new())
    }
    fn list_processes(
        &self,
        _: Context,
        req: &ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.call("ListProcesses", &req.container_id, "")?;
        let mut r = ListProcessesResponse::new();
        r.pids = vec![1, 7];
        Ok(r)
    }
    fn get_oom_event(&self, _: Context, _: &GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
        let mut q = lock(&self.ooms);
        loop {
            if let Some(id) = q.pop_front() {
                let mut e = OOMEvent::new();
                e.container_id = id;
                return Ok(e);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(rpc_err(Code::UNIMPLEMENTED, "the fake agent is closed"));
            }
            q = self
                .oom_cond
                .wait_timeout(q, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn exec_process(
        &self,
        _: Context,
        req: &ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        self.call("ExecProcess", &req.container_id, &req.exec_id)?;
        let mut r = ExecProcessResponse::new();
        r.pid = self.pid();
        Ok(r)
    }
    fn signal_process(&self, _: Context, req: &SignalProcessRequest) -> ttrpc::Result<Empty> {
        self.call("SignalProcess", &req.container_id, &req.exec_id)?;
        lock(&self.signals).push((
            req.container_id.clone(),
            req.exec_id.clone(),
            req.signal,
            req.all,
        ));
        Ok(Empty::new())
    }
    fn wait_process(
        &self,
        _: Context,
        req: &WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.call("WaitProcess", &req.container_id, &req.exec_id)?;
        let key = (req.container_id.clone(), req.exec_id.clone());
        let mut exits = lock(&self.exits);
        loop {
            if let Some(code) = exits.get(&key) {
                let mut r = WaitProcessResponse::new();
                r.exit_status = *code;
                return Ok(r);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(ttrpc::Error::LocalClosed);
            }
            exits = self
                .exited
                .wait_timeout(exits, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn close_stdin(&self, _: Context, req: &CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.call("CloseStdin", &req.container_id, &req.exec_id)?;
        Ok(Empty::new())
    }
    fn tty_win_resize(&self, _: Context, req: &TtyWinResizeRequest) -> ttrpc::Result<Empty> {
        self.call("TtyWinResize", &req.container_id, &req.exec_id)?;
        Ok(Empty::new())
    }
    fn closed(&self) -> Option<String> {
        self.closed
            .load(Ordering::SeqCst)
            .then(|| "the fake agent is closed".to_owned())
    }
}

/// A pod around a [`FakeAgent`], in a temporary directory.
pub struct FakePod {
    pub id: String,
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub shm: Option<PathBuf>,
    pub agent: Arc<FakeAgent>,
    pub vmm_exit: Mutex<Option<String>>,
    pub stopped: AtomicBool,
}

impl Pod for FakePod {
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
        self.shm.as_deref()
    }
    fn agent(&self) -> &dyn AgentApi {
        self.agent.as_ref()
    }
    fn ctx(&self) -> Context {
        ttrpc::context::with_timeout(5_000_000_000)
    }
    fn attach_stream(
        &self,
        _: &str,
        _: &str,
        _: StdioStream,
        _: Duration,
    ) -> Result<UnixStream, String> {
        Err("the fake pod has no stdio port".into())
    }
    fn vmm_exit(&self) -> Option<String> {
        lock(&self.vmm_exit).clone()
    }
    fn stop(&self, _: &dyn HostOps) -> Result<(), SandboxError> {
        self.stopped.store(true, Ordering::SeqCst);
        self.agent.close();
        Ok(())
    }
}

/// What [`FakeLauncher`] was asked to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pod: String,
    pub hostname: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub port_forward: bool,
    pub shm: Option<PathBuf>,
}

/// Starts [`FakePod`]s (at most one per test, like one shim) in `root`.
pub struct FakeLauncher {
    pub root: PathBuf,
    pub agent: Arc<FakeAgent>,
    pub started: Mutex<Vec<Started>>,
    pub pod: Mutex<Option<Arc<FakePod>>>,
    hook: Mutex<Option<VmmExitHook>>,
    /// The next start fails with this.
    pub fail: Mutex<Option<String>>,
}

impl FakeLauncher {
    pub fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            root,
            agent: Arc::default(),
            started: Mutex::default(),
            pod: Mutex::default(),
            hook: Mutex::default(),
            fail: Mutex::default(),
        })
    }

    /// husk-vmm dies under the pod.
    pub fn kill_vm(&self, reason: &str) {
        if let Some(p) = lock(&self.pod).as_ref() {
            *lock(&p.vmm_exit) = Some(reason.to_owned());
        }
        self.agent.close();
        if let Some(hook) = lock(&self.hook).take() {
            hook(reason.to_owned());
        }
    }
}

impl Launcher for Arc<FakeLauncher> {
    fn start(
        &self,
        _: &Config,
        req: &PodRequest<'_>,
        on_vmm_exit: VmmExitHook,
    ) -> Result<Arc<dyn Pod>, SandboxError> {
        if let Some(why) = lock(&self.fail).take() {
            return Err(SandboxError::EarlyExit {
                what: "husk-vmm",
                reason: why,
                log: String::new(),
            });
        }
        lock(&self.started).push(Started {
            pod: req.pod.to_owned(),
            hostname: req.hostname.to_owned(),
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            port_forward: req.port_forward,
            shm: req.shm.map(Path::to_path_buf),
        });
        let dir = self.root.join(req.pod);
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).expect("the fake pod's dir");
        let pod = Arc::new(FakePod {
            id: req.pod.to_owned(),
            dir,
            shared,
            shm: req.shm.map(Path::to_path_buf),
            agent: Arc::clone(&self.agent),
            vmm_exit: Mutex::default(),
            stopped: AtomicBool::new(false),
        });
        *lock(&self.pod) = Some(Arc::clone(&pod));
        *lock(&self.hook) = Some(on_vmm_exit);
        Ok(pod)
    }
}

/// Keeps every event published, with its topic.
#[derive(Default)]
pub struct FakePublisher {
    pub events: Mutex<Vec<(String, Box<dyn MessageDyn>)>>,
}

impl FakePublisher {
    pub fn topics(&self) -> Vec<String> {
        lock(&self.events).iter().map(|(t, _)| t.clone()).collect()
    }

    /// The events of type `M`, in order.
    pub fn of<M: containerd_shim::protos::protobuf::MessageFull + Clone>(&self) -> Vec<M> {
        lock(&self.events)
            .iter()
            .filter_map(|(_, e)| e.downcast_ref::<M>().cloned())
            .collect()
    }
}

impl Publisher for Arc<FakePublisher> {
    fn publish(&self, topic: &str, _: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        lock(&self.events).push((topic.to_owned(), event));
        Ok(())
    }
}
