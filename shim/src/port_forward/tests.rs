//! Root tests: the steering and relay in a real network namespace (`ip netns add`, lo
//! up), with a fake VMM socket on the guest side that speaks hybrid vsock and the
//! port-forward handshake and then serves like a guest program would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::mpsc;

use husk_protocol::agent::{PortForwardRequest, PortForwardResponse};
use husk_protocol::frame;
use husk_protocol::protobuf::Message;

use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root (ip netns add, bpf sk_lookup)");
    }
    root
}

struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> Self {
        let name = format!("husk-pf{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        Self { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A TCP connection made from inside the namespace, as containerd makes it.
    fn dial(&self, port: u16) -> io::Result<TcpStream> {
        network::on_thread_in(&self.path(), || Ok(TcpStream::connect(("127.0.0.1", port)))).unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// What the fake guest does with a port-forward request.
#[derive(Clone, Copy)]
enum Guest {
    /// Accepts, then answers whatever it reads, upper-cased, after the client's end.
    Upper,
    /// Refuses with ECONNREFUSED.
    Refuse,
}

/// A fake husk-vmm vsock socket in `dir`; each connection's requested port goes to `tx`.
fn fake_vmm(dir: &Path, guest: Guest, tx: mpsc::Sender<u32>) -> PathBuf {
    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(conn.unwrap(), guest, &tx));
        }
    });
    path
}

fn serve(conn: UnixStream, guest: Guest, tx: &mpsc::Sender<u32>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("CONNECT {PORT_FORWARD_VSOCK_PORT}\n"));
    let mut conn = conn;
    conn.write_all(b"OK 1073741824\n").unwrap();
    let req =
        PortForwardRequest::parse_from_bytes(&frame::read_frame(&mut reader).unwrap()).unwrap();
    tx.send(req.port).unwrap();
    let mut resp = PortForwardResponse::new();
    if let Guest::Refuse = guest {
        resp.error = format!(
            "cannot connect to 127.0.0.1:{}: Connection refused",
            req.port
        );
        resp.errno = libc::ECONNREFUSED;
    }
    frame::write_frame(&mut conn, &resp.write_to_bytes().unwrap()).unwrap();
    if let Guest::Upper = guest {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        conn.write_all(&got.to_ascii_uppercase()).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("husk-pf-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Connections to any port of 127.0.0.1 in the pod's namespace reach the guest with the
/// port the client dialled, both directions intact; connections elsewhere do not.
#[test]
fn any_loopback_port_is_forwarded_to_the_guest_with_its_port() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new("any");
    let dir = temp_dir("any");
    let (tx, rx) = mpsc::channel();
    let vsock = fake_vmm(&dir, Guest::Upper, tx);
    let fwd = PortForwarder::start(&ns.path(), vsock, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}", husk_errors::chain(&e)));
    for port in [80u16, 8080, 65_000] {
        let mut c = ns.dial(port).unwrap();
        c.write_all(format!("hello port {port}").as_bytes())
            .unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, format!("HELLO PORT {port}"));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            u32::from(port)
        );
    }
    drop(fwd);
    // Once the forwarder is gone, nothing listens on 127.0.0.1 there any more.
    let e = ns.dial(8080).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A port the guest refuses resets the host connection: the client sees an error, not
/// an orderly empty stream.
#[test]
fn a_port_the_guest_refuses_resets_the_connection() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new("refuse");
    let dir = temp_dir("refuse");
    let (tx, rx) = mpsc::channel();
    let vsock = fake_vmm(&dir, Guest::Refuse, tx);
    let _fwd = PortForwarder::start(&ns.path(), vsock, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}", husk_errors::chain(&e)));
    let mut c = ns.dial(9999).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 9999);
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionReset),
        "the refused forward ended without a reset"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A network namespace path that is gone is a clear error naming it.
#[test]
fn a_missing_namespace_is_a_clear_error() {
    let path = PathBuf::from(format!("/var/run/netns/husk-pf{}-gone", std::process::id()));
    let e = PortForwarder::start(&path, "/nonexistent".into(), Duration::from_secs(1)).unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(
        text.contains(&path.display().to_string()) && text.contains("No such file"),
        "{text}"
    );
}
