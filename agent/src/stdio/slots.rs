//! One process's standard streams on the agent's side, and the pumps that
//! move their bytes to and from the shim's stdio connections.
//!
//! Memory stays bounded: an output pump reads at most [`CHUNK`] bytes and
//! writes them out before reading more, so a slow shim stalls the pump, the
//! pump stalls the pipe (or terminal) and the kernel stalls the process. An
//! output nobody attached yet waits in its pipe, not in the agent.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::container::ExitCell;
use crate::sys;
use tracing::{debug, warn};

/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// After the process exited, an output that stays silent (no byte, no end)
/// this long is closed: a background child that inherited the stream would
/// otherwise hold the exit status back forever.
pub const POST_EXIT_IDLE: Duration = Duration::from_secs(5);

/// After the process exited, how long a declared output stream may still
/// wait for the shim to attach before its buffered bytes are dropped and
/// WaitProcess answers.
pub const ATTACH_GRACE: Duration = Duration::from_secs(10);

/// Why an attach was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    #[error("The process was created without this stream (StdioSet)")]
    NotDeclared,
    #[error("The stream is already attached")]
    AlreadyAttached,
    #[error("The stream was dropped: nobody attached it within {0:?} of the process's exit")]
    Discarded(Duration),
    #[error("Stdin is already closed")]
    StdinClosed,
}

#[derive(Debug)]
enum OutState {
    /// Not declared: the process's side is /dev/null.
    Unused,
    /// Declared, not attached yet: the read side waits here.
    Waiting(File),
    /// A pump is moving the bytes.
    Pumping,
    /// Every byte was written out (or the stream was given up).
    Done { discarded: bool },
}

/// A process's stdout or stderr, agent side.
#[derive(Debug)]
pub struct OutputSlot {
    name: &'static str,
    state: Mutex<OutState>,
    changed: Condvar,
}

impl OutputSlot {
    /// A stream the process does not have.
    pub fn unused(name: &'static str) -> Arc<Self> {
        Self::with(name, OutState::Unused)
    }

    /// A stream whose bytes come out of `source` once attached.
    pub fn waiting(name: &'static str, source: File) -> Arc<Self> {
        Self::with(name, OutState::Waiting(source))
    }

