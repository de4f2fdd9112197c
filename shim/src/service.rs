//! The containerd Task service (API v2) of one pod: containers and execs run through the
//! guest agent, their stdio joined to containerd's FIFOs, their exits and the pod VM's
//! death published as events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use containerd_shim::api::{self, Empty, Status};
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::{self as shim_ttrpc, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use husk_protocol::agent::{self, StdioStream};
use husk_protocol::ttrpc;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::metrics;
use crate::mounts::{self, HostOps, RootfsMount};
use crate::persist::{self, BundleState};
use crate::pod::{Launcher, Pod, Publisher, VmLauncher};
use crate::process::{Exit, Process, StdioPaths, VM_GONE_STATUS};
use crate::sandbox::PodRequest;
use crate::spec::{self, GuestSpec};
use crate::stdio::{output_target, ProcessIo};

/// How long an exited process's output may take to drain before its exit is reported.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long Delete waits for the agent's RemoveContainer.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

mod oom;
mod task;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

struct Container {
    bundle: String,
    /// `<shared>/<id>`: the rootfs and shared bind sources, unmounted at Delete.
    share_dir: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    fn process_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

pub struct Inner {
    namespace: String,
    publisher: Box<dyn Publisher>,
    launcher: Box<dyn Launcher>,
    exit: Arc<ExitSignal>,
    ops: Box<dyn HostOps>,
    sandbox: Mutex<Option<Arc<dyn Pod>>>,
    containers: Mutex<HashMap<String, Container>>,
}

/// The Task service handed to containerd-shim's ttrpc server.
pub struct Service {
    inner: Arc<Inner>,
}

fn status(code: Code, msg: impl Into<String>) -> shim_ttrpc::Error {
    shim_ttrpc::Error::RpcStatus(shim_ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str, exec_id: &str) -> shim_ttrpc::Error {
    if exec_id.is_empty() {
        status(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        status(Code::NOT_FOUND, format!("exec {exec_id} of {id} not found"))
    }
}

/// An agent error as containerd should see it (the agent's status code kept).
fn agent_err(call: &str, e: ttrpc::Error) -> shim_ttrpc::Error {
    match e {
        // One ttrpc for both sides: the agent's status code passes on as it is.
        ttrpc::Error::RpcStatus(s) => status(s.code(), format!("agent {call}: {}", s.message())),
        other => status(Code::UNAVAILABLE, format!("agent {call}: {other}")),
    }
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self::with(
            namespace,
            Box::new(publisher),
            Box::new(VmLauncher),
            Box::new(mounts::RealHost),
            exit,
        )
    }

    /// A service whose events, pod VMs and host mounts go through these (fakes in the
    /// unit tests).
    pub fn with(
        namespace: &str,
        publisher: Box<dyn Publisher>,
        launcher: Box<dyn Launcher>,
        ops: Box<dyn HostOps>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                publisher,
                launcher,
                exit,
                ops,
                sandbox: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    fn publish(&self, event: Box<dyn Event>) {
        let topic = event.topic();
        let msg: Box<dyn MessageDyn> = event;
        if let Err(e) = self.publisher.publish(&topic, &self.namespace, msg) {
            warn!("cannot publish {topic}: {e}");
        }
    }

    fn sandbox(&self) -> Result<Arc<dyn Pod>, shim_ttrpc::Error> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the pod's VM is not running"))
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a process's exit once and tells containerd.
    fn finish(&self, id: &str, exec_id: &str, exit_status: u32, why: &str) {
        let (pid, cell) = {
            let mut cs = self.containers();
            let Some(p) = cs.get_mut(id).and_then(|c| c.process_mut(exec_id)) else {
                return;
            };
            p.status = Status::STOPPED;
            (p.pid, Arc::clone(&p.exit))
        };
        if !cell.claim() {
            return;
        }
        let at = now();
        info!("{id} {exec_id}: exit status {exit_status} ({why})");
        let mut ev = TaskExit::new();
        ev.container_id = id.to_owned();
        ev.id = if exec_id.is_empty() { id } else { exec_id }.to_owned();
        ev.pid = pid;
        ev.exit_status = exit_status;
        ev.exited_at = Some(at.clone()).into();
        // The event first: a Wait answered before it would let containerd Delete the
        // process before it heard of its exit.
        self.publish(Box::new(ev));
        cell.set(Exit {
            status: exit_status,
            at,
        });
    }

    /// The VM died: every process still running ends with [`VM_GONE_STATUS`].
    fn vm_gone(&self, reason: &str) {
        let live: Vec<(String, String)> = self
            .containers()
            .iter()
            .flat_map(|(id, c)| {
                std::iter::once(&c.init)
                    .chain(c.execs.values())
                    .filter(|p| p.exit.get().is_none() && p.status != Status::CREATED)
                    .map(move |p| (id.clone(), p.exec_id.clone()))
            })
            .collect();
        for (id, exec) in live {
            self.finish(&id, &exec, VM_GONE_STATUS, reason);
        }
    }

    /// Waits in the guest for a process, then for its output, then reports the exit.
    fn spawn_waiter(self: &Arc<Self>, sb: Arc<dyn Pod>, id: String, exec_id: String) {
        let inner = Arc::downgrade(self);
        let io = self
            .containers()
            .get(&id)
            .and_then(|c| c.process(&exec_id))
            .map(|p| Arc::clone(&p.io));
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{id}"))
            .spawn(move || {
                let mut req = agent::WaitProcessRequest::new();
                req.container_id = id.clone();
                req.exec_id = exec_id.clone();
                // No deadline: a process may run for as long as it likes.
                let r = sb
                    .agent()
                    .wait_process(ttrpc::context::Context::default(), &req);
                debug!("{id} {exec_id}: WaitProcess answered {r:?}");
                let (code, why) = match r {
                    Ok(resp) => (
                        u32::try_from(resp.exit_status).unwrap_or(VM_GONE_STATUS),
                        "exited in the guest".to_owned(),
                    ),
                    Err(e) => match sb.vmm_exit() {
                        Some(reason) => (VM_GONE_STATUS, reason),
                        None => (VM_GONE_STATUS, format!("WaitProcess failed: {e}")),
                    },
                };
                if let Some(io) = io {
                    debug!("{id} {exec_id}: waiting for the output to drain");
                    if !io.wait_drained(DRAIN_TIMEOUT) {
                        warn!("{id} {exec_id}: output still open {DRAIN_TIMEOUT:?} after exit");
                    }
                }
                if let Some(inner) = Weak::upgrade(&inner) {
                    inner.finish(&id, &exec_id, code, &why);
                }
            });
        if let Err(e) = spawned {
            error!("cannot start a waiter thread: {e}");
        }
    }

    /// Opens and attaches the streams a process uses; returns its copiers.
    fn attach_stdio(
        &self,
        sb: &dyn Pod,
        id: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo, shim_ttrpc::Error> {
        let mut io = ProcessIo::default();
        let timeout = Duration::from_secs(30);
        let attach = |which| -> Result<std::os::unix::net::UnixStream, shim_ttrpc::Error> {
            sb.attach_stream(id, exec_id, which, timeout)
                .map_err(|e| status(Code::UNAVAILABLE, e))
        };
        let name = if exec_id.is_empty() { id } else { exec_id };
        if let Some(t) = output_target(&paths.stdout)
            .map_err(|e| status(Code::INVALID_ARGUMENT, husk_errors::chain(&e)))?
        {
            let s = attach(StdioStream::STDIO_STREAM_STDOUT)?;
            io.add_output(&format!("{name}-out"), s, t);
        }
        if !paths.terminal {
            if let Some(t) = output_target(&paths.stderr)
                .map_err(|e| status(Code::INVALID_ARGUMENT, husk_errors::chain(&e)))?
            {
                let s = attach(StdioStream::STDIO_STREAM_STDERR)?;
                io.add_output(&format!("{name}-err"), s, t);
            }
        }
        if !paths.stdin.is_empty() {
            let s = attach(StdioStream::STDIO_STREAM_STDIN)?;
            io.add_stdin(paths.stdin.clone(), s);
        }
        Ok(io)
    }

    fn stdio_set(paths: &StdioPaths) -> agent::StdioSet {
        let mut s = agent::StdioSet::new();
        s.stdin = !paths.stdin.is_empty();
        s.stdout = !paths.stdout.is_empty();
        s.stderr = !paths.terminal && !paths.stderr.is_empty();
        s
    }

    /// Starts the pod's VM for its first container.
    fn ensure_sandbox(
        self: &Arc<Self>,
        config: &Config,
        pod: &str,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn Pod>, shim_ttrpc::Error> {
        let mut slot = self.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sb) = slot.as_ref() {
            return Ok(Arc::clone(sb));
        }
        let (vcpus, memory_mib) = spec::vm_size(
            config.vcpus,
            config.memory_mib,
            config.max_vcpus,
            config.max_memory_mib,
            spec,
        );
        let hostname = spec
            .get("hostname")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(pod);
        let netns = spec::network_namespace(spec);
        let weak = Arc::downgrade(self);
        let hook = Box::new(move |reason: String| {
            if let Some(inner) = Weak::upgrade(&weak) {
                inner.vm_gone(&reason);
            }
        });
        let sb = self
            .launcher
            .start(
                config,
                &PodRequest {
                    namespace: &self.namespace,
                    pod,
                    hostname,
                    vcpus,
                    memory_mib,
                    netns: netns.as_deref(),
                    cgroups_path: spec
                        .pointer("/linux/cgroupsPath")
                        .and_then(serde_json::Value::as_str),
                    port_forward: spec::is_cri_sandbox(spec),
                    shm: spec::sandbox_shm_source(spec).as_deref(),
                },
                hook,
            )
            .map_err(|e| {
                status(
                    Code::UNAVAILABLE,
                    format!("husk: cannot start the pod VM: {}", husk_errors::chain(&e)),
                )
            })?;
        *slot = Some(Arc::clone(&sb));
        drop(slot);
        self.spawn_oom_watcher(Arc::clone(&sb));
        Ok(sb)
    }

    /// Stops the pod VM if no container is left; true if it is gone.
    fn stop_sandbox_if_unused(&self) -> bool {
        if !self.containers().is_empty() {
            return false;
        }
        let sb = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sb) = sb {
            if let Err(e) = sb.stop(self.ops.as_ref()) {
                error!("pod {}: teardown: {}", sb.id(), husk_errors::chain(&e));
            } else {
                info!("pod {}: VM stopped, state removed", sb.id());
            }
        }
        true
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> Result<u32, shim_ttrpc::Error> {
        let id = &req.id;
        if !spec::valid_id(id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("bad container id {id:?}"),
            ));
        }
        if self.containers().contains_key(id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id} exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "husk cannot restore checkpoints",
            ));
        }
        let bundle = Path::new(&req.bundle);
        let raw = std::fs::read(bundle.join("config.json")).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("cannot read {}/config.json: {e}", req.bundle),
            )
        })?;
        let spec_value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("bad config.json: {e}")))?;
        let config_path = req
            .options
            .as_ref()
            .and_then(|o| spec::config_path_from_options(&o.type_url, &o.value));
        let (config, used) = Config::load(config_path.as_deref()).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("husk: {}", husk_errors::chain(&e)),
            )
        })?;
        info!(
            "create {id}: config {}",
            used.map_or("defaults".into(), |p| p.display().to_string())
        );
        spec::check_no_host_namespaces(&spec_value)
            .map_err(|e| status(Code::FAILED_PRECONDITION, husk_errors::chain(&e)))?;
        // The pod's shared memory: the running pod's, or this sandbox container's.
        let pod_shm = match self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(sb) => sb.shm_host().map(Path::to_path_buf),
            None => spec::sandbox_shm_source(&spec_value),
        };
        let guest = spec::adjust_for_guest(id, &raw, pod_shm.as_deref()).map_err(|e| {
            let code = match e {
                spec::SpecError::BidirectionalPropagation(_) => Code::FAILED_PRECONDITION,
                _ => Code::INVALID_ARGUMENT,
            };
            status(code, husk_errors::chain(&e))
        })?;
        let pod = spec::pod_id(id, &spec_value);
        let sb = self.ensure_sandbox(&config, &pod, &spec_value)?;

        let share_dir = sb.shared().join(id);
        let result = self.create_in_guest(sb.as_ref(), req, &spec_value, &guest);
        match result {
            Ok(process) => {
                let pid = process.pid;
                let state = BundleState {
                    pod_dir: sb.dir().to_path_buf(),
                    vmm: config.vmm.clone(),
                    virtiofsd: config.virtiofsd.clone(),
                };
                if let Err(e) = persist::write(bundle, &state) {
                    warn!("{}", husk_errors::chain(&e));
                }
                self.containers().insert(
                    id.clone(),
                    Container {
                        bundle: req.bundle.clone(),
                        share_dir,
                        init: process,
                        execs: HashMap::new(),
                    },
                );
                Ok(pid)
            }
            Err(e) => {
                let _ = mounts::unmount_under(self.ops.as_ref(), &share_dir);
                let _ = std::fs::remove_dir_all(&share_dir);
                self.stop_sandbox_if_unused();
                Err(e)
            }
        }
    }

    fn create_in_guest(
        &self,
        sb: &dyn Pod,
        req: &api::CreateTaskRequest,
        spec_value: &serde_json::Value,
        guest: &GuestSpec,
    ) -> Result<Process, shim_ttrpc::Error> {
        let GuestSpec {
            json,
            binds,
            terminal,
        } = guest;
        let mount_err = |e: mounts::MountError| status(Code::INTERNAL, husk_errors::chain(&e));
        let rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        mounts::mount_rootfs(
            self.ops.as_ref(),
            &rootfs,
            &spec::host_root_path(Path::new(&req.bundle), spec_value),
            sb.shared(),
            &Path::new(&req.id).join("rootfs"),
        )
        .map_err(mount_err)?;
        for b in binds {
            mounts::share_path(
                self.ops.as_ref(),
                &b.host_source,
                sb.shared(),
                &b.share_rel,
                b.readonly,
            )
            .map_err(mount_err)?;
        }
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal || *terminal,
        };
        let mut creq = agent::CreateContainerRequest::new();
        creq.container_id = req.id.clone();
        creq.oci_spec_json = json.clone();
        creq.rootfs_path = spec::guest_rootfs(&req.id);
        creq.terminal = paths.terminal;
        creq.stdio = Some(Self::stdio_set(&paths)).into();
        let asked = std::time::Instant::now();
        let resp = sb
            .agent()
            .create_container(sb.ctx(), &creq)
            .map_err(|e| agent_err("CreateContainer", e))?;
        debug!("{}: CreateContainer took {:?}", req.id, asked.elapsed());
        let io = match self.attach_stdio(sb, &req.id, "", &paths) {
            Ok(io) => io,
            Err(e) => {
                let mut r = agent::RemoveContainerRequest::new();
                r.container_id = req.id.clone();
                r.force = true;
                let _ = sb.agent().remove_container(sb.ctx(), &r);
                return Err(e);
            }
        };
        let mut p = Process::new("", paths);
        p.pid = resp.pid;
        p.io = Arc::new(io);
        Ok(p)
    }

    fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, shim_ttrpc::Error> {
        let sb = self.sandbox()?;
        let (spec, paths) = {
            let cs = self.containers();
            let c = cs.get(id).ok_or_else(|| not_found(id, ""))?;
            let p = c.process(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            if p.status() != Status::CREATED {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{id} {exec_id} is {:?}, not created", p.status()),
                ));
            }
            (p.spec.clone(), p.stdio.clone())
        };
        let pid = if exec_id.is_empty() {
            let mut r = agent::StartContainerRequest::new();
            r.container_id = id.to_owned();
            sb.agent()
                .start_container(sb.ctx(), &r)
                .map_err(|e| agent_err("StartContainer", e))?;
            self.containers().get(id).map_or(0, |c| c.init.pid)
        } else {
            let mut r = agent::ExecProcessRequest::new();
            r.container_id = id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.process_json = spec;
            r.stdio = Some(Self::stdio_set(&paths)).into();
            let resp = sb
                .agent()
                .exec_process(sb.ctx(), &r)
                .map_err(|e| agent_err("ExecProcess", e))?;
            let io = self.attach_stdio(sb.as_ref(), id, exec_id, &paths)?;
            let mut cs = self.containers();
            if let Some(p) = cs.get_mut(id).and_then(|c| c.execs.get_mut(exec_id)) {
                p.pid = resp.pid;
                p.io = Arc::new(io);
            }
            resp.pid
        };
        if let Some(p) = self
            .containers()
            .get_mut(id)
            .and_then(|c| c.process_mut(exec_id))
        {
            p.status = Status::RUNNING;
        }
        self.spawn_waiter(Arc::clone(&sb), id.to_owned(), exec_id.to_owned());
        if exec_id.is_empty() {
            let mut ev = containerd_shim::protos::events::task::TaskStart::new();
            ev.container_id = id.to_owned();
            ev.pid = pid;
            self.publish(Box::new(ev));
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_owned();
            ev.exec_id = exec_id.to_owned();
            ev.pid = pid;
            self.publish(Box::new(ev));
        }
        Ok(pid)
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, shim_ttrpc::Error> {
        let mut resp = api::DeleteResponse::new();
        if !exec_id.is_empty() {
            let mut cs = self.containers();
            let c = cs.get_mut(id).ok_or_else(|| not_found(id, ""))?;
            let p = c.execs.get(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            if p.status() == Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} runs"),
                ));
            }
            let exit = p.exit.get();
            resp.pid = p.pid;
            resp.exit_status = exit.as_ref().map_or(0, |e| e.status);
            resp.exited_at = exit.map(|e| e.at).into();
            p.exit.release(Exit {
                status: resp.exit_status,
                at: now(),
            });
            c.execs.remove(exec_id);
            return Ok(resp);
        }
        let (share_dir, pid, exit, cell) = {
            let cs = self.containers();
            let c = cs.get(id).ok_or_else(|| not_found(id, ""))?;
            if matches!(c.init.status(), Status::RUNNING | Status::PAUSED) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} runs"),
                ));
            }
            (
                c.share_dir.clone(),
                c.init.pid,
                c.init.exit.get(),
                Arc::clone(&c.init.exit),
            )
        };
        if let Ok(sb) = self.sandbox() {
            if sb.vmm_exit().is_none() {
                let mut r = agent::RemoveContainerRequest::new();
                r.container_id = id.to_owned();
                r.force = true;
                // Bounded: a removal the agent cannot finish must not hold containerd's
                // Delete (and the pod's teardown) for the whole RPC deadline.
                let ctx = ttrpc::context::with_timeout(REMOVE_TIMEOUT.as_nanos() as i64);
                if let Err(e) = sb.agent().remove_container(ctx, &r) {
                    warn!("RemoveContainer {id}: {e}");
                }
            }
        }
        mounts::unmount_under(self.ops.as_ref(), &share_dir)
            .map_err(|e| status(Code::INTERNAL, husk_errors::chain(&e)))?;
        if let Err(e) = std::fs::remove_dir_all(&share_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", share_dir.display());
            }
        }
        let exit = exit.unwrap_or(Exit {
            status: VM_GONE_STATUS,
            at: now(),
        });
        cell.release(exit.clone());
        self.containers().remove(id);
        resp.pid = pid;
        resp.exit_status = exit.status;
        resp.exited_at = Some(exit.at.clone()).into();
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_owned();
        ev.id = id.to_owned();
        ev.pid = pid;
        ev.exit_status = exit.status;
        ev.exited_at = Some(exit.at).into();
        self.publish(Box::new(ev));
        Ok(resp)
    }

    /// Pauses (`frozen`) or resumes container `id` through the agent's freezer, records
    /// the status and publishes TaskPaused or TaskResumed.
    fn set_frozen(&self, id: &str, frozen: bool) -> TtrpcResult<()> {
        self.process_info(id, "", |_, _| ())?;
        let sb = self.sandbox()?;
        let (status, event): (Status, Box<dyn Event>) = if frozen {
            let mut r = agent::PauseContainerRequest::new();
            r.container_id = id.to_owned();
            sb.agent()
                .pause_container(sb.ctx(), &r)
                .map_err(|e| agent_err("PauseContainer", e))?;
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_owned();
            (Status::PAUSED, Box::new(ev))
        } else {
            let mut r = agent::ResumeContainerRequest::new();
            r.container_id = id.to_owned();
            sb.agent()
                .resume_container(sb.ctx(), &r)
                .map_err(|e| agent_err("ResumeContainer", e))?;
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_owned();
            (Status::RUNNING, Box::new(ev))
        };
        if let Some(c) = self.containers().get_mut(id) {
            c.init.status = status;
        }
        self.publish(event);
        Ok(())
    }

    fn process_info<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&Container, &Process) -> T,
    ) -> Result<T, shim_ttrpc::Error> {
        let cs = self.containers();
        let c = cs.get(id).ok_or_else(|| not_found(id, ""))?;
        let p = c.process(exec_id).ok_or_else(|| not_found(id, exec_id))?;
        Ok(f(c, p))
    }
}
