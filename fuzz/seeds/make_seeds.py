#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

Each seed is a small hand-made input that reaches a deep state of its target (a valid
vsock packet, a valid block request chain, a full virtio-mmio handshake, ...), so that a
short run starts from there instead of from random bytes. The files are committed; run
this again after changing a target's input format (`python3 fuzz/seeds/make_seeds.py`)
and check what a seed decodes to with `cargo fuzz fmt <target> seeds/<target>/<file>`.

Targets whose input is `#[derive(Arbitrary)]` are encoded as arbitrary 1.x reads them:
integers little-endian, a bool is a byte's low bit, an enum variant is a u32 `x` with
`(x * variants) >> 32 == index`, and each element of a Vec is preceded by a byte whose
low bit says whether one more follows.
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


# ---------------------------------------------------------------- arbitrary encoding


def variant(index, count, payload=b""):
    x = ((index << 32) + count - 1) // count
    assert (x * count) >> 32 == index
    return u32(x) + payload


def arb_vec(items):
    """A Vec<T> that is not the last field: a continue byte before each element."""
    return b"".join(b"\x01" + i for i in items) + b"\x00"


def arb_bytes(data):
    return arb_vec([bytes([b]) for b in data])


# ---------------------------------------------------------------- vsock_packet

VSOCK_HDR = 44
DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4


def vsock_header(op, length, src_port=1024, dst_port=52, src_cid=3, dst_cid=2):
    # src_cid, dst_cid, src_port, dst_port, len, type (stream), op, flags, buf_alloc, fwd_cnt
    return struct.pack(
        "<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, 1, op, 0, 64 * 1024, 0
    )


def vsock_packet(descs, payload):
    """descs: (addr, len, flags, next); the payload lands at guest address 0x1000."""
    assert 1 <= len(descs) <= 8
    table = b"".join(u64(a) + u32(n) + u16(f) + u16(nx) for a, n, f, nx in descs)
    return u8(len(descs) - 1) + table + payload


def vsock_seeds():
    data = b"hello, guest"
    hdr = vsock_header(5, len(data))  # RW
    yield "rw_two_descriptors", vsock_packet(
        [(0x1000, VSOCK_HDR, DESC_NEXT, 1), (0x1000 + VSOCK_HDR, len(data), 0, 0)], hdr + data
    )
    yield "rw_one_descriptor", vsock_packet([(0x1000, VSOCK_HDR + len(data), 0, 0)], hdr + data)
    yield "request", vsock_packet([(0x1000, VSOCK_HDR, 0, 0)], vsock_header(1, 0))
    # An rx buffer the device writes: header and room in two writable descriptors.
    yield "rx_buffer", vsock_packet(
        [(0x1000, VSOCK_HDR, DESC_NEXT | DESC_WRITE, 1), (0x2000, 4096, DESC_WRITE, 0)],
        vsock_header(5, 0),
    )
    # Two chains: a shutdown and a credit update.
    yield "two_chains", vsock_packet(
        [(0x1000, VSOCK_HDR, 0, 0), (0x1000 + VSOCK_HDR, VSOCK_HDR, 0, 0)],
        vsock_header(4, 0) + vsock_header(6, 0),
    )


# ---------------------------------------------------------------- block_request

BLK_IN, BLK_OUT, BLK_FLUSH, BLK_GET_ID = 0, 1, 2, 3


def blk_desc(addr, length, flags, nxt=0):
    return addr + length + flags + u16(nxt)


ADDR_HEADER = variant(0, 4)


def addr_data(off):
    return variant(1, 4, u16(off))


LEN_HEADER = variant(0, 5)
LEN_STATUS = variant(1, 5)


def len_sectors(n):
    return variant(2, 5, u8(n))


def len_bytes(n):
    return variant(3, 5, u8(n))


READABLE = variant(0, 3)
WRITABLE = variant(1, 3)


def block_input(kind, sector, descs, read_only=False, linked=True):
    return (
        variant(kind, 5)
        + variant(0, 2, u8(sector))  # Sector::Near
        + u8(read_only)
        + u8(linked)
        + arb_vec(descs)
        # No extra guest memory writes (the last field takes the rest: nothing).
    )


