//! The cgroup-backed RPCs of a container: pause/resume (freezer), statistics,
//! resource updates, its process list, and OOM-kill events.

use std::time::Duration;

use crate::container::cgroups::{self, CgroupError, ContainerStats, OomEvent, OomWaitError};

use super::{Result, Sandbox, SandboxError};

/// How [`Sandbox::next_oom_event`] ended without an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomWait {
    /// The caller's deadline passed.
    Timeout,
    /// The sandbox is being destroyed.
    Shutdown,
}

impl Sandbox {
    /// PauseContainer: freezes every process of a running container.
    pub fn pause_container(&self, id: &str) -> Result<()> {
        self.running_container(id, "pause")?;
        self.with_container(id, |c| c.pause())??;
        tracing::info!("Paused container {id}");
        Ok(())
    }

    /// ResumeContainer: thaws a paused container.
    pub fn resume_container(&self, id: &str) -> Result<()> {
        self.with_container(id, |c| c.resume())??;
        tracing::info!("Resumed container {id}");
        Ok(())
    }

    /// StatsContainer: the figures of the container's cgroup.
    pub fn stats_container(&self, id: &str) -> Result<ContainerStats> {
        let cgroup = self.with_container(id, |c| c.cgroup())??;
        Ok(cgroup.stats()?)
    }

    /// UpdateContainer: applies `linux.resources` JSON to the container's
    /// cgroup; fields left out keep their values.
    pub fn update_container(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let resources = cgroups::parse_resources(resources_json).map_err(CgroupError::from)?;
        let cgroup = self.with_container(id, |c| c.cgroup())??;
        cgroup.update(&resources)?;
        tracing::info!("Updated the resources of container {id}");
        Ok(())
    }

    /// ListProcesses: pids of every process in the container's cgroup.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        let cgroup = self.with_container(id, |c| c.cgroup())??;
        Ok(cgroup.pids()?)
    }

    /// GetOOMEvent: waits for the next OOM kill in any container, at most
    /// `timeout` when given.
    pub fn next_oom_event(
        &self,
        timeout: Option<Duration>,
    ) -> std::result::Result<OomEvent, OomWait> {
        match timeout {
            None => self.oom.next_event().ok_or(OomWait::Shutdown),
            Some(t) => self.oom.next_event_timeout(t).map_err(|e| match e {
                OomWaitError::Timeout => OomWait::Timeout,
                OomWaitError::Shutdown => OomWait::Shutdown,
            }),
        }
    }

    /// Starts watching a new container's cgroup for OOM kills. A container
    /// whose cgroup cannot be watched still runs; the failure is logged.
    pub(super) fn watch_oom(&self, id: &str) {
        let watched = self
            .with_container(id, |c| c.cgroup())
            .map_err(|e| husk_errors::chain(&e))
            .and_then(|r| r.map_err(|e| husk_errors::chain(&e)))
            .and_then(|cg| self.oom.watch(id, &cg).map_err(|e| husk_errors::chain(&e)));
        if let Err(e) = watched {
            tracing::warn!("No OOM events for container {id}: {e}");
        }
    }

    fn running_container(&self, id: &str, what: &str) -> Result<()> {
        let entry = self.entry(id)?;
        if !entry.running() {
            return Err(SandboxError::FailedPrecondition(format!(
                "Cannot {what} container {id:?}: it is not running"
            )));
        }
        Ok(())
    }
}
