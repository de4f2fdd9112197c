//! What the shim reads from the guest's agent: stdio handshake frames (4-byte length,
//! then protobuf) read back to back from one stream, the body of a ttrpc response frame
//! as the shim's agent client decodes it (status code and a message cut to MAX_MESSAGE,
//! never the details; the payload as it came), and the agent's ttrpc reply messages the
//! shim decodes. A frame over MAX_FRAME is refused before anything is allocated; whatever
//! parses re-encodes to a message that parses the same.
#![no_main]

use std::io::Cursor;

use husk_protocol::agent;
use husk_protocol::agent_client::{decode_response, MAX_MESSAGE};
use husk_protocol::frame::{self, FrameError, MAX_FRAME};
use husk_protocol::protobuf::Message;
use libfuzzer_sys::fuzz_target;

fn round_trips<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::parse_from_bytes(bytes) {
        let again = m.write_to_bytes().expect("a parsed message encodes");
        let back = M::parse_from_bytes(&again).expect("what we encode parses");
        assert_eq!(m, back);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Cursor::new(data);
    loop {
        let before = r.position();
        match frame::read_frame(&mut r) {
            Ok(payload) => {
                assert!(payload.len() <= MAX_FRAME);
                assert_eq!(r.position() - before, 4 + payload.len() as u64);
                round_trips::<agent::StdioAttachResponse>(&payload);
                round_trips::<agent::StdioAttach>(&payload);
                let f = frame::encode_frame(&payload).expect("a read frame re-encodes");
                assert_eq!(&f[..], &data[before as usize..r.position() as usize]);
            }
            Err(FrameError::TooLong(n)) => {
                assert!(n > MAX_FRAME);
                break;
            }
            Err(FrameError::Truncated) => break,
            Err(FrameError::Io(e)) => panic!("a cursor never fails: {e}"),
        }
    }
    match decode_response(data) {
        Ok(Ok(payload)) => assert!(payload.len() <= data.len()),
        Ok(Err(husk_protocol::ttrpc::Error::RpcStatus(s))) => {
            assert!(s.details.is_empty());
            // Cut to MAX_MESSAGE bytes plus the note saying how much was cut.
            assert!(
                s.message().len() <= MAX_MESSAGE + 40,
                "{}",
                s.message().len()
            );
            assert!(!s
                .message()
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
        Ok(Err(other)) => panic!("a response decodes to a status or a payload: {other:?}"),
        Err(_) => {}
    }
    round_trips::<agent::WaitProcessResponse>(data);
    round_trips::<agent::ExecProcessResponse>(data);
    round_trips::<agent::ListProcessesResponse>(data);
    round_trips::<agent::StatsContainerResponse>(data);
    round_trips::<agent::CreateContainerResponse>(data);
    round_trips::<agent::HealthResponse>(data);
    round_trips::<agent::VersionResponse>(data);
});
