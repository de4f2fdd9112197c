//! husk-guest-probe: PID 1 of the device-test initramfs. Mounts /proc, /sys and /dev,
//! listens on vsock port [`PROBE_PORT`] and serves one command per connection (the
//! protocol is in the library docs), so host tests can drive vsock, virtio-fs and
//! virtio-blk from outside. Prints `husk-probe: ready` on the console when listening.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use husk_guest_probe::{hash_reader, write_stream, Count, COUNT_BATCH, PROBE_PORT};
use husk_vsock_sys::HOST_CID;

const MAX_LINE: usize = 4096;

/// The last state the counting thread published (`COUNTER`, `COUNT`).
static COUNT: Mutex<Count> = Mutex::new(Count {
    i: 0,
    acc: 0,
    f: 0.0,
});
static COUNTING: Once = Once::new();
/// `TICK`'s counter.
static TICKS: AtomicU64 = AtomicU64::new(0);

fn count_forever() {
    let mut c = Count::start();
    loop {
        for _ in 0..COUNT_BATCH {
            c.step();
        }
        *COUNT.lock().unwrap_or_else(|e| e.into_inner()) = c;
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(fstype, fstype, target, "") {
            say(&format!("husk-probe: mount {target}: {e}"));
        }
    }
    let listener = match husk_vsock_sys::listen(PROBE_PORT) {
        Ok(l) => l,
        Err(e) => {
            say(&format!(
                "husk-probe: cannot listen on vsock port {PROBE_PORT}: {e}"
            ));
            power_off();
        }
    };
    say("husk-probe: ready");
    loop {
        let conn = match husk_vsock_sys::accept(&listener) {
            Ok(fd) => File::from(fd),
            Err(e) => {
                say(&format!("husk-probe: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        std::thread::spawn(move || serve(conn));
    }
}

fn say(msg: &str) {
    // The console is our stdout; /dev/kmsg would also reach it, but plainly is enough.
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we may restart the machine, which
    // with reboot=k is the VMM's clean exit.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn serve(mut conn: File) {
    let line = match read_line(&mut conn) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(conn, "ERR bad command line: {e}");
            return;
        }
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let result = run(&mut conn, &words);
    match result {
        Ok(Some(reply)) => {
            let _ = conn.write_all(reply.as_bytes());
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(conn, "ERR {e}");
        }
    }
    if words.first() == Some(&"POWEROFF") {
        drop(conn);
        power_off();
    }
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> io::Result<T> {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("argument {i}")))
}

fn run(conn: &mut File, words: &[&str]) -> io::Result<Option<String>> {
    match words.first().copied().unwrap_or("") {
        "SINK" => {
            let h = hash_reader(conn)?;
            Ok(Some(format!("OK {} {}\n", h.bytes(), h.value())))
        }
        "SOURCE" => {
            send_stream(conn, arg(words, 1)?, arg(words, 2)?)?;
            Ok(None)
        }
        "ECHO" => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok(None);
                }
                conn.write_all(&buf[..n])?;
            }
        }
        "DIAL" => {
            let (port, n, seed): (u32, u64, u64) = (arg(words, 1)?, arg(words, 2)?, arg(words, 3)?);
            let mut out = File::from(husk_vsock_sys::connect(HOST_CID, port)?);
            send_stream(&mut out, n, seed)?;
            Ok(Some(format!("OK {n}\n")))
        }
        "MOUNT" => {
            let data = words.get(4).copied().unwrap_or("");
            let target: String = arg(words, 3)?;
            std::fs::create_dir_all(&target)?;
            mount(
                words.get(2).copied().unwrap_or(""),
                words.get(1).copied().unwrap_or(""),
                &target,
                data,
            )?;
            Ok(Some("OK\n".into()))
        }
        "UMOUNT" => {
            let target = CString::new(words.get(1).copied().unwrap_or(""))?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount(target.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Some("OK\n".into()))
        }
        "SYNC" => {
            // SAFETY: no arguments.
            unsafe { libc::sync() };
            Ok(Some("OK\n".into()))
        }
        "READ" => {
            let data = std::fs::read(words.get(1).copied().unwrap_or(""))?;
            conn.write_all(format!("OK {}\n", data.len()).as_bytes())?;
            conn.write_all(&data)?;
            Ok(None)
        }
        "WRITE" => {
            let len: usize = arg(words, 2)?;
            let mut data = vec![0u8; len.min(64 << 20)];
            conn.read_exact(&mut data)?;
            let mut f = File::create(words.get(1).copied().unwrap_or(""))?;
            f.write_all(&data)?;
            f.sync_all()?;
            Ok(Some("OK\n".into()))
        }
        "WAITFILE" => {
            let path = words.get(1).copied().unwrap_or("");
            let secs: u64 = arg(words, 2)?;
            let start = Instant::now();
            while !Path::new(path).exists() {
                if start.elapsed() > Duration::from_secs(secs) {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no such file yet"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(Some("OK\n".into()))
        }
        "HASHFILE" => {
            let h = hash_reader(&mut File::open(words.get(1).copied().unwrap_or(""))?)?;
            Ok(Some(format!("OK {} {}\n", h.bytes(), h.value())))
        }
        "FIND" => Ok(Some(format!(
            "OK {}\n",
            count_entries(Path::new(words.get(1).copied().unwrap_or("")))?
        ))),
        "HOLD" => {
            // Accept the connection and never read from it.
            std::thread::sleep(Duration::from_secs(arg(words, 1)?));
            Ok(Some("OK\n".into()))
        }
        "IFUP" => {
            // IFUP <ifname> <ipv4> <prefix>: address, netmask and IFF_UP.
            let (name, addr, prefix): (String, std::net::Ipv4Addr, u8) =
                (arg(words, 1)?, arg(words, 2)?, arg(words, 3)?);
            if_up(&name, addr, prefix)?;
            Ok(Some("OK\n".into()))
        }
        "TCPSINK" => {
            // TCPSINK <port>: "READY" once listening, then the hash of one connection.
            let listener = std::net::TcpListener::bind(("0.0.0.0", arg::<u16>(words, 1)?))?;
            conn.write_all(b"READY\n")?;
            let (mut s, _) = listener.accept()?;
            let h = hash_reader(&mut s)?;
            Ok(Some(format!("OK {} {}\n", h.bytes(), h.value())))
        }
        "TCPSOURCE" => {
            // TCPSOURCE <ipv4> <port> <bytes> <seed>
            let (ip, port, n, seed): (std::net::Ipv4Addr, u16, u64, u64) = (
                arg(words, 1)?,
                arg(words, 2)?,
                arg(words, 3)?,
                arg(words, 4)?,
            );
            let mut s = std::net::TcpStream::connect((ip, port))?;
            write_stream(&mut s, n, seed)?;
            s.shutdown(std::net::Shutdown::Write)?;
            // Wait for the peer's close, so the reply means it read everything.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?;
            Ok(Some(format!("OK {n}\n")))
        }
        "COUNTER" => {
            COUNTING.call_once(|| {
                std::thread::spawn(count_forever);
            });
            Ok(Some("OK\n".into()))
        }
        "COUNT" => {
            let c = *COUNT.lock().unwrap_or_else(|e| e.into_inner());
            Ok(Some(format!("OK {} {} {}\n", c.i, c.acc, c.f.to_bits())))
        }
        "TICK" => Ok(Some(format!(
            "OK {}\n",
            TICKS.fetch_add(1, Ordering::SeqCst) + 1
        ))),
        "POWEROFF" => Ok(Some("OK\n".into())),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown command {other:?}"),
        )),
    }
}

