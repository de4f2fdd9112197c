//! The shim's client of the agent API: ttrpc (the wire format of the `ttrpc` crate's
//! sync client, which the agent's server speaks) over one stream, written for a peer that
//! is not trusted. The guest runs whatever its owner wants, so what the agent answers
//! must not cost the host more than a bounded amount, however it misbehaves:
//!
//! - a response frame is at most [`MAX_RESPONSE`] bytes; the `ttrpc` crate takes 4 MiB,
//!   and a 4 MiB answer of empty repeated fields (`Status.details`, or a stats reply's
//!   device list) decodes to ~130 MiB of heap in the caller, per call in flight;
//! - a frame whose header arrived must be complete within [`FRAME_TIMEOUT`] (the `ttrpc`
//!   crate waits for ever), and a request is written by its deadline;
//! - `Status.details` are never decoded, and an error's message reaches callers cut to
//!   [`MAX_MESSAGE`] bytes without control characters ([`guest_text`]);
//! - anything that breaks the framing (an oversized, stalled or truncated frame, one that
//!   is not a response, a response that does not decode) closes the connection: every
//!   call in flight and every later one fails with the reason, and the shim reports the
//!   pod's processes as gone, as when the VM dies. A late answer to a call whose deadline
//!   passed is dropped.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::rt::WireType;
use protobuf::{CodedInputStream, Enum, Message};
use ttrpc::proto::{Code, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE};

use crate::agent::*;
use crate::deadline::{guest_text, read_exact_by, write_all_by};

/// Largest response frame accepted (legitimate ones are under 4 KiB).
pub const MAX_RESPONSE: usize = 256 << 10;
/// Longest error message from the agent passed on.
pub const MAX_MESSAGE: usize = 4096;
/// Time a response frame may take to arrive once its header has.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a request without a deadline of its own may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The service name of `husk.agent.v1` in ttrpc requests.
const SERVICE: &str = "husk.agent.v1.Agent";

/// A decoded response: the status (code and message) and the payload.
type Reply = Result<Vec<u8>, ttrpc::Error>;

struct State {
    next_id: u32,
    pending: HashMap<u32, SyncSender<Reply>>,
    /// Why the connection is closed, once it is.
    closed: Option<String>,
}

