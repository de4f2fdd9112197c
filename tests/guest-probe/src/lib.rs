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
//! - `IFUP <ifname> <ipv4> <prefix>`: gives the interface the address and brings it up.
//! - `TCPSINK <port>`: listens on TCP `port`, replies `READY`, accepts one connection and
//!   replies `OK <bytes> <hash>` of what it received until EOF.
//! - `TCPSOURCE <ipv4> <port> <n> <seed>`: connects over TCP, sends n bytes of
//!   `stream(seed)`, shuts down its side, waits for the peer to close; replies `OK <n>`.
//! - `POWEROFF`: replies `OK`, syncs and restarts the machine (the VMM's clean exit).
//! - `COUNTER`: starts (once) a thread that counts in memory with [`Count::step`], which
//!   keeps its state in integer and floating-point registers, publishing it every
//!   [`COUNT_BATCH`] steps and sleeping 1 ms between batches; replies `OK`.
//! - `COUNT`: replies `OK <i> <acc> <f bits>`, the last published [`Count`] (0 before one).
//!   The host recomputes `Count::at(i)` to check it: a snapshot that lost a register, a
//!   page or a timer shows up as a wrong value or a counter that stopped.
//! - `TICK`: adds one to a counter in memory and replies `OK <value>`.
//!
//! Errors reply `ERR <message>`.

/// The vsock port the probe listens on.
pub const PROBE_PORT: u32 = 5000;

/// A deterministic byte stream (xorshift64*), generated 8 bytes at a time: cheap enough
/// for 256 MiB in a guest under emulation.
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

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, mut out: &mut [u8]) {
        // Finish a partly used word, then whole words, then start a new partial one.
        while self.pos < 8 && !out.is_empty() {
            out[0] = self.buf[self.pos];
            self.pos += 1;
            out = &mut out[1..];
        }
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.buf = self.next_word();
            let n = rest.len();
            rest.copy_from_slice(&self.buf[..n]);
            self.pos = n;
        }
    }
}

/// An order-sensitive 64-bit checksum over 8-byte little-endian words (a multiply-xor
/// mix), independent of how the data is chunked, cheap enough for 256 MiB under emulation.
#[derive(Clone, Copy, Debug)]
pub struct Hasher {
    h: u64,
    n: u64,
    partial: [u8; 8],
    plen: usize,
}

impl Default for Hasher {
    fn default() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            n: 0,
            partial: [0; 8],
            plen: 0,
        }
    }
}

impl Hasher {
    fn mix(h: u64, word: u64) -> u64 {
        (h ^ word).wrapping_mul(0x0100_0000_01b3).rotate_left(29)
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.n += data.len() as u64;
        while self.plen > 0 && !data.is_empty() {
            self.partial[self.plen] = data[0];
            self.plen += 1;
            data = &data[1..];
            if self.plen == 8 {
                self.h = Self::mix(self.h, u64::from_le_bytes(self.partial));
                self.plen = 0;
            }
        }
        if self.plen > 0 {
            // All of `data` went into the partial word.
            return;
        }
        let mut chunks = data.chunks_exact(8);
        let mut h = self.h;
        for c in &mut chunks {
            h = Self::mix(h, u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        self.h = h;
        let rest = chunks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.plen = rest.len();
    }

    pub fn bytes(&self) -> u64 {
        self.n
    }

    /// The checksum of everything so far (a trailing partial word is padded with zeros,
    /// and the length is mixed in).
    pub fn value(&self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.plen].copy_from_slice(&self.partial[..self.plen]);
        let h = if self.plen > 0 {
            Self::mix(self.h, u64::from_le_bytes(last))
        } else {
            self.h
        };
        Self::mix(h, self.n)
    }
}

/// Writes `n` bytes of `stream(seed)` into `w`.
pub fn write_stream(w: &mut impl std::io::Write, n: u64, seed: u64) -> std::io::Result<()> {
    let mut s = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.fill(&mut buf[..k]);
        w.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Reads `r` to its end and returns the checksum of what it read.
pub fn hash_reader(r: &mut impl std::io::Read) -> std::io::Result<Hasher> {
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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
        // Chunking does not matter, across word boundaries too.
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = Hasher::default();
        whole.update(&data);
        for split in [1, 3, 8, 13, 99] {
            let mut parts = Hasher::default();
            parts.update(&data[..split]);
            parts.update(&data[split..split + 1]);
            parts.update(&data[split + 1..]);
            assert_eq!(whole.value(), parts.value(), "split at {split}");
        }
        // Trailing zeros change the length, so the checksum.
        let mut z = Hasher::default();
        z.update(&[0]);
        assert_ne!(z.value(), Hasher::default().value());
        assert_ne!(stream_hash(1000, 1), stream_hash(1001, 1));
    }
}

/// Steps between two publications of the probe's counter.
pub const COUNT_BATCH: u64 = 1 << 14;

/// The probe's counting: each step mixes the step number into an integer and a
/// floating-point accumulator, so its state lives in general and SSE registers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Count {
    pub i: u64,
    pub acc: u64,
    pub f: f64,
}

impl Count {
    pub fn start() -> Self {
        Self {
            i: 0,
            acc: 0x9e37_79b9_7f4a_7c15,
            f: 1.0,
        }
    }

    #[inline(always)]
    pub fn step(&mut self) {
        self.i += 1;
        self.acc = (self.acc ^ self.i)
            .wrapping_mul(0x2545_f491_4f6c_dd1d)
            .rotate_left(17);
        self.f = self.f * 0.999_999_7 + (self.i & 0xff) as f64;
    }

    /// The state after `i` steps.
    pub fn at(i: u64) -> Self {
        let mut c = Self::start();
        for _ in 0..i {
            c.step();
        }
        c
    }
}
