//! A small writer for "newc" cpio archives (magic `070701`), the format the
//! Linux kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header of thirteen 8-digit hex fields, the
//! NUL-terminated name padded so that header + name is a multiple of 4, then
//! the data padded to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`; this writer then pads it to a multiple of 512 bytes like GNU
//! cpio does.
//!
//! Output is deterministic: inode numbers count up from 1 in the order
//! entries are added, owner is root, and every mtime is the same fixed value.

use std::collections::HashSet;
use std::io::{self, Write};

/// The newc magic (no checksums).
pub const MAGIC: &str = "070701";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;
/// Name of the final entry.
pub const TRAILER: &str = "TRAILER!!!";
/// The archive is padded to a multiple of this many bytes.
pub const BLOCK: u64 = 512;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const PERM_MASK: u32 = 0o7777;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("Invalid archive path {0:?}")]
    InvalidPath(String),
    #[error("Path {0:?} is already in the archive")]
    Duplicate(String),
    #[error("Parent directory {parent:?} of {path:?} is not in the archive")]
    MissingParent { path: String, parent: String },
    #[error("Permission bits {mode:#o} of {path:?} are out of range")]
    InvalidMode { path: String, mode: u32 },
    #[error("{path:?} is too large for a newc archive ({size} bytes)")]
    TooLarge { path: String, size: usize },
    #[error("Failed to write the archive")]
    Io(#[from] io::Error),
}

/// The fields of one newc header, in file order (magic and check omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    /// Length of the name including its terminating NUL.
    pub namesize: u32,
}

impl Header {
    /// The 110-byte ASCII form.
    pub fn encode(&self) -> String {
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            0, // check: only used by the "070702" crc format
        ];
        let mut s = String::with_capacity(HEADER_LEN);
        s.push_str(MAGIC);
        for f in fields {
            s.push_str(&format!("{f:08X}"));
        }
        debug_assert_eq!(s.len(), HEADER_LEN);
        s
    }
}

/// Bytes of zero padding that bring `len` to a multiple of `align`.
pub fn pad_len(len: u64, align: u64) -> u64 {
    (align - len % align) % align
}

/// Normalises an archive path: no leading `/`, no empty, `.` or `..`
/// components, no NUL. `/dev/console` becomes `dev/console`.
pub fn normalize_path(path: &str) -> Result<String, CpioError> {
    let invalid = || CpioError::InvalidPath(path.to_owned());
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.contains('\0') {
        return Err(invalid());
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid());
    }
    if rel == TRAILER {
        return Err(invalid());
    }
    Ok(rel.to_owned())
}

/// Writes a newc archive to `W`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
    paths: HashSet<String>,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose entries all have mtime 0.
    pub fn new(out: W) -> Self {
        Self::with_mtime(out, 0)
    }

    /// A writer whose entries all have mtime `mtime` (seconds since epoch).
    pub fn with_mtime(out: W, mtime: u32) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
            mtime,
            paths: HashSet::new(),
            dirs: HashSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Adds a directory; its parent must have been added before.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let name = self.check_new(path, perm)?;
        self.write_entry(&name, S_IFDIR | perm, 2, (0, 0), &[])?;
        self.dirs.insert(name);
        Ok(())
    }

    /// Adds a regular file with contents `data`.
    pub fn add_file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        let name = self.check_new(path, perm)?;
        self.write_entry(&name, S_IFREG | perm, 1, (0, 0), data)
    }

    /// Adds a symbolic link to `target` (stored as the entry's data).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let name = self.check_new(path, 0o777)?;
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidPath(target.to_owned()));
        }
        self.write_entry(&name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node `major:minor`.
    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = self.check_new(path, perm)?;
        self.write_entry(&name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer, pads the archive to a multiple of [`BLOCK`] bytes
    /// and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        let header = Header {
            nlink: 1,
            namesize: name_size(TRAILER)?,
            ..Header::default()
        };
        self.write_raw_entry(&header, TRAILER, &[])?;
        let pad = pad_len(self.written, BLOCK);
        self.write_zeros(pad)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn check_new(&self, path: &str, perm: u32) -> Result<String, CpioError> {
        let name = normalize_path(path)?;
        if perm & !PERM_MASK != 0 {
            return Err(CpioError::InvalidMode {
                path: name,
                mode: perm,
            });
        }
        if self.paths.contains(&name) {
            return Err(CpioError::Duplicate(name));
        }
        // The kernel does not create missing parents when it unpacks.
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                return Err(CpioError::MissingParent {
                    parent: parent.to_owned(),
                    path: name,
                });
            }
        }
        Ok(name)
    }

    fn write_entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        (rdevmajor, rdevminor): (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let filesize = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            path: name.to_owned(),
            size: data.len(),
        })?;
        let header = Header {
            ino: self.next_ino,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: self.mtime,
            filesize,
            devmajor: 0,
            devminor: 0,
            rdevmajor,
            rdevminor,
            namesize: name_size(name)?,
        };
        self.write_raw_entry(&header, name, data)?;
        self.next_ino += 1;
        self.paths.insert(name.to_owned());
        Ok(())
    }

    fn write_raw_entry(&mut self, header: &Header, name: &str, data: &[u8]) -> io::Result<()> {
        self.write_bytes(header.encode().as_bytes())?;
        self.write_bytes(name.as_bytes())?;
        self.write_bytes(&[0])?;
        self.write_zeros(pad_len(self.written, 4))?;
        self.write_bytes(data)?;
        self.write_zeros(pad_len(self.written, 4))
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, n: u64) -> io::Result<()> {
        const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
        let mut left = n;
        while left > 0 {
            let chunk = left.min(BLOCK);
            self.write_bytes(&ZEROS[..chunk as usize])?;
            left -= chunk;
        }
        Ok(())
    }
}

