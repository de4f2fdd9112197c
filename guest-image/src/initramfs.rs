//! The husk guest initramfs: husk-agent as `/init` plus the few directories
//! and device nodes it needs before it mounts devtmpfs.

use std::io::Write;

use crate::cpio::{CpioError, CpioWriter};

/// Directories in the image, in order, with their permissions.
pub const DIRS: &[(&str, u32)] = &[
    ("/dev", 0o755),
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/mnt", 0o755),
];

/// Character devices in the image: `(path, perm, major, minor)`.
///
/// The kernel opens /dev/console as init's stdio before devtmpfs is mounted;
/// the Rust runtime opens /dev/null for any stdio descriptor still closed
/// and aborts if it cannot, so both must exist in the image itself.
pub const CHAR_DEVICES: &[(&str, u32, u32, u32)] =
    &[("/dev/console", 0o600, 5, 1), ("/dev/null", 0o666, 1, 3)];

/// Where the agent goes, and its permissions.
pub const INIT_PATH: &str = "/init";
pub const INIT_PERM: u32 = 0o755;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("The agent is not an ELF file")]
    NotElf,
    #[error("The agent is a truncated ELF file")]
    Truncated,
    #[error("The agent is not a 64-bit little-endian ELF file")]
    NotElf64Le,
    #[error("The agent is not an x86-64 binary (ELF machine {0})")]
    WrongMachine(u16),
    #[error("The agent is not an executable (ELF type {0}; expected EXEC or a PIE)")]
    NotExecutable(u16),
    #[error(
        "The agent is dynamically linked (interpreter {0}); the initramfs has no libraries: \
         build it for x86_64-unknown-linux-musl"
    )]
    DynamicallyLinked(String),
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ImageError> {
    let end = off.checked_add(2).ok_or(ImageError::Truncated)?;
    let bytes = b.get(off..end).ok_or(ImageError::Truncated)?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ImageError> {
    let end = off.checked_add(4).ok_or(ImageError::Truncated)?;
    let bytes = b.get(off..end).ok_or(ImageError::Truncated)?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ImageError> {
    let end = off.checked_add(8).ok_or(ImageError::Truncated)?;
    let bytes = b.get(off..end).ok_or(ImageError::Truncated)?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

fn to_usize(v: u64) -> Result<usize, ImageError> {
    usize::try_from(v).map_err(|_| ImageError::Truncated)
}

/// Checks that `bin` is something the kernel can run as `/init` from an
/// initramfs with nothing else in it: a 64-bit x86-64 ELF executable (static,
/// or static-pie as Rust's musl target builds) with no program interpreter.
pub fn validate_agent(bin: &[u8]) -> Result<(), ImageError> {
    if !bin.starts_with(b"\x7fELF") {
        return Err(ImageError::NotElf);
    }
    if bin.len() < EHDR_LEN {
        return Err(ImageError::Truncated);
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if bin[4] != 2 || bin[5] != 1 {
        return Err(ImageError::NotElf64Le);
    }
    let e_type = u16_at(bin, 0x10)?;
    let e_machine = u16_at(bin, 0x12)?;
    let e_entry = u64_at(bin, 0x18)?;
    let e_phoff = to_usize(u64_at(bin, 0x20)?)?;
    let e_phentsize = usize::from(u16_at(bin, 0x36)?);
    let e_phnum = usize::from(u16_at(bin, 0x38)?);
    if e_machine != EM_X86_64 {
        return Err(ImageError::WrongMachine(e_machine));
    }
    // A shared library is ET_DYN too, but has no entry point.
    if !(e_type == ET_EXEC || (e_type == ET_DYN && e_entry != 0)) {
        return Err(ImageError::NotExecutable(e_type));
    }
    if e_phnum == 0 || e_phentsize < PHDR_LEN {
        return Err(ImageError::NotExecutable(e_type));
    }
    for i in 0..e_phnum {
        let ph = i
            .checked_mul(e_phentsize)
            .and_then(|o| o.checked_add(e_phoff))
            .ok_or(ImageError::Truncated)?;
        if u32_at(bin, ph)? != PT_INTERP {
            continue;
        }
        let off = to_usize(u64_at(bin, ph + 8)?)?;
        let len = to_usize(u64_at(bin, ph + 32)?)?;
        let end = off.checked_add(len).ok_or(ImageError::Truncated)?;
        let interp = bin.get(off..end).ok_or(ImageError::Truncated)?;
        let interp = String::from_utf8_lossy(interp)
            .trim_end_matches('\0')
            .to_owned();
        return Err(ImageError::DynamicallyLinked(interp));
    }
    Ok(())
}

/// Writes the initramfs with `agent` as /init to `out` and returns `out`.
/// The output depends only on `agent`.
pub fn write_initramfs<W: Write>(agent: &[u8], out: W) -> Result<W, ImageError> {
    validate_agent(agent)?;
    let mut cpio = CpioWriter::new(out);
    for &(dir, perm) in DIRS {
        cpio.add_dir(dir, perm)?;
    }
    for &(path, perm, major, minor) in CHAR_DEVICES {
        cpio.add_char_device(path, perm, major, minor)?;
    }
    cpio.add_file(INIT_PATH, INIT_PERM, agent)?;
    Ok(cpio.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;
    use crate::cpio::TRAILER;

    /// A minimal ELF64 x86-64 header with one program header of `p_type`
    /// (PT_INTERP pointing at "/lib/ld.so\0" when `p_type` is 3).
    fn elf(e_type: u16, p_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_LEN + PHDR_LEN];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&0x401000u64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        b[0x36..0x38].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let interp = b"/lib/ld.so\0";
        let off = b.len() as u64;
        let ph = EHDR_LEN;
        b[ph..ph + 4].copy_from_slice(&p_type.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        b.extend_from_slice(interp);
        b
    }

    const PT_LOAD: u32 = 1;

    #[test]
    fn accepts_static_executables() {
        validate_agent(&elf(ET_EXEC, PT_LOAD)).unwrap();
        validate_agent(&elf(ET_DYN, PT_LOAD)).unwrap(); // static-pie
    }

    #[test]
    fn accepts_this_test_binary_or_names_its_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        match validate_agent(&me) {
            Ok(()) => {}
            Err(ImageError::DynamicallyLinked(interp)) => assert!(interp.contains("ld")),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn rejects_what_cannot_be_init() {
        assert!(matches!(validate_agent(b""), Err(ImageError::NotElf)));
        assert!(matches!(
            validate_agent(b"#!/bin/sh\n"),
            Err(ImageError::NotElf)
        ));
        assert!(matches!(
            validate_agent(b"\x7fELF"),
            Err(ImageError::Truncated)
        ));

        let mut b = elf(ET_EXEC, PT_LOAD);
        b[4] = 1; // ELFCLASS32
        assert!(matches!(validate_agent(&b), Err(ImageError::NotElf64Le)));

        let mut b = elf(ET_EXEC, PT_LOAD);
        b[0x12..0x14].copy_from_slice(&183u16.to_le_bytes()); // aarch64
        assert!(matches!(
            validate_agent(&b),
            Err(ImageError::WrongMachine(183))
        ));

        assert!(matches!(
            validate_agent(&elf(1, PT_LOAD)), // ET_REL
            Err(ImageError::NotExecutable(1))
        ));

        let mut lib = elf(ET_DYN, PT_LOAD);
        lib[0x18..0x20].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            validate_agent(&lib),
            Err(ImageError::NotExecutable(3))
        ));

        match validate_agent(&elf(ET_DYN, PT_INTERP)) {
            Err(ImageError::DynamicallyLinked(i)) => assert_eq!(i, "/lib/ld.so"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bogus_offsets_do_not_panic() {
        let mut b = elf(ET_EXEC, PT_LOAD);
        b[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(validate_agent(&b), Err(ImageError::Truncated)));
        let mut b = elf(ET_EXEC, PT_INTERP);
        b[EHDR_LEN + 8..EHDR_LEN + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(validate_agent(&b), Err(ImageError::Truncated)));
        let mut b = elf(ET_EXEC, PT_LOAD);
        b[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(validate_agent(&b), Err(ImageError::Truncated)));
    }

    #[test]
    fn image_contents() {
        let agent = elf(ET_EXEC, PT_LOAD);
        let out = write_initramfs(&agent, Vec::new()).unwrap();
        let entries = parse(&out);
        let listing: Vec<(String, u32)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.header.mode))
            .collect();
        let expect: Vec<(String, u32)> = [
            ("dev", 0o040755),
            ("proc", 0o040555),
            ("sys", 0o040555),
            ("run", 0o040755),
            ("tmp", 0o041777),
            ("mnt", 0o040755),
            ("dev/console", 0o020600),
            ("dev/null", 0o020666),
            ("init", 0o100755),
            (TRAILER, 0),
        ]
        .iter()
        .map(|&(n, m)| (n.to_owned(), m))
        .collect();
        assert_eq!(listing, expect);
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.data, agent);
        let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((console.header.rdevmajor, console.header.rdevminor), (5, 1));
        assert!(entries.iter().all(|e| e.header.mtime == 0));
    }

    #[test]
    fn image_is_deterministic_and_rejects_bad_agents() {
        let agent = elf(ET_DYN, PT_LOAD);
        assert_eq!(
            write_initramfs(&agent, Vec::new()).unwrap(),
            write_initramfs(&agent, Vec::new()).unwrap()
        );
        assert!(matches!(
            write_initramfs(b"not elf", Vec::new()),
            Err(ImageError::NotElf)
        ));
    }
}
