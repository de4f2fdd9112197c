//! The virtio-blk device: its disk, features, config space and queue processing.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, DiskBackend, DiskProperties, RequestType, ID_LEN, SECTOR_SIZE};
use super::{BlockConfig, BlockError, QUEUE_MAX_SIZE};
use crate::devices::virtio::ratelimit::WarnLimiter;
use crate::devices::virtio::state::DeviceIdentity;
use crate::devices::virtio::{
    check_queues, read_config_bytes, ActivateContext, ActivateError, IrqTrigger, VirtioDevice,
    TYPE_BLOCK, VIRTIO_F_VERSION_1,
};

/// Data segments per request we tell the driver to stay within (config `seg_max`): the
/// largest queue less the header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;

/// Per-device counters.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Requests answered with IOERR (including malformed ones).
    pub io_errors: AtomicU64,
    pub unsupported: AtomicU64,
    /// Chains that were not valid requests.
    pub malformed: AtomicU64,
    /// Used-ring interrupts raised.
    pub interrupts: AtomicU64,
}

/// What the device holds once the driver set DRIVER_OK.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// A virtio-blk device on a raw image.
pub struct Block {
    disk: File,
    props: DiskProperties,
    avail_features: u64,
    config_space: [u8; 16],
    queue_max_sizes: [u16; 1],
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    metrics: Arc<BlockMetrics>,
    warn: WarnLimiter,
}

impl Block {
    /// Opens the image (read-only if configured). The image must be a regular file or a
    /// block device, non-empty, its size a multiple of 512 bytes: a size that is not is
    /// refused rather than rounded down, since it means the file is not the raw image the
    /// user meant (and a partial last sector could not be written).
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        cfg.validate()?;
        let path = &cfg.path;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlockError::NotFound(path.clone()))
            }
            Err(source) => {
                return Err(BlockError::Open {
                    path: path.clone(),
                    source,
                })
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(BlockError::IsDirectory(path.clone()));
        }
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BlockError::NotAFile(path.clone()));
        }
        let mut disk = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = disk
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        if size == 0 {
            return Err(BlockError::Empty(path.clone()));
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::UnalignedSize {
                path: path.clone(),
                size,
            });
        }
        let id = match &cfg.id {
            Some(id) => id.clone(),
            None => default_id(meta.dev(), meta.ino()),
        };
        Self::with_disk(disk, size / SECTOR_SIZE, cfg.read_only, id.as_bytes())
    }

    fn with_disk(
        disk: File,
        capacity: u64,
        read_only: bool,
        id: &[u8],
    ) -> Result<Self, BlockError> {
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id[..n]);

        let mut avail_features =
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        // struct virtio_blk_config: capacity, size_max (not offered), seg_max.
        let mut config_space = [0u8; 16];
        config_space[..8].copy_from_slice(&capacity.to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());

        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Self {
            disk,
            props: DiskProperties {
                capacity,
                read_only,
                id: id_bytes,
            },
            avail_features,
            config_space,
            queue_max_sizes: [QUEUE_MAX_SIZE],
            queue_evts: [queue_evt],
            active: None,
            metrics: Arc::new(BlockMetrics::default()),
            warn: WarnLimiter::new(Duration::from_secs(5)),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.props.capacity
    }

    pub fn read_only(&self) -> bool {
        self.props.read_only
    }

    /// The id GET_ID returns (zero-padded to 20 bytes).
    pub fn id(&self) -> &[u8; ID_LEN] {
        &self.props.id
    }

    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Processes the request queue once activated (a no-op before), raising one interrupt
    /// if anything was used. Called on the event-loop thread.
    pub(crate) fn process_queue_event(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let max_chains = usize::from(active.queue.size());
        let batch = process_queue(
            &mut active.queue,
            &active.mem,
            &mut self.disk,
            &self.props,
            &self.metrics,
            &mut self.warn,
            max_chains,
        );
        if batch.used > 0 {
            active.irq.trigger(crate::devices::virtio::INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        if batch.more {
            // Come back after the loop's other events rather than starve them.
            if let Err(e) = self.queue_evts[0].write(1) {
                tracing::warn!("virtio-blk: cannot requeue the queue event: {e}");
            }
        }
    }
}

/// `<dev>-<inode>` in hex, cut to 20 bytes: stable for one image on one host.
fn default_id(dev: u64, ino: u64) -> String {
    let mut s = format!("{dev:x}-{ino:x}");
    s.truncate(ID_LEN);
    s
}

/// The result of one pass over the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Chains added to the used ring.
    pub used: usize,
    /// The pass stopped at its bound with chains still available.
    pub more: bool,
}

