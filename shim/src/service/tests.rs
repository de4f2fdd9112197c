//! The Task service against fakes (`fake.rs`): what it asks of the agent and of the
//! launcher for each containerd call, what it answers, and the events it publishes, in
//! order. No VM, no containerd; the mounts go to the `FakeHost`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::ttrpc::{Code, Error as RpcError, TtrpcContext};
use containerd_shim::{ExitSignal, Task};
use serde_json::{json, Value};

use super::fake::{FakeLauncher, FakePublisher};
use super::Service;
use crate::mounts::tests::FakeHost;
use crate::process::VM_GONE_STATUS;
use crate::spec::{CONTAINER_TYPE_ANNOTATION, GUEST_POD_SHM, SANDBOX_ID_ANNOTATION};

struct Fixture {
    svc: Service,
    launcher: Arc<FakeLauncher>,
    events: Arc<FakePublisher>,
    host: Arc<FakeHost>,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.launcher.agent.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ctx() -> TtrpcContext {
    let (_cancel, cancel_rx) = crossbeam::channel::unbounded();
    let (res_tx, _) = std::sync::mpsc::channel();
    TtrpcContext {
        fd: -1,
        cancel_rx,
        mh: Default::default(),
        res_tx,
        metadata: HashMap::new(),
        timeout_nano: 0,
    }
}

fn fixture(tag: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("husk-svc-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let launcher = FakeLauncher::new(dir.join("pods"));
    let events = Arc::new(FakePublisher::default());
    let host = Arc::new(FakeHost::default());
    let svc = Service::with(
        "default",
        Box::new(Arc::clone(&events)),
        Box::new(Arc::clone(&launcher)),
        Box::new(Arc::clone(&host)),
        Arc::new(ExitSignal::default()),
    );
    Fixture {
        svc,
        launcher,
        events,
        host,
        dir,
    }
}

/// A runtime spec running `sh`, with these annotations and mounts.
fn spec(annotations: Value, mounts: Value) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "terminal": false},
        "root": {"path": "rootfs"},
        "hostname": "box",
        "annotations": annotations,
        "mounts": mounts,
        "linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-x"}
        ]}
    })
}

fn plain() -> Value {
    let mut s = spec(json!({}), json!([]));
    // A `ctr run` container: a network namespace of its own, no CNI netns.
    s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}]);
    s
}

impl Fixture {
    fn bundle(&self, id: &str, spec: &Value) -> PathBuf {
        let b = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), serde_json::to_vec(spec).unwrap()).unwrap();
        b
    }

    fn create(&self, id: &str, spec: &Value) -> Result<api::CreateTaskResponse, RpcError> {
        let mut req = api::CreateTaskRequest::new();
        req.id = id.into();
        req.bundle = self.bundle(id, spec).display().to_string();
        self.svc.create(&ctx(), req)
    }

    fn start(&self, id: &str, exec: &str) -> Result<api::StartResponse, RpcError> {
        let mut req = api::StartRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        self.svc.start(&ctx(), req)
    }

    fn state(&self, id: &str, exec: &str) -> api::StateResponse {
        let mut req = api::StateRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        self.svc.state(&ctx(), req).unwrap()
    }

    fn wait(&self, id: &str, exec: &str) -> api::WaitResponse {
        let mut req = api::WaitRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        self.svc.wait(&ctx(), req).unwrap()
    }

    fn delete(&self, id: &str, exec: &str) -> Result<api::DeleteResponse, RpcError> {
        let mut req = api::DeleteRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        self.svc.delete(&ctx(), req)
    }

    fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), RpcError> {
        let mut req = api::KillRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        req.signal = signal;
        req.all = all;
        self.svc.kill(&ctx(), req).map(drop)
    }

    fn exec(&self, id: &str, exec: &str) -> Result<(), RpcError> {
        let mut req = api::ExecProcessRequest::new();
        req.id = id.into();
        req.exec_id = exec.into();
        let mut any = Any::new();
        any.value = br#"{"args": ["ls"], "cwd": "/"}"#.to_vec();
        req.spec = Some(any).into();
        self.svc.exec(&ctx(), req).map(drop)
    }

    fn calls(&self) -> Vec<String> {
        self.launcher.agent.calls()
    }
}

