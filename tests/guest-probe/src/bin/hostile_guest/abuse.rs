//! The abuse every device gets: register windows and the MMIO gap written all over,
//! status and queue set-ups broken, malformed and looping chains, lying ring indices,
//! notify storms, reset storms.

use std::time::{Duration, Instant};

use crate::virtq::{
    reg, Device, PhysMap, Queue, ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK,
    F_INDIRECT, F_NEXT, F_WRITE,
};
use crate::{layout, say, Ctx};

/// How long one storm may last, whatever its count. Every register access is a VM exit
/// to husk-vmm; on hardware each costs microseconds, but in the emulated test host
/// (DESIGN.md: ~50-100x slower) a storm of 100,000 of them took minutes and starved the
/// other guest, so each storm stops at its count or its time, whichever comes first, and
/// says how far it got.
pub const STORM_TIME: Duration = Duration::from_secs(3);

/// Runs `step` up to `max` times or for [`STORM_TIME`]; returns how many times it ran.
pub fn storm(max: u32, mut step: impl FnMut()) -> u32 {
    let start = Instant::now();
    let mut n = 0;
    while n < max && start.elapsed() < STORM_TIME {
        step();
        n += 1;
    }
    n
}

/// Reads and writes where no device is: past the last device, and further into the gap.
pub fn mmio_gap(devices: &[(u64, u32)]) {
    let Some(last) = devices.iter().map(|d| d.0).max() else {
        return;
    };
    let mut pages: Vec<u64> = (1..=4).map(|k| last + 0x1000 * k).collect();
    pages.extend([0xc010_0000, 0xd000_0000, 0xdfff_f000]);
    let (mut reads, mut ones) = (0u64, 0u64);
    for page in pages {
        let Ok(m) = PhysMap::new(page, 0x1000, true) else {
            say(&format!("mmio-gap cannot map {page:#x}"));
            continue;
        };
        let mut off = 0u64;
        storm(0x1000 / 64, || {
            m.write::<u32>(off, 0xdead_beef);
            m.write::<u8>(off + 1, 0x5a);
            m.write::<u64>(off + 8, u64::MAX);
            reads += 1;
            ones += u64::from(m.read::<u32>(off) == u32::MAX);
            off += 64;
        });
    }
    say(&format!("mmio-gap reads={reads} all_ones={ones}"));
}

/// Every register written with junk, odd-sized accesses, broken status and queue
/// set-ups, each many times (the VMM logs about such things: its log must stay bounded).
pub fn registers(d: &Device) {
    let id = d.id();
    d.reset();
    // Every offset read; every one but STATUS and QueueNotify written (those below).
    let mut sum = 0u64;
    for off in (0..0x1000).step_by(4) {
        sum = sum.wrapping_add(u64::from(d.r(off)));
    }
    for off in (0..0x100).step_by(4) {
        if off != reg::STATUS && off != reg::QUEUE_NOTIFY {
            d.w(off, 0xa5a5_a5a5);
        }
    }
    for off in (reg::CONFIG..0x1000).step_by(4) {
        d.w(off, 0xdead_beef);
    }
    // Accesses of 1, 2 and 8 bytes, aligned and not.
    for off in 0..0x100u64 {
        let _ = d.regs.read::<u8>(off);
        if off != reg::STATUS && off != reg::QUEUE_NOTIFY {
            d.regs.write::<u8>(off, 0x11);
        }
    }
    for off in (0..0x100u64).step_by(2) {
        let _ = d.regs.read::<u16>(off);
        d.regs.write::<u16>(off, 0x2222);
    }
    for off in (0..0x100u64).step_by(8) {
        let _ = d.regs.read::<u64>(off);
        d.regs.write::<u64>(off, u64::MAX);
    }
    d.reset();
    // Enough rounds to pass every call site's burst many times over (husk-vmm logs at
    // most 10 lines a site per 5 s): 20 writes each, all of them refused.
    let rounds = storm(300, || {
        // A queue size that is no power of two, misaligned rings, a queue that does not
        // exist: each write is refused (and used to be logged each time).
        d.w(reg::QUEUE_SEL, 0);
        d.w(reg::QUEUE_NUM, 3);
        d.w(reg::QUEUE_DESC_LOW, 1);
        d.w(reg::QUEUE_DRIVER_LOW, 1);
        d.w(reg::QUEUE_DEVICE_LOW, 1);
        d.w(reg::QUEUE_SEL, u32::MAX);
        d.w(reg::QUEUE_NUM, 16);
        d.w(reg::QUEUE_READY, 1);
        // Features nobody offered; then DRIVER_OK with no queue ready; then clearing
        // bits without a reset.
        d.w(reg::STATUS, ACKNOWLEDGE);
        d.w(reg::STATUS, ACKNOWLEDGE | DRIVER);
        d.w(reg::DRIVER_FEATURES_SEL, 1);
        d.w(reg::DRIVER_FEATURES, u32::MAX);
        d.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        d.w(reg::DRIVER_FEATURES_SEL, 0);
        d.w(reg::DRIVER_FEATURES, 0);
        d.w(reg::DRIVER_FEATURES_SEL, 1);
        d.w(reg::DRIVER_FEATURES, 1);
        d.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        d.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        d.w(reg::STATUS, ACKNOWLEDGE);
        d.reset();
    });
    // Queues "ready" with rings outside guest RAM, then DRIVER_OK.
    let mut refused = 0;
    let tries = storm(50, || {
        d.negotiate(1 << 32);
        for q in 0..4 {
            d.w(reg::QUEUE_SEL, q);
            let max = d.r(reg::QUEUE_NUM_MAX);
            if max == 0 {
                continue;
            }
            d.w(reg::QUEUE_NUM, max.min(16));
            d.w(reg::QUEUE_DESC_LOW, 0xffff_f000);
            d.w(reg::QUEUE_DESC_HIGH, 0xffff);
            d.w(reg::QUEUE_READY, 1);
        }
        refused += u32::from(d.driver_ok() & DEVICE_NEEDS_RESET != 0);
        d.reset();
    });
    say(&format!(
        "registers device={id} rounds={rounds} bad_rings_refused={refused}/{tries} sum={sum:#x}"
    ));
}

