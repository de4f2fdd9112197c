//! virtio-blk requests (virtio 1.2, 5.2.6): parsing a descriptor chain and executing it
//! against a disk, with no KVM, queue or thread involved.
//!
//! A request is a byte stream, not a fixed descriptor layout (virtio 1.x drops framing
//! assumptions): the device-readable bytes start with the 16-byte header (type, reserved,
//! sector) followed by the data of an OUT request; the device-writable bytes hold the data of
//! an IN or GET_ID request and end with the one-byte status. The status byte is the last byte
//! of the chain's last descriptor, which must therefore be device-writable.
//!
//! Everything in a chain is guest-controlled. [`Request::parse`] validates the whole chain
//! (shape, directions, lengths, guest-memory ranges) before anything touches the disk; a
//! chain it rejects is answered with `VIRTIO_BLK_S_IOERR` when its status byte can be located
//! and written, and returned with a used length of 0 otherwise ([`handle_chain`]).

use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, Le32, Le64, Permissions, ReadVolatile,
    VolatileMemoryError, VolatileSlice, WriteVolatile,
};

/// Bytes in a sector, the unit of the header's sector field and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;
/// Length of the device id returned by GET_ID.
pub use husk_vm_config::block::ID_LEN;
const _: () = assert!(ID_LEN == VIRTIO_BLK_ID_BYTES as usize);
/// Most descriptors one request may use: the largest queue. The device offers no indirect
/// descriptors, so a driver never builds a longer chain; one that does is malformed.
pub const MAX_DESCRIPTORS: usize = 256;

const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The request header as it lies in guest memory (little-endian).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: Le32,
    _reserved: Le32,
    sector: Le64,
}

// SAFETY: `RequestHeader` is plain old data of 16 bytes with no padding; any byte pattern is
// a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Why a descriptor chain is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("The descriptor chain is empty or its head is unreadable")]
    EmptyChain,
    #[error(
        "The descriptor chain ends early (a loop, a bad next index, an unreadable or bad \
         indirect descriptor, or more than 4 GiB in total)"
    )]
    BrokenChain,
    #[error("The descriptor chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("The last descriptor is not device-writable, so there is no status byte")]
    StatusNotWritable,
    #[error("The status descriptor is empty")]
    EmptyStatus,
    #[error("The status byte at {0:#x} is outside guest memory")]
    StatusOutOfMemory(u64),
    #[error("A descriptor at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("A device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("The request header has {0} bytes, fewer than {HEADER_LEN}")]
    ShortHeader(u64),
    #[error("Cannot read the request header")]
    ReadHeader,
    #[error("A {0} request carries device-readable data")]
    UnexpectedReadable(&'static str),
    #[error("A {0} request carries device-writable data")]
    UnexpectedWritable(&'static str),
    #[error("The data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    #[error("The GET_ID buffer has {0} bytes, fewer than {ID_LEN}")]
    ShortIdBuffer(u64),
}

/// A chain [`Request::parse`] rejected, and where its status byte is (if anywhere).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct MalformedRequest {
    pub error: RequestError,
    /// Where IOERR can be reported; `None` when the chain has no usable status byte.
    pub status_addr: Option<GuestAddress>,
}

/// The operation a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    /// Any other type; answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::In => "IN",
            Self::Out => "OUT",
            Self::Flush => "FLUSH",
            Self::GetId => "GET_ID",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

/// A guest buffer, known to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request: every segment and the status byte lie inside guest memory, the data
/// has the direction and alignment its type needs. Sectors are checked against the disk at
/// execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    /// The data buffers in order (device-readable for OUT, device-writable for IN and
    /// GET_ID), without the header and the status byte. At most [`MAX_DESCRIPTORS`].
    pub data: Vec<Segment>,
    /// Total length of `data`.
    pub data_len: u64,
    pub status_addr: GuestAddress,
}

/// A descriptor as the parser keeps it (direction and range only).
#[derive(Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

