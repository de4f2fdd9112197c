//! The agent's cgroup v2 figures as containerd's `io.containerd.cgroups.v2.Metrics`,
//! which `ctr task metrics` and the CRI plugin decode.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use husk_protocol::agent::StatsContainerResponse;

#[derive(Debug, thiserror::Error)]
#[error("Cannot encode the metrics: {0}")]
pub struct MetricsError(String);

/// Converts the agent's answer.
pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        let mut cpu = CPUStat::new();
        cpu.usage_usec = c.usage_usec;
        cpu.user_usec = c.user_usec;
        cpu.system_usec = c.system_usec;
        cpu.nr_periods = c.nr_periods;
        cpu.nr_throttled = c.nr_throttled;
        cpu.throttled_usec = c.throttled_usec;
        m.cpu = Some(cpu).into();
    }
    if let Some(mem) = s.memory.as_ref() {
        let mut ms = MemoryStat::new();
        ms.usage = mem.usage;
        ms.usage_limit = mem.limit;
        ms.swap_usage = mem.swap_usage;
        let get = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        ms.anon = get("anon");
        ms.file = get("file");
        ms.kernel_stack = get("kernel_stack");
        ms.slab = get("slab");
        ms.sock = get("sock");
        ms.shmem = get("shmem");
        ms.file_mapped = get("file_mapped");
        ms.file_dirty = get("file_dirty");
        ms.inactive_anon = get("inactive_anon");
        ms.active_anon = get("active_anon");
        ms.inactive_file = get("inactive_file");
        ms.active_file = get("active_file");
        ms.pgfault = get("pgfault");
        ms.pgmajfault = get("pgmajfault");
        m.memory = Some(ms).into();
        let mut ev = MemoryEvents::new();
        ev.oom_kill = mem.oom_kill;
        m.memory_events = Some(ev).into();
    }
    if let Some(p) = s.pids.as_ref() {
        let mut ps = PidsStat::new();
        ps.current = p.current;
        ps.limit = p.limit;
        m.pids = Some(ps).into();
    }
    if let Some(io) = s.io.as_ref() {
        let mut st = IOStat::new();
        for d in &io.devices {
            let mut e = IOEntry::new();
            e.major = u64::from(d.major);
            e.minor = u64::from(d.minor);
            e.rbytes = d.rbytes;
            e.wbytes = d.wbytes;
            e.rios = d.rios;
            e.wios = d.wios;
            st.usage.push(e);
        }
        m.io = Some(st).into();
    }
    m
}

/// The metrics packed as containerd expects them in StatsResponse.
pub fn to_any(s: &StatsContainerResponse) -> Result<Any, MetricsError> {
    containerd_shim::util::convert_to_any(Box::new(to_metrics(s)))
        .map_err(|e| MetricsError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::Message;
    use husk_protocol::agent::{CpuStats, IoDeviceStats, IoStats, MemoryStats, PidsStats};

    use super::*;

    #[test]
    fn agent_figures_land_in_cgroup_v2_metrics() {
        let mut s = StatsContainerResponse::new();
        let mut cpu = CpuStats::new();
        cpu.usage_usec = 1500;
        cpu.nr_throttled = 2;
        s.cpu = Some(cpu).into();
        let mut mem = MemoryStats::new();
        mem.usage = 4096;
        mem.limit = 1 << 20;
        mem.oom_kill = 1;
        mem.stat.insert("anon".into(), 1024);
        s.memory = Some(mem).into();
        let mut pids = PidsStats::new();
        pids.current = 3;
        s.pids = Some(pids).into();
        let mut io = IoStats::new();
        let mut d = IoDeviceStats::new();
        d.major = 254;
        d.rbytes = 77;
        io.devices.push(d);
        s.io = Some(io).into();

        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.cpu.nr_throttled, 2);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.memory.anon, 1024);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.io.usage[0].major, 254);
        assert_eq!(m.io.usage[0].rbytes, 77);
    }

    #[test]
    fn missing_sections_stay_unset() {
        let m = to_metrics(&StatsContainerResponse::new());
        assert!(m.cpu.is_none() && m.memory.is_none() && m.pids.is_none() && m.io.is_none());
    }
}
