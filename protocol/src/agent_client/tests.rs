use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::agent_ttrpc::{create_agent, Agent};

fn ctx(secs: u64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(secs).as_nanos() as i64)
}

/// The real ttrpc server side (the agent's), answering Health and Version.
struct Answers;

impl Agent for Answers {
    fn health(&self, _: &ttrpc::TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        let mut r = HealthResponse::new();
        r.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(r)
    }
    fn version(
        &self,
        _: &ttrpc::TtrpcContext,
        _: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        let mut r = VersionResponse::new();
        r.api_version = crate::API_VERSION.into();
        Ok(r)
    }
}

#[test]
fn speaks_to_the_ttrpc_server_the_agent_runs() {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "husk-agent-client-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(create_agent(Arc::new(Answers)));
    server.start().unwrap();
    let c = AgentClient::new(UnixStream::connect(&path).unwrap()).unwrap();
    for _ in 0..3 {
        let h = c.health(ctx(5), &HealthRequest::new()).unwrap();
        assert_eq!(
            h.status.enum_value(),
            Ok(ServingStatus::SERVING_STATUS_SERVING)
        );
        let v = c.version(ctx(5), &VersionRequest::new()).unwrap();
        assert_eq!(v.api_version, crate::API_VERSION);
    }
    // An RPC the server does not implement: its status code, as the agent sent it.
    let e = c
        .start_container(ctx(5), &StartContainerRequest::new())
        .unwrap_err();
    match e {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), Code::NOT_FOUND);
            assert!(s.message().contains("StartContainer"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    server.shutdown();
    let _ = std::fs::remove_file(&path);
}

/// A request as the hostile peer reads it: (stream id, method).
fn read_request(s: &mut UnixStream) -> Option<(u32, String)> {
    let mut h = [0u8; MESSAGE_HEADER_LENGTH];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
    let id = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    let req = ttrpc::Request::parse_from_bytes(&body).ok()?;
    Some((id, req.method))
}

fn frame(id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[kind, 0]);
    f.extend_from_slice(body);
    f
}

fn ok_response(payload: &impl Message) -> Vec<u8> {
    let mut r = ttrpc::Response::new();
    r.payload = payload.write_to_bytes().unwrap();
    r.write_to_bytes().unwrap()
}

fn version_payload() -> VersionResponse {
    let mut v = VersionResponse::new();
    v.api_version = "husk.agent.v1".into();
    v
}

/// A client whose peer runs `peer` on the other end (frame deadline 300 ms).
fn against(peer: impl FnOnce(UnixStream) + Send + 'static) -> AgentClient {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::spawn(move || peer(b));
    AgentClient::with_frame_timeout(a, Duration::from_millis(300)).unwrap()
}

fn assert_version_works(c: &AgentClient) {
    let v = c.version(ctx(5), &VersionRequest::new()).unwrap();
    assert_eq!(v.api_version, "husk.agent.v1");
}

fn socket_error(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::Socket(why) => why,
        other => panic!("not a connection error: {other:?}"),
    }
}