impl Request {
    /// Parses and validates the request carried by `chain`. Reads the header from guest
    /// memory, nothing else; bounded by [`MAX_DESCRIPTORS`] whatever the chain holds.
    pub fn parse<M>(chain: &DescriptorChain<M>) -> Result<Self, MalformedRequest>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mem = chain.memory();
        let mut descs: Vec<Desc> = Vec::with_capacity(8);
        let mut last_has_next = false;
        // `DescriptorChain` stops after as many descriptors as the queue (or indirect table)
        // has, at an index out of range, at an unreadable descriptor and at 4 GiB in total;
        // in each of those cases the last descriptor it yielded still has NEXT set.
        for d in chain.clone() {
            if descs.len() == MAX_DESCRIPTORS {
                return Err(malformed(RequestError::TooManyDescriptors, None));
            }
            last_has_next = d.has_next();
            descs.push(Desc {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        let Some(last) = descs.last().copied() else {
            return Err(malformed(RequestError::EmptyChain, None));
        };
        if last_has_next {
            return Err(malformed(RequestError::BrokenChain, None));
        }

        // The status byte: the last byte of the last descriptor.
        if !last.writable {
            return Err(malformed(RequestError::StatusNotWritable, None));
        }
        if last.len == 0 {
            return Err(malformed(RequestError::EmptyStatus, None));
        }
        let status_addr = match last.addr.checked_add(u64::from(last.len) - 1) {
            Some(a) if mem.check_range(a, 1, Permissions::Write) => a,
            _ => {
                return Err(malformed(
                    RequestError::StatusOutOfMemory(last.addr.raw_value()),
                    None,
                ))
            }
        };
        let fail = |error| malformed(error, Some(status_addr));

        // Every buffer must be guest memory, and readable ones come first (2.7.4.2).
        let mut seen_writable = false;
        let mut readable_len = 0u64;
        let mut writable_len = 0u64;
        for d in &descs {
            if !in_memory(mem, d) {
                return Err(fail(RequestError::OutOfMemory {
                    addr: d.addr.raw_value(),
                    len: d.len,
                }));
            }
            if d.writable {
                seen_writable = true;
                writable_len += u64::from(d.len);
            } else if seen_writable {
                return Err(fail(RequestError::ReadableAfterWritable));
            } else {
                readable_len += u64::from(d.len);
            }
        }
        if readable_len < u64::from(HEADER_LEN) {
            return Err(fail(RequestError::ShortHeader(readable_len)));
        }
        let readable = descs.iter().filter(|d| !d.writable);
        let writable = descs.iter().filter(|d| d.writable);

        let mut header = RequestHeader::default();
        read_stream(mem, readable.clone(), header.as_mut_slice())
            .map_err(|()| fail(RequestError::ReadHeader))?;
        let request_type = RequestType::from_raw(header.request_type.into());
        let sector = u64::from(header.sector);

        // Device-readable data after the header, device-writable data before the status.
        let out_len = readable_len - u64::from(HEADER_LEN);
        let in_len = writable_len - 1;
        let data = match request_type {
            RequestType::In | RequestType::GetId => {
                if out_len != 0 {
                    return Err(fail(RequestError::UnexpectedReadable(request_type.name())));
                }
                if request_type == RequestType::In && !in_len.is_multiple_of(SECTOR_SIZE) {
                    return Err(fail(RequestError::UnalignedLength(in_len)));
                }
                if request_type == RequestType::GetId && in_len < ID_LEN as u64 {
                    return Err(fail(RequestError::ShortIdBuffer(in_len)));
                }
                take_segments(writable, 0, in_len)
            }
            RequestType::Out => {
                if in_len != 0 {
                    return Err(fail(RequestError::UnexpectedWritable(request_type.name())));
                }
                if !out_len.is_multiple_of(SECTOR_SIZE) {
                    return Err(fail(RequestError::UnalignedLength(out_len)));
                }
                take_segments(readable, u64::from(HEADER_LEN), out_len)
            }
            RequestType::Flush => {
                if out_len != 0 {
                    return Err(fail(RequestError::UnexpectedReadable(request_type.name())));
                }
                if in_len != 0 {
                    return Err(fail(RequestError::UnexpectedWritable(request_type.name())));
                }
                Vec::new()
            }
            // Whatever else the chain carries is not looked at.
            RequestType::Unsupported(_) => Vec::new(),
        };
        let data_len = data.iter().map(|s| u64::from(s.len)).sum();
        Ok(Request {
            request_type,
            sector,
            data,
            data_len,
            status_addr,
        })
    }
}

fn malformed(error: RequestError, status_addr: Option<GuestAddress>) -> MalformedRequest {
    MalformedRequest { error, status_addr }
}

fn in_memory<M: GuestMemory + ?Sized>(mem: &M, d: &Desc) -> bool {
    let perm = if d.writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    // `check_range` of 0 bytes only checks the address; an empty buffer needs no memory.
    d.len == 0 || mem.check_range(d.addr, d.len as usize, perm)
}

/// Fills `buf` from the start of the byte stream formed by `descs`.
fn read_stream<'a, M: GuestMemory + ?Sized>(
    mem: &M,
    descs: impl Iterator<Item = &'a Desc>,
    buf: &mut [u8],
) -> Result<(), ()> {
    let mut done = 0;
    for d in descs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(d.len as usize);
        mem.read_slice(&mut buf[done..done + n], d.addr)
            .map_err(|_| ())?;
        done += n;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// The segments covering bytes `skip..skip + len` of the stream formed by `descs`.
fn take_segments<'a>(descs: impl Iterator<Item = &'a Desc>, skip: u64, len: u64) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut pos = 0u64; // stream offset of the current descriptor
    let end = skip + len;
    for d in descs {
        let d_start = pos;
        let d_end = pos + u64::from(d.len);
        pos = d_end;
        let start = d_start.max(skip);
        let stop = d_end.min(end);
        if start >= stop {
            if d_start >= end {
                break;
            }
            continue;
        }
        // Both fit: `stop - start <= d.len` and the offset is inside the descriptor, whose
        // range was checked against guest memory (so the addition cannot overflow).
        segments.push(Segment {
            addr: d.addr.unchecked_add(start - d_start),
            len: (stop - start) as u32,
        });
    }
    segments
}

