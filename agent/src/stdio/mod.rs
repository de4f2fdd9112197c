//! Per-process standard streams over the stdio port.
//!
//! The shim opens one connection per stream to the stdio port (vsock 1025
//! in the guest; a Unix socket on the host, by default the API socket's
//! path with `.stdio` appended), sends a [`StdioAttach`] framed as a 4-byte
//! big-endian length and its protobuf bytes ([`husk_protocol::frame`]), and reads a
//! [`StdioAttachResponse`] framed the same way. After an empty `error` the
//! connection carries the stream's raw bytes; after an error the agent
//! closes it.
//!
//! - [`slots`]: the agent's side of each stream and the pumps.
//! - [`ProcessIo`]: the streams of one process, made from its `StdioSet`.

pub mod slots;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::agent::{StdioAttach, StdioAttachResponse, StdioSet, StdioStream};
use husk_protocol::frame;
use husk_protocol::protobuf::Message;

use self::slots::{OutputSlot, StdinSlot, ATTACH_GRACE};
use crate::container::{ExitCell, Exited, ProcessStdio};
use crate::listen::StreamListener;
use crate::sys;
use tracing::{debug, warn};

/// How long a new connection may take to send its StdioAttach.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("Cannot create the process's stdio")]
    Create(#[source] io::Error),
}

/// The agent's side of one process's standard streams.
#[derive(Debug)]
pub struct ProcessIo {
    pub stdin: Arc<StdinSlot>,
    pub stdout: Arc<OutputSlot>,
    pub stderr: Arc<OutputSlot>,
}

impl ProcessIo {
    /// Makes the streams the shim declared: a socket pair for stdin (a
    /// shutdown reaches the process even while a forked copy of the
    /// agent's end exists), pipes for stdout and stderr (the kernel's pipe
    /// buffer holds early output until the shim attaches). Undeclared
    /// streams are /dev/null for the process. Returns the process's side
    /// too. With a terminal, nothing is made here: see [`Self::terminal`].
    pub fn pipes(set: &StdioSet) -> Result<(Self, ProcessStdio), StdioError> {
        let mut child = ProcessStdio::default();
        let stdin = if set.stdin {
            let (agent, process) = UnixStream::pair().map_err(StdioError::Create)?;
            child.stdin = Some(OwnedFd::from(process));
            StdinSlot::open(File::from(OwnedFd::from(agent)), false)
        } else {
            StdinSlot::unused()
        };
        let output = |declared: bool, name| -> Result<_, StdioError> {
            if !declared {
                return Ok((OutputSlot::unused(name), None));
            }
            let (r, w) = io::pipe().map_err(StdioError::Create)?;
            Ok((
                OutputSlot::waiting(name, File::from(OwnedFd::from(r))),
                Some(OwnedFd::from(w)),
            ))
        };
        let (stdout, stdout_w) = output(set.stdout, "stdout")?;
        let (stderr, stderr_w) = output(set.stderr, "stderr")?;
        child.stdout = stdout_w;
        child.stderr = stderr_w;
        Ok((
            Self {
                stdin,
                stdout,
                stderr,
            },
            child,
        ))
    }

    /// The streams of a process with a terminal: stdout reads the master,
    /// stdin writes to it, there is no stderr.
    pub fn terminal(
        set: &StdioSet,
        master: &File,
        exit: Arc<ExitCell>,
    ) -> Result<Self, StdioError> {
        let stdout = if set.stdout {
            OutputSlot::waiting(
                "terminal output",
                master.try_clone().map_err(StdioError::Create)?,
            )
        } else {
            // Nobody reads it: keep it drained so the process never blocks.
            let sink = master.try_clone().map_err(StdioError::Create)?;
            let slot = OutputSlot::waiting("terminal output", sink);
            if let Ok(pump) = slot.attach(exit) {
                let null = File::options()
                    .write(true)
                    .open("/dev/null")
                    .map_err(StdioError::Create)?;
                std::thread::spawn(move || pump.run(null));
            }
            OutputSlot::unused("terminal output")
        };
        let stdin = if set.stdin {
            StdinSlot::open(master.try_clone().map_err(StdioError::Create)?, true)
        } else {
            StdinSlot::unused()
        };
        Ok(Self {
            stdin,
            stdout,
            stderr: OutputSlot::unused("stderr"),
        })
    }