    fn with(name: &'static str, state: OutState) -> Arc<Self> {
        Arc::new(Self {
            name,
            state: Mutex::new(state),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims the stream for a connection: returns the pump to run (on
    /// the connection's thread, after the handshake answer is written).
    pub fn attach(self: &Arc<Self>, exit: Arc<ExitCell>) -> Result<OutputPump, AttachError> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, OutState::Pumping) {
            OutState::Waiting(source) => Ok(OutputPump {
                slot: Some(self.clone()),
                source: Some(source),
                exit,
            }),
            other => {
                let err = match &other {
                    OutState::Unused => AttachError::NotDeclared,
                    OutState::Done { discarded: true } => AttachError::Discarded(ATTACH_GRACE),
                    _ => AttachError::AlreadyAttached,
                };
                *state = other;
                Err(err)
            }
        }
    }

    fn finish(&self, discarded: bool) {
        *self.lock() = OutState::Done { discarded };
        self.changed.notify_all();
    }

    /// Blocks until every byte of the stream was written out. A stream
    /// still unattached at `attach_deadline` is dropped.
    pub fn wait_drained(&self, attach_deadline: Instant) {
        let mut state = self.lock();
        loop {
            match &*state {
                OutState::Unused | OutState::Done { .. } => return,
                OutState::Pumping => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                OutState::Waiting(_) => {
                    let now = Instant::now();
                    if now >= attach_deadline {
                        warn!(
                            "Dropping the {} of an exited process: it was never attached",
                            self.name
                        );
                        *state = OutState::Done { discarded: true };
                        self.changed.notify_all();
                        return;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, attach_deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// Moves one output stream's bytes to its connection, then closes it.
pub struct OutputPump {
    slot: Option<Arc<OutputSlot>>,
    source: Option<File>,
    exit: Arc<ExitCell>,
}

impl OutputPump {
    /// Copies until the source ends (or, after the process exited, stays
    /// silent for [`POST_EXIT_IDLE`]), then shuts the connection down so
    /// the shim sees the end even if a copy of the socket lives elsewhere.
    /// If the shim goes away the rest is read and dropped, so the process
    /// never blocks on a dead stream.
    pub fn run(mut self, mut conn: File) {
        let Some(mut source) = self.source.take() else {
            return;
        };
        let name = self.slot.as_ref().map_or("output", |s| s.name);
        let mut buf = vec![0u8; CHUNK];
        let mut conn_ok = true;
        let mut total = 0u64;
        loop {
            let timeout = if self.exit.get().is_some() {
                POST_EXIT_IDLE.as_millis() as i32
            } else {
                // Re-check the exit now and then.
                500
            };
            match sys::poll_readable(&source, timeout) {
                Ok(true) => {}
                Ok(false) if self.exit.get().is_some() && timeout != 500 => {
                    debug!("Closing the {name}: silent for {POST_EXIT_IDLE:?} after the exit");
                    break;
                }
                Ok(false) => continue,
                Err(e) => {
                    warn!("Cannot poll the {name}: {e}");
                    break;
                }
            }
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // A terminal's master reads EIO once the last slave holder
                // is gone and the buffered output was read: its end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    warn!("Cannot read the {name}: {e}");
                    break;
                }
            };
            total += n as u64;
            if conn_ok {
                if let Err(e) = conn.write_all(&buf[..n]) {
                    debug!("The {name} connection failed, dropping the rest: {e}");
                    conn_ok = false;
                }
            }
        }
        debug!("The {name} ended after {total} bytes");
        let _ = conn.flush();
        let _ = sys::shutdown(&conn, Shutdown::Both);
        drop(conn);
        drop(source);
        if let Some(slot) = self.slot.take() {
            slot.finish(false);
        }
    }
}

/// A pump dropped without running (the handshake failed) still ends its
/// stream, so WaitProcess is not held back.
impl Drop for OutputPump {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.finish(true);
        }
    }
}

#[derive(Debug)]
enum StdinState {
    /// Not declared: the process's stdin is /dev/null.
    Unused,
    Open {
        writer: Arc<File>,
        /// A terminal's master: closing stdin cannot close it (the output
        /// uses it too), it only stops forwarding.
        terminal: bool,
        attached: bool,
    },
    Closed,
}

/// A process's stdin, agent side.
#[derive(Debug)]
pub struct StdinSlot {
    state: Mutex<StdinState>,
}

impl StdinSlot {
    pub fn unused() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(StdinState::Unused),
        })
    }

    /// `writer` is the agent's end of a socket pair (or a terminal master).
    pub fn open(writer: File, terminal: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(StdinState::Open {
                writer: Arc::new(writer),
                terminal,
                attached: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StdinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> Result<Arc<File>, AttachError> {
        match &*self.lock() {
            StdinState::Unused => Err(AttachError::NotDeclared),
            StdinState::Closed => Err(AttachError::StdinClosed),
            StdinState::Open { writer, .. } => Ok(writer.clone()),
        }
    }

    /// Claims stdin for a connection; returns the pump to run.
    pub fn attach(self: &Arc<Self>) -> Result<StdinPump, AttachError> {
        match &mut *self.lock() {
            StdinState::Unused => Err(AttachError::NotDeclared),
            StdinState::Closed => Err(AttachError::StdinClosed),
            StdinState::Open { attached: true, .. } => Err(AttachError::AlreadyAttached),
            StdinState::Open {
                writer, attached, ..
            } => {
                *attached = true;
                Ok(StdinPump {
                    slot: self.clone(),
                    writer: writer.clone(),
                })
            }
        }
    }

    /// Writes `data`; returns how much went in before the process closed
    /// its stdin. Blocks while the process does not read.
    pub fn write(&self, data: &[u8]) -> Result<usize, AttachError> {
        let writer = self.writer()?;
        let mut written = 0;
        while written < data.len() {
            match (&*writer).write(&data[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// Closes stdin: the process reads its end. Closing twice is fine.
    pub fn close(&self) -> Result<(), AttachError> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, StdinState::Closed) {
            StdinState::Unused => {
                *state = StdinState::Unused;
                Err(AttachError::NotDeclared)
            }
            StdinState::Closed => Ok(()),
            StdinState::Open {
                writer, terminal, ..
            } => {
                if !terminal {
                    // A shutdown reaches the process even while a copy of
                    // the socket lives in a forked, not yet exec'd process.
                    let _ = sys::shutdown(&*writer, Shutdown::Write);
                }
                Ok(())
            }
        }
    }
}

/// Forwards a stdin connection's bytes to the process; the connection's
/// end closes stdin.
pub struct StdinPump {
    slot: Arc<StdinSlot>,
    writer: Arc<File>,
}

impl StdinPump {
    pub fn run(self, mut conn: File) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("The stdin connection failed: {e}");
                    break;
                }
            };
            if let Err(e) = (&*self.writer).write_all(&buf[..n]) {
                debug!("The process no longer reads stdin: {e}");
                break;
            }
        }
        let _ = self.slot.close();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;
    use crate::container::ExitStatus;

    fn pipe() -> (File, File) {
        let (r, w) = io::pipe().unwrap();
        (
            File::from(std::os::fd::OwnedFd::from(r)),
            File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    fn conn() -> (File, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (File::from(std::os::fd::OwnedFd::from(a)), b)
    }

    #[test]
    fn output_is_delivered_whole_and_then_closed() {
        let (r, mut w) = pipe();
        let slot = OutputSlot::waiting("stdout", r);
        let exit = Arc::new(ExitCell::new());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            thread::spawn(move || w.write_all(&data).unwrap())
        };
        let pump = slot.attach(exit.clone()).unwrap();
        assert_eq!(
            slot.attach(exit.clone()).err(),
            Some(AttachError::AlreadyAttached)
        );
        let (agent_end, mut shim_end) = conn();
        let t = thread::spawn(move || pump.run(agent_end));
        let mut got = Vec::new();
        shim_end.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        t.join().unwrap();
        assert_eq!(got, data);
        slot.wait_drained(Instant::now());
    }

    #[test]
    fn wait_drained_blocks_until_the_pump_is_done() {
        let (r, w) = pipe();
        let slot = OutputSlot::waiting("stdout", r);
        let pump = slot.attach(Arc::new(ExitCell::new())).unwrap();
        let (agent_end, _shim_end) = conn();
        let t = thread::spawn(move || pump.run(agent_end));
        let waiter = {
            let slot = slot.clone();
            thread::spawn(move || slot.wait_drained(Instant::now()))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(w);
        waiter.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn an_unattached_stream_is_dropped_at_the_deadline() {
        let (r, _w) = pipe();
        let slot = OutputSlot::waiting("stderr", r);
        slot.wait_drained(Instant::now() + Duration::from_millis(20));
        assert!(matches!(
            slot.attach(Arc::new(ExitCell::new())),
            Err(AttachError::Discarded(_))
        ));
        let unused = OutputSlot::unused("stdout");
        unused.wait_drained(Instant::now() + Duration::from_secs(100));
        assert!(matches!(
            unused.attach(Arc::new(ExitCell::new())),
            Err(AttachError::NotDeclared)
        ));
    }

    #[test]
    fn a_dropped_pump_ends_its_stream() {
        let (r, _w) = pipe();
        let slot = OutputSlot::waiting("stdout", r);
        drop(slot.attach(Arc::new(ExitCell::new())).unwrap());
        slot.wait_drained(Instant::now() + Duration::from_secs(100));
    }

    #[test]
    fn silence_after_exit_ends_the_stream() {
        // The write end stays open, as with a background child holding it.
        let (r, _w) = pipe();
        let slot = OutputSlot::waiting("stdout", r);
        let exit = Arc::new(ExitCell::new());
        exit.set(ExitStatus::Exited(0));
        let pump = slot.attach(exit).unwrap();
        let (agent_end, mut shim_end) = conn();
        let start = Instant::now();
        let t = thread::spawn(move || pump.run(agent_end));
        let mut got = Vec::new();
        shim_end.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert!(start.elapsed() >= POST_EXIT_IDLE);
    }

    #[test]
    fn stdin_is_forwarded_and_closed_by_the_connection_end() {
        let (process_end, agent_end) = UnixStream::pair().unwrap();
        let slot = StdinSlot::open(File::from(std::os::fd::OwnedFd::from(agent_end)), false);
        assert_eq!(slot.write(b"rpc ").unwrap(), 4);
        let pump = slot.attach().unwrap();
        assert!(matches!(slot.attach(), Err(AttachError::AlreadyAttached)));
        let (conn_agent, mut conn_shim) = conn();
        let t = thread::spawn(move || pump.run(conn_agent));
        conn_shim.write_all(b"stream").unwrap();
        drop(conn_shim);
        t.join().unwrap();
        let mut got = Vec::new();
        (&process_end).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"rpc stream");
        assert!(matches!(slot.write(b"x"), Err(AttachError::StdinClosed)));
        slot.close().unwrap();
        assert!(matches!(
            StdinSlot::unused().close(),
            Err(AttachError::NotDeclared)
        ));
    }
}