/// Answers the available chains, at most `max_chains` per pass (the device passes the queue
/// size) so a driver that keeps adding requests cannot hold the event loop. Signalling the
/// guest is left to the caller.
pub(crate) fn process_queue<M: GuestMemory, D: DiskBackend>(
    queue: &mut Queue,
    mem: &M,
    disk: &mut D,
    props: &DiskProperties,
    metrics: &BlockMetrics,
    warn: &mut WarnLimiter,
    max_chains: usize,
) -> Batch {
    let mut batch = Batch::default();
    // Chains taken from the available ring this pass, returned or not: the bound.
    let mut taken = 0;
    loop {
        let chain = match queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                if let Some(dropped) = warn.allow() {
                    tracing::warn!(
                        "virtio-blk: cannot read the available ring: {e} ({dropped} more dropped)"
                    );
                }
                None
            }
        };
        let Some(chain) = chain else {
            break;
        };
        let head = chain.head_index();
        let done = request::handle_chain(&chain, disk, props);
        count(metrics, &done, warn);
        taken += 1;
        // A chain that cannot be returned (its head lies past the descriptor table) is
        // consumed all the same, and the pass goes on: stopping here left the chains
        // behind it for the next notify, and a driver that kept adding filled the ring
        // past its size, which wedges the queue for good (found by the hostile guest).
        match queue.add_used(mem, head, done.used_len) {
            Ok(()) => batch.used += 1,
            Err(e) => {
                if let Some(dropped) = warn.allow() {
                    tracing::warn!(
                        "virtio-blk: cannot add to the used ring: {e} ({dropped} more dropped)"
                    );
                }
            }
        }
        if taken >= max_chains {
            batch.more = queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
            break;
        }
    }
    batch
}

