//! virtio-blk and virtio-net, driven raw: broken chains, requests and frames of every
//! wrong shape and size, lying indices, notify storms, resets in a loop; then each must
//! still read the disk's first sector / carry a frame both ways.
//!
//! Host side (the test): the disk image starts with [`DISK_MARK`]; the tap's other end
//! sends frames all along and looks for a frame carrying [`NET_MARK`].

use std::time::{Duration, Instant};

use crate::abuse;
use crate::virtq::{reg, Device, Queue, DEVICE_NEEDS_RESET, F_NEXT, F_WRITE, QUEUE_PAGES};
use crate::{layout, say, Ctx};

pub const DISK_MARK: &[u8] = b"HUSK-HOSTILE-DISK";
pub const NET_MARK: &[u8] = b"HUSK-HOSTILE-NET";
const VNET_HDR: u32 = 12;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

fn queue_size(d: &Device, q: u32) -> u16 {
    d.w(reg::QUEUE_SEL, q);
    (d.r(reg::QUEUE_NUM_MAX) as u16).clamp(1, 256)
}

/// Writes `bytes` into the reserved RAM at `off`.
fn put(ctx: &Ctx, off: u64, bytes: &[u8]) {
    for (k, b) in bytes.iter().enumerate() {
        ctx.mem.write::<u8>(off + k as u64, *b);
    }
}

fn get(ctx: &Ctx, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| ctx.mem.read::<u8>(off + k))
        .collect()
}

pub fn block(ctx: &Ctx, d: &Device) {
    if !d.negotiate(1 << 32) {
        ctx.fail("virtio-blk refused VERSION_1");
        return;
    }
    let size = queue_size(d, 0);
    let mut q = Queue::new(&ctx.mem, layout::BLK_QUEUE, size);
    d.setup_queue(0, &q);
    if d.driver_ok() & DEVICE_NEEDS_RESET != 0 {
        ctx.fail("virtio-blk: DRIVER_OK refused");
        return;
    }
    let (p, r) = abuse::bad_chains(ctx, d, &mut q, 0, false, 600);
    say(&format!("blk bad-chains published={p} returned={r}"));

    // Requests framed right but wrong: an unknown type, a sector past the end, a data
    // length of 4 GiB, a read-only status byte, no status at all; 100 of each.
    let base = ctx.mem.base;
    let hdr = |kind: u32, sector: u64, slot: u64| {
        let off = layout::BLK_BUFS + slot * 64;
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        (off, h)
    };
    let mut statuses = [0u32; 256];
    let batch = size / 4;
    for round in 0..(500 / u32::from(batch)) + 1 {
        for slot in 0..batch {
            let kind = (u32::from(slot) + round) % 5;
            let (hoff, h) = match kind {
                0 => hdr(77, 0, u64::from(slot)),
                1 => hdr(T_IN, u64::MAX - 7, u64::from(slot)),
                2 => hdr(T_IN, 0, u64::from(slot)),
                3 => hdr(T_OUT, 1, u64::from(slot)),
                _ => hdr(T_IN, 0, u64::from(slot)),
            };
            put(ctx, hoff, &h);
            let status = layout::BLK_BUFS + 0x8000 + u64::from(slot);
            ctx.mem.write::<u8>(status, 0xee);
            let data = base + layout::BLK_BUFS + 0x1_0000;
            let i = slot * 4;
            q.desc(i, base + hoff, 16, F_NEXT, i + 1);
            match kind {
                2 => q.desc(i + 1, data, 0xffff_f000, F_WRITE | F_NEXT, i + 2),
                3 => q.desc(i + 1, data, 512, F_NEXT, i + 2),
                _ => q.desc(i + 1, data, 512, F_WRITE | F_NEXT, i + 2),
            }
            match kind {
                // The status byte read-only, or missing.
                3 => q.desc(i + 2, base + status, 1, 0, 0),
                4 => q.desc(i + 1, data, 512, F_WRITE, 0),
                _ => q.desc(i + 2, base + status, 1, F_WRITE, 0),
            }
            q.publish(i);
        }
        d.notify(0);
        q.wait_used(batch, Duration::from_secs(10));
        for slot in 0..batch {
            let s = ctx
                .mem
                .read::<u8>(layout::BLK_BUFS + 0x8000 + u64::from(slot));
            statuses[usize::from(s)] += 1;
        }
    }
    say(&format!(
        "blk bad-requests ok={} ioerr={} unsupp={} untouched={}",
        statuses[0], statuses[1], statuses[2], statuses[0xee]
    ));
    let lied = abuse::lying_avail_index(d, &mut q, 0);
    let storm = abuse::notify_storm(d, 0);
    say(&format!("blk lying-avail used={lied} notify-storm={storm}"));

    // The first sector, as the test wrote it.
    let (hoff, h) = hdr(T_IN, 0, 0);
    put(ctx, hoff, &h);
    let data = layout::BLK_BUFS + 0x2_0000;
    let status = layout::BLK_BUFS + 0x8000;
    ctx.mem.write::<u8>(status, 0xee);
    q.desc(0, base + hoff, 16, F_NEXT, 1);
    q.desc(1, base + data, 512, F_WRITE | F_NEXT, 2);
    q.desc(2, base + status, 1, F_WRITE, 0);
    q.publish(0);
    d.notify(0);
    q.wait_used(1, Duration::from_secs(30));
    let sector = get(ctx, data, DISK_MARK.len());
    let s = ctx.mem.read::<u8>(status);
    if s == 0 && sector == DISK_MARK {
        say("blk read ok");
    } else {
        ctx.fail(&format!(
            "virtio-blk: sector 0 read status {s}, {:?}",
            String::from_utf8_lossy(&sector)
        ));
    }
    resets(ctx, d, &[0], layout::BLK_QUEUE, "blk");
}

