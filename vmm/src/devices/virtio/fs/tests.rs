//! End-to-end tests against a real virtiofsd: the handshake, the memory table and rings,
//! and one FUSE_INIT round trip through guest memory, the guest's kick, the relay's
//! window, virtiofsd, its call eventfd, our event loop and the interrupt line. They print
//! `SKIPPED` and return when virtiofsd is not installed (scripts/install-virtiofsd.sh
//! installs it); `make test` sets HUSK_REQUIRE_VIRTIOFSD, which makes that a failure.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::test_utils::Virtiofsd;
use super::{Fs, FsConfig};
use crate::devices::virtio::{
    ActivateContext, IrqTrigger, VirtioDevice, INT_VRING, VIRTIO_F_VERSION_1,
};

const FUSE_INIT: u32 = 26;
const FUSE_KERNEL_VERSION: u32 = 7;
const FUSE_MINOR: u32 = 31;
const IN_HEADER_LEN: u32 = 40;
const INIT_IN_LEN: u32 = 16;
const OUT_HEADER_LEN: usize = 16;

const HIPRIO_RING: u64 = 0x0;
const REQUEST_RING: u64 = 0x1_0000;
const REQUEST_BUF: u64 = 0x2_0000;
const REPLY_BUF: u64 = 0x3_0000;
const REPLY_LEN: u32 = 0x1000;
const QUEUE_SIZE: u16 = 256;

type Manager = EventManager<Arc<Mutex<Fs>>>;

fn config(vfsd: &Virtiofsd) -> FsConfig {
    FsConfig {
        tag: "shared".into(),
        socket: vfsd.socket().to_owned(),
        num_request_queues: 1,
        queue_size: QUEUE_SIZE,
    }
}

/// Writes a FUSE_INIT request (fuse_in_header + fuse_init_in) at `at`.
fn write_fuse_init(mem: &GuestMemoryMmap, at: u64, unique: u64) {
    let mut req = Vec::new();
    // struct fuse_in_header
    req.extend((IN_HEADER_LEN + INIT_IN_LEN).to_le_bytes()); // len
    req.extend(FUSE_INIT.to_le_bytes()); // opcode
    req.extend(unique.to_le_bytes()); // unique
    req.extend(0u64.to_le_bytes()); // nodeid
    req.extend(0u32.to_le_bytes()); // uid
    req.extend(0u32.to_le_bytes()); // gid
    req.extend(0u32.to_le_bytes()); // pid
    req.extend(0u32.to_le_bytes()); // total_extlen + padding
                                    // struct fuse_init_in (the 16-byte form, no FUSE_INIT_EXT)
    req.extend(FUSE_KERNEL_VERSION.to_le_bytes()); // major
    req.extend(FUSE_MINOR.to_le_bytes()); // minor
    req.extend(0x2_0000u32.to_le_bytes()); // max_readahead
    req.extend(0u32.to_le_bytes()); // flags
    assert_eq!(req.len() as u32, IN_HEADER_LEN + INIT_IN_LEN);
    mem.write_slice(&req, GuestAddress(at)).unwrap();
}

/// Runs the event loop until the interrupt line is raised, or panics after 10 s.
fn wait_for_interrupt(manager: &mut Manager, irq: &IrqTrigger) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while irq.status() & INT_VRING == 0 {
        assert!(
            Instant::now() < deadline,
            "virtiofsd did not signal the call eventfd within 10 s"
        );
        manager.run_with_timeout(100).unwrap();
    }
}