#[test]
fn an_oversized_frame_closes_the_connection_before_anything_is_allocated() {
    let c = against(|mut s| {
        let (id, _) = read_request(&mut s).unwrap();
        // Claims 4 GiB; nothing follows.
        let mut h = u32::MAX.to_be_bytes().to_vec();
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[MESSAGE_TYPE_RESPONSE, 0]);
        s.write_all(&h).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let why = socket_error(c.version(ctx(5), &VersionRequest::new()).unwrap_err());
    assert!(why.contains("over the limit of 262144 bytes"), "{why}");
    // Closed for good: the next call fails at once, naming the same reason.
    let why = socket_error(c.health(ctx(5), &HealthRequest::new()).unwrap_err());
    assert!(why.contains("over the limit"), "{why}");
    assert!(c.closed().is_some());
}

#[test]
fn a_stalled_or_truncated_frame_fails_the_calls_at_the_frame_deadline() {
    // Half a body, then nothing: the frame deadline (300 ms here) ends it.
    let c = against(|mut s| {
        let (id, _) = read_request(&mut s).unwrap();
        let body = ok_response(&version_payload());
        let f = frame(id, MESSAGE_TYPE_RESPONSE, &body);
        s.write_all(&f[..f.len() / 2]).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let start = Instant::now();
    let why = socket_error(c.version(ctx(60), &VersionRequest::new()).unwrap_err());
    assert!(why.contains("did not finish"), "{why}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );

    // A header trickled one byte at a time, each in time for a per-read timeout.
    let c = against(|mut s| {
        let (id, _) = read_request(&mut s).unwrap();
        for b in frame(id, MESSAGE_TYPE_RESPONSE, &ok_response(&version_payload())) {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let why = socket_error(c.version(ctx(60), &VersionRequest::new()).unwrap_err());
    assert!(why.contains("did not finish a frame header"), "{why}");

    // The connection ends inside a body.
    let c = against(|mut s| {
        let (id, _) = read_request(&mut s).unwrap();
        let f = frame(id, MESSAGE_TYPE_RESPONSE, &[0u8; 100]);
        s.write_all(&f[..20]).unwrap();
    });
    let why = socket_error(c.version(ctx(60), &VersionRequest::new()).unwrap_err());
    assert!(why.contains("did not finish a 100-byte response"), "{why}");
}

#[test]
fn frames_that_are_not_responses_close_the_connection() {
    for (what, kind, body, needle) in [
        (
            "a request",
            MESSAGE_TYPE_REQUEST,
            vec![],
            "type 1, not a response",
        ),
        (
            "garbage",
            MESSAGE_TYPE_RESPONSE,
            vec![0xff; 64],
            "malformed response",
        ),
    ] {
        let c = against(move |mut s| {
            let (id, _) = read_request(&mut s).unwrap();
            s.write_all(&frame(id, kind, &body)).unwrap();
            std::thread::sleep(Duration::from_secs(5));
        });
        let why = socket_error(c.version(ctx(5), &VersionRequest::new()).unwrap_err());
        assert!(why.contains(needle), "{what}: {why}");
    }
}

#[test]
fn status_details_are_never_decoded_and_messages_are_cut() {
    // 60,000 empty `details` (the bomb that costs ~30 bytes of heap per wire byte in
    // the ttrpc crate) and a 100 KiB message with terminal escapes.
    let mut status = vec![0x08, Code::INTERNAL as u8];
    let message = format!("\x1b[31m{}", "m".repeat(100 << 10));
    let mut m = vec![0x12];
    let mut len = message.len() as u64;
    while len >= 0x80 {
        m.push((len as u8) | 0x80);
        len >>= 7;
    }
    m.push(len as u8);
    m.extend_from_slice(message.as_bytes());
    status.extend_from_slice(&m);
    for _ in 0..60_000 {
        status.extend_from_slice(&[0x1a, 0x00]);
    }
    let mut body = vec![0x0a];
    let mut len = status.len() as u64;
    while len >= 0x80 {
        body.push((len as u8) | 0x80);
        len >>= 7;
    }
    body.push(len as u8);
    body.extend_from_slice(&status);
    assert!(body.len() < MAX_RESPONSE);
    let c = against(move |mut s| {
        let (id, _) = read_request(&mut s).unwrap();
        s.write_all(&frame(id, MESSAGE_TYPE_RESPONSE, &body))
            .unwrap();
        let (id, _) = read_request(&mut s).unwrap();
        s.write_all(&frame(
            id,
            MESSAGE_TYPE_RESPONSE,
            &ok_response(&version_payload()),
        ))
        .unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    match c.version(ctx(5), &VersionRequest::new()).unwrap_err() {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), Code::INTERNAL);
            assert!(s.details.is_empty());
            assert!(
                s.message().starts_with("\u{fffd}[31mmmm"),
                "{:.40}",
                s.message()
            );
            assert!(
                s.message().len() < MAX_MESSAGE + 64,
                "{}",
                s.message().len()
            );
            assert!(s.message().ends_with("more bytes cut]"));
        }
        other => panic!("{other:?}"),
    }
    // An error status is no protocol violation: the connection serves on.
    assert_version_works(&c);
}

#[test]
fn deadlines_late_and_unknown_answers_and_bad_payloads() {
    let c = against(|mut s| {
        // Never answers the first call in time; answers it late, after the second
        // request came, together with an answer to a stream nobody asked on.
        let (first, _) = read_request(&mut s).unwrap();
        let (second, _) = read_request(&mut s).unwrap();
        let v = ok_response(&version_payload());
        s.write_all(&frame(first, MESSAGE_TYPE_RESPONSE, &v))
            .unwrap();
        s.write_all(&frame(999, MESSAGE_TYPE_RESPONSE, &v)).unwrap();
        s.write_all(&frame(second, MESSAGE_TYPE_RESPONSE, &v))
            .unwrap();
        // A payload that is not the response type's: that call fails, nothing else.
        let (third, _) = read_request(&mut s).unwrap();
        let mut bad = ttrpc::Response::new();
        bad.payload = vec![0xff, 0xff, 0xff];
        s.write_all(&frame(
            third,
            MESSAGE_TYPE_RESPONSE,
            &bad.write_to_bytes().unwrap(),
        ))
        .unwrap();
        let (fourth, _) = read_request(&mut s).unwrap();
        s.write_all(&frame(fourth, MESSAGE_TYPE_RESPONSE, &v))
            .unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let short = ttrpc::context::with_timeout(Duration::from_millis(200).as_nanos() as i64);
    match c.version(short, &VersionRequest::new()).unwrap_err() {
        ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::DEADLINE_EXCEEDED),
        other => panic!("{other:?}"),
    }
    assert_version_works(&c);
    let e = c.version(ctx(5), &VersionRequest::new()).unwrap_err();
    assert!(
        matches!(&e, ttrpc::Error::Others(m) if m.contains("does not decode")),
        "{e:?}"
    );
    assert!(c.version(ctx(5), &VersionRequest::new()).is_ok());
    assert!(c.closed().is_none());
}

#[test]
fn a_dropped_client_ends_its_reader_and_the_peer_sees_eof() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let c = AgentClient::new(a).unwrap();
    drop(c);
    let mut buf = [0u8; 1];
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(b.read(&mut buf).unwrap(), 0);
}
