//! The two raw system calls the seccomp executor makes in the container's
//! init just before exec: `seccomp(SECCOMP_SET_MODE_FILTER)` and the
//! capget/capset pair that drops the CAP_SYS_ADMIN it held only to install
//! the filter.
//!
//! Not seccompiler's `apply_filter`: it sets no_new_privs first, which a
//! spec without `noNewPrivileges` must not get (setuid binaries in the
//! container would stop working).

use std::io;

use seccompiler::sock_filter;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

/// `struct sock_fprog` of <linux/filter.h>.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Installs `program` as a seccomp filter of the calling thread.
pub fn install_filter(program: &[sock_filter], flags: u32) -> io::Result<()> {
    let len = libc::c_ushort::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?;
    let prog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `prog` points at `program`, `len` instructions of seccompiler's
    // `sock_filter`, which is #[repr(C)] {u16 code, u8 jt, u8 jf, u32 k}:
    // the kernel's struct sock_filter. Both outlive the call; the kernel
    // copies the program and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes capability `cap` from the calling thread's effective set, and
/// from its permitted set too when `permitted` is true.
pub fn drop_capability(cap: u32, permitted: bool) -> io::Result<()> {
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    if word > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "capability out of range",
        ));
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 capget writes two CapData (the kernel's
    // __user_cap_data_struct, three u32) into `data`, which has room for
    // exactly two, and may write the header's version.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    data[word].effective &= !bit;
    if permitted {
        data[word].permitted &= !bit;
    }
    // SAFETY: capset reads the header and two CapData from live memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
