//! The vsock device, driven raw: malformed chains and packets, RST and REQUEST floods, a
//! lying available index, notify storms, host connections never answered, connections
//! that send past their credit, and at the end a plain echo that must still work.
//!
//! Host side (the test): `<uds>_7001` accepts and never reads, `<uds>_7003` answers
//! "ping" with "pong"; when this prints `vsock half-open ready` the test opens host
//! connections to guest port 7002 and closes them once this prints the REQUESTs it saw.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::abuse;
use crate::virtq::{reg, Device, Queue, DEVICE_NEEDS_RESET, F_NEXT, F_WRITE, QUEUE_PAGES};
use crate::{layout, say, Ctx};

const HDR: usize = 44;
const HOST_CID: u64 = 2;
const STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
/// Host-side ports of host-initiated connections start here (husk-vmm, as Firecracker).
const HOST_LOCAL_PORTS: u32 = 1 << 30;
const CREDIT: u32 = 256 << 10;
/// The connections that send past their credit, and what each tries to send.
pub const OVERRUN_CONNS: u32 = 160;
const OVERRUN_PACKETS: u32 = 8;
const CHUNK: u32 = 64 << 10;
const RX_BUF: u32 = 4096;
const HALF_OPEN: usize = 8;

#[derive(Clone, Copy, Debug, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

struct Vsock<'a> {
    d: &'a Device,
    rx: Queue<'a>,
    tx: Queue<'a>,
    cid: u64,
    mem_base: u64,
    /// Bytes sent per guest source port (the flow-control count the device keeps).
    sent: std::collections::HashMap<u32, u32>,
}

impl<'a> Vsock<'a> {
    fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: STREAM,
            op,
            buf_alloc: CREDIT,
            ..Default::default()
        }
    }

    /// Sends `pkts` (header, payload address, payload length) in batches that fit the
    /// ring, waiting for each batch to be used.
    fn send(&mut self, pkts: &[(Hdr, u64, u32)]) -> u32 {
        let per_batch = usize::from(self.tx.size / 2);
        let mut used = 0;
        for batch in pkts.chunks(per_batch) {
            for (slot, (h, addr, len)) in batch.iter().enumerate() {
                let slot = slot as u16;
                let hdr_off = layout::VSOCK_TX_BUFS + u64::from(slot) * 64;
                for (k, b) in h.bytes().iter().enumerate() {
                    self.tx.mem.write::<u8>(hdr_off + k as u64, *b);
                }
                let (i, j) = (slot * 2, slot * 2 + 1);
                if *len == 0 {
                    self.tx.desc(i, self.mem_base + hdr_off, HDR as u32, 0, 0);
                } else {
                    self.tx
                        .desc(i, self.mem_base + hdr_off, HDR as u32, F_NEXT, j);
                    self.tx.desc(j, *addr, *len, 0, 0);
                }
                self.tx.publish(i);
                if h.op == OP_RW {
                    *self.sent.entry(h.src_port).or_default() += len;
                }
            }
            self.d.notify(1);
            used += self
                .tx
                .wait_used(batch.len() as u16, Duration::from_secs(20))
                .len() as u32;
        }
        used
    }

    /// Makes every rx descriptor available (one 4 KiB writable buffer each).
    fn post_all_rx(&mut self) {
        for i in 0..self.rx.size {
            let addr = self.mem_base + layout::VSOCK_RX_BUFS + u64::from(i) * u64::from(RX_BUF);
            self.rx.desc(i, addr, RX_BUF, F_WRITE, 0);
            self.rx.publish(i);
        }
        self.d.notify(0);
    }

    /// Collects packets from the rx ring until `done` says so or `timeout`, giving each
    /// buffer back as soon as it is read; a data packet's payload is kept too.
    fn recv_data(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[(Hdr, Vec<u8>)]) -> bool,
    ) -> Vec<(Hdr, Vec<u8>)> {
        let start = Instant::now();
        let mut got = Vec::new();
        while !done(&got) && start.elapsed() < timeout {
            let used = self.rx.wait_used(1, Duration::from_millis(200));
            for (id, len) in used {
                let id = id as u16;
                if id >= self.rx.size || (len as usize) < HDR {
                    continue;
                }
                let off = layout::VSOCK_RX_BUFS + u64::from(id) * u64::from(RX_BUF);
                let read = |from: u64, n: u64| -> Vec<u8> {
                    (0..n)
                        .map(|k| self.rx.mem.read::<u8>(off + from + k))
                        .collect()
                };
                let h = Hdr::parse(&read(0, HDR as u64));
                let n = h.len.min(len - HDR as u32).min(RX_BUF - HDR as u32);
                let payload = if h.op == OP_RW {
                    read(HDR as u64, u64::from(n))
                } else {
                    Vec::new()
                };
                got.push((h, payload));
                self.rx.publish(id);
            }
            self.d.notify(0);
        }
        got
    }

    /// Packets until none came for `quiet` (a flood's answers, however many got through).
    fn recv_until_quiet(&mut self, quiet: Duration) -> Vec<Hdr> {
        let mut hdrs = Vec::new();
        let mut last = Instant::now();
        self.recv_data(Duration::from_secs(300), |got| {
            if got.len() > hdrs.len() {
                hdrs.extend(got[hdrs.len()..].iter().map(|(h, _)| *h));
                last = Instant::now();
            }
            last.elapsed() > quiet
        });
        hdrs
    }

    /// [`Vsock::recv_data`] for headers only.
    fn recv(&mut self, timeout: Duration, mut done: impl FnMut(&[Hdr]) -> bool) -> Vec<Hdr> {
        let mut hdrs = Vec::new();
        self.recv_data(timeout, |got| {
            hdrs.extend(got[hdrs.len()..].iter().map(|(h, _)| *h));
            done(&hdrs)
        });
        hdrs
    }
}