/// Resets and sets the device up again, many times (each activation is work, and used
/// to be a log line, for the VMM).
fn resets(ctx: &Ctx, d: &Device, queues: &[u32], at: u64, name: &str) {
    let mut ok = 0;
    let cycles = abuse::storm(100, || {
        if !d.negotiate(1 << 32) {
            return;
        }
        for &qi in queues {
            let q = Queue::new(
                &ctx.mem,
                at + u64::from(qi) * QUEUE_PAGES * 4096,
                queue_size(d, qi),
            );
            d.setup_queue(qi, &q);
        }
        ok += u32::from(d.driver_ok() & DEVICE_NEEDS_RESET == 0);
    });
    say(&format!("{name} reset-cycles activated={ok}/{cycles}"));
}

/// A 60-byte broadcast Ethernet frame carrying [`NET_MARK`], behind a zero vnet header.
fn marked_frame() -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR as usize];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(NET_MARK);
    f.resize(VNET_HDR as usize + 60, 0);
    f
}

pub fn net(ctx: &Ctx, d: &Device) {
    if !d.negotiate(1 << 32) {
        ctx.fail("virtio-net refused VERSION_1");
        return;
    }
    let base = ctx.mem.base;
    let mut rx = Queue::new(&ctx.mem, layout::NET_QUEUES, queue_size(d, 0));
    let mut tx = Queue::new(
        &ctx.mem,
        layout::NET_QUEUES + QUEUE_PAGES * 4096,
        queue_size(d, 1),
    );
    d.setup_queue(0, &rx);
    d.setup_queue(1, &tx);
    if d.driver_ok() & DEVICE_NEEDS_RESET != 0 {
        ctx.fail("virtio-net: DRIVER_OK refused");
        return;
    }
    let (p, r) = abuse::bad_chains(ctx, d, &mut tx, 1, false, 600);
    say(&format!("net tx-bad-chains published={p} returned={r}"));

    // Frames too short and too long (over 64 KiB), 100 of each, then marked ones.
    let big = base + layout::NET_BUFS + 0x1_0000;
    let mut round = 0u32;
    abuse::storm(200, || {
        round += 1;
        if round.is_multiple_of(2) {
            tx.desc(0, big, VNET_HDR + 10, 0, 0);
        } else {
            tx.desc(0, big, 0x1_0000, F_NEXT, 1);
            tx.desc(1, big, 0x2000, 0, 0);
        }
        tx.publish(0);
        d.notify(1);
        tx.wait_used(1, Duration::from_secs(5));
    });
    let frame = marked_frame();
    put(ctx, layout::NET_BUFS, &frame);
    for _ in 0..5 {
        tx.desc(0, base + layout::NET_BUFS, frame.len() as u32, 0, 0);
        tx.publish(0);
        d.notify(1);
        tx.wait_used(1, Duration::from_secs(5));
    }
    say("net tx-frames sent");

    // rx buffers the device may not write, or too small for any frame, while the host
    // keeps sending: returned unused, no frame taken into them.
    let size = rx.size;
    for i in 0..size {
        let addr = base + layout::NET_BUFS + 0x4_0000 + u64::from(i) * 2048;
        if i % 2 == 0 {
            rx.desc(i, addr, 2048, 0, 0);
        } else {
            rx.desc(i, addr, 20, F_WRITE, 0);
        }
        rx.publish(i);
    }
    d.notify(0);
    let bad = rx.wait_used(size, Duration::from_secs(20));
    let bad_with_data = bad.iter().filter(|(_, len)| *len > 0).count();
    say(&format!(
        "net rx-bad-buffers returned={} with_data={bad_with_data}",
        bad.len()
    ));
    if bad_with_data > 0 {
        ctx.fail("virtio-net: a frame went into a read-only or too small rx buffer");
    }
    let lied = abuse::lying_avail_index(d, &mut tx, 1);
    let storm = abuse::notify_storm(d, 1) + abuse::notify_storm(d, 0);
    say(&format!("net lying-avail used={lied} notify-storm={storm}"));

    // Good buffers: a frame from the host arrives.
    for i in 0..8u16 {
        let addr = base + layout::NET_BUFS + 0x4_0000 + u64::from(i) * 2048;
        rx.desc(i, addr, 2048, F_WRITE, 0);
        rx.publish(i);
    }
    d.notify(0);
    let start = Instant::now();
    let mut frames = 0;
    while frames == 0 && start.elapsed() < Duration::from_secs(60) {
        frames = rx
            .wait_used(1, Duration::from_secs(1))
            .iter()
            .filter(|(_, len)| *len > VNET_HDR)
            .count();
        d.notify(0);
    }
    if frames > 0 {
        say(&format!("net rx ok frames={frames}"));
    } else {
        ctx.fail("virtio-net: no frame from the host after the abuse");
    }
    resets(ctx, d, &[0, 1], layout::NET_QUEUES, "net");
}