fn name_size(name: &str) -> Result<u32, CpioError> {
    u32::try_from(name.len() + 1).map_err(|_| CpioError::InvalidPath(name.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry read back from an archive.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub header: Header,
        pub name: String,
        pub data: Vec<u8>,
    }

    fn hex(field: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(field).unwrap(), 16).unwrap()
    }

    /// A strict reader for tests: checks magic, alignment and padding.
    pub(crate) fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut pos = 0usize;
        loop {
            assert_eq!(pos % 4, 0, "entry not 4-byte aligned");
            let h = &archive[pos..pos + HEADER_LEN];
            assert_eq!(&h[..6], MAGIC.as_bytes());
            let f = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
            let header = Header {
                ino: f(0),
                mode: f(1),
                uid: f(2),
                gid: f(3),
                nlink: f(4),
                mtime: f(5),
                filesize: f(6),
                devmajor: f(7),
                devminor: f(8),
                rdevmajor: f(9),
                rdevminor: f(10),
                namesize: f(11),
            };
            assert_eq!(f(12), 0, "check field");
            let name_start = pos + HEADER_LEN;
            let name_end = name_start + header.namesize as usize;
            assert_eq!(archive[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&archive[name_start..name_end - 1])
                .unwrap()
                .to_owned();
            let data_start = name_end + pad_len(name_end as u64, 4) as usize;
            assert!(archive[name_end..data_start].iter().all(|&b| b == 0));
            let data_end = data_start + header.filesize as usize;
            let data = archive[data_start..data_end].to_vec();
            pos = data_end + pad_len(data_end as u64, 4) as usize;
            assert!(archive[data_end..pos].iter().all(|&b| b == 0));
            let done = name == TRAILER;
            entries.push(Entry { header, name, data });
            if done {
                assert_eq!(archive.len() % BLOCK as usize, 0);
                assert!(archive[pos..].iter().all(|&b| b == 0));
                return entries;
            }
        }
    }

    #[test]
    fn header_fields_are_8_uppercase_hex_digits() {
        let h = Header {
            ino: 1,
            mode: 0o100755,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0x5f5e0ff,
            filesize: 0xabc,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 5,
            rdevminor: 1,
            namesize: 5,
        };
        let s = h.encode();
        assert_eq!(s.len(), HEADER_LEN);
        assert_eq!(
            s,
            concat!(
                "070701", "00000001", // ino
                "000081ED", // mode 0100755
                "00000000", // uid
                "00000000", // gid
                "00000001", // nlink
                "05F5E0FF", // mtime
                "00000ABC", // filesize
                "00000000", // devmajor
                "00000000", // devminor
                "00000005", // rdevmajor
                "00000001", // rdevminor
                "00000005", // namesize
                "00000000", // check
            )
        );
    }

    #[test]
    fn padding() {
        assert_eq!(pad_len(0, 4), 0);
        assert_eq!(pad_len(1, 4), 3);
        assert_eq!(pad_len(2, 4), 2);
        assert_eq!(pad_len(3, 4), 1);
        assert_eq!(pad_len(4, 4), 0);
        assert_eq!(pad_len(113, 4), 3);
        assert_eq!(pad_len(512, 512), 0);
        assert_eq!(pad_len(513, 512), 511);
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_path("/init").unwrap(), "init");
        assert_eq!(normalize_path("dev/console").unwrap(), "dev/console");
        assert_eq!(normalize_path("//dev/null").unwrap(), "dev/null");
        for bad in [
            "",
            "/",
            "a//b",
            "a/",
            "./a",
            "a/../b",
            "..",
            "a\0b",
            "TRAILER!!!",
        ] {
            assert!(
                matches!(normalize_path(bad), Err(CpioError::InvalidPath(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_archive_is_just_a_padded_trailer() {
        let out = CpioWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(out.len(), 512);
        // 110 + "TRAILER!!!\0" (11) = 121, padded to 124.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[110..121], b"TRAILER!!!\0");
        let entries = parse(&out);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].header.namesize, 11);
        assert_eq!(entries[0].header.nlink, 1);
        assert_eq!(entries[0].header.ino, 0);
    }

    #[test]
    fn name_and_data_are_padded_to_4_bytes() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xAAu8; data_len];
                let mut w = CpioWriter::new(Vec::new());
                w.add_file(&name, 0o644, &data).unwrap();
                let header_and_name = HEADER_LEN + name_len + 1;
                let expected = header_and_name
                    + pad_len(header_and_name as u64, 4) as usize
                    + data_len
                    + pad_len(data_len as u64, 4) as usize;
                assert_eq!(w.bytes_written() as usize, expected);
                let out = w.finish().unwrap();
                let entries = parse(&out);
                assert_eq!(entries[0].name, name);
                assert_eq!(entries[0].data, data);
                assert_eq!(entries[0].header.filesize as usize, data_len);
            }
        }
    }

    #[test]
    fn entry_kinds() {
        let mut w = CpioWriter::with_mtime(Vec::new(), 1_700_000_000);
        w.add_dir("/dev", 0o755).unwrap();
        w.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.add_char_device("/dev/null", 0o666, 1, 3).unwrap();
        w.add_symlink("/sh", "/init").unwrap();
        w.add_file("/init", 0o755, b"\x7fELF").unwrap();
        let entries = parse(&w.finish().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "dev/null", "sh", "init", TRAILER]
        );

        let dev = &entries[0].header;
        assert_eq!(dev.mode, 0o040755);
        assert_eq!(dev.nlink, 2);
        assert_eq!(dev.filesize, 0);

        let console = &entries[1].header;
        assert_eq!(console.mode, 0o020600);
        assert_eq!((console.rdevmajor, console.rdevminor), (5, 1));
        assert_eq!(console.filesize, 0);
        let null = &entries[2].header;
        assert_eq!(null.mode, 0o020666);
        assert_eq!((null.rdevmajor, null.rdevminor), (1, 3));

        assert_eq!(entries[3].header.mode, 0o120777);
        assert_eq!(entries[3].data, b"/init");

        assert_eq!(entries[4].header.mode, 0o100755);
        assert_eq!(entries[4].data, b"\x7fELF");

        // Inodes count up; everything is root's with the fixed mtime.
        for (i, e) in entries[..5].iter().enumerate() {
            assert_eq!(e.header.ino, i as u32 + 1);
            assert_eq!((e.header.uid, e.header.gid), (0, 0));
            assert_eq!(e.header.mtime, 1_700_000_000);
            assert_eq!(e.header.namesize as usize, e.name.len() + 1);
        }
    }

    #[test]
    fn parents_must_come_first() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.add_char_device("/dev/console", 0o600, 5, 1).unwrap_err();
        assert!(matches!(err, CpioError::MissingParent { ref parent, .. } if parent == "dev"));
        // A file is not a parent directory.
        w.add_file("/f", 0o644, b"").unwrap();
        assert!(matches!(
            w.add_file("/f/g", 0o644, b""),
            Err(CpioError::MissingParent { .. })
        ));
    }

    #[test]
    fn duplicates_and_bad_modes_are_rejected() {
        let mut w = CpioWriter::new(Vec::new());
        w.add_dir("/tmp", 0o1777).unwrap();
        assert!(matches!(
            w.add_dir("tmp", 0o755),
            Err(CpioError::Duplicate(ref p)) if p == "tmp"
        ));
        assert!(matches!(
            w.add_file("/x", 0o100644, b""),
            Err(CpioError::InvalidMode { .. })
        ));
        assert!(matches!(
            w.add_symlink("/l", ""),
            Err(CpioError::InvalidPath(_))
        ));
    }

    #[test]
    fn output_is_deterministic() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.add_dir("/d", 0o755).unwrap();
            w.add_file("/d/f", 0o644, b"hello").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