pub fn run(ctx: &Ctx, d: &Device) {
    if !d.negotiate(1 << 32) {
        ctx.fail("vsock refused VERSION_1");
        return;
    }
    let size = (d.r(reg::QUEUE_NUM_MAX) as u16).clamp(1, 256);
    let page = |n: u64| layout::VSOCK_QUEUES + n * QUEUE_PAGES * 4096;
    let rx = Queue::new(&ctx.mem, page(0), size);
    let tx = Queue::new(&ctx.mem, page(1), size);
    let evt = Queue::new(&ctx.mem, page(2), size);
    d.setup_queue(0, &rx);
    d.setup_queue(1, &tx);
    d.setup_queue(2, &evt);
    let status = d.driver_ok();
    if status & DEVICE_NEEDS_RESET != 0 {
        ctx.fail(&format!("vsock: DRIVER_OK refused, status {status:#x}"));
        return;
    }
    let cid = u64::from(d.r(reg::CONFIG)) | u64::from(d.r(reg::CONFIG + 4)) << 32;
    let mem_base = ctx.mem.base;
    let mut v = Vsock {
        d,
        rx,
        tx,
        cid,
        mem_base,
        sent: Default::default(),
    };
    say(&format!("vsock up cid={cid} queue_size={size}"));

    // 1. Chains that are not packets.
    let (p, r) = abuse::bad_chains(ctx, d, &mut v.tx, 1, false, 1200);
    say(&format!("vsock bad-chains published={p} returned={r}"));

    // 2. Packets that are framed but wrong, 500 of each kind: a payload length of 4 GiB,
    //    foreign CIDs, an unknown op, another socket type, data for no connection. Each
    //    wants an RST; the guest posts no rx buffer yet, so the RSTs pile up (bounded).
    let payload = mem_base + layout::PAYLOAD;
    let mut pkts = Vec::new();
    for k in 0..500u32 {
        let mut huge = v.hdr(40_000 + k, 9, OP_RW);
        huge.len = u32::MAX;
        let mut foreign = v.hdr(40_000 + k, 9, OP_REQUEST);
        foreign.src_cid = 7;
        let unknown_op = v.hdr(41_000 + k, 9, 99);
        let mut seqpacket = v.hdr(42_000 + k, 9, OP_REQUEST);
        seqpacket.type_ = 2;
        let mut stray = v.hdr(43_000 + k, 9, OP_RW);
        stray.len = 16;
        pkts.extend([
            (huge, payload, 64),
            (foreign, 0, 0),
            (unknown_op, 0, 0),
            (seqpacket, 0, 0),
            (stray, payload, 16),
        ]);
    }
    let used = v.send(&pkts);
    v.post_all_rx();
    let rsts = v.recv_until_quiet(Duration::from_secs(3));
    say(&format!(
        "vsock bad-packets sent={} used={used} rst_back={}",
        pkts.len(),
        rsts.iter().filter(|h| h.op == OP_RST).count()
    ));

    // 3. The available index far ahead; notify storms on both queues.
    let lied = abuse::lying_avail_index(d, &mut v.tx, 1);
    let notifies = abuse::notify_storm(d, 1) + abuse::notify_storm(d, 0);
    say(&format!(
        "vsock lying-avail used={lied} notify-storm={notifies}"
    ));

    // 4. A REQUEST flood to host ports nobody listens on: each is a refused connect on
    //    the host and an RST back.
    let reqs: Vec<_> = (0..2000u32)
        .map(|k| (v.hdr(44_000 + k, 20_000 + k, OP_REQUEST), 0, 0))
        .collect();
    v.send(&reqs);
    let rsts = v.recv_until_quiet(Duration::from_secs(3));
    say(&format!(
        "vsock request-flood sent={} rst_back={}",
        reqs.len(),
        rsts.iter().filter(|h| h.op == OP_RST).count()
    ));

    half_open(ctx, &mut v);
    overrun(ctx, &mut v);
    echo(ctx, &mut v);
}