/// Gives interface `name` an IPv4 address and brings it up (the classic SIOCSIF* ioctls:
/// enough for a test, no netlink needed).
fn if_up(name: &str, addr: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ || prefix > 32 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: a plain socket call; the fd is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just created, owned by this File from here.
    let sock = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let sin = |a: std::net::Ipv4Addr| {
        // SAFETY: as above, `sockaddr_in` is plain old data.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(a).to_be();
        // SAFETY: `sockaddr_in` (16 bytes) fits the `sockaddr` in the ifreq union, whose
        // size is also 16 bytes.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sa) }
    };
    let ioctl = |req: &mut libc::ifreq, op: libc::c_ulong| -> io::Result<()> {
        // SAFETY: each SIOC*IF* request reads and writes one `struct ifreq`, which lives
        // for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    req.ifr_ifru.ifru_addr = sin(addr);
    ioctl(&mut req, libc::SIOCSIFADDR)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    req.ifr_ifru.ifru_netmask = sin(std::net::Ipv4Addr::from(mask));
    ioctl(&mut req, libc::SIOCSIFNETMASK)?;
    ioctl(&mut req, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(&mut req, libc::SIOCSIFFLAGS)
}

fn count_entries(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        n += 1;
        if entry.file_type()?.is_dir() {
            n += count_entries(&entry.path())?;
        }
    }
    Ok(n)
}

fn send_stream(out: &mut File, n: u64, seed: u64) -> io::Result<()> {
    write_stream(out, n, seed)?;
    // SAFETY: shutdown on our own connected socket.
    unsafe { libc::shutdown(out.as_raw_fd(), libc::SHUT_WR) };
    Ok(())
}

fn read_line(conn: &mut File) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if conn.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF before newline",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        line.push(b[0]);
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

fn mount(source: &str, fstype: &str, target: &str, data: &str) -> io::Result<()> {
    // "ro" among the options is the MS_RDONLY flag; the rest goes to the filesystem.
    let mut flags = 0;
    let rest: Vec<&str> = data
        .split(',')
        .filter(|o| {
            if *o == "ro" {
                flags |= libc::MS_RDONLY;
            }
            !o.is_empty() && *o != "ro"
        })
        .collect();
    let data = rest.join(",");
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (source, fstype, target, data) = (c(source)?, c(fstype)?, c(target)?, c(&data)?);
    // SAFETY: all four are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