/// The backing store of a block device, addressed in bytes. Implemented by `File` (pread,
/// pwrite, fdatasync) and by [`MemDisk`].
pub trait DiskBackend {
    /// Reads into `buf` from `offset`; returns the bytes read, 0 at the end of the disk.
    fn read_at<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize>;
    /// Writes `buf` at `offset`; returns the bytes written.
    fn write_at<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

impl DiskBackend for std::fs::File {
    fn read_at<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let guard = buf.ptr_guard_mut();
        // `guard` points to `buf.len()` bytes of guest memory mapped while it lives.
        // SAFETY: the fd is open while `self` lives; pread writes at most `buf.len()` bytes.
        let n = unsafe { libc::pread(self.as_raw_fd(), guard.as_ptr().cast(), buf.len(), offset) };
        if n < 0 {
            // A failed read may have written part of the buffer.
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(io::Error::last_os_error());
        }
        // `n` is non-negative and at most `buf.len()`.
        let n = n as usize;
        buf.bitmap().mark_dirty(0, n);
        Ok(n)
    }

    fn write_at<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let guard = buf.ptr_guard();
        // SAFETY: the fd is open for the lifetime of `self`; `guard` points to `buf.len()`
        // readable bytes of mapped guest memory that stay mapped while the guard lives.
        let n = unsafe { libc::pwrite(self.as_raw_fd(), guard.as_ptr().cast(), buf.len(), offset) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// A disk held in memory (tests and fuzzing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisk {
    pub bytes: Vec<u8>,
    pub flushes: u64,
    /// When set, every read, write and flush fails with EIO.
    pub fail: bool,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors (at most 2 TiB, so the size cannot overflow).
    pub fn new(sectors: u32) -> Self {
        Self {
            bytes: vec![0; sectors as usize * SECTOR_SIZE as usize],
            flushes: 0,
            fail: false,
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.fail {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    }

    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        start..start + len.min(self.bytes.len() - start)
    }
}

impl DiskBackend for MemDisk {
    fn read_at<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize> {
        self.check()?;
        let r = self.range(offset, buf.len());
        buf.copy_from(&self.bytes[r.clone()]);
        Ok(r.len())
    }

    fn write_at<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<usize> {
        self.check()?;
        let r = self.range(offset, buf.len());
        buf.copy_to(&mut self.bytes[r.clone()]);
        Ok(r.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.flushes += 1;
        Ok(())
    }
}

/// A position on a disk, so guest memory can stream to and from it with vm-memory's
/// `read_exact_volatile_from` / `write_all_volatile_to` (which also split buffers that cross
/// memory regions).
struct DiskCursor<'a, D> {
    disk: &'a mut D,
    offset: u64,
}

fn io_err(e: io::Error) -> VolatileMemoryError {
    VolatileMemoryError::IOError(e)
}

impl<D: DiskBackend> ReadVolatile for DiskCursor<'_, D> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        // Fill the whole slice unless the disk ends: the caller treats a short count as an
        // error.
        let mut done = 0;
        while done < buf.len() {
            let mut rest = buf.offset(done)?;
            let n = match self.disk.read_at(&mut rest, self.offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            done += n;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

impl<D: DiskBackend> WriteVolatile for DiskCursor<'_, D> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let n = loop {
            match self.disk.write_at(buf, self.offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(io_err)?,
            }
        };
        self.offset += n as u64;
        Ok(n)
    }
}

/// What the device knows about its disk when executing requests.
#[derive(Clone, Debug)]
pub struct DiskProperties {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    pub read_only: bool,
    /// Returned by GET_ID: the id, zero-padded.
    pub id: [u8; ID_LEN],
}

/// How one chain was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The used length: bytes written to the guest, status included (0 if none).
    pub used_len: u32,
    /// The status written, `None` if the chain had no usable status byte.
    pub status: Option<u8>,
    /// Bytes moved between the disk and the guest by a successful IN or OUT.
    pub data_bytes: u64,
    /// The type of a well-formed request.
    pub request_type: Option<RequestType>,
    /// Why the chain was rejected, if it was.
    pub malformed: Option<RequestError>,
    /// Why a well-formed request failed, if it did.
    pub failed: Option<ExecError>,
}

