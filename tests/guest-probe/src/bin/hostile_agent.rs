//! husk-hostile-agent: PID 1 of the hostile-agent test (tests/tests/hostile_agent.rs), in
//! place of husk-agent. It speaks the agent API over vsock (ttrpc frames written by hand,
//! so that it can write them wrongly) well enough for the shim to start a pod and a
//! container, and then answers some calls the way a guest that owns its kernel could:
//!
//! - GetOOMEvent: answered at once, a hundred times a second, alternately naming the
//!   container and one that does not exist (an event flood for containerd);
//! - ListProcesses: an INTERNAL status whose 100 KiB message carries terminal escapes and
//!   60,000 empty `details` (the decode that cost ~30 bytes of heap per byte);
//! - StatsContainer: 60,000 empty I/O device entries (the same, in a reply);
//! - PauseContainer: a frame header, a few bytes of its body, then nothing, for ever;
//! - an exec named `flood`: 32 MiB on its stdout, then its exit;
//! - an exec named `trickle`: its stdio handshake answered one byte every 3 s, with a
//!   frame of 1000 bytes (it would take 50 minutes).
//!
//! Everything else is answered as husk-agent would. The init process "runs" until the
//! shim signals it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::protobuf::Message;
use husk_protocol::{frame, ttrpc, AGENT_VSOCK_PORT, API_VERSION, STDIO_VSOCK_PORT};

const RESPONSE: u8 = 2;

/// The container the shim created (the OOM flood names it, and others).
static CONTAINER: Mutex<String> = Mutex::new(String::new());

fn say(msg: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "husk-hostile-agent: {msg}");
    let _ = out.flush();
}

/// Exit statuses of processes, by (container, exec), and whom to wake.
#[derive(Default)]
struct Exits {
    done: Mutex<HashMap<(String, String), i32>>,
    cond: Condvar,
}

impl Exits {
    fn set(&self, container: &str, exec: &str, status: i32) {
        self.done
            .lock()
            .unwrap()
            .insert((container.to_owned(), exec.to_owned()), status);
        self.cond.notify_all();
    }

    fn wait(&self, container: &str, exec: &str) -> i32 {
        let key = (container.to_owned(), exec.to_owned());
        let mut done = self.done.lock().unwrap();
        loop {
            if let Some(s) = done.get(&key) {
                return *s;
            }
            done = self.cond.wait(done).unwrap();
        }
    }
}

fn main() {
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        unsafe {
            libc::mount(
                c(fstype).as_ptr(),
                c(target).as_ptr(),
                c(fstype).as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    let exits = Arc::new(Exits::default());
    let stdio = husk_vsock_sys::listen(STDIO_VSOCK_PORT).expect("listen on the stdio port");
    let e = Arc::clone(&exits);
    std::thread::spawn(move || loop {
        if let Ok(fd) = husk_vsock_sys::accept(&stdio) {
            let e = Arc::clone(&e);
            std::thread::spawn(move || serve_stdio(File::from(fd), &e));
        }
    });
    let api = husk_vsock_sys::listen(AGENT_VSOCK_PORT).expect("listen on the agent port");
    say("ready");
    loop {
        if let Ok(fd) = husk_vsock_sys::accept(&api) {
            let e = Arc::clone(&exits);
            std::thread::spawn(move || serve_api(File::from(fd), e));
        }
    }
}

/// One ttrpc connection: requests in, responses out (under a lock: some come from other
/// threads, later).
fn serve_api(conn: File, exits: Arc<Exits>) {
    let out = Arc::new(Mutex::new(conn.try_clone().expect("clone the connection")));
    let mut conn = conn;
    let mut header = [0u8; 10];
    while conn.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let id = u32::from_be_bytes(header[4..8].try_into().unwrap());
        let mut body = vec![0u8; len.min(16 << 20)];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        let Ok(req) = ttrpc::Request::parse_from_bytes(&body) else {
            return;
        };
        let out = Arc::clone(&out);
        let exits = Arc::clone(&exits);
        // Each call on a thread of its own: some answer late or never.
        std::thread::spawn(move || answer(&req.method, &req.payload, id, &out, &exits));
    }
}

fn frame_bytes(id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[RESPONSE, 0]);
    f.extend_from_slice(body);
    f
}

fn send(out: &Mutex<File>, bytes: &[u8]) {
    let _ = out.lock().unwrap().write_all(bytes);
}

