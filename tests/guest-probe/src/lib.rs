//! What the guest probe and the host tests share: the deterministic byte stream both
//! sides generate and the checksum both compute, and the probe's vsock port.
//!
//! The probe (`husk-guest-probe`, /init of the device-test initramfs) serves one command
//! per vsock connection, a line each:
//! - `SINK` then data until EOF: replies `OK <bytes> <hash>`.
//! - `SOURCE <n> <seed>`: sends n bytes of `stream(seed)`, then closes.
//! - `ECHO`: echoes everything until EOF.
//! - `DIAL <port> <n> <seed>`: connects to the host (CID 2) on `port`, sends n bytes of
//!   `stream(seed)`, closes; replies `OK <n>`.
//! - `MOUNT <fstype> <source> <target> [data]`, `UMOUNT <target>`, `SYNC`.
//! - `READ <path>`: `OK <len>\n` then the bytes. `WRITE <path> <len>\n<bytes>`: writes and
//!   fsyncs. `WAITFILE <path> <secs>`: `OK` once the path exists.
//! - `HASHFILE <path>`: `OK <bytes> <hash>`. `FIND <dir>`: `OK <entries>` (recursive).
//! - `HOLD <secs>`: keeps the connection open without reading, then replies `OK`.
//! - `POWEROFF`: replies `OK`, syncs and restarts the machine (the VMM's clean exit).
//!
//! Errors reply `ERR <message>`.

/// The vsock port the probe listens on.
pub const PROBE_PORT: u32 = 5000;

/// A deterministic byte stream (xorshift64*), 8 bytes per step.
pub struct Stream {
    state: u64,
    buf: [u8; 8],
    pos: usize,
}

impl Stream {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            buf: [0; 8],
            pos: 8,
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.pos == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.buf = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }
}

/// An order-sensitive 64-bit checksum (FNV-1a over bytes), cheap enough for 256 MiB under
/// emulation.
#[derive(Clone, Copy, Debug)]
pub struct Hasher {
    h: u64,
    n: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            n: 0,
        }
    }
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.h;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.h = h;
        self.n += data.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.n
    }

    pub fn value(&self) -> u64 {
        self.h
    }
}

/// The checksum of the first `n` bytes of `stream(seed)`.
pub fn stream_hash(n: u64, seed: u64) -> u64 {
    let mut s = Stream::new(seed);
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        left -= k as u64;
    }
    h.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_deterministic_and_chunking_independent() {
        let mut a = Stream::new(7);
        let mut whole = vec![0u8; 100];
        a.fill(&mut whole);
        let mut b = Stream::new(7);
        let mut parts = vec![0u8; 100];
        b.fill(&mut parts[..3]);
        b.fill(&mut parts[3..50]);
        b.fill(&mut parts[50..]);
        assert_eq!(whole, parts);
        let mut c = Stream::new(8);
        let mut other = vec![0u8; 100];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn hash_sees_order_and_length() {
        let mut h1 = Hasher::default();
        h1.update(b"ab");
        let mut h2 = Hasher::default();
        h2.update(b"ba");
        assert_ne!(h1.value(), h2.value());
        let mut h3 = Hasher::default();
        h3.update(b"a");
        h3.update(b"b");
        assert_eq!(h1.value(), h3.value());
        assert_eq!(h3.bytes(), 2);
        assert_ne!(stream_hash(1000, 1), stream_hash(1001, 1));
    }
}
