//! OOM-kill events per container, for the `GetOOMEvent` long poll.
//!
//! One thread ([`OomMonitor::start`]) reads the `oom_kill` counter of every
//! watched container's cgroup every `interval`: `memory.events` on cgroup
//! v2 (the guest), `memory.oom_control` on v1 (test hosts; kernels since
//! 4.13 count there too). A counter that grew since the last read queues
//! one event with the container's id: kills between two reads coalesce into
//! one event, as the shim reports one TaskOOM per notification anyway.
//! Polling serves both hierarchies with one code path; v1's
//! `cgroup.event_control` eventfd and v2's inotify on memory.events would
//! need one each. A kill in a container that is then removed before the
//! next read is still reported, because [`OomMonitor::unwatch`] reads the
//! counter one last time: call it before the container's cgroup goes.
//!
//! [`OomMonitor::next_event`] blocks until an event is queued or the monitor
//! is shut down ([`OomMonitor::shutdown`], also on drop), which wakes every
//! waiter: the RPC layer's long poll returns then instead of hanging.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::stats::parse_oom_kill;
use super::{Cgroup, CgroupError};
use tracing::warn;

/// Events kept for a caller that does not poll; older ones are dropped.
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// How often the counters are read by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// A process of this container was killed by the OOM killer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomEvent {
    pub container_id: String,
}

/// Why [`OomMonitor::next_event_timeout`] returned without an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OomWaitError {
    #[error("No OOM event within the timeout")]
    Timeout,
    #[error("The OOM monitor is shut down")]
    Shutdown,
}

/// The counter file a watch reads, and its last value.
#[derive(Debug)]
struct Watch {
    file: PathBuf,
    name: &'static str,
    last: u64,
}

#[derive(Debug, Default)]
struct State {
    watches: HashMap<String, Watch>,
    queue: VecDeque<OomEvent>,
    shutdown: bool,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when an event is queued or on shutdown.
    events: Condvar,
    /// Signalled on shutdown, to stop the polling thread's sleep.
    stop: Condvar,
}

/// Watches containers' cgroups for OOM kills. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct OomMonitor {
    shared: Arc<Shared>,
}

impl OomMonitor {
    /// Starts the polling thread (`oom-monitor`), reading every `interval`.
    pub fn start(interval: Duration) -> Result<Self, CgroupError> {
        let shared = Arc::new(Shared::default());
        let poller = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("oom-monitor".into())
            .spawn(move || poll_loop(&poller, interval))
            .map_err(CgroupError::Thread)?;
        Ok(Self { shared })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Starts reporting OOM kills in `cgroup` as events of `container_id`.
    /// Kills before this call are not reported. Watching an id again
    /// replaces its watch.
    pub fn watch(&self, container_id: &str, cgroup: &Cgroup) -> Result<(), CgroupError> {
        let (file, name) = cgroup.oom_counter_file()?;
        let last = read_counter(&file, name)?;
        self.lock()
            .watches
            .insert(container_id.to_owned(), Watch { file, name, last });
        Ok(())
    }

    /// Stops watching `container_id`, after a last read that queues the
    /// kills not yet seen. Unknown ids are ignored.
    pub fn unwatch(&self, container_id: &str) {
        let mut state = self.lock();
        if let Some(mut watch) = state.watches.remove(container_id) {
            if check(container_id, &mut watch) {
                push(&mut state, container_id);
                self.shared.events.notify_all();
            }
        }
    }

    /// Ids being watched, sorted.
    pub fn watched(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().watches.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Blocks until an OOM event is queued and returns it; `None` once the
    /// monitor is shut down (queued events are still handed out first).
    pub fn next_event(&self) -> Option<OomEvent> {
        let mut state = self.lock();
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Some(event);
            }
            if state.shutdown {
                return None;
            }
            state = self
                .shared
                .events
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`Self::next_event`] with a time limit, for callers with a deadline.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<OomEvent, OomWaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Ok(event);
            }
            if state.shutdown {
                return Err(OomWaitError::Shutdown);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OomWaitError::Timeout);
            }
            state = self
                .shared
                .events
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the polling thread and wakes every waiter of `next_event`.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.shared.events.notify_all();
        self.shared.stop.notify_all();
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn push(state: &mut State, container_id: &str) {
    if state.queue.len() >= MAX_QUEUED_EVENTS {
        state.queue.pop_front();
        state.dropped += 1;
    }
    state.queue.push_back(OomEvent {
        container_id: container_id.to_owned(),
    });
}