struct Shared {
    stream: UnixStream,
    writer: Mutex<()>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection for `why`: every call in flight fails with it.
    fn close(&self, why: String) {
        let mut st = self.state();
        if st.closed.is_none() {
            st.closed = Some(why.clone());
        }
        for (_, tx) in st.pending.drain() {
            let _ = tx.try_send(Err(ttrpc::Error::Socket(why.clone())));
        }
        drop(st);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connection to the agent.
pub struct AgentClient {
    shared: Arc<Shared>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        // Ends the reader thread too.
        self.shared.close("the client was dropped".into());
    }
}

/// The deadline of a ttrpc context (`timeout_nano` 0: none).
fn context_timeout(ctx: &ttrpc::context::Context) -> Option<Duration> {
    u64::try_from(ctx.timeout_nano)
        .ok()
        .filter(|&n| n > 0)
        .map(Duration::from_nanos)
}

fn status_error(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

impl AgentClient {
    /// Talks the agent API over `stream` (connected to the agent's port); starts the
    /// thread that reads the responses.
    pub fn new(stream: UnixStream) -> std::io::Result<Self> {
        Self::with_frame_timeout(stream, FRAME_TIMEOUT)
    }

    /// As [`AgentClient::new`], with a frame deadline other than [`FRAME_TIMEOUT`].
    pub fn with_frame_timeout(
        stream: UnixStream,
        frame_timeout: Duration,
    ) -> std::io::Result<Self> {
        let reader = stream.try_clone()?;
        let shared = Arc::new(Shared {
            stream,
            writer: Mutex::new(()),
            state: Mutex::new(State {
                next_id: 1,
                pending: HashMap::new(),
                closed: None,
            }),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("agent-rx".into())
            .spawn(move || {
                let why = read_responses(&reader, frame_timeout, |id, reply| {
                    let Some(shared) = weak.upgrade() else {
                        return false;
                    };
                    if let Some(tx) = shared.state().pending.remove(&id) {
                        let _ = tx.try_send(reply);
                    }
                    true
                });
                if let Some(shared) = weak.upgrade() {
                    shared.close(why);
                }
            })?;
        Ok(Self { shared })
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<String> {
        self.shared.state().closed.clone()
    }

    /// Calls `method` of the agent service with the deadline in `ctx`.
    pub fn call<Req: Message, Resp: Message>(
        &self,
        ctx: &ttrpc::context::Context,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let timeout = context_timeout(ctx);
        let mut r = ttrpc::Request::new();
        r.service = SERVICE.into();
        r.method = method.into();
        r.payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("cannot encode {method}: {e}")))?;
        r.timeout_nano = ctx.timeout_nano;
        let body = r
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("cannot encode {method}: {e}")))?;
        let len = u32::try_from(body.len())
            .map_err(|_| ttrpc::Error::Others(format!("{method} request too large")))?;

        let (tx, rx) = sync_channel(1);
        let id = {
            let mut st = self.shared.state();
            if let Some(why) = &st.closed {
                return Err(ttrpc::Error::Socket(why.clone()));
            }
            let id = st.next_id;
            // Client stream ids are odd.
            st.next_id = st.next_id.wrapping_add(2) | 1;
            st.pending.insert(id, tx);
            id
        };
        let start = Instant::now();
        let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + body.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
        frame.extend_from_slice(&body);
        let written = {
            let _w = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
            write_all_by(
                &self.shared.stream,
                &frame,
                start + timeout.unwrap_or(WRITE_TIMEOUT),
            )
        };
        if let Err(e) = written {
            // Part of a frame may be out: the stream is of no more use.
            let why = format!("cannot send {method} to the agent: {e}");
            self.shared.close(why.clone());
            return Err(ttrpc::Error::Socket(why));
        }
        let reply = match timeout {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(t.saturating_sub(start.elapsed())),
        };
        let payload = match reply {
            Ok(r) => r?,
            Err(RecvTimeoutError::Timeout) => {
                self.shared.state().pending.remove(&id);
                return Err(status_error(
                    Code::DEADLINE_EXCEEDED,
                    format!(
                        "the agent did not answer {method} within {:?}",
                        timeout.unwrap_or_default()
                    ),
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ttrpc::Error::Socket(
                    self.closed()
                        .unwrap_or_else(|| "the agent connection is closed".into()),
                ))
            }
        };
        Resp::parse_from_bytes(&payload).map_err(|e| {
            ttrpc::Error::Others(format!(
                "the agent's {method} response does not decode: {e}"
            ))
        })
    }
}

/// Reads response frames from `s` and hands each `(stream id, reply)` to `deliver` (which
/// returns false to stop) until the stream ends or breaks the protocol; returns why.
fn read_responses(
    s: &UnixStream,
    frame_timeout: Duration,
    mut deliver: impl FnMut(u32, Reply) -> bool,
) -> String {
    let mut header = [0u8; MESSAGE_HEADER_LENGTH];
    loop {
        // An idle agent may wait as long as it likes before its next response...
        if let Err(e) = s.set_read_timeout(None) {
            return format!("the agent connection failed: {e}");
        }
        let mut r = s;
        match std::io::Read::read(&mut r, &mut header[..1]) {
            Ok(0) => return "the agent closed the connection".into(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("the agent connection failed: {e}"),
        }
        // ... but once a frame has started, all of it comes by one deadline.
        let deadline = Instant::now() + frame_timeout;
        if let Err(e) = read_exact_by(s, &mut header[1..], deadline) {
            return format!("the agent did not finish a frame header: {e}");
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let kind = header[8];
        if kind != MESSAGE_TYPE_RESPONSE {
            return format!("the agent sent a ttrpc message of type {kind}, not a response");
        }
        if len > MAX_RESPONSE {
            return format!(
                "the agent sent a {len}-byte response, over the limit of {MAX_RESPONSE} bytes"
            );
        }
        let mut body = vec![0u8; len];
        if let Err(e) = read_exact_by(s, &mut body, deadline) {
            return format!(
                "the agent did not finish a {len}-byte response within {frame_timeout:?}: {e}"
            );
        }
        let reply = match decode_response(&body) {
            Ok(r) => r,
            Err(e) => return format!("the agent sent a malformed response: {e}"),
        };
        if !deliver(id, reply) {
            return "the client was dropped".into();
        }
    }
}

/// Decodes a ttrpc `Response` (status = 1, payload = 2) by hand: the status's code and
/// message (cut, see [`MAX_MESSAGE`]) and never its details. Public for the fuzz target
/// (`fuzz/fuzz_targets/agent_replies.rs`).
pub fn decode_response(body: &[u8]) -> protobuf::Result<Result<Vec<u8>, ttrpc::Error>> {
    let mut is = CodedInputStream::from_bytes(body);
    let mut status = None;
    let mut payload = Vec::new();
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            // status: google.rpc.Status, length-delimited
            0x0a => status = Some(decode_status(&is.read_bytes()?)?),
            // payload: bytes
            0x12 => payload = is.read_bytes()?,
            _ => skip(&mut is, tag)?,
        }
    }
    Ok(match status {
        Some((code, message)) if code != Code::OK as i32 => {
            let code = Code::from_i32(code).unwrap_or(Code::UNKNOWN);
            Err(status_error(code, message))
        }
        _ => Ok(payload),
    })
}

fn decode_status(body: &[u8]) -> protobuf::Result<(i32, String)> {
    let mut is = CodedInputStream::from_bytes(body);
    let (mut code, mut message) = (0, String::new());
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            0x08 => code = is.read_int32()?,
            0x12 => {
                let raw = is.read_bytes()?;
                message = guest_text(&String::from_utf8_lossy(&raw), MAX_MESSAGE);
            }
            // details (3) and anything else: skipped, never decoded.
            _ => skip(&mut is, tag)?,
        }
    }
    Ok((code, message))
}

