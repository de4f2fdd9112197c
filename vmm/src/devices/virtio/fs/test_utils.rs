//! Test helpers: a scripted vhost-user backend, and a real virtiofsd when one is installed.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

/// vhost-user request codes.
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
}

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// What the fake backend offers: VERSION_1, EVENT_IDX, PROTOCOL_FEATURES, and two bits we
/// must not pass on (LOG_ALL, NOTIFICATION_DATA).
pub const FAKE_FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 30) | (1 << 26) | (1 << 38);
/// MQ, REPLY_ACK, BACKEND_REQ and CONFIG.
const FAKE_PROTOCOL_FEATURES: u64 = 0x1 | 0x8 | 0x20 | 0x200;

#[derive(Default)]
struct Log {
    /// (request, flags, body) of every request received.
    requests: Vec<(u32, u32, Vec<u8>)>,
    refuse: Option<u32>,
}

/// A vhost-user backend that answers the frontend's requests from a script and records
/// them. Its thread ends when the frontend closes the connection or on [`Self::hang_up`].
pub struct FakeBackend {
    dir: TempDir,
    log: Arc<Mutex<Log>>,
    stream: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    pub fn start(queue_num: u64) -> Self {
        Self::start_with_features(queue_num, FAKE_FEATURES)
    }

    pub fn start_with_features(queue_num: u64, features: u64) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/husk-fs-fake-").unwrap();
        let listener = UnixListener::bind(dir.as_path().join("vu.sock")).unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let stream = Arc::new(Mutex::new(None));
        let (log2, stream2) = (log.clone(), stream.clone());
        let thread = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            *stream2.lock().unwrap() = Some(conn.try_clone().unwrap());
            serve(conn, &log2, queue_num, features);
        });
        Self {
            dir,
            log,
            stream,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.as_path().join("vu.sock")
    }

    /// The request codes received so far.
    pub fn requests(&self) -> Vec<u32> {
        self.log
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.0)
            .collect()
    }

    /// The u64 body of the last `request` received.
    pub fn body_u64(&self, request: u32) -> Option<u64> {
        let log = self.log.lock().unwrap();
        let (_, _, body) = log.requests.iter().rev().find(|r| r.0 == request)?;
        Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
    }

    /// Whether every request from the `skip`th on carried NEED_REPLY.
    pub fn all_need_reply_after(&self, skip: usize) -> bool {
        let log = self.log.lock().unwrap();
        log.requests.len() > skip
            && log.requests[skip..]
                .iter()
                .all(|r| r.1 & FLAG_NEED_REPLY != 0)
    }

    /// Answer `request` with a failure status from now on.
    pub fn refuse(&self, request: u32) {
        self.log.lock().unwrap().refuse = Some(request);
    }

    /// Closes the connection as a dying backend would.
    pub fn hang_up(&self) {
        if let Some(s) = self.stream.lock().unwrap().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.hang_up();
        // The thread is blocked in accept only if no frontend ever connected: unblock it.
        let _ = UnixStream::connect(self.path());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: UnixStream, log: &Mutex<Log>, queue_num: u64, features: u64) {
    let mut hdr = [0u8; 12];
    while conn.read_exact(&mut hdr).is_ok() {
        let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
        let (request, flags, size) = (word(0), word(1), word(2));
        let mut body = vec![0u8; size.min(4096) as usize];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        let refuse = {
            let mut log = log.lock().unwrap();
            log.requests.push((request, flags, body));
            log.refuse == Some(request)
        };
        let reply: Option<Vec<u8>> = match request {
            req::GET_FEATURES => Some(features.to_le_bytes().to_vec()),
            req::GET_PROTOCOL_FEATURES => Some(FAKE_PROTOCOL_FEATURES.to_le_bytes().to_vec()),
            req::GET_QUEUE_NUM => Some(queue_num.to_le_bytes().to_vec()),
            // VhostUserVringState { index, num }: the next avail index, 0 here.
            req::GET_VRING_BASE => Some(vec![0u8; 8]),
            _ if flags & FLAG_NEED_REPLY != 0 => Some(u64::from(refuse).to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(body) = reply {
            let mut msg = Vec::with_capacity(12 + body.len());
            msg.extend(request.to_le_bytes());
            msg.extend((FLAG_VERSION | FLAG_REPLY).to_le_bytes());
            msg.extend((body.len() as u32).to_le_bytes());
            msg.extend(body);
            if conn.write_all(&msg).is_err() {
                return;
            }
        }
    }
}

/// Where virtiofsd is: on PATH or where `cargo install` puts it.
pub fn find_virtiofsd() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("virtiofsd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(home.join("bin/virtiofsd")).filter(|p| p.is_file())
    })
}

/// A virtiofsd process serving a temporary directory; killed on drop.
pub struct Virtiofsd {
    child: Child,
    /// Holds the socket and the shared directory; removed on drop.
    _dir: TempDir,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd and waits for its socket. `None` (after printing why) when it is
    /// not installed, unless `HUSK_REQUIRE_VIRTIOFSD` is set (CI): then the test fails.
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = find_virtiofsd() else {
            assert!(
                std::env::var_os("HUSK_REQUIRE_VIRTIOFSD").is_none(),
                "{test}: HUSK_REQUIRE_VIRTIOFSD is set but virtiofsd is not installed"
            );
            // Written to the real stderr, past libtest's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: virtiofsd is not installed (not on PATH nor in ~/.cargo/bin); \
                 run scripts/install-virtiofsd.sh"
            );
            return None;
        };
        let dir = TempDir::new_with_prefix("/tmp/husk-fs-vfsd-").unwrap();
        let shared = dir.as_path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), b"hello from the host\n").unwrap();
        let socket = dir.as_path().join("vfs.sock");
        let child = Command::new(&bin)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--sandbox=none", "--cache=never", "--log-level=error"])
            .arg("--no-announce-submounts")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut vfsd = Self {
            child,
            _dir: dir,
            socket,
        };
        vfsd.wait_for_socket();
        Some(vfsd)
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("virtiofsd exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "virtiofsd made no socket in 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Kills virtiofsd, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}