fn count(metrics: &BlockMetrics, done: &request::Completion, warn: &mut WarnLimiter) {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};

    if let Some(e) = &done.malformed {
        metrics.malformed.fetch_add(1, Ordering::Relaxed);
        if let Some(dropped) = warn.allow() {
            tracing::warn!("virtio-blk: malformed request: {e} ({dropped} more dropped)");
        }
    }
    if let Some(e) = &done.failed {
        if let Some(dropped) = warn.allow() {
            tracing::warn!("virtio-blk: request failed: {e} ({dropped} more dropped)");
        }
    }
    match done.status.map(u32::from) {
        Some(VIRTIO_BLK_S_IOERR) => {
            metrics.io_errors.fetch_add(1, Ordering::Relaxed);
        }
        Some(VIRTIO_BLK_S_UNSUPP) => {
            metrics.unsupported.fetch_add(1, Ordering::Relaxed);
        }
        Some(_) => match done.request_type {
            Some(RequestType::In) => {
                metrics
                    .read_bytes
                    .fetch_add(done.data_bytes, Ordering::Relaxed);
            }
            Some(RequestType::Out) => {
                metrics
                    .write_bytes
                    .fetch_add(done.data_bytes, Ordering::Relaxed);
            }
            Some(RequestType::Flush) => {
                metrics.flushes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        },
        None => {}
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_queues(&ctx, 1)?;
        let ActivateContext {
            mem,
            mut queues,
            irq,
            acked_features: _,
        } = ctx;
        let queue = queues.remove(0);
        if !queue.is_valid(&mem) {
            return Err(ActivateError::BadQueue(0));
        }
        self.active = Some(Active { mem, queue, irq });
        // Handle whatever the driver queued before DRIVER_OK.
        self.queue_evts[0].write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        // The disk stays open; the next activation brings new queues.
        self.active = None;
        true
    }

    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::Block {
            capacity: self.props.capacity,
            read_only: self.props.read_only,
        }
    }

    /// Requests run to completion on the event loop, so with the loop parked none is
    /// half done: the queue's indices are the whole state.
    fn snapshot_queues(&self) -> Result<Vec<QueueState>, String> {
        let active = self.active.as_ref().ok_or("the device is not active")?;
        Ok(vec![active.queue.state()])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::request::tests::{desc, desc_next, header, R, W};
    use crate::devices::virtio::block::BlockConfigError;
    use crate::devices::virtio::test_queue::used;
    use crate::devices::virtio::INT_VRING;

    const SECTORS: u64 = 8;

    fn image(len: u64) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    fn config(f: &TempFile) -> BlockConfig {
        BlockConfig {
            path: f.as_path().to_path_buf(),
            read_only: false,
            id: None,
        }
    }

    #[test]
    fn new_checks_the_image() {
        let f = image(SECTORS * 512);
        let b = Block::new(&config(&f)).unwrap();
        assert_eq!(b.capacity(), SECTORS);
        assert!(!b.read_only());
        // Default id: device and inode numbers.
        let meta = std::fs::metadata(f.as_path()).unwrap();
        let want = default_id(meta.dev(), meta.ino());
        assert!(!want.is_empty() && want.len() <= ID_LEN);
        assert_eq!(&b.id()[..want.len()], want.as_bytes());

        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let missing = dir.as_path().join("nope.img");
        let err = |path: &std::path::Path| {
            Block::new(&BlockConfig {
                path: path.to_path_buf(),
                read_only: false,
                id: None,
            })
            .err()
            .unwrap()
        };
        assert!(matches!(err(&missing), BlockError::NotFound(p) if p == missing));
        assert!(matches!(err(dir.as_path()), BlockError::IsDirectory(_)));
        assert!(matches!(
            err(std::path::Path::new("/dev/null")),
            BlockError::NotAFile(_)
        ));
        let f = image(SECTORS * 512 + 100);
        assert!(matches!(
            err(f.as_path()),
            BlockError::UnalignedSize { size, .. } if size == SECTORS * 512 + 100
        ));
        let f = image(0);
        assert!(matches!(err(f.as_path()), BlockError::Empty(_)));
        let f = image(512);
        let mut c = config(&f);
        c.id = Some("x".repeat(21));
        assert!(matches!(
            Block::new(&c),
            Err(BlockError::Config(BlockConfigError::IdTooLong(_)))
        ));
        assert!(err(&missing).to_string().starts_with("Disk image "));
    }

    #[test]
    fn read_only_open_and_features() {
        let f = image(SECTORS * 512);
        let mut c = config(&f);
        c.id = Some("rootfs".into());
        let rw = Block::new(&c).unwrap();
        let f_ro = 1u64 << VIRTIO_BLK_F_RO;
        let base = VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        assert_eq!(rw.avail_features(), base);
        assert_eq!(&rw.id()[..7], b"rootfs\0");
        c.read_only = true;
        let ro = Block::new(&c).unwrap();
        assert_eq!(ro.avail_features(), base | f_ro);
        assert!(ro.read_only());
        // The file really is opened read-only.
        let mut buf = [0u8; 1];
        assert!(std::os::unix::fs::FileExt::write_at(&ro.disk, &buf, 0).is_err());
        assert!(std::os::unix::fs::FileExt::read_at(&ro.disk, &mut buf, 0).is_ok());

        assert_eq!(rw.device_type(), TYPE_BLOCK);
        assert_eq!(rw.queue_max_sizes(), &[256]);
        assert_eq!(rw.queue_events().len(), 1);
        let mut cfg = [0xffu8; 20];
        rw.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg[..8].try_into().unwrap()), SECTORS);
        assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(&cfg[16..], &[0; 4]);
        let mut cap_hi = [0u8; 4];
        rw.read_config(4, &mut cap_hi);
        assert_eq!(cap_hi, [0; 4]);
    }

    const HDR1: u64 = 0x1_0000;
    const HDR2: u64 = 0x1_1000;
    const DATA1: u64 = 0x2_0000;
    const DATA2: u64 = 0x2_1000;
    const STATUS1: u64 = 0x3_0000;
    const STATUS2: u64 = 0x3_1000;

    /// A write of 0x5a to sector 1 (descriptors 0..3), then a read of sectors 0..2
    /// (descriptors 3..6).
    fn write_then_read(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
        m.write_slice(&header(VIRTIO_BLK_T_OUT, 1), GuestAddress(HDR1))
            .unwrap();
        m.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(HDR2))
            .unwrap();
        m.write_slice(&[0x5a; 512], GuestAddress(DATA1)).unwrap();
        let descs: [RawDescriptor; 6] = [
            desc_next(HDR1, 16, R, 1),
            desc_next(DATA1, 512, R, 2),
            desc(STATUS1, 1, W),
            desc_next(HDR2, 16, R, 4),
            desc_next(DATA2, 1024, W, 5),
            desc(STATUS2, 1, W),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
    }

    fn activate(
        b: &mut Block,
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
    ) -> Arc<IrqTrigger> {
        let irq = IrqTrigger::for_tests();
        b.activate(ActivateContext {
            mem: m.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            irq: irq.clone(),
            acked_features: b.avail_features(),
        })
        .unwrap();
        irq
    }

    #[test]
    fn queue_processing_through_the_event_loop() {
        let f = image(SECTORS * 512);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        write_then_read(&m, &vq);

        let block = Arc::new(Mutex::new(Block::new(&config(&f)).unwrap()));
        let metrics = block.lock().unwrap().metrics();
        let mut ops = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        ops.add_subscriber(block.clone());

        // Before activation a notification is drained and ignored.
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(ops.run_with_timeout(100).unwrap(), 1);
        assert!(used(&vq).is_empty());
        assert_eq!(block.lock().unwrap().queue_events()[0].read().ok(), None);

        // Activation kicks the queue itself: the requests queued before are handled.
        let irq = activate(&mut block.lock().unwrap(), &m, &vq);
        assert!(block.lock().unwrap().is_activated());
        assert_eq!(ops.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used(&vq), vec![(0, 1), (3, 1024 + 1)]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS1)).unwrap(), 0);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS2)).unwrap(), 0);
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA2)).unwrap();
        assert_eq!(got, [vec![0; 512], vec![0x5a; 512]].concat());
        let disk = std::fs::read(f.as_path()).unwrap();
        assert_eq!(&disk[512..1024], &[0x5a; 512][..]);
        // One interrupt for the batch.
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        assert_eq!(metrics.write_bytes.load(Ordering::Relaxed), 512);
        assert_eq!(metrics.read_bytes.load(Ordering::Relaxed), 1024);
        assert_eq!(metrics.interrupts.load(Ordering::Relaxed), 1);

        // A notification with nothing new raises no interrupt.
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(ops.run_with_timeout(100).unwrap(), 1);
        assert!(irq.irqfd().read().is_err());
        assert_eq!(used(&vq).len(), 2);

        // After a reset the device is inert again.
        assert!(block.lock().unwrap().reset());
        assert!(!block.lock().unwrap().is_activated());
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(ops.run_with_timeout(100).unwrap(), 1);
        assert!(irq.irqfd().read().is_err());
    }

    #[test]
    fn malformed_and_unsupported_are_counted() {
        let f = image(SECTORS * 512);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        m.write_slice(&header(11, 0), GuestAddress(HDR1)).unwrap();
        let descs = [
            // DISCARD: unsupported.
            desc_next(HDR1, 16, R, 1),
            desc(STATUS1, 1, W),
            // No status descriptor.
            desc(HDR1, 16, R),
            // A loop.
            desc_next(HDR1, 16, R, 3),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut b = Block::new(&config(&f)).unwrap();
        let irq = activate(&mut b, &m, &vq);
        b.process_queue_event();
        assert_eq!(used(&vq), vec![(0, 1), (2, 0), (3, 0)]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS1)).unwrap(), 2);
        let metrics = b.metrics();
        assert_eq!(metrics.unsupported.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.malformed.load(Ordering::Relaxed), 2);
        assert_eq!(irq.irqfd().read().unwrap(), 1);
    }

    #[test]
    fn a_head_past_the_table_does_not_stop_the_pass() {
        let f = image(SECTORS * 512);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        m.write_slice(&header(11, 0), GuestAddress(HDR1)).unwrap();
        vq.add_desc_chains(&[desc_next(HDR1, 16, R, 1), desc(STATUS1, 1, W)], 0)
            .unwrap();
        // The available ring: a head no descriptor table has, then the good chain.
        let ring = vq.avail().ring();
        ring.ref_at(0).unwrap().store(u16::to_le(99));
        ring.ref_at(1).unwrap().store(u16::to_le(0));
        vq.avail().idx().store(u16::to_le(2));
        let mut b = Block::new(&config(&f)).unwrap();
        let irq = activate(&mut b, &m, &vq);
        b.process_queue_event();
        assert_eq!(used(&vq), vec![(0, 1)]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS1)).unwrap(), 2);
        assert_eq!(irq.irqfd().read().unwrap(), 1);
    }

    #[test]
    fn bounded_batches() {
        let f = image(SECTORS * 512);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        write_then_read(&m, &vq);
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut disk = f.into_file();
        let props = DiskProperties {
            capacity: SECTORS,
            read_only: false,
            id: [0; ID_LEN],
        };
        let metrics = BlockMetrics::default();
        let mut warn = WarnLimiter::new(Duration::from_secs(5));
        let mut pass =
            |q: &mut Queue| process_queue(q, &m, &mut disk, &props, &metrics, &mut warn, 1);
        assert_eq!(
            pass(&mut queue),
            Batch {
                used: 1,
                more: true
            }
        );
        assert_eq!(used(&vq), vec![(0, 1)]);
        assert_eq!(
            pass(&mut queue),
            Batch {
                used: 1,
                more: false
            }
        );
        assert_eq!(
            pass(&mut queue),
            Batch {
                used: 0,
                more: false
            }
        );
        assert_eq!(used(&vq), vec![(0, 1), (3, 1025)]);
    }

    #[test]
    fn bad_avail_ring_stops_the_pass() {
        let f = image(SECTORS * 512);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        // An available index 100 ahead of a 16-entry queue.
        vq.avail().idx().store(100);
        let mut b = Block::new(&config(&f)).unwrap();
        let irq = activate(&mut b, &m, &vq);
        b.process_queue_event();
        assert!(used(&vq).is_empty());
        assert!(irq.irqfd().read().is_err());
    }
}
