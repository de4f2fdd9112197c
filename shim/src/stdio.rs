//! containerd's standard-stream endpoints (FIFOs, or `file://` paths) joined to the
//! agent's per-process vsock streams by copier threads. Output copiers end only when the
//! agent closes a stream, which it does after the process's last byte: waiting for them
//! before reporting the exit is what keeps the last lines of output.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("Unsupported stdio URI {0:?}: husk takes FIFO paths and file:// URIs")]
    Unsupported(String),
}

/// Where one output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A FIFO (or any file) opened for writing.
    Path(String),
    /// A file appended to (`file:///var/log/x`).
    Append(String),
}

/// Parses containerd's stdout/stderr string; empty means no stream.
pub fn output_target(uri: &str) -> Result<Option<OutputTarget>, StdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Some(OutputTarget::Append(path.to_owned())));
    }
    if uri.contains("://") {
        return Err(StdioError::Unsupported(uri.to_owned()));
    }
    Ok(Some(OutputTarget::Path(uri.to_owned())))
}

fn open_output(t: &OutputTarget) -> std::io::Result<File> {
    match t {
        // Blocks until containerd holds the read side, as it does before Create.
        OutputTarget::Path(p) => OpenOptions::new().write(true).open(p),
        OutputTarget::Append(p) => OpenOptions::new().create(true).append(true).open(p),
    }
}

/// Copies `src` to `dst` until `src` ends. When `dst` fails (the reader went away) the
/// rest of `src` is still read and dropped, so the guest never blocks on a dead reader.
pub fn pump(mut src: impl Read, mut dst: Option<impl Write>) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        total += n as u64;
        if let Some(d) = dst.as_mut() {
            if d.write_all(&buf[..n]).is_err() {
                dst = None;
            }
        }
    }
    if let Some(mut d) = dst {
        let _ = d.flush();
    }
    total
}

/// The copiers of one process.
pub struct ProcessIo {
    outputs: usize,
    done_rx: Mutex<Receiver<()>>,
    done_tx: Sender<()>,
    stdin: Arc<Mutex<Option<UnixStream>>>,
    stdin_done: Arc<Mutex<bool>>,
    had_stdin: bool,
}

impl Default for ProcessIo {
    fn default() -> Self {
        let (done_tx, done_rx) = channel();
        Self {
            outputs: 0,
            done_rx: Mutex::new(done_rx),
            done_tx,
            stdin: Arc::default(),
            stdin_done: Arc::default(),
            had_stdin: false,
        }
    }
}

impl ProcessIo {
    /// Starts copying a guest output stream to `target`.
    pub fn add_output(&mut self, name: &str, stream: UnixStream, target: OutputTarget) {
        self.outputs += 1;
        let tx = self.done_tx.clone();
        let name = name.to_owned();
        std::thread::Builder::new()
            .name(format!("io-{name}"))
            .spawn(move || {
                let dst = match open_output(&target) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        warn!("{name}: cannot open {target:?}: {e}; output is dropped");
                        None
                    }
                };
                let n = pump(&stream, dst);
                debug!("{name}: stream ended after {n} bytes");
                let _ = tx.send(());
            })
            .expect("spawn an io thread");
    }

    /// Starts copying containerd's stdin FIFO to the guest; EOF on the FIFO closes the
    /// process's stdin.
    pub fn add_stdin(&mut self, path: String, stream: UnixStream) {
        self.had_stdin = true;
        let writer = stream.try_clone().ok();
        *self.stdin.lock().unwrap_or_else(|e| e.into_inner()) = writer;
        let done = Arc::clone(&self.stdin_done);
        let slot = Arc::clone(&self.stdin);
        std::thread::Builder::new()
            .name("io-stdin".into())
            .spawn(move || {
                match OpenOptions::new().read(true).open(&path) {
                    Ok(f) => {
                        let n = pump(f, Some(&stream));
                        debug!("stdin: EOF after {n} bytes; closing the process's stdin");
                    }
                    Err(e) => warn!("stdin: cannot open {path}: {e}"),
                }
                let _ = stream.shutdown(Shutdown::Write);
                *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
                slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            })
            .expect("spawn an io thread");
    }

    /// Whether a stdin stream is attached (open or already closed at the FIFO's EOF).
    pub fn has_stdin(&self) -> bool {
        self.had_stdin
    }

    /// Closes the process's stdin (containerd's CloseIO): gives the copier a moment to
    /// pass on what is still in the FIFO, then shuts the stream's write side.
    pub fn close_stdin(&self, grace: Duration) {
        let start = Instant::now();
        while start.elapsed() < grace && !*self.stdin_done.lock().unwrap_or_else(|e| e.into_inner())
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(s) = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Waits until every output stream has ended, at most `timeout`. False on timeout.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let rx = self.done_rx.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..self.outputs {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return false
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn uris_are_parsed() {
        assert_eq!(output_target("").unwrap(), None);
        assert_eq!(
            output_target("/run/containerd/fifo/1/c-stdout").unwrap(),
            Some(OutputTarget::Path("/run/containerd/fifo/1/c-stdout".into()))
        );
        assert_eq!(
            output_target("file:///var/log/c.log").unwrap(),
            Some(OutputTarget::Append("/var/log/c.log".into()))
        );
        let e = output_target("binary:///usr/bin/logger?x=1").unwrap_err();
        assert!(e.to_string().contains("binary://"));
    }

    #[test]
    fn pump_keeps_reading_after_the_writer_fails() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let data = vec![7u8; 300_000];
        assert_eq!(pump(&data[..], Some(Broken)), 300_000);
        let mut out = Vec::new();
        assert_eq!(pump(&data[..], Some(&mut out)), 300_000);
        assert_eq!(out, data);
    }

    #[test]
    fn output_is_complete_before_drained_is_reported() {
        let dir = std::env::temp_dir().join(format!("husk-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let (guest, host) = UnixStream::pair().unwrap();
        let mut io = ProcessIo::default();
        io.add_output("t", host, OutputTarget::Append(out.display().to_string()));
        let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            std::thread::spawn(move || {
                (&guest).write_all(&payload).unwrap();
                drop(guest);
            })
        };
        assert!(io.wait_drained(Duration::from_secs(30)));
        writer.join().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), payload);
        // A stream that never ends is reported, not waited for forever.
        let (_keep, host2) = UnixStream::pair().unwrap();
        let mut io2 = ProcessIo::default();
        io2.add_output("t2", host2, OutputTarget::Append(out.display().to_string()));
        assert!(!io2.wait_drained(Duration::from_millis(200)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stdin_is_copied_and_closed_at_eof() {
        let dir = std::env::temp_dir().join(format!("husk-stdin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in");
        std::fs::write(&input, b"typed\n").unwrap();
        let (guest, host) = UnixStream::pair().unwrap();
        let mut io = ProcessIo::default();
        io.add_stdin(input.display().to_string(), host);
        let mut got = Vec::new();
        (&guest).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"typed\n");
        io.close_stdin(Duration::from_secs(1));
        assert!(
            io.has_stdin(),
            "closing keeps the stream's record: no CloseStdin RPC"
        );
        assert!(io.stdin.lock().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