fn skip(is: &mut CodedInputStream<'_>, tag: u32) -> protobuf::Result<()> {
    let wire = WireType::new(tag & 7).ok_or_else(|| {
        protobuf::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad wire type in tag {tag:#x}"),
        ))
    })?;
    is.skip_field(wire)
}

/// The RPCs the shim makes, one method each.
macro_rules! rpcs {
    ($($fn:ident($req:ty) -> $resp:ty = $method:literal;)*) => {
        impl AgentClient {
            $(
                #[doc = concat!("`", $method, "`.")]
                pub fn $fn(&self, ctx: ttrpc::context::Context, req: &$req) -> ttrpc::Result<$resp> {
                    self.call(&ctx, $method, req)
                }
            )*
        }
    };
}

rpcs! {
    create_sandbox(CreateSandboxRequest) -> Empty = "CreateSandbox";
    destroy_sandbox(DestroySandboxRequest) -> Empty = "DestroySandbox";
    update_network(UpdateNetworkRequest) -> Empty = "UpdateNetwork";
    create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
    start_container(StartContainerRequest) -> Empty = "StartContainer";
    remove_container(RemoveContainerRequest) -> Empty = "RemoveContainer";
    pause_container(PauseContainerRequest) -> Empty = "PauseContainer";
    resume_container(ResumeContainerRequest) -> Empty = "ResumeContainer";
    stats_container(StatsContainerRequest) -> StatsContainerResponse = "StatsContainer";
    update_container(UpdateContainerRequest) -> Empty = "UpdateContainer";
    list_processes(ListProcessesRequest) -> ListProcessesResponse = "ListProcesses";
    get_oom_event(GetOOMEventRequest) -> OOMEvent = "GetOOMEvent";
    exec_process(ExecProcessRequest) -> ExecProcessResponse = "ExecProcess";
    signal_process(SignalProcessRequest) -> Empty = "SignalProcess";
    wait_process(WaitProcessRequest) -> WaitProcessResponse = "WaitProcess";
    close_stdin(CloseStdinRequest) -> Empty = "CloseStdin";
    tty_win_resize(TtyWinResizeRequest) -> Empty = "TtyWinResize";
    set_guest_time(SetGuestTimeRequest) -> Empty = "SetGuestTime";
    health(HealthRequest) -> HealthResponse = "Health";
    version(VersionRequest) -> VersionResponse = "Version";
    restored(RestoredRequest) -> Empty = "Restored";
    prepare_snapshot(PrepareSnapshotRequest) -> PrepareSnapshotResponse = "PrepareSnapshot";
}

#[cfg(test)]
mod tests;