def block_seeds():
    status = blk_desc(addr_data(0x2000), LEN_STATUS, WRITABLE)
    yield "in_two_sectors", block_input(
        BLK_IN,
        3,
        [blk_desc(ADDR_HEADER, LEN_HEADER, READABLE), blk_desc(addr_data(0), len_sectors(2), WRITABLE), status],
    )
    yield "out_split_data", block_input(
        BLK_OUT,
        60,
        [
            blk_desc(ADDR_HEADER, LEN_HEADER, READABLE),
            blk_desc(addr_data(0x7e00), len_sectors(1), READABLE),  # crosses into region 2
            blk_desc(addr_data(0x100), len_sectors(3), READABLE),
            status,
        ],
    )
    yield "out_read_only", block_input(
        BLK_OUT,
        0,
        [blk_desc(ADDR_HEADER, LEN_HEADER, READABLE), blk_desc(addr_data(0), len_sectors(1), READABLE), status],
        read_only=True,
    )
    yield "flush", block_input(BLK_FLUSH, 0, [blk_desc(ADDR_HEADER, LEN_HEADER, READABLE), status])
    yield "get_id", block_input(
        BLK_GET_ID,
        0,
        [blk_desc(ADDR_HEADER, LEN_HEADER, READABLE), blk_desc(addr_data(0), len_bytes(20), WRITABLE), status],
    )


# ---------------------------------------------------------------- net_tx

VNET_HDR = bytes(12)


def net_desc(addr, length, flags, nxt=0):
    return addr + length + flags + u16(nxt)


NET_HEADER = variant(0, 4)


def net_frame(off):
    return variant(1, 4, u16(off))


NET_LEN_HEADER = variant(0, 5)
NET_LEN_MTU = variant(2, 5)


def net_small(n):
    return variant(1, 5, u8(n))


def net_input(chain_lengths, descs, answers, budget=15):
    return (
        VNET_HDR
        + arb_vec([u8(n - 1) for n in chain_lengths])
        + arb_vec(descs)
        + arb_vec([variant(a, 3) for a in answers])
        + u8(budget)
    )


def net_seeds():
    take, would_block, fail = 0, 1, 2
    hdr = net_desc(NET_HEADER, NET_LEN_HEADER, READABLE)
    frame = net_desc(net_frame(0), NET_LEN_MTU, READABLE)
    yield "one_frame", net_input([2], [hdr, frame], [])
    yield "one_descriptor_frame", net_input([1], [net_desc(NET_HEADER, NET_LEN_MTU, READABLE)], [])
    yield "three_frames_tap_busy", net_input(
        [2, 2, 2], [hdr, frame, hdr, frame, hdr, net_desc(net_frame(0x7f00), NET_LEN_MTU, READABLE)], [would_block, take, fail]
    )
    yield "runt_frame", net_input([2], [hdr, net_desc(net_frame(0), net_small(13), READABLE)], [], budget=0)


# ---------------------------------------------------------------- agent_replies


def pb_varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_int(field, v):
    return pb_varint(field << 3) + pb_varint(v & 0xFFFFFFFFFFFFFFFF)


def pb_str(field, s):
    s = s.encode() if isinstance(s, str) else s
    return pb_varint((field << 3) | 2) + pb_varint(len(s)) + s


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def agent_seeds():
    attach = pb_str(1, "c0ffee") + pb_str(2, "exec-1") + pb_int(3, 1)
    yield "stdio_handshake", frame(attach) + frame(b"") + frame(pb_str(1, "no such container"))
    # ttrpc Responses as the shim's agent client decodes them: an error status with
    # details and escapes, and a payload.
    status = pb_int(1, 13) + pb_str(2, "\x1b[31mboom " + "m" * 200) + pb_str(3, b"") * 8
    yield "response_status", pb_str(1, status)
    yield "response_payload", pb_str(2, pb_int(1, 42))
    yield "wait_killed", pb_int(1, 137) + pb_int(2, 9) + pb_int(3, 1_700_000_000_000_000_000)
    yield "wait_negative", pb_int(1, -1)
    yield "list_pids_packed", pb_varint((1 << 3) | 2) + pb_varint(3) + bytes([1, 7, 42])
    yield "version", pb_str(1, "0.1.0") + pb_str(2, "husk.agent.v1") + pb_str(3, "6.1.0")
    yield "health", pb_int(1, 1) + pb_int(2, 123456)
    # StatsContainerResponse with nested cpu and memory messages.
    cpu = pb_int(1, 1000) + pb_int(2, 600) + pb_int(3, 400)
    mem = pb_int(1, 1 << 20) + pb_int(2, 1 << 30)
    yield "stats", pb_str(1, cpu) + pb_str(2, mem)
    yield "frame_too_long", struct.pack(">I", 4097) + b"x"


