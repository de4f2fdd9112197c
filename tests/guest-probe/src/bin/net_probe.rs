//! husk-net-probe: the TCP ends of husk's network tests and benchmark, one static binary
//! for the container image and the host alike.
//!
//! ```text
//! husk-net-probe serve ADDR:PORT [--once]        serve requests (a thread per connection)
//! husk-net-probe put ADDR:PORT BYTES [--seed S]   send BYTES of stream(S) to a server
//! husk-net-probe get ADDR:PORT BYTES [--seed S]   have a server send BYTES of stream(S)
//! husk-net-probe ping ADDR:PORT COUNT             COUNT 1-byte round trips
//! ```
//! Clients retry a refused connection for `--wait SECS` (default 60): the server in a
//! container may still be starting. Every socket has a 300 s stall timeout, so nothing
//! hangs for ever.
//!
//! Protocol (one request per connection, a header line first):
//! - `PUT <n> <seed>` then n bytes: the server replies `OK <bytes> <hash>`.
//! - `GET <n> <seed>`: the server sends n bytes of `stream(seed)`, then closes.
//! - `PING`: the server echoes every byte until EOF.
//!
//! Hashes are [`husk_guest_probe::Hasher`] values (16 hex digits) of the bytes each end
//! itself sent or received. The server prints `served PUT|GET|PING bytes=<n> hash=<h>` per
//! request; clients print one `key=value` line and exit 1 unless both ends agree:
//! `put bytes=<n> hash=<sent> peer_hash=<received> secs=<s> mib_s=<rate>`,
//! `get bytes=<n> hash=<received> want_hash=<stream_hash> secs=<s> mib_s=<rate>`,
//! `ping count=<n> median_us=<m> p99_us=<p> min_us=<a> max_us=<b>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use husk_guest_probe::{stream_hash, write_stream, Hasher, Stream};

const STALL: Duration = Duration::from_secs(300);
const MAX_HEADER: u64 = 128;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("husk-net-probe: {e}");
            std::process::exit(1);
        }
    }
}

fn usage() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "usage: husk-net-probe serve ADDR:PORT [--once] | put|get ADDR:PORT BYTES [--seed S] \
         [--wait SECS] | ping ADDR:PORT COUNT [--wait SECS]",
    )
}

/// The value of `--name` in `args`, parsed.
fn opt(args: &[String], name: &str, default: u64) -> io::Result<u64> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("{name} needs a number"))),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn addr(s: &str) -> io::Result<SocketAddr> {
    s.to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("{s}: no address")))
}

fn number(args: &[String], i: usize, what: &str) -> io::Result<u64> {
    args.get(i)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid(format!("{what} must be a number")))
}

fn run(args: &[String]) -> io::Result<()> {
    let cmd = args.first().ok_or_else(usage)?;
    let target = addr(args.get(1).ok_or_else(usage)?)?;
    let wait = Duration::from_secs(opt(args, "--wait", 60)?);
    match cmd.as_str() {
        "serve" => serve(target, args.iter().any(|a| a == "--once")),
        "put" => put(
            target,
            number(args, 2, "BYTES")?,
            opt(args, "--seed", 1)?,
            wait,
        ),
        "get" => get(
            target,
            number(args, 2, "BYTES")?,
            opt(args, "--seed", 1)?,
            wait,
        ),
        "ping" => ping(target, number(args, 2, "COUNT")?, wait),
        _ => Err(usage()),
    }
}

fn serve(at: SocketAddr, once: bool) -> io::Result<()> {
    let listener =
        TcpListener::bind(at).map_err(|e| io::Error::new(e.kind(), format!("bind {at}: {e}")))?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        let (conn, peer) = listener.accept()?;
        if once {
            return handle(conn).map_err(|e| io::Error::new(e.kind(), format!("{peer}: {e}")));
        }
        std::thread::spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("husk-net-probe: {peer}: {e}");
            }
        });
    }
}

fn timeouts(c: &TcpStream) -> io::Result<()> {
    c.set_read_timeout(Some(STALL))?;
    c.set_write_timeout(Some(STALL))
}

