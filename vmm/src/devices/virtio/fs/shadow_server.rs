//! A stand-in for virtiofsd's side of the relay's shadow rings, for the unit tests and the
//! fuzz target: it reads and writes only the relay's window, never guest memory.

use vm_memory::{Bytes, GuestAddress};

use super::relay::{Relay, SHADOW_SIZE};

/// One request as virtiofsd finds it on a shadow ring.
#[derive(Debug)]
pub struct ShadowRequest {
    /// The chain's head descriptor, which the answer names.
    pub id: u16,
    /// Everything readable, in order.
    pub bytes: Vec<u8>,
    /// The writable buffers: (window address, length).
    pub writable: Vec<(u64, u32)>,
}

/// Serves one of a relay's shadow rings as virtiofsd would, in the test's own thread: it
/// reads only the relay's window, never guest memory.
pub struct ShadowServer {
    queue: usize,
    next_avail: u16,
    next_used: u16,
}

impl ShadowServer {
    pub fn new(queue: usize) -> Self {
        Self {
            queue,
            next_avail: 0,
            next_used: 0,
        }
    }

    /// Takes every request the relay published since the last call.
    pub fn take(&mut self, relay: &Relay) -> Vec<ShadowRequest> {
        let w = relay.window();
        let (desc, avail, _) = relay.rings(self.queue).unwrap();
        let idx: u16 = w.read_obj(GuestAddress(avail + 2)).unwrap();
        let mut out = Vec::new();
        while self.next_avail != idx {
            let slot = avail + 4 + 2 * u64::from(self.next_avail % SHADOW_SIZE);
            let id: u16 = w.read_obj(GuestAddress(slot)).unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
            let mut req = ShadowRequest {
                id,
                bytes: Vec::new(),
                writable: Vec::new(),
            };
            let mut i = id;
            loop {
                let at = desc + 16 * u64::from(i);
                let addr: u64 = w.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = w.read_obj(GuestAddress(at + 8)).unwrap();
                let flags: u16 = w.read_obj(GuestAddress(at + 12)).unwrap();
                let next: u16 = w.read_obj(GuestAddress(at + 14)).unwrap();
                if flags & 2 != 0 {
                    req.writable.push((addr, len));
                } else {
                    let mut b = vec![0u8; len as usize];
                    w.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    req.bytes.extend(b);
                }
                if flags & 1 == 0 {
                    break;
                }
                i = next;
            }
            out.push(req);
        }
        out
    }

    /// Writes `reply` into `req`'s writable buffers and puts it in the used ring with
    /// `used_len` (the length virtiofsd reports, normally `reply.len()`).
    pub fn answer(&mut self, relay: &Relay, req: &ShadowRequest, reply: &[u8], used_len: u32) {
        let w = relay.window();
        let mut rest = reply;
        for &(addr, len) in &req.writable {
            let n = rest.len().min(len as usize);
            w.write_slice(&rest[..n], GuestAddress(addr)).unwrap();
            rest = &rest[n..];
        }
        assert!(rest.is_empty(), "reply longer than the writable buffers");
        let (_, _, used) = relay.rings(self.queue).unwrap();
        let entry = used + 4 + 8 * u64::from(self.next_used % SHADOW_SIZE);
        w.write_obj(u32::from(req.id), GuestAddress(entry)).unwrap();
        w.write_obj(used_len, GuestAddress(entry + 4)).unwrap();
        self.next_used = self.next_used.wrapping_add(1);
        w.write_obj(self.next_used, GuestAddress(used + 2)).unwrap();
    }
}