# ---------------------------------------------------------------- hybrid_connect


def hybrid_seeds():
    yield "connect", b"CONNECT 1024\n"
    yield "ok_reply", b"OK 1073741824\n"
    yield "connect_then_guest_bytes", b"CONNECT 52\nOK 1073741825\nhello"
    longest = b"CONNECT " + b"0" * (32 - 2 - 8) + b"7\n"
    assert len(longest) == 32
    yield "longest_connect", longest
    yield "max_port", b"CONNECT 4294967295\nOK 4294967295\n"


# ---------------------------------------------------------------- mmio_registers

REG = {
    "DEVICE_FEATURES_SEL": 0x014,
    "DRIVER_FEATURES": 0x020,
    "DRIVER_FEATURES_SEL": 0x024,
    "QUEUE_SEL": 0x030,
    "QUEUE_NUM": 0x038,
    "QUEUE_READY": 0x044,
    "QUEUE_NOTIFY": 0x050,
    "INTERRUPT_ACK": 0x064,
    "STATUS": 0x070,
    "QUEUE_DESC_LOW": 0x080,
    "QUEUE_DESC_HIGH": 0x084,
    "QUEUE_DRIVER_LOW": 0x090,
    "QUEUE_DEVICE_LOW": 0x0A0,
}
ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
VIRTIO_BLK_F_FLUSH = 1 << 9
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
REQ_HDR, REQ_DATA, REQ_STATUS = 0x4000, 0x1_F000, 0x6000  # the data crosses regions


def m_read(offset, size=4):
    return u8(0) + u8({1: 0, 2: 1, 4: 2, 8: 3}[size]) + u16(offset)


def m_write(offset, value, size=4):
    return u8(1) + u8({1: 0, 2: 1, 4: 2, 8: 3}[size]) + u16(offset) + u64(value)