fn ok(out: &Mutex<File>, id: u32, payload: &impl Message) {
    let mut r = ttrpc::Response::new();
    r.payload = payload.write_to_bytes().unwrap();
    send(out, &frame_bytes(id, &r.write_to_bytes().unwrap()));
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `tag` holding `body`.
fn field(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// An INTERNAL status with a 100 KiB message (terminal escapes first) and 60,000 empty
/// `details`, in a Response.
fn status_bomb() -> Vec<u8> {
    let mut status = vec![0x08, ttrpc::Code::INTERNAL as u8];
    let message = format!("\x1b[2J\x1b[31mhostile agent: {}", "m".repeat(100 << 10));
    field(0x12, message.as_bytes(), &mut status);
    for _ in 0..60_000 {
        status.extend_from_slice(&[0x1a, 0x00]);
    }
    let mut response = Vec::new();
    field(0x0a, &status, &mut response);
    response
}

/// A StatsContainerResponse whose `io` holds 60,000 empty device entries.
fn stats_bomb() -> Vec<u8> {
    let mut io = Vec::new();
    for _ in 0..60_000 {
        io.extend_from_slice(&[0x0a, 0x00]);
    }
    let mut stats = Vec::new();
    field(0x22, &io, &mut stats);
    let mut response = Vec::new();
    field(0x12, &stats, &mut response);
    response
}

fn answer(method: &str, payload: &[u8], id: u32, out: &Mutex<File>, exits: &Exits) {
    match method {
        "Health" => {
            let mut r = HealthResponse::new();
            r.status = ServingStatus::SERVING_STATUS_SERVING.into();
            ok(out, id, &r);
        }
        "Version" => {
            let mut r = VersionResponse::new();
            r.api_version = API_VERSION.into();
            r.agent_version = "hostile\x1b[2J".into();
            r.kernel_release = "x".repeat(10_000);
            ok(out, id, &r);
        }
        "CreateContainer" => {
            if let Ok(req) = CreateContainerRequest::parse_from_bytes(payload) {
                *CONTAINER.lock().unwrap() = req.container_id;
            }
            let mut r = CreateContainerResponse::new();
            r.pid = 42;
            ok(out, id, &r);
        }
        "ExecProcess" => {
            let mut r = ExecProcessResponse::new();
            r.pid = 43;
            ok(out, id, &r);
        }
        "WaitProcess" => {
            let Ok(req) = WaitProcessRequest::parse_from_bytes(payload) else {
                return;
            };
            let status = exits.wait(&req.container_id, &req.exec_id);
            let mut r = WaitProcessResponse::new();
            r.exit_status = status;
            ok(out, id, &r);
        }
        "SignalProcess" => {
            if let Ok(req) = SignalProcessRequest::parse_from_bytes(payload) {
                exits.set(&req.container_id, &req.exec_id, 128 + req.signal as i32);
            }
            ok(out, id, &Empty::new());
        }
        "GetOOMEvent" => {
            // A flood: the shim asks again at once.
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            std::thread::sleep(Duration::from_millis(10));
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = OOMEvent::new();
            r.container_id = if n.is_multiple_of(2) {
                CONTAINER.lock().unwrap().clone()
            } else {
                format!("not-in-this-pod-{n}")
            };
            ok(out, id, &r);
        }
        "ListProcesses" => send(out, &frame_bytes(id, &status_bomb())),
        "StatsContainer" => send(out, &frame_bytes(id, &stats_bomb())),
        "PauseContainer" => {
            // A frame that never ends: its header and 10 of its 1000 bytes.
            let f = frame_bytes(id, &[0u8; 1000]);
            send(out, &f[..20]);
        }
        "DestroySandbox" => {
            ok(out, id, &Empty::new());
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: no pointers; as PID 1 a restart ends the VM (husk-vmm's clean exit).
            unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        }
        _ => ok(out, id, &Empty::new()),
    }
}

/// One stdio connection: the handshake, then the stream (see the module docs).
fn serve_stdio(mut conn: File, exits: &Exits) {
    let Ok(req) = frame::read_frame(&mut conn) else {
        return;
    };
    let Ok(attach) = StdioAttach::parse_from_bytes(&req) else {
        return;
    };
    let answer = frame::encode_frame(&StdioAttachResponse::new().write_to_bytes().unwrap())
        .expect("a small frame");
    if attach.exec_id == "trickle" {
        // Not the real answer: an empty response is a 4-byte frame, trickled whole in
        // 12 s, well inside the shim's 30 s attach deadline (and the exec then never
        // ended: the test hung). A frame of 1000 bytes at a byte every 3 s never ends.
        let endless = frame::encode_frame(&[0u8; 1000]).expect("a frame under MAX_FRAME");
        for b in endless {
            if conn.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        return;
    }
    if conn.write_all(&answer).is_err() {
        return;
    }
    let stream = attach.stream.enum_value_or_default();
    match (attach.exec_id.as_str(), stream) {
        ("flood", StdioStream::STDIO_STREAM_STDOUT) => {
            let chunk = vec![b'f'; 64 << 10];
            for _ in 0..512 {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
            drop(conn);
            exits.set(&attach.container_id, "flood", 0);
        }
        (_, StdioStream::STDIO_STREAM_STDIN) => {
            let mut sink = [0u8; 4096];
            while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        }
        // Other outputs end at once, with nothing in them.
        _ => {}
    }
}
