//! The virtio-blk device: its disk, features, config space and queue processing.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, DiskBackend, DiskProperties, RequestType, ID_LEN, SECTOR_SIZE};
use super::{BlockConfig, BlockError, QUEUE_MAX_SIZE};
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

/// Logs a guest-triggered warning at most once per interval, counting what it drops.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns how many warnings were dropped since the last one if this one may be logged.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
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
        if size % SECTOR_SIZE != 0 {
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
        if let Err(e) = queue.add_used(mem, head, done.used_len) {
            if let Some(dropped) = warn.allow() {
                tracing::warn!(
                    "virtio-blk: cannot add to the used ring: {e} ({dropped} more dropped)"
                );
            }
            break;
        }
        batch.used += 1;
        if batch.used >= max_chains {
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
}