/// Writes STATUS=0 many times: a device that cannot be reset once active refuses each
/// (and used to log each refusal).
pub fn reset_storm(d: &Device) {
    let n = storm(2000, || d.reset());
    say(&format!(
        "reset-storm device={} resets={n} status={:#x}",
        d.id(),
        d.status()
    ));
}

/// How long [`bad_chains`] goes on publishing, whatever `n`.
const CHAINS_TIME: Duration = Duration::from_secs(10);

/// The kinds of broken chain [`bad_chains`] makes, in turn.
const KINDS: u16 = 12;

/// Publishes `n` broken chains on queue `qi` (`q` set up and the device live), `write`
/// for a queue whose buffers the device writes. Returns (published, returned as used).
pub fn bad_chains(
    ctx: &Ctx,
    d: &Device,
    q: &mut Queue,
    qi: u32,
    write: bool,
    n: u32,
) -> (u32, u32) {
    let size = q.size;
    let batch = (size / 4).max(1);
    let payload = ctx.mem.base + layout::PAYLOAD;
    let indirect_table = ctx.mem.base + layout::SCRATCH_QUEUE;
    // An indirect table whose one entry is itself indirect (nested: not allowed).
    ctx.mem
        .write::<u64>(layout::SCRATCH_QUEUE, indirect_table.to_le());
    ctx.mem
        .write::<u32>(layout::SCRATCH_QUEUE + 8, 16u32.to_le());
    ctx.mem
        .write::<u16>(layout::SCRATCH_QUEUE + 12, F_INDIRECT.to_le());
    let dir = if write { F_WRITE } else { 0 };
    let (mut published, mut returned) = (0u32, 0u32);
    let mut made = 0u32;
    let start = Instant::now();
    while made < n && start.elapsed() < CHAINS_TIME {
        let mut in_batch = 0u16;
        // Chains with a head past the table cannot be given back: not waited for.
        let mut returnable = 0u16;
        while in_batch < batch && made < n {
            let i = in_batch * 4;
            let kind = (made % u32::from(KINDS)) as u16;
            let head = match kind {
                0 => {
                    q.desc(i, payload, 44, dir | F_NEXT, i);
                    i
                }
                1 => {
                    q.desc(i, payload, 44, dir | F_NEXT, i + 1);
                    q.desc(i + 1, payload, 44, dir | F_NEXT, i);
                    i
                }
                2 => {
                    q.desc(i, payload, 44, dir | F_NEXT, size + 10);
                    i
                }
                3 => {
                    q.desc(i, 0, u32::MAX, dir, 0);
                    i
                }
                4 => {
                    q.desc(i, 1 << 47, 4096, dir, 0);
                    i
                }
                5 => {
                    q.desc(i, ctx.ram_end.saturating_sub(8), 64, dir, 0);
                    i
                }
                6 => {
                    q.desc(i, payload, 0xffff_fff0, F_INDIRECT, 0);
                    i
                }
                7 => {
                    q.desc(i, indirect_table, 16, F_INDIRECT, 0);
                    i
                }
                8 => {
                    q.desc(i, payload, 0, dir, 0);
                    i
                }
                9 => {
                    // Four one-byte descriptors, then the rest of the ring in a chain
                    // that wraps back to its start.
                    for k in 0..3 {
                        q.desc(i + k, payload, 1, dir | F_NEXT, i + k + 1);
                    }
                    q.desc(i + 3, payload, 1, dir | F_NEXT, 0);
                    i
                }
                10 => {
                    // The wrong direction for this queue.
                    q.desc(i, payload, 4096, dir ^ F_WRITE, 0);
                    i
                }
                _ => size + 3, // a head index past the table
            };
            q.publish(head);
            returnable += u16::from(head < size);
            published += 1;
            made += 1;
            in_batch += 1;
        }
        d.notify(qi);
        returned += q.wait_used(returnable, Duration::from_secs(10)).len() as u32;
    }
    d.ack_interrupts();
    (published, returned)
}

/// The available index set far ahead of what exists, with notifies: the device must not
/// take the ring's garbage for chains (nor log each time). The index is put back after.
pub fn lying_avail_index(d: &Device, q: &mut Queue, qi: u32) -> u16 {
    let before = q.used_idx();
    q.set_avail_idx(q.avail_idx.wrapping_add(5000));
    storm(1000, || d.notify(qi));
    std::thread::sleep(Duration::from_millis(200));
    let used = q.used_idx().wrapping_sub(before);
    q.set_avail_idx(q.avail_idx);
    used
}

/// Notify storms: the queue with nothing new, and queues that do not exist.
/// Each is at most [`STORM_TIME`] (the count is what the guest managed in that time).
pub fn notify_storm(d: &Device, qi: u32) -> u32 {
    let mut n = storm(100_000, || d.notify(qi));
    for bad in [99, u32::MAX] {
        n += storm(20_000, || d.notify(bad));
    }
    n
}