/// Host connections the guest never answers: once the host gives up, husk-vmm drops
/// them (and tells the guest with an RST) instead of keeping them for ever.
fn half_open(_ctx: &Ctx, v: &mut Vsock) {
    say("vsock half-open ready");
    let reqs = v.recv(Duration::from_secs(120), |g| {
        g.iter()
            .filter(|h| h.op == OP_REQUEST && h.dst_port == 7002)
            .filter(|h| h.src_port >= HOST_LOCAL_PORTS)
            .count()
            >= HALF_OPEN
    });
    let ports: HashSet<u32> = reqs
        .iter()
        .filter(|h| h.op == OP_REQUEST && h.dst_port == 7002)
        .map(|h| h.src_port)
        .collect();
    say(&format!("vsock half-open requests={}", ports.len()));
    let rsts = v.recv(Duration::from_secs(120), |g| {
        g.iter()
            .filter(|h| h.op == OP_RST && ports.contains(&h.src_port))
            .count()
            >= ports.len()
    });
    let n = rsts
        .iter()
        .filter(|h| h.op == OP_RST && ports.contains(&h.src_port))
        .count();
    say(&format!("vsock half-open rst={n}"));
}

/// Connections to a host program that never reads, each sending past its credit: every
/// one ends in an RST, and what husk-vmm buffers meanwhile is bounded.
fn overrun(_ctx: &Ctx, v: &mut Vsock) {
    let base = 50_000u32;
    let reqs: Vec<_> = (0..OVERRUN_CONNS)
        .map(|k| (v.hdr(base + k, 7001, OP_REQUEST), 0, 0))
        .collect();
    v.send(&reqs);
    let got = v.recv(Duration::from_secs(120), |g| {
        g.iter()
            .filter(|h| h.src_port == 7001 && matches!(h.op, OP_RESPONSE | OP_RST))
            .count()
            >= OVERRUN_CONNS as usize
    });
    let accepted: Vec<u32> = got
        .iter()
        .filter(|h| h.src_port == 7001 && h.op == OP_RESPONSE)
        .map(|h| h.dst_port)
        .collect();
    say(&format!(
        "vsock overrun connected={}/{OVERRUN_CONNS}",
        accepted.len()
    ));
    let payload = v.mem_base + layout::PAYLOAD;
    let mut pkts = Vec::new();
    for _ in 0..OVERRUN_PACKETS {
        for &port in &accepted {
            let mut h = v.hdr(port, 7001, OP_RW);
            h.len = CHUNK;
            pkts.push((h, payload, CHUNK));
        }
    }
    let used = v.send(&pkts);
    say(&format!("vsock overrun sending done used={used}"));
    let got = v.recv(Duration::from_secs(120), |g| {
        g.iter()
            .filter(|h| h.src_port == 7001 && h.op == OP_RST)
            .map(|h| h.dst_port)
            .collect::<HashSet<_>>()
            .len()
            >= accepted.len()
    });
    let reset = got
        .iter()
        .filter(|h| h.src_port == 7001 && h.op == OP_RST)
        .map(|h| h.dst_port)
        .collect::<HashSet<_>>()
        .len();
    let sent: u64 = accepted
        .iter()
        .map(|p| u64::from(v.sent.get(p).copied().unwrap_or(0)))
        .sum();
    say(&format!(
        "vsock overrun reset={reset}/{} sent_mib={}",
        accepted.len(),
        sent >> 20
    ));
}

/// After all that, a plain connection must still work: "ping" to the host's echo on port
/// 7003, "pong" back.
fn echo(ctx: &Ctx, v: &mut Vsock) {
    let port = 60_000;
    let req = v.hdr(port, 7003, OP_REQUEST);
    v.send(&[(req, 0, 0)]);
    let got = v.recv(Duration::from_secs(60), |g| {
        g.iter().any(|h| h.src_port == 7003 && h.dst_port == port)
    });
    if !got
        .iter()
        .any(|h| h.src_port == 7003 && h.dst_port == port && h.op == OP_RESPONSE)
    {
        ctx.fail(&format!(
            "vsock: the echo connection was not accepted: {got:?}"
        ));
        return;
    }
    let ping = layout::PAYLOAD + 0x1_0000;
    for (k, b) in b"ping".iter().enumerate() {
        ctx.mem.write::<u8>(ping + k as u64, *b);
    }
    let mut h = v.hdr(port, 7003, OP_RW);
    h.len = 4;
    v.send(&[(h, v.mem_base + ping, 4)]);
    let got = v.recv_data(Duration::from_secs(60), |g| {
        g.iter().any(|(h, _)| h.op == OP_RW && h.dst_port == port)
    });
    let pong = got
        .into_iter()
        .find(|(h, _)| h.op == OP_RW && h.dst_port == port)
        .map(|(_, p)| p);
    match pong {
        Some(p) if p == b"pong" => say("vsock echo ok"),
        other => ctx.fail(&format!("vsock: echo answered {other:?}")),
    }
}