fn read_counter(file: &Path, name: &'static str) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(file).map_err(|source| CgroupError::Read {
        path: file.to_owned(),
        source,
    })?;
    Ok(parse_oom_kill(name, &text)?)
}

/// Reads a watch's counter; true when it grew. A cgroup that is gone (the
/// container was removed) or unreadable counts as no kill.
fn check(container_id: &str, watch: &mut Watch) -> bool {
    match read_counter(&watch.file, watch.name) {
        Ok(now) if now > watch.last => {
            watch.last = now;
            true
        }
        Ok(now) => {
            watch.last = now;
            false
        }
        Err(CgroupError::Read { ref source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            false
        }
        Err(e) => {
            warn!("OOM counter of container {container_id}: {e}");
            false
        }
    }
}

/// Runs until shutdown or until every handle of the monitor is dropped.
fn poll_loop(shared: &Weak<Shared>, interval: Duration) {
    while let Some(shared) = shared.upgrade() {
        let mut state = lock(&shared);
        if state.shutdown {
            return;
        }
        let mut seen = Vec::new();
        for (id, watch) in state.watches.iter_mut() {
            if check(id, watch) {
                seen.push(id.clone());
            }
        }
        if !seen.is_empty() {
            seen.sort();
            for id in &seen {
                push(&mut state, id);
            }
            shared.events.notify_all();
        }
        let _unused = shared
            .stop
            .wait_timeout(state, interval)
            .unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn fake_cgroup(dir: &Path, oom_kill: u64) -> Cgroup {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 0\noom 0\noom_kill {oom_kill}\n"),
        )
        .unwrap();
        Cgroup::v2_at(dir)
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-oom-{}-{name}", std::process::id()))
    }

    #[test]
    fn counter_growth_is_one_event_for_its_container() {
        let dir = tmp("grow");
        let cg = fake_cgroup(&dir, 3);
        let monitor = OomMonitor::start(Duration::from_millis(10)).unwrap();
        monitor.watch("c1", &cg).unwrap();
        // Kills before the watch are not events.
        assert_eq!(
            monitor.next_event_timeout(Duration::from_millis(100)),
            Err(OomWaitError::Timeout)
        );
        fake_cgroup(&dir, 5);
        assert_eq!(
            monitor.next_event_timeout(Duration::from_secs(5)),
            Ok(OomEvent {
                container_id: "c1".into()
            })
        );
        assert_eq!(
            monitor.next_event_timeout(Duration::from_millis(100)),
            Err(OomWaitError::Timeout)
        );
        monitor.shutdown();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unwatch_reports_a_kill_the_poller_has_not_seen() {
        let dir = tmp("unwatch");
        let cg = fake_cgroup(&dir, 0);
        // Never polls on its own during the test.
        let monitor = OomMonitor::start(Duration::from_secs(3600)).unwrap();
        monitor.watch("c2", &cg).unwrap();
        fake_cgroup(&dir, 1);
        monitor.unwatch("c2");
        assert!(monitor.watched().is_empty());
        assert_eq!(monitor.next_event().unwrap().container_id, "c2");
        monitor.shutdown();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shutdown_wakes_a_blocked_waiter() {
        let monitor = OomMonitor::start(Duration::from_millis(10)).unwrap();
        let waiter = {
            let m = monitor.clone();
            thread::spawn(move || m.next_event())
        };
        thread::sleep(Duration::from_millis(50));
        monitor.shutdown();
        assert_eq!(waiter.join().unwrap(), None);
        assert_eq!(
            monitor.next_event_timeout(Duration::from_secs(1)),
            Err(OomWaitError::Shutdown)
        );
    }

    #[test]
    fn a_removed_cgroup_is_no_event_and_no_error() {
        let dir = tmp("gone");
        let cg = fake_cgroup(&dir, 0);
        let monitor = OomMonitor::start(Duration::from_millis(10)).unwrap();
        monitor.watch("c3", &cg).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            monitor.next_event_timeout(Duration::from_millis(100)),
            Err(OomWaitError::Timeout)
        );
        monitor.unwatch("c3");
        monitor.shutdown();
    }

    #[test]
    fn the_queue_is_bounded() {
        let monitor = OomMonitor::start(Duration::from_secs(3600)).unwrap();
        {
            let mut state = monitor.lock();
            for _ in 0..MAX_QUEUED_EVENTS + 5 {
                push(&mut state, "x");
            }
        }
        assert_eq!(monitor.dropped(), 5);
        monitor.shutdown();
    }
}
