//! Steering every TCP connection to 127.0.0.1 in a network namespace to one listening
//! socket, whatever its port: a BPF `sk_lookup` program (Linux 5.9+) attached to the
//! namespace, which hands such a connection to the socket in a one-entry SOCKMAP. The
//! accepted socket's local address is the address the client dialled, so the listener
//! learns the port the client asked for with getsockname().
//!
//! The program is attached through a BPF link that lives exactly as long as its fd:
//! when the shim ends (even by SIGKILL), the steering ends with it; nothing is left in
//! the namespace to clean up.
//!
//! The raw bpf(2) calls are here and nowhere else.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;

const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;

/// `struct bpf_sk_lookup` field offsets (include/uapi/linux/bpf.h).
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;

const SK_PASS: i32 = 1;

/// 127.0.0.1 as the u32 the program loads from `local_ip4` (network byte order in
/// memory, read by a little-endian load).
const LOOPBACK_AS_LOADED: i32 = i32::from_ne_bytes([127, 0, 0, 1]);

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes (BPF_CLASS | BPF_OP/BPF_MODE | BPF_SRC/BPF_SIZE).
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x61;
const ST_W: u8 = 0x62;
const LD_DW_IMM: u8 = 0x18;
const JNE_IMM: u8 = 0x55;
const JEQ_IMM: u8 = 0x15;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;

/// The program, for the SOCKMAP `map_fd`:
/// ```text
///  0  r6 = r1                       ctx
///  1  r2 = ctx->protocol
///  2  if r2 != IPPROTO_TCP goto pass
///  3  r2 = ctx->family
///  4  if r2 != AF_INET goto pass
///  5  r2 = ctx->local_ip4
///  6  if r2 != 127.0.0.1 goto pass
///  7  *(u32 *)(r10 - 4) = 0         key
///  8  r2 = r10
///  9  r2 += -4
/// 10  r1 = map (two slots)
/// 12  r0 = bpf_map_lookup_elem(r1, r2)
/// 13  if r0 == 0 goto pass
/// 14  r7 = r0
/// 15  r1 = r6; 16 r2 = r7; 17 r3 = 0
/// 18  bpf_sk_assign(ctx, sk, 0)
/// 19  r1 = r7
/// 20  bpf_sk_release(sk)
/// 21  pass: r0 = SK_PASS
/// 22  exit
/// ```
/// A connection elsewhere passes on to the namespace's own sockets (SK_PASS with no
/// socket assigned); so does one to 127.0.0.1 if the map is empty.
pub fn program(map_fd: RawFd) -> Vec<Insn> {
    let pass = 21;
    // Jump offsets are relative to the next instruction.
    let to_pass = |at: i16| pass - at - 1;
    vec![
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, CTX_PROTOCOL, 0),
        insn(JNE_IMM, 2, 0, to_pass(2), libc::IPPROTO_TCP),
        insn(LDX_W, 2, 6, CTX_FAMILY, 0),
        insn(JNE_IMM, 2, 0, to_pass(4), libc::AF_INET),
        insn(LDX_W, 2, 6, CTX_LOCAL_IP4, 0),
        insn(JNE_IMM, 2, 0, to_pass(6), LOOPBACK_AS_LOADED),
        insn(ST_W, 10, 0, -4, 0),
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -4),
        insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, to_pass(13), 0),
        insn(MOV64_REG, 7, 0, 0, 0),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(MOV64_REG, 2, 7, 0, 0),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_ASSIGN),
        insn(MOV64_REG, 1, 7, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_RELEASE),
        insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Why the steering could not be set up: the step and the kernel's errno (and the
/// verifier's log for a refused program).
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("Cannot {step} (bpf sk_lookup needs Linux 5.9+ and CAP_BPF/CAP_SYS_ADMIN){log}")]
    Bpf {
        step: &'static str,
        log: String,
        #[source]
        source: io::Error,
    },
}

