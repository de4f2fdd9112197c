//! Whether a binary can run in the jail: a static ELF (no program interpreter, so no
//! libraries to find in a root that holds none).

use std::io::Read;
use std::path::Path;

const PT_INTERP: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a 64-bit little-endian ELF executable")]
    NotElf { path: String },
    #[error(
        "{path} is dynamically linked (program interpreter {interp}); the jail holds no \
         libraries: use the static (musl) build `make vmm` ships, or set jail = false"
    )]
    Dynamic { path: String, interp: String },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Bytes that are not a well-formed ELF header and program header table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The program interpreter an ELF image names, if any (`None`: static). `Err(Malformed)` if the
/// bytes are not a well-formed 64-bit little-endian ELF header and program header table.
pub fn interpreter(image: &[u8]) -> Result<Option<String>, Malformed> {
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(Malformed);
    }
    let phoff = usize::try_from(u64_at(image, 0x20).ok_or(Malformed)?).map_err(|_| Malformed)?;
    let phentsize = usize::from(u16_at(image, 0x36).ok_or(Malformed)?);
    let phnum = usize::from(u16_at(image, 0x38).ok_or(Malformed)?);
    if phentsize < 0x38 {
        return Err(Malformed);
    }
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(Malformed)?)
            .ok_or(Malformed)?;
        if u32_at(image, ph).ok_or(Malformed)? != PT_INTERP {
            continue;
        }
        let field = |at: usize| -> Result<usize, Malformed> {
            let v = u64_at(image, ph.checked_add(at).ok_or(Malformed)?).ok_or(Malformed)?;
            usize::try_from(v).map_err(|_| Malformed)
        };
        let (off, len) = (field(0x08)?, field(0x20)?);
        let end = off.checked_add(len).ok_or(Malformed)?;
        let name = image.get(off..end).ok_or(Malformed)?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

/// Checks that `path` is a static ELF executable.
pub fn check_static(path: &Path) -> Result<(), ElfError> {
    let shown = path.display().to_string();
    let read = |source| ElfError::Read {
        path: shown.clone(),
        source,
    };
    // The headers are at the start; 64 KiB holds them for any binary we build.
    let mut image = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(64 * 1024)
        .read_to_end(&mut image)
        .map_err(read)?;
    match interpreter(&image) {
        Err(Malformed) => Err(ElfError::NotElf { path: shown }),
        Ok(None) => Ok(()),
        Ok(Some(interp)) => Err(ElfError::Dynamic {
            path: shown,
            interp,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header with `phnum` program headers, one PT_INTERP naming `interp`.
    fn image(interp: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 0x40];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let mut load = vec![0u8; 0x38];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        b.extend(load);
        let mut ph = vec![0u8; 0x38];
        if let Some(name) = interp {
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            let off = (0x40 + 2 * 0x38) as u64;
            ph[0x08..0x10].copy_from_slice(&off.to_le_bytes());
            ph[0x20..0x28].copy_from_slice(&(name.len() as u64 + 1).to_le_bytes());
        }
        b.extend(ph);
        if let Some(name) = interp {
            b.extend(name.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn static_and_dynamic_images_are_told_apart() {
        assert_eq!(interpreter(&image(None)), Ok(None));
        assert_eq!(
            interpreter(&image(Some("/lib64/ld-linux-x86-64.so.2"))),
            Ok(Some("/lib64/ld-linux-x86-64.so.2".into()))
        );
    }

    #[test]
    fn malformed_images_are_refused_not_read_past_their_end() {
        assert_eq!(interpreter(b"#!/bin/sh\n"), Err(Malformed));
        assert_eq!(interpreter(b""), Err(Malformed));
        let mut b = image(Some("/lib/ld.so"));
        b.truncate(0x50);
        assert_eq!(interpreter(&b), Err(Malformed));
        let mut b = image(None);
        b[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&b), Err(Malformed));
        let mut b = image(Some("/x"));
        let len_at = 0x40 + 0x38 + 0x20;
        b[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&b), Err(Malformed));
    }

    #[test]
    fn real_binaries() {
        // The test binary itself is dynamic (glibc) or static (musl): either way readable.
        let me = std::env::current_exe().unwrap();
        let r = check_static(&me);
        assert!(
            r.is_ok() || matches!(r, Err(ElfError::Dynamic { .. })),
            "{r:?}"
        );
        let e = check_static(Path::new("/nonexistent/husk-vmm")).unwrap_err();
        assert!(
            e.to_string().contains("cannot read /nonexistent/husk-vmm"),
            "{e}"
        );
        if Path::new("/bin/sh").exists() {
            let bash = std::fs::read("/bin/sh").unwrap();
            assert!(interpreter(&bash).is_ok());
        }
    }
}