/// Polls until `done`, at most 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn code(e: &RpcError) -> Code {
    match e {
        RpcError::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

fn message(e: &RpcError) -> String {
    match e {
        RpcError::RpcStatus(s) => s.message().to_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_container_is_created_started_waited_for_and_deleted_with_its_events_in_order() {
    let f = fixture("life");
    let pid = f.create("c1", &plain()).unwrap().pid;
    assert_eq!(pid, 100);
    // A pod of one, sized by the config, named for its container.
    let started = f.launcher.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    assert_eq!(
        (started[0].pod.as_str(), started[0].hostname.as_str()),
        ("c1", "box")
    );
    assert!(
        !started[0].port_forward,
        "a ctr container gets no port-forward relay"
    );
    // The rootfs went into the pod's share; the agent got the guest's view of the spec.
    let calls = f.host.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("bind ") && c.ends_with("shared/c1/rootfs")),
        "{calls:?}"
    );
    let sent: Value =
        serde_json::from_slice(&f.launcher.agent.specs.lock().unwrap()["c1"]).unwrap();
    assert_eq!(sent["root"]["path"], "/run/husk/shared/c1/rootfs");
    assert_eq!(sent["linux"]["cgroupsPath"], "/husk/c1");
    assert_eq!(f.state("c1", "").status, Status::CREATED.into());

    assert_eq!(f.start("c1", "").unwrap().pid, 100);
    assert_eq!(f.state("c1", "").status, Status::RUNNING.into());
    f.launcher.agent.exit("c1", "", 3);
    let w = f.wait("c1", "");
    assert_eq!(w.exit_status, 3);
    assert_eq!(f.state("c1", "").status, Status::STOPPED.into());

    let d = f.delete("c1", "").unwrap();
    assert_eq!((d.pid, d.exit_status), (100, 3));
    assert_eq!(
        f.calls(),
        [
            "CreateContainer c1",
            "StartContainer c1",
            "WaitProcess c1",
            "RemoveContainer c1"
        ]
    );
    assert_eq!(
        f.events.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let exit = &f.events.of::<TaskExit>()[0];
    assert_eq!(
        (
            exit.container_id.as_str(),
            exit.id.as_str(),
            exit.pid,
            exit.exit_status
        ),
        ("c1", "c1", 100, 3)
    );
    assert_eq!(f.events.of::<TaskCreate>()[0].pid, 100);
    assert_eq!(f.events.of::<TaskStart>()[0].pid, 100);
    assert_eq!(f.events.of::<TaskDelete>()[0].exit_status, 3);
    // The container's share is gone; with no container left, Shutdown stops the pod.
    assert!(!f.dir.join("pods/c1/shared/c1").exists());
    f.svc.shutdown(&ctx(), api::ShutdownRequest::new()).unwrap();
    let pod = f.launcher.pod.lock().unwrap().clone().unwrap();
    assert!(pod.stopped.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn an_exec_is_added_started_and_its_exit_reported() {
    let f = fixture("exec");
    f.create("c1", &plain()).unwrap();
    // Not before the container runs.
    assert_eq!(
        code(&f.exec("c1", "e1").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    f.start("c1", "").unwrap();
    f.exec("c1", "e1").unwrap();
    assert_eq!(code(&f.exec("c1", "e1").unwrap_err()), Code::ALREADY_EXISTS);
    assert_eq!(
        code(&f.exec("c1", "../x").unwrap_err()),
        Code::INVALID_ARGUMENT
    );
    let pid = f.start("c1", "e1").unwrap().pid;
    assert_eq!(pid, 101);
    f.launcher.agent.exit("c1", "e1", 5);
    assert_eq!(f.wait("c1", "e1").exit_status, 5);
    let d = f.delete("c1", "e1").unwrap();
    assert_eq!((d.pid, d.exit_status), (101, 5));
    let added = &f.events.of::<TaskExecAdded>()[0];
    assert_eq!(
        (added.container_id.as_str(), added.exec_id.as_str()),
        ("c1", "e1")
    );
    let started = &f.events.of::<TaskExecStarted>()[0];
    assert_eq!(started.pid, 101);
    let exit = f.events.of::<TaskExit>();
    assert_eq!((exit[0].id.as_str(), exit[0].exit_status), ("e1", 5));
    assert!(f.calls().contains(&"ExecProcess c1/e1".to_string()));
    // The init still runs.
    assert_eq!(f.state("c1", "").status, Status::RUNNING.into());
}

#[test]
fn deleting_a_process_that_never_exited_ends_its_wait() {
    // containerd waits on an exec before starting it; when the start fails (here: never
    // tried), it deletes the exec. A Wait left blocked would hold its ttrpc handler, and
    // so the shim's exit, for good.
    let f = fixture("wait-deleted");
    f.create("c1", &plain()).unwrap();
    f.start("c1", "").unwrap();
    f.exec("c1", "e1").unwrap();
    // Not scoped: a Wait that never returns must fail the test, not hang it.
    let svc = Service {
        inner: Arc::clone(&f.svc.inner),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut req = api::WaitRequest::new();
        req.id = "c1".into();
        req.exec_id = "e1".into();
        let _ = tx.send(svc.wait(&ctx(), req).map(|r| r.exit_status));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "Wait returned before the exec ended"
    );
    let d = f.delete("c1", "e1").unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the Wait still blocks 10 s after the Delete");
    assert_eq!(got.unwrap(), d.exit_status);
}

#[test]
fn kill_pause_and_resume_reach_the_agent_and_are_published() {
    let f = fixture("kill");
    f.create("c1", &plain()).unwrap();
    f.start("c1", "").unwrap();
    f.kill("c1", "", 15, false).unwrap();
    f.svc
        .pause(&ctx(), {
            let mut r = api::PauseRequest::new();
            r.id = "c1".into();
            r
        })
        .unwrap();
    assert_eq!(f.state("c1", "").status, Status::PAUSED.into());
    // A paused container cannot be deleted.
    assert_eq!(
        code(&f.delete("c1", "").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    f.svc
        .resume(&ctx(), {
            let mut r = api::ResumeRequest::new();
            r.id = "c1".into();
            r
        })
        .unwrap();
    assert_eq!(f.state("c1", "").status, Status::RUNNING.into());
    assert_eq!(
        f.launcher.agent.signals.lock().unwrap().clone(),
        [("c1".to_string(), String::new(), 15, false)]
    );
    assert_eq!(f.events.of::<TaskPaused>().len(), 1);
    assert_eq!(f.events.of::<TaskResumed>().len(), 1);
    // Unknown containers and execs are NOT_FOUND.
    assert_eq!(
        code(&f.kill("nope", "", 9, false).unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(&f.kill("c1", "nope", 9, false).unwrap_err()),
        Code::NOT_FOUND
    );
}

#[test]
fn an_agent_error_reaches_containerd_with_its_code_and_message() {
    let f = fixture("err");
    f.create("c1", &plain()).unwrap();
    f.launcher.agent.fail_next(
        "StartContainer",
        Code::NOT_FOUND,
        "no such container in the guest",
    );
    let e = f.start("c1", "").unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND);
    assert_eq!(
        message(&e),
        "agent StartContainer: no such container in the guest"
    );
    assert_eq!(f.state("c1", "").status, Status::CREATED.into());
    assert!(f.events.of::<TaskStart>().is_empty());
}

#[test]
fn an_agent_cut_off_ends_its_processes_and_the_task_can_be_removed() {
    let f = fixture("cut");
    f.create("c1", &plain()).unwrap();
    f.start("c1", "").unwrap();
    // The connection is closed for good (as after a frame that never ends), the VM runs.
    f.launcher.agent.close();
    assert_eq!(f.wait("c1", "").exit_status, VM_GONE_STATUS);
    // `ctr task rm -f`: kill -a, then delete; the kill must not go to the dead agent.
    let signals = f.launcher.agent.signals.lock().unwrap().len();
    assert_eq!(
        code(&f.kill("c1", "", 9, true).unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(f.launcher.agent.signals.lock().unwrap().len(), signals);
    assert_eq!(f.delete("c1", "").unwrap().exit_status, VM_GONE_STATUS);
}

#[test]
fn a_dead_vm_ends_every_running_process_with_the_vm_gone_status() {
    let f = fixture("vm");
    f.create("c1", &plain()).unwrap();
    f.start("c1", "").unwrap();
    f.exec("c1", "e1").unwrap();
    f.start("c1", "e1").unwrap();
    f.exec("c1", "e2").unwrap(); // added, never started: no exit for it
    f.launcher.kill_vm("husk-vmm (pid 42) killed by signal 9");
    assert_eq!(f.wait("c1", "").exit_status, VM_GONE_STATUS);
    assert_eq!(f.wait("c1", "e1").exit_status, VM_GONE_STATUS);
    eventually("both exits published", || {
        f.events.of::<TaskExit>().len() == 2
    });
    let mut ids: Vec<String> = f
        .events
        .of::<TaskExit>()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["c1", "e1"]);
    // Nothing is left to signal: kill -a is NOT_FOUND, as runc's for a finished task.
    assert_eq!(
        code(&f.kill("c1", "", 9, true).unwrap_err()),
        Code::NOT_FOUND
    );
    // Delete needs no agent any more.
    let d = f.delete("c1", "").unwrap();
    assert_eq!(d.exit_status, VM_GONE_STATUS);
    assert!(!f.calls().contains(&"RemoveContainer c1".to_string()));
}

#[test]
fn an_oom_kill_in_the_guest_is_published() {
    let f = fixture("oom");
    f.create("c1", &plain()).unwrap();
    f.launcher.agent.oom("c1");
    eventually("TaskOOM", || !f.events.of::<TaskOOM>().is_empty());
    assert_eq!(f.events.of::<TaskOOM>()[0].container_id, "c1");
}

#[test]
fn an_agent_flooding_oom_events_reaches_containerd_bounded() {
    let f = fixture("oomflood");
    f.create("c1", &plain()).unwrap();
    let start = Instant::now();
    for _ in 0..1000 {
        f.launcher.agent.oom("c1");
        f.launcher.agent.oom("not-in-this-pod");
    }
    eventually("the floods read", || f.launcher.agent.pending_ooms() == 0);
    std::thread::sleep(Duration::from_millis(100));
    let published = f.events.of::<TaskOOM>();
    let secs = start.elapsed().as_secs() as usize;
    assert!(
        !published.is_empty() && published.len() <= super::oom::OOM_BURST as usize + secs + 1,
        "{} TaskOOM events in {secs} s",
        published.len()
    );
    assert!(published.iter().all(|e| e.container_id == "c1"));
}

#[test]
fn a_pod_that_cannot_start_fails_create_with_the_reason() {
    let f = fixture("nostart");
    *f.launcher.fail.lock().unwrap() = Some("exited with status 1: no /dev/kvm".into());
    let e = f.create("c1", &plain()).unwrap_err();
    assert_eq!(code(&e), Code::UNAVAILABLE);
    assert!(message(&e).contains("no /dev/kvm"), "{}", message(&e));
    assert!(f.events.topics().is_empty());
}

#[test]
fn cri_containers_join_their_sandbox_and_share_its_memory_tmpfs() {
    let f = fixture("cri");
    let shm = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb/shm";
    let shm_mount = json!([{"destination": "/dev/shm", "type": "bind", "source": shm,
                            "options": ["rbind", "ro"]}]);
    let sandbox = spec(
        json!({CONTAINER_TYPE_ANNOTATION: "sandbox"}),
        shm_mount.clone(),
    );
    f.create("sb", &sandbox).unwrap();
    let member = spec(
        json!({CONTAINER_TYPE_ANNOTATION: "container", SANDBOX_ID_ANNOTATION: "sb"}),
        shm_mount,
    );
    f.create("app", &member).unwrap();
    let started = f.launcher.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "one VM for the pod");
    assert_eq!(started[0].pod, "sb");
    assert!(started[0].port_forward);
    assert_eq!(started[0].shm.as_deref(), Some(std::path::Path::new(shm)));
    for id in ["sb", "app"] {
        let sent: Value =
            serde_json::from_slice(&f.launcher.agent.specs.lock().unwrap()[id]).unwrap();
        assert_eq!(sent["mounts"][0]["source"], GUEST_POD_SHM, "{id}");
    }
}

#[test]
fn what_a_vm_cannot_do_is_refused_before_anything_starts() {
    let f = fixture("refuse");
    // hostNetwork: a CRI container without a network namespace entry.
    let mut host_net = spec(json!({CONTAINER_TYPE_ANNOTATION: "sandbox"}), json!([]));
    host_net["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}]);
    let e = f.create("hn", &host_net).unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION);
    assert!(message(&e).contains("network"), "{}", message(&e));
    // Bidirectional mount propagation.
    let bidi = spec(
        json!({CONTAINER_TYPE_ANNOTATION: "sandbox"}),
        json!([{"destination": "/b", "type": "bind", "source": "/srv/b",
                "options": ["rbind", "rshared"]}]),
    );
    let e = f.create("bd", &bidi).unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION);
    assert!(message(&e).contains("/b"), "{}", message(&e));
    assert!(f.launcher.started.lock().unwrap().is_empty());
    assert!(f.calls().is_empty());
}