fn u32_le(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

/// Activates `fs` with fresh rings at `base` in `mem`, puts one FUSE_INIT on the request
/// queue, kicks it as KVM would, runs the event loop until the interrupt, and checks
/// virtiofsd's reply in the used ring. Returns the reply.
fn fuse_init_round_trip(
    fs: &Arc<Mutex<Fs>>,
    manager: &mut Manager,
    mem: &GuestMemoryMmap,
    base: u64,
    features: u64,
    unique: u64,
) -> Vec<u8> {
    let hiprio = MockSplitQueue::create(mem, GuestAddress(base + HIPRIO_RING), QUEUE_SIZE);
    let request = MockSplitQueue::create(mem, GuestAddress(base + REQUEST_RING), QUEUE_SIZE);
    let queues: Vec<Queue> = vec![
        hiprio.create_queue().unwrap(),
        request.create_queue().unwrap(),
    ];
    let irq = IrqTrigger::for_tests();
    fs.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues,
            irq: irq.clone(),
            acked_features: features,
        })
        .expect("activation against virtiofsd");

    // The driver side: one chain, the request readable, the reply buffer writable.
    let (request_buf, reply_buf) = (base + REQUEST_BUF, base + REPLY_BUF);
    write_fuse_init(mem, request_buf, unique);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            request_buf,
            IN_HEADER_LEN + INIT_IN_LEN,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            reply_buf,
            REPLY_LEN,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    request.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(request.avail().idx().load(), 1);

    // The guest's QueueNotify: KVM would signal this eventfd through its ioeventfd.
    fs.lock().unwrap().queue_events()[1].write(1).unwrap();
    wait_for_interrupt(manager, &irq);

    // virtiofsd put the chain in the used ring and wrote a successful FUSE_INIT reply.
    assert_eq!(request.used().idx().load(), 1);
    let used = request.used().ring().ref_at(0).unwrap().load();
    let used_len = used.len() as usize;
    assert_eq!(used.id(), 0);
    assert!(
        used_len >= OUT_HEADER_LEN + 8,
        "short reply: {used_len} bytes"
    );
    let mut reply = vec![0u8; used_len];
    mem.read_slice(&mut reply, GuestAddress(reply_buf)).unwrap();
    let error = u32_le(&reply, 4) as i32;
    assert_eq!(error, 0, "FUSE_INIT failed with errno {}", -error);
    assert_eq!(u32_le(&reply, 0) as usize, used_len);
    assert_eq!(u64::from_le_bytes(reply[8..16].try_into().unwrap()), unique);
    // struct fuse_init_out: major, minor.
    assert_eq!(u32_le(&reply, 16), FUSE_KERNEL_VERSION);
    assert!(u32_le(&reply, 20) >= 1);
    reply
}

#[test]
fn virtiofsd_handshake_and_fuse_init() {
    let Some(mut vfsd) = Virtiofsd::start("virtiofsd_handshake_and_fuse_init") else {
        return;
    };
    println!(
        "running against a real virtiofsd at {}",
        vfsd.socket().display()
    );

    let fs = Fs::new(&config(&vfsd)).unwrap();
    let features = fs.avail_features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    // VHOST_USER_F_PROTOCOL_FEATURES is for us, not for the guest.
    assert_eq!(features & (1 << 30), 0);
    let protocol = fs.backend.protocol_features();
    assert!(
        protocol.bits() & 0x8 != 0,
        "virtiofsd should offer REPLY_ACK"
    );
    println!(
        "guest features {features:#x}, protocol features {:#x}",
        protocol.bits()
    );

    let fs = Arc::new(Mutex::new(fs));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(fs.clone());

    // Plain anonymous memory: virtiofsd works through the relay's window, never maps it.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let reply = fuse_init_round_trip(&fs, &mut manager, &mem, 0, features, 0x4242);
    println!(
        "virtiofsd answered FUSE_INIT: {} bytes, FUSE {}.{}",
        reply.len(),
        u32_le(&reply, 16),
        u32_le(&reply, 20)
    );
    assert!(
        fs.lock()
            .unwrap()
            .metrics()
            .interrupts
            .load(Ordering::Relaxed)
            >= 1
    );

    // A driver reset stops the rings in virtiofsd; the driver can then start over with
    // new rings (a module reload in the guest), and virtiofsd serves those.
    assert!(fs.lock().unwrap().reset());
    assert!(!fs.lock().unwrap().is_active());
    fuse_init_round_trip(&fs, &mut manager, &mem, 0x8_0000, features, 0x4343);
    assert_eq!(
        fs.lock()
            .unwrap()
            .metrics()
            .activations
            .load(Ordering::Relaxed),
        2
    );
    assert!(fs.lock().unwrap().reset());

    // virtiofsd dies: noticed on the event loop, and the device stops talking to it.
    vfsd.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs.lock().unwrap().is_broken() {
        assert!(Instant::now() < deadline, "virtiofsd's death not noticed");
        manager.run_with_timeout(100).unwrap();
    }
}

#[test]
fn virtiofsd_serves_one_frontend_with_two_queues() {
    let Some(vfsd) = Virtiofsd::start("virtiofsd_serves_one_frontend_with_two_queues") else {
        return;
    };
    // virtiofsd serves the high-priority queue and one request queue.
    let mut c = config(&vfsd);
    c.num_request_queues = 2;
    let err = Fs::new(&c).err().expect("virtiofsd has one request queue");
    assert!(
        matches!(err, super::FsError::TooManyQueues { wanted: 3, .. }),
        "{err}"
    );
    println!("{err}");
}