/// Why a well-formed request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("Request type {0} is not supported")]
    Unsupported(u32),
    #[error("Write to a read-only disk")]
    ReadOnly,
    #[error("{sectors} sectors from sector {sector} reach past the disk's {capacity}")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("Disk I/O failed: {0}")]
    Io(String),
}

impl ExecError {
    /// The status reported to the driver.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

impl Request {
    /// Executes the request against `disk`. Returns the bytes of data written to the guest
    /// (before the status byte).
    pub fn execute<M: GuestMemory + ?Sized, D: DiskBackend>(
        &self,
        mem: &M,
        disk: &mut D,
        props: &DiskProperties,
    ) -> Result<u32, ExecError> {
        match self.request_type {
            RequestType::In | RequestType::Out => {
                let reading = self.request_type == RequestType::In;
                if !reading && props.read_only {
                    return Err(ExecError::ReadOnly);
                }
                let offset = self.disk_offset(props.capacity)?;
                let mut cursor = DiskCursor { disk, offset };
                for s in &self.data {
                    let len = s.len as usize;
                    if reading {
                        mem.read_exact_volatile_from(s.addr, &mut cursor, len)
                    } else {
                        mem.write_all_volatile_to(s.addr, &mut cursor, len)
                    }
                    .map_err(|e| ExecError::Io(e.to_string()))?;
                }
                if reading {
                    // At most the 4 GiB the chain can hold (`DescriptorChain` enforces it).
                    Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
                } else {
                    Ok(0)
                }
            }
            RequestType::Flush => disk
                .flush()
                .map(|()| 0)
                .map_err(|e| ExecError::Io(e.to_string())),
            RequestType::GetId => {
                let mut rest: &[u8] = &props.id;
                for s in &self.data {
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(s.len as usize);
                    mem.write_slice(&rest[..n], s.addr)
                        .map_err(|e| ExecError::Io(e.to_string()))?;
                    rest = &rest[n..];
                }
                Ok(ID_LEN as u32)
            }
            RequestType::Unsupported(t) => Err(ExecError::Unsupported(t)),
        }
    }

    /// The byte offset of the request on the disk, if all its sectors lie within `capacity`.
    fn disk_offset(&self, capacity: u64) -> Result<u64, ExecError> {
        let sectors = self.data_len / SECTOR_SIZE;
        let out_of_range = ExecError::OutOfRange {
            sector: self.sector,
            sectors,
            capacity,
        };
        match self.sector.checked_add(sectors) {
            Some(end) if end <= capacity => {
                self.sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)
            }
            _ => Err(out_of_range),
        }
    }
}

/// Parses, executes and answers one chain, writing its status byte when it has one. The
/// caller adds the chain's head to the used ring with [`Completion::used_len`].
pub fn handle_chain<M, D>(
    chain: &DescriptorChain<M>,
    disk: &mut D,
    props: &DiskProperties,
) -> Completion
where
    M: Deref + Clone,
    M::Target: GuestMemory,
    D: DiskBackend,
{
    let mem = chain.memory();
    let mut done = Completion {
        used_len: 0,
        status: None,
        data_bytes: 0,
        request_type: None,
        malformed: None,
        failed: None,
    };
    let (status_addr, status, written) = match Request::parse(chain) {
        Ok(req) => {
            done.request_type = Some(req.request_type);
            match req.execute(mem, disk, props) {
                Ok(written) => {
                    if matches!(req.request_type, RequestType::In | RequestType::Out) {
                        done.data_bytes = req.data_len;
                    }
                    (Some(req.status_addr), STATUS_OK, written)
                }
                Err(e) => {
                    let status = e.status();
                    done.failed = Some(e);
                    (Some(req.status_addr), status, 0)
                }
            }
        }
        Err(bad) => {
            done.malformed = Some(bad.error);
            (bad.status_addr, STATUS_IOERR, 0)
        }
    };
    // The status address was checked to be guest memory; should writing fail anyway, the
    // chain goes back with nothing reported written.
    if let Some(addr) = status_addr {
        if mem.write_obj(status, addr).is_ok() {
            done.used_len = written.saturating_add(1);
            done.status = Some(status);
            return done;
        }
    }
    done.data_bytes = 0;
    done
}

#[cfg(test)]
pub(crate) mod tests;
