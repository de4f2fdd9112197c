//! Restored: the first call after the guest was restored from a snapshot shared by many
//! pods. Until it, this guest's wall clock is the snapshot's, its kernel RNG is in the
//! very state every other guest restored from that snapshot is in (they would draw the
//! same "random" numbers: keys, nonces, TCP sequence numbers), and its hostname the
//! template's, and its NICs the template's MACs. The host sends its time, bytes from its
//! own RNG, the hostname and each NIC's MAC. And PrepareSnapshot, the template VM's last
//! call before the host snapshots it.

use husk_protocol::agent::RestoredRequest;
use tracing::info;

use super::setup::{self, Target};
use super::{lock, Result, Sandbox, SandboxError};
use crate::free_memory::{self, Zeroed};
use crate::network::{self, readdress, NetworkError};
use crate::sys;

/// Fewest bytes of host entropy taken: a full reseed of the CRNG (256 bits).
pub const MIN_ENTROPY: usize = 32;
/// Most bytes taken (the kernel's pool is 256 bits; more only costs).
pub const MAX_ENTROPY: usize = 512;

impl Sandbox {
    /// Checks the whole request, then sets the clock, feeds and reseeds the RNG, sets
    /// the hostname and the NICs' MACs. On the host (`husk-agent serve`) nothing of the
    /// host's is touched: the hostname lands in the state root as CreateSandbox's does,
    /// and MACs change only in a network namespace of the agent's own (as UpdateNetwork).
    pub fn restored(&self, req: &RestoredRequest) -> Result<()> {
        check_time(req.sec, req.nsec)?;
        let n = req.entropy.len();
        if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&n) {
            return Err(SandboxError::InvalidArgument(format!(
                "entropy: {n} bytes; {MIN_ENTROPY} to {MAX_ENTROPY} are needed"
            )));
        }
        if !req.hostname.is_empty() {
            setup::check_hostname(&req.hostname)?;
        }
        let macs = readdress::plan(&req.interfaces).map_err(NetworkError::from)?;
        if let (Target::Host(_), false) = (&self.target, macs.is_empty()) {
            network::check_own_namespace()?;
        }
        match &self.target {
            Target::Guest => {
                sys::set_realtime_clock(req.sec, req.nsec).map_err(|source| SandboxError::Io {
                    what: "set the clock".into(),
                    source,
                })?;
                sys::add_entropy_and_reseed(&req.entropy).map_err(|source| SandboxError::Io {
                    what: "add entropy and reseed the kernel RNG".into(),
                    source,
                })?;
                info!("Restored: clock set, RNG reseeded with {n} bytes from the host");
            }
            Target::Host(_) => {
                info!("Restored: not setting the host's clock nor feeding its RNG ({n} bytes)");
            }
        }
        if !req.hostname.is_empty() {
            setup::set_hostname(&self.target, &req.hostname)?;
            self.update_hosts(|h| h.hostname = Some(req.hostname.clone()))?;
        }
        let _one_at_a_time = lock(&self.network_lock);
        readdress::apply(&macs)?;
        Ok(())
    }

    /// PrepareSnapshot: zeroes the guest's free memory before the host snapshots this
    /// (template) VM. On the host (`husk-agent serve`) nothing is touched.
    pub fn prepare_snapshot(&self) -> Result<Zeroed> {
        match &self.target {
            Target::Guest => {
                let z = free_memory::zero_free_memory().map_err(|source| SandboxError::Io {
                    what: "zero the guest's free memory".into(),
                    source,
                })?;
                info!(
                    "PrepareSnapshot: zeroed {} MiB of free memory, {} MiB left as it was",
                    z.zeroed >> 20,
                    z.left >> 20
                );
                Ok(z)
            }
            Target::Host(_) => {
                info!("PrepareSnapshot: not touching the host's memory");
                Ok(Zeroed { zeroed: 0, left: 0 })
            }
        }
    }
}

/// A wall-clock time as SetGuestTime takes it.
pub fn check_time(sec: i64, nsec: u32) -> Result<()> {
    if nsec >= 1_000_000_000 || sec < 0 {
        return Err(SandboxError::InvalidArgument(format!(
            "Invalid time {sec}.{nsec:09}: nsec must be below 1e9, sec not negative"
        )));
    }
    Ok(())
}