def m_reg(name, value):
    return u8(2) + u8(REG[name] // 4) + u32(value)


def m_mem(addr, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out += u8(3) + u32(addr + i) + u8(len(chunk)) + chunk
    return out


def m_loop():
    return u8(4)


def m_far(write, offset, value=0, size=4):
    return u8(5) + u8(write) + u8({1: 0, 2: 1, 4: 2, 8: 3}[size]) + u64(offset) + u64(value)


def mmio_handshake(features_lo=VIRTIO_BLK_F_FLUSH, queue_num=16, desc_high=0):
    return (
        m_reg("STATUS", 0)
        + m_reg("STATUS", ACK)
        + m_reg("STATUS", ACK | DRIVER)
        + m_reg("DEVICE_FEATURES_SEL", 0)
        + m_read(0x010)
        + m_reg("DEVICE_FEATURES_SEL", 1)
        + m_read(0x010)
        + m_reg("DRIVER_FEATURES_SEL", 0)
        + m_reg("DRIVER_FEATURES", features_lo)
        + m_reg("DRIVER_FEATURES_SEL", 1)
        + m_reg("DRIVER_FEATURES", 1)  # VIRTIO_F_VERSION_1
        + m_reg("STATUS", ACK | DRIVER | FEATURES_OK)
        + m_read(0x070)
        + m_reg("QUEUE_SEL", 0)
        + m_read(0x034)
        + m_reg("QUEUE_NUM", queue_num)
        + m_reg("QUEUE_DESC_LOW", DESC)
        + m_reg("QUEUE_DESC_HIGH", desc_high)
        + m_reg("QUEUE_DRIVER_LOW", AVAIL)
        + m_reg("QUEUE_DEVICE_LOW", USED)
        + m_reg("QUEUE_READY", 1)
        + m_reg("STATUS", ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        + m_loop()
    )


def blk_request(kind, sector, data_len, data_flags):
    """A three-descriptor request at DESC, made available in the avail ring."""
    table = (
        u64(REQ_HDR) + u32(16) + u16(DESC_NEXT) + u16(1)
        + u64(REQ_DATA) + u32(data_len) + u16(DESC_NEXT | data_flags) + u16(2)
        + u64(REQ_STATUS) + u32(1) + u16(DESC_WRITE) + u16(0)
    )
    header = u32(kind) + u32(0) + u64(sector)
    avail = u16(0) + u16(1) + u16(0)  # flags, idx, ring[0]
    return m_mem(DESC, table) + m_mem(REQ_HDR, header) + m_mem(AVAIL, avail)


def mmio_seeds():
    rw = u8(0)
    notify = m_reg("QUEUE_NOTIFY", 0) + m_loop() + m_read(0x060) + m_reg("INTERRUPT_ACK", 1)
    yield "handshake_read_request", rw + mmio_handshake() + blk_request(BLK_IN, 2, 1024, DESC_WRITE) + notify
    yield "handshake_write_request", (
        rw + mmio_handshake() + m_mem(REQ_DATA, bytes(range(256)) * 2)
        + blk_request(BLK_OUT, 5, 512, 0) + notify
    )
    yield "read_only_write_refused", u8(1) + mmio_handshake() + blk_request(BLK_OUT, 0, 512, 0) + notify
    # Requests queued before DRIVER_OK are handled by activation's kick.
    yield "request_before_driver_ok", rw + blk_request(BLK_IN, 0, 512, DESC_WRITE) + mmio_handshake()
    # Every register and the config space with every access size, aligned or not.
    sweep = rw
    for off in range(0, 0x100, 4):
        sweep += m_read(off)
    for off in (0x100, 0x104, 0x108, 0x10C, 0x10E, 0x10F, 0x110, 0xFFC):
        for size in (1, 2, 4, 8):
            sweep += m_read(off, size)
    sweep += m_read(0x071, 1) + m_read(0x072, 2) + m_read(0x000, 8) + m_write(0x070, 1, 1)
    sweep += m_write(0x071, 0xFFFF, 2) + m_write(0x100, 0xDEADBEEF, 4) + m_write(0x070, 0xF, 8)
    sweep += m_far(0, 0x1000) + m_far(1, 0xFFFF_FFFF_FFFF_FFFC, 1) + m_far(0, 0xFFFF_FFFF_FFFF_FFFF, 0, 8)
    yield "register_sweep", sweep
    # Activation, then a reset, then a second set-up with the rings elsewhere.
    again = (
        m_reg("STATUS", 0)
        + m_reg("STATUS", ACK | DRIVER)
        + m_reg("DRIVER_FEATURES_SEL", 1)
        + m_reg("DRIVER_FEATURES", 1)
        + m_reg("STATUS", ACK | DRIVER | FEATURES_OK)
        + m_reg("QUEUE_NUM", 256)
        + m_reg("QUEUE_DESC_LOW", 0x1_F000)
        + m_reg("QUEUE_DRIVER_LOW", 0x5_0000)
        + m_reg("QUEUE_DEVICE_LOW", 0x2_1000)
        + m_reg("QUEUE_READY", 1)
        + m_reg("STATUS", ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        + m_reg("QUEUE_NOTIFY", 0)
        + m_loop()
    )
    yield "reset_and_again", rw + mmio_handshake() + again
    # Refused features, a bad queue size and rings outside memory.
    bad = (
        rw + mmio_handshake(features_lo=1 << 5)
        + m_reg("STATUS", 0) + mmio_handshake(queue_num=3)
        + mmio_handshake(desc_high=0x10)
    )
    yield "refusals", bad


# ---------------------------------------------------------------- snapshot_state

# Sizes of the KVM structures the state holds as hex (kvm-bindings, x86_64).
KVM_SIZES = {
    "regs": 144, "sregs": 312, "xsave": 4096, "xcrs": 392, "debug_regs": 128,
    "lapic": 1024, "events": 64, "irqchip": 520, "pit": 112, "clock": 48,
}


def kvm_hex(name, prefix=b""):
    return (prefix + bytes(KVM_SIZES[name] - len(prefix))).hex()


def snapshot_payload(vcpus=1, devices=1):
    import json
    vcpu = {
        "cpuid": [{"function": 0, "index": 0, "flags": 0, "eax": 0xD,
                   "ebx": 0x68747541, "ecx": 0x444D4163, "edx": 0x69746E65}],
        "msrs": [{"index": 0x10, "data": 123456}, {"index": 0x6E0, "data": 0}],
        "regs": kvm_hex("regs"), "sregs": kvm_hex("sregs"), "xsave": kvm_hex("xsave"),
        "xcrs": kvm_hex("xcrs"), "debug_regs": kvm_hex("debug_regs"),
        "lapic": kvm_hex("lapic"), "mp_state": 0, "events": kvm_hex("events"),
        "tsc_khz": 2000000,
    }
    queue = {"max_size": 256, "next_avail": 2, "next_used": 2, "event_idx": False,
             "size": 128, "ready": True, "desc_table": 0x100000,
             "avail_ring": 0x101000, "used_ring": 0x102000}
    device = lambda i: {
        "identity": {"vsock": {"guest_cid": 3}},
        "mmio_base": 0xC0000000 + i * 0x1000, "irq": 5 + i,
        "transport": {"device_type": 19, "status": 15, "features_sel": 1,
                      "acked_features_sel": 1, "acked_features": 1 << 32, "queue_sel": 2,
                      "interrupt_status": 0, "activated": True, "queues": [queue] * 3},
    }
    state = {
        "id": "05" * 16,
        "vmm_version": "husk-vmm seed",
        "memory_bytes": 256 << 20,
        "vcpus": [vcpu] * vcpus,
        "vm": {"pic_master": kvm_hex("irqchip", u32(0)),
               "pic_slave": kvm_hex("irqchip", u32(1)),
               "ioapic": kvm_hex("irqchip", u32(2)),
               "pit": kvm_hex("pit"), "clock": kvm_hex("clock")},
        "serial": {"baud_divisor_low": 12, "baud_divisor_high": 0, "interrupt_enable": 0,
                   "interrupt_identification": 1, "line_control": 3, "line_status": 0x60,
                   "modem_control": 8, "modem_status": 0xB0, "scratch": 0, "in_buffer": []},
        "devices": [device(i) for i in range(devices)],
    }
    return json.dumps(state, separators=(",", ":")).encode()


def state_file(payload):
    import hashlib
    return (b"HUSKSNAP" + u32(1) + u32(0) + u64(len(payload))
            + hashlib.sha256(payload).digest() + payload)


def snapshot_seeds():
    yield "valid_one_vcpu", state_file(snapshot_payload())
    # A payload alone: the target also reads its input as one.
    yield "payload_only", snapshot_payload()
    yield "valid_two_devices", state_file(snapshot_payload(1, 2))
    # Right header and checksum, a payload that fails a check (device misplaced).
    bad = snapshot_payload().replace(b'"irq":5', b'"irq":6')
    yield "misplaced_device", state_file(bad)
    # A memory file header (id 5*16, 256 MiB) followed by a little RAM.
    mem = b"HUSKMEM\0" + u32(1) + u32(4096) + bytes([5] * 16) + u64(256 << 20)
    yield "memory_header", mem + bytes(4096 - len(mem)) + b"\x90" * 64


TARGETS = {
    "snapshot_state": snapshot_seeds,
    "vsock_packet": vsock_seeds,
    "block_request": block_seeds,
    "net_tx": net_seeds,
    "agent_replies": agent_seeds,
    "hybrid_connect": hybrid_seeds,
    "mmio_registers": mmio_seeds,
}


def main():
    total = 0
    for target, seeds in TARGETS.items():
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            os.remove(os.path.join(d, old))
        size = 0
        for name, data in seeds():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            size += len(data)
        print(f"{target}: {len(os.listdir(d))} seeds, {size} bytes")
        total += size
    print(f"total {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