/// A `union bpf_attr`, zeroed past what each command sets (the kernel refuses non-zero
/// bytes beyond the fields it knows).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most size_of::<Attr>()
    // bytes of `attr`, which lives across the call; every pointer stored in it points
    // at memory the caller keeps alive across this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: a successful bpf() command that creates an object returns a new fd that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn err(step: &'static str) -> impl FnOnce(io::Error) -> SteerError {
    move |source| SteerError::Bpf {
        step,
        log: String::new(),
        source,
    }
}

/// The attached steering: dropping it detaches the program.
#[derive(Debug)]
pub struct Steering {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Steers TCP connections to 127.0.0.1 (any port) in the network namespace `netns`
/// (an open fd of it) to `listener`, a listening TCP socket in that namespace.
pub fn steer(netns: &impl AsRawFd, listener: &impl AsRawFd) -> Result<Steering, SteerError> {
    let map = bpf(
        BPF_MAP_CREATE,
        Attr::new()
            .u32(0, BPF_MAP_TYPE_SOCKMAP)
            .u32(4, 4)
            .u32(8, 8)
            .u32(12, 1),
    )
    .map(fd_of)
    .map_err(err("create the SOCKMAP"))?;

    let key: u32 = 0;
    let value: u64 = listener.as_raw_fd() as u64;
    bpf(
        BPF_MAP_UPDATE_ELEM,
        Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u64 as u64)
            .u64(24, 0),
    )
    .map_err(err("put the listener into the SOCKMAP"))?;

    let insns = program(map.as_raw_fd());
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16 * 1024];
    let load = |log_level: u32, log: &mut [u8]| {
        bpf(
            BPF_PROG_LOAD,
            Attr::new()
                .u32(0, BPF_PROG_TYPE_SK_LOOKUP)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, if log_level == 0 { 0 } else { log.len() as u32 })
                .u64(
                    32,
                    if log_level == 0 {
                        0
                    } else {
                        log.as_mut_ptr() as u64
                    },
                )
                .u32(68, BPF_SK_LOOKUP),
        )
    };
    let prog = match load(0, &mut log) {
        Ok(fd) => fd_of(fd),
        Err(first) => {
            // Load once more with the verifier's log, to say why.
            let _ = load(1, &mut log);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            return Err(SteerError::Bpf {
                step: "load the sk_lookup program",
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!("; verifier: {text}")
                },
                source: first,
            });
        }
    };

    let link = bpf(
        BPF_LINK_CREATE,
        Attr::new()
            .u32(0, prog.as_raw_fd() as u32)
            .u32(4, netns.as_raw_fd() as u32)
            .u32(8, BPF_SK_LOOKUP),
    )
    .map(fd_of)
    .map_err(err("attach the sk_lookup program to the network namespace"))?;

    Ok(Steering {
        _map: map,
        _prog: prog,
        _link: link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_pass_and_the_program_ends_with_exit() {
        let p = program(42);
        assert_eq!(p.len(), 23);
        assert_eq!(p.last().unwrap().code, EXIT);
        assert_eq!(p[21], insn(MOV64_IMM, 0, 0, 0, SK_PASS));
        for (i, x) in p.iter().enumerate() {
            if x.code == JNE_IMM || x.code == JEQ_IMM {
                assert_eq!(i as i16 + 1 + x.off, 21, "jump at {i}");
            }
        }
        // The map load is a two-slot instruction naming the map fd.
        assert_eq!(
            (p[10].code, p[10].regs >> 4, p[10].imm),
            (LD_DW_IMM, PSEUDO_MAP_FD, 42)
        );
        assert_eq!(p[11], insn(0, 0, 0, 0, 0));
    }

    #[test]
    fn loopback_is_compared_in_network_byte_order() {
        // The program loads 4 bytes 7f 00 00 01 from memory as a native u32.
        assert_eq!(
            LOOPBACK_AS_LOADED as u32,
            u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets())
        );
    }
}
