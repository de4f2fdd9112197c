//! OOM events: one GetOOMEvent call kept outstanding, each answer published as TaskOOM.
//! The agent is not trusted, and containerd's event bus serves every pod of the node, so
//! an event names a container of this pod or is dropped, at most [`OOM_BURST`] go out at
//! once and then one per [`OOM_REFILL`] (an OOM kill is news; a thousand a second are a
//! guest flooding), and a broken agent connection ends the watcher.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use containerd_shim::protos::events::task::TaskOOM;
use husk_protocol::agent;
use husk_protocol::deadline::guest_text;
use husk_protocol::ttrpc;
use tracing::warn;

use super::Inner;
use crate::pod::Pod;

/// OOM events published at once, and the time that earns one more.
pub const OOM_BURST: u32 = 10;
pub const OOM_REFILL: Duration = Duration::from_secs(1);
/// Longest wait between GetOOMEvent retries after an error.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A token bucket: `burst` tokens, one more every `refill`.
pub struct EventLimiter {
    burst: u32,
    refill: Duration,
    tokens: u32,
    since: Instant,
    dropped: u64,
}

impl EventLimiter {
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            since: now,
            dropped: 0,
        }
    }

    /// Whether an event at `now` may go out; counts the ones that may not.
    pub fn allow(&mut self, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.since).as_nanos() / self.refill.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.since = now;
        }
        if self.tokens == 0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Inner {
    /// Keeps one GetOOMEvent call outstanding and publishes what it reports.
    pub(super) fn spawn_oom_watcher(self: &Arc<Self>, sb: Arc<dyn Pod>) {
        let inner = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || watch(&inner, sb.as_ref()));
    }
}

fn watch(inner: &Weak<Inner>, sb: &dyn Pod) {
    let mut limit = EventLimiter::new(OOM_BURST, OOM_REFILL, Instant::now());
    let mut backoff = Duration::from_secs(1);
    let mut unknown = 0u64;
    loop {
        let r = sb.agent().get_oom_event(
            ttrpc::context::Context::default(),
            &agent::GetOOMEventRequest::new(),
        );
        let Some(inner) = Weak::upgrade(inner) else {
            return;
        };
        match r {
            Ok(ev) => {
                backoff = Duration::from_secs(1);
                if !inner.containers().contains_key(&ev.container_id) {
                    unknown += 1;
                    if unknown.is_power_of_two() {
                        warn!(
                            "the agent reported an OOM kill in {:?}, no container of this pod \
                             ({unknown} such reports dropped)",
                            guest_text(&ev.container_id, 80)
                        );
                    }
                    continue;
                }
                if !limit.allow(Instant::now()) {
                    if limit.dropped().is_power_of_two() {
                        warn!(
                            "OOM events come faster than {OOM_BURST} at once and one per \
                             {OOM_REFILL:?}: {} dropped",
                            limit.dropped()
                        );
                    }
                    continue;
                }
                let mut e = TaskOOM::new();
                e.container_id = ev.container_id;
                inner.publish(Box::new(e));
            }
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::UNIMPLEMENTED => {
                warn!("the agent reports no OOM events: {}", s.message());
                return;
            }
            // The connection is gone (the VM, or an agent that broke the protocol and
            // was cut off): no event will come any more.
            Err(ttrpc::Error::Socket(why)) => {
                if sb.vmm_exit().is_none() && inner.sandbox().is_ok() {
                    warn!("GetOOMEvent: {why}; no more OOM events from this pod");
                }
                return;
            }
            Err(e) => {
                if sb.vmm_exit().is_some() || inner.sandbox().is_err() {
                    return;
                }
                warn!("GetOOMEvent: {e}; again in {backoff:?}");
                drop(inner);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut l = EventLimiter::new(3, Duration::from_secs(1), t0);
        let first: Vec<bool> = (0..10).map(|_| l.allow(t0)).collect();
        assert_eq!(
            first,
            [true, true, true, false, false, false, false, false, false, false]
        );
        assert_eq!(l.dropped(), 7);
        let t1 = t0 + Duration::from_millis(1500);
        assert!(l.allow(t1));
        assert!(!l.allow(t1));
        // A long quiet spell earns the whole burst back, no more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..5).filter(|_| l.allow(t2)).count(), 3);
    }
}