fn handle(conn: TcpStream) -> io::Result<()> {
    timeouts(&conn)?;
    let mut r = BufReader::with_capacity(256 * 1024, conn.try_clone()?);
    let mut line = String::new();
    (&mut r).take(MAX_HEADER).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> io::Result<u64> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| invalid(format!("bad request {line:?}")))
    };
    let mut w = conn;
    match words.first().copied() {
        Some("PUT") => {
            let (n, _seed) = (num(1)?, num(2)?);
            let h = hash_n(&mut r, n)?;
            writeln!(w, "OK {} {:016x}", h.bytes(), h.value())?;
            say(&format!(
                "served PUT bytes={} hash={:016x}",
                h.bytes(),
                h.value()
            ));
        }
        Some("GET") => {
            let (n, seed) = (num(1)?, num(2)?);
            write_stream(&mut w, n, seed)?;
            w.flush()?;
            say(&format!(
                "served GET bytes={n} hash={:016x}",
                stream_hash(n, seed)
            ));
        }
        Some("PING") => {
            w.set_nodelay(true)?;
            let mut b = [0u8; 1];
            let mut n = 0u64;
            loop {
                match r.read(&mut b)? {
                    0 => break,
                    _ => w.write_all(&b)?,
                }
                n += 1;
            }
            say(&format!("served PING bytes={n}"));
        }
        _ => {
            let _ = writeln!(w, "ERR bad request {line:?}");
            return Err(invalid(format!("bad request {line:?}")));
        }
    }
    Ok(())
}

fn say(s: &str) {
    let mut o = io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

/// Reads up to `n` bytes (fewer at EOF) and hashes them.
fn hash_n(r: &mut impl Read, n: u64) -> io::Result<Hasher> {
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        match r.read(&mut buf[..k]) {
            Ok(0) => break,
            Ok(got) => {
                h.update(&buf[..got]);
                left -= got as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h)
}

/// Connects, retrying while the server is not there yet (refused, unreachable) up to `wait`.
fn connect(to: SocketAddr, wait: Duration) -> io::Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
            Ok(c) => {
                timeouts(&c)?;
                return Ok(c);
            }
            Err(e) if start.elapsed() < wait && retryable(&e) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("connect {to}: {e}"))),
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT)
    )
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
}

fn put(to: SocketAddr, n: u64, seed: u64, wait: Duration) -> io::Result<()> {
    let mut c = connect(to, wait)?;
    let start = Instant::now();
    writeln!(c, "PUT {n} {seed}")?;
    // Hash what is sent, as it is sent: the sender's own record of the bytes.
    let mut s = Stream::new(seed);
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.fill(&mut buf[..k]);
        c.write_all(&buf[..k])?;
        h.update(&buf[..k]);
        left -= k as u64;
    }
    let mut reply = String::new();
    BufReader::new(&c).take(MAX_HEADER).read_line(&mut reply)?;
    let secs = start.elapsed().as_secs_f64();
    let w: Vec<&str> = reply.split_whitespace().collect();
    let (Some(&"OK"), Some(bytes), Some(peer)) = (w.first(), w.get(1), w.get(2)) else {
        return Err(invalid(format!("server replied {reply:?}")));
    };
    let ours = format!("{:016x}", h.value());
    println!(
        "put bytes={n} hash={ours} peer_bytes={bytes} peer_hash={peer} secs={secs:.3} mib_s={:.1}",
        rate(n, secs)
    );
    if *peer != ours || *bytes != n.to_string() {
        return Err(invalid(format!(
            "the server received {bytes} bytes with hash {peer}; sent {n} with hash {ours}"
        )));
    }
    Ok(())
}

fn get(to: SocketAddr, n: u64, seed: u64, wait: Duration) -> io::Result<()> {
    let mut c = connect(to, wait)?;
    let start = Instant::now();
    writeln!(c, "GET {n} {seed}")?;
    let mut r = BufReader::with_capacity(256 * 1024, c);
    let h = hash_n(&mut r, n)?;
    let secs = start.elapsed().as_secs_f64();
    let want = format!("{:016x}", stream_hash(n, seed));
    let got = format!("{:016x}", h.value());
    println!(
        "get bytes={} hash={got} want_hash={want} secs={secs:.3} mib_s={:.1}",
        h.bytes(),
        rate(h.bytes(), secs)
    );
    if got != want || h.bytes() != n {
        return Err(invalid(format!(
            "received {} bytes with hash {got}; want {n} with hash {want}",
            h.bytes()
        )));
    }
    Ok(())
}

fn ping(to: SocketAddr, count: u64, wait: Duration) -> io::Result<()> {
    let mut c = connect(to, wait)?;
    c.set_nodelay(true)?;
    c.write_all(b"PING\n")?;
    let mut rtts = Vec::with_capacity(count as usize);
    let mut b = [0u8; 1];
    for i in 0..count {
        let t = Instant::now();
        c.write_all(&[i as u8])?;
        c.read_exact(&mut b)?;
        rtts.push(t.elapsed());
        if b[0] != i as u8 {
            return Err(invalid(format!(
                "round trip {i}: echoed {} not {}",
                b[0], i as u8
            )));
        }
    }
    if rtts.is_empty() {
        return Err(invalid("COUNT must be at least 1".into()));
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pick = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    println!(
        "ping count={count} median_us={:.1} p99_us={:.1} min_us={:.1} max_us={:.1}",
        us(pick(0.5)),
        us(pick(0.99)),
        us(rtts[0]),
        us(rtts[rtts.len() - 1])
    );
    Ok(())
}