    /// Blocks until the process has exited and its attached output
    /// streams are drained and closed; a declared stream nobody attached
    /// within [`ATTACH_GRACE`] of the exit is dropped.
    pub fn wait(&self, exit: &ExitCell) -> Exited {
        let exited = exit.wait();
        let deadline = exited.at_instant + ATTACH_GRACE;
        self.stdout.wait_drained(deadline);
        self.stderr.wait_drained(deadline.max(Instant::now()));
        exited
    }
}

/// Finds a process's streams for a StdioAttach.
pub trait AttachTarget: Send + Sync + 'static {
    /// The process's streams and exit cell, or why there is none.
    fn lookup(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(Arc<ProcessIo>, Arc<ExitCell>), String>;
}

/// Serves attaches on `listener` on a thread of its own, each connection on its own
/// thread (which then runs that stream's pump).
pub fn spawn(listener: StreamListener, target: Arc<dyn AttachTarget>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let target = target.clone();
                    let spawned = std::thread::Builder::new()
                        .name("stdio".into())
                        .spawn(move || handle_connection(&*target, conn));
                    if let Err(e) = spawned {
                        warn!("Cannot start a stdio thread: {e}");
                    }
                }
                Err(e) => {
                    warn!("Cannot accept a stdio connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map(|_| ())
}

enum Pump {
    Stdin(slots::StdinPump),
    Output(slots::OutputPump),
}

fn attach(target: &dyn AttachTarget, req: &StdioAttach) -> Result<Pump, String> {
    let stream = req
        .stream
        .enum_value()
        .map_err(|n| format!("Unknown stream {n}"))?;
    let (io, exit) = target.lookup(&req.container_id, &req.exec_id)?;
    let pump = match stream {
        StdioStream::STDIO_STREAM_UNSPECIFIED => return Err("The stream is not set".into()),
        StdioStream::STDIO_STREAM_STDIN => io.stdin.attach().map(Pump::Stdin),
        StdioStream::STDIO_STREAM_STDOUT => io.stdout.attach(exit).map(Pump::Output),
        StdioStream::STDIO_STREAM_STDERR => io.stderr.attach(exit).map(Pump::Output),
    };
    pump.map_err(|e| e.to_string())
}

fn handle_connection(target: &dyn AttachTarget, mut conn: File) {
    let _ = sys::set_recv_timeout(&conn, Some(HANDSHAKE_TIMEOUT));
    let request = frame::read_frame(&mut conn)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            StdioAttach::parse_from_bytes(&bytes).map_err(|e| format!("Malformed StdioAttach: {e}"))
        });
    let result = request.and_then(|req| {
        debug!(
            "Stdio attach {:?} of {:?}/{:?}",
            req.stream, req.container_id, req.exec_id
        );
        attach(target, &req)
    });
    let mut response = StdioAttachResponse::new();
    if let Err(e) = &result {
        debug!("Refusing a stdio attach: {e}");
        response.error = e.clone();
    }
    let bytes = response.write_to_bytes().unwrap_or_default();
    let written = frame::write_frame(&mut conn, &bytes);
    let _ = sys::set_recv_timeout(&conn, None);
    match result {
        Err(_) => {
            let _ = sys::shutdown(&conn, std::net::Shutdown::Both);
        }
        Ok(pump) => {
            if let Err(e) = written {
                debug!("Cannot answer a stdio attach: {e}");
            }
            match pump {
                Pump::Stdin(p) => p.run(conn),
                Pump::Output(p) => p.run(conn),
            }
        }
    }
}
