//! Container resource figures: the `StatsContainerResponse` of the agent
//! API as plain structs, the parsers of the cgroup v2 files they come from,
//! and the mapping from libcgroups' v1 statistics (cgroup v1 hosts, tests).
//!
//! The parsers take file contents, not paths, so they are tested on sample
//! text in the kernel's exact formats. A key or file a kernel lacks (no
//! `cpu` controller enabled: no `nr_periods`; no swap: no
//! `memory.swap.current`) reads as 0, never as an error.

use std::collections::HashMap;

use husk_protocol::agent as proto;
use libcgroups::stats::Stats as V1Stats;

/// `StatsContainerResponse`, field for field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub io: Vec<IoDeviceStats>,
}

/// `CpuStats`: cpu.stat, times in microseconds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// `MemoryStats`: bytes; `limit` 0 when unlimited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage: u64,
    pub limit: u64,
    pub swap_usage: u64,
    pub stat: HashMap<String, u64>,
    pub oom_kill: u64,
}

/// `PidsStats`: `limit` 0 when unlimited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    pub limit: u64,
}

/// `IoDeviceStats`: one block device of io.stat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IoDeviceStats {
    pub major: u32,
    pub minor: u32,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// A line of a cgroup file that is not in the kernel's format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Malformed {file} line {line:?}")]
pub struct ParseError {
    pub file: &'static str,
    pub line: String,
}

fn malformed(file: &'static str, line: &str) -> ParseError {
    ParseError {
        file,
        line: line.chars().take(200).collect(),
    }
}

/// A flat-keyed file (`key value` per line: cpu.stat, memory.stat,
/// memory.events, v1 memory.oom_control).
pub fn parse_flat_keyed(
    file: &'static str,
    text: &str,
) -> Result<HashMap<String, u64>, ParseError> {
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(malformed(file, line));
        };
        let value = value.parse().map_err(|_| malformed(file, line))?;
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

/// A single-value file: a number, or `max` (unlimited, reported as 0).
pub fn parse_single_or_max(file: &'static str, text: &str) -> Result<u64, ParseError> {
    match text.trim() {
        "max" => Ok(0),
        value => value.parse().map_err(|_| malformed(file, text.trim())),
    }
}

/// cpu.stat.
pub fn parse_cpu_stat(text: &str) -> Result<CpuStats, ParseError> {
    let map = parse_flat_keyed("cpu.stat", text)?;
    let get = |key: &str| map.get(key).copied().unwrap_or(0);
    Ok(CpuStats {
        usage_usec: get("usage_usec"),
        user_usec: get("user_usec"),
        system_usec: get("system_usec"),
        nr_periods: get("nr_periods"),
        nr_throttled: get("nr_throttled"),
        throttled_usec: get("throttled_usec"),
    })
}

/// The `oom_kill` counter of memory.events (v2) or memory.oom_control (v1).
pub fn parse_oom_kill(file: &'static str, text: &str) -> Result<u64, ParseError> {
    Ok(parse_flat_keyed(file, text)?
        .get("oom_kill")
        .copied()
        .unwrap_or(0))
}

/// io.stat: `MAJ:MIN key=value ...` per device. Keys other than the four
/// the API reports (dbytes, dios, cost.* of io.cost) are skipped.
pub fn parse_io_stat(text: &str) -> Result<Vec<IoDeviceStats>, ParseError> {
    let mut devices = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let device = fields.next().ok_or_else(|| malformed("io.stat", line))?;
        let (major, minor) = device
            .split_once(':')
            .and_then(|(ma, mi)| Some((ma.parse().ok()?, mi.parse().ok()?)))
            .ok_or_else(|| malformed("io.stat", line))?;
        let mut dev = IoDeviceStats {
            major,
            minor,
            ..Default::default()
        };
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| malformed("io.stat", line))?;
            let slot = match key {
                "rbytes" => &mut dev.rbytes,
                "wbytes" => &mut dev.wbytes,
                "rios" => &mut dev.rios,
                "wios" => &mut dev.wios,
                _ => continue,
            };
            *slot = value.parse().map_err(|_| malformed("io.stat", line))?;
        }
        devices.push(dev);
    }
    Ok(devices)
}

/// v1 reports "no limit" as a huge page-aligned number
/// (0x7FFFFFFFFFFFF000 on x86_64); anything that large is unlimited.
fn v1_limit(limit: u64) -> u64 {
    if limit >= 1 << 62 {
        0
    } else {
        limit
    }
}

/// User or system CPU time on v1: the per-CPU nanoseconds of
/// cpuacct.usage_all when there, else cpuacct.stat's ticks (USER_HZ, 100
/// per second in the kernel's ABI), which is what libcgroups stores in
/// `usage_user`/`usage_kernel`.
fn v1_mode_usec(per_core_ns: &[u64], ticks: u64) -> u64 {
    if per_core_ns.is_empty() {
        ticks.saturating_mul(10_000)
    } else {
        per_core_ns
            .iter()
            .fold(0u64, |sum, ns| sum.saturating_add(*ns))
            / 1000
    }
}

/// Maps libcgroups' v1 statistics (nanoseconds, v1 names) to the API's
/// figures. `oom_kill` comes from memory.oom_control, which libcgroups
/// does not read.
pub fn from_v1(stats: &V1Stats, oom_kill: u64) -> ContainerStats {
    let usage = &stats.cpu.usage;
    let throttling = &stats.cpu.throttling;
    let memory = &stats.memory;
    let mut io: Vec<IoDeviceStats> = Vec::new();
    let blkio = &stats.blkio;
    let entries = (blkio.service_bytes.iter().map(|e| (e, true)))
        .chain(blkio.serviced.iter().map(|e| (e, false)));
    for (entry, bytes) in entries {
        let (major, minor) = (entry.major as u32, entry.minor as u32);
        let i = match io.iter().position(|d| (d.major, d.minor) == (major, minor)) {
            Some(i) => i,
            None => {
                io.push(IoDeviceStats {
                    major,
                    minor,
                    ..Default::default()
                });
                io.len() - 1
            }
        };
        let dev = &mut io[i];
        let slot = match (entry.op_type.as_deref(), bytes) {
            (Some("Read"), true) => &mut dev.rbytes,
            (Some("Write"), true) => &mut dev.wbytes,
            (Some("Read"), false) => &mut dev.rios,
            (Some("Write"), false) => &mut dev.wios,
            _ => continue,
        };
        *slot = entry.value;
    }
    ContainerStats {
        cpu: CpuStats {
            usage_usec: usage.usage_total / 1000,
            user_usec: v1_mode_usec(&usage.per_core_usage_user, usage.usage_user),
            system_usec: v1_mode_usec(&usage.per_core_usage_kernel, usage.usage_kernel),
            nr_periods: throttling.periods,
            nr_throttled: throttling.throttled_periods,
            throttled_usec: throttling.throttled_time / 1000,
        },
        memory: MemoryStats {
            usage: memory.memory.usage,
            limit: v1_limit(memory.memory.limit),
            swap_usage: memory.memswap.usage.saturating_sub(memory.memory.usage),
            stat: memory.stats.clone(),
            oom_kill,
        },
        pids: PidsStats {
            current: stats.pids.current,
            limit: stats.pids.limit,
        },
        io,
    }
}

impl From<ContainerStats> for proto::StatsContainerResponse {
    fn from(s: ContainerStats) -> Self {
        let mut r = proto::StatsContainerResponse::new();
        let mut cpu = proto::CpuStats::new();
        cpu.usage_usec = s.cpu.usage_usec;
        cpu.user_usec = s.cpu.user_usec;
        cpu.system_usec = s.cpu.system_usec;
        cpu.nr_periods = s.cpu.nr_periods;
        cpu.nr_throttled = s.cpu.nr_throttled;
        cpu.throttled_usec = s.cpu.throttled_usec;
        let mut memory = proto::MemoryStats::new();
        memory.usage = s.memory.usage;
        memory.limit = s.memory.limit;
        memory.swap_usage = s.memory.swap_usage;
        memory.stat = s.memory.stat;
        memory.oom_kill = s.memory.oom_kill;
        let mut pids = proto::PidsStats::new();
        pids.current = s.pids.current;
        pids.limit = s.pids.limit;
        let mut io = proto::IoStats::new();
        io.devices =
            s.io.into_iter()
                .map(|d| {
                    let mut p = proto::IoDeviceStats::new();
                    p.major = d.major;
                    p.minor = d.minor;
                    p.rbytes = d.rbytes;
                    p.wbytes = d.wbytes;
                    p.rios = d.rios;
                    p.wios = d.wios;
                    p
                })
                .collect();
        r.cpu = Some(cpu).into();
        r.memory = Some(memory).into();
        r.pids = Some(pids).into();
        r.io = Some(io).into();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read off a 6.1 kernel: a cgroup with the cpu controller enabled.
    const CPU_STAT: &str = "usage_usec 3051234\nuser_usec 2051000\nsystem_usec 1000234\n\
        core_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 7\nthrottled_usec 45123\n\
        nr_bursts 0\nburst_usec 0\n";

    #[test]
    fn cpu_stat_with_cpu_controller() {
        assert_eq!(
            parse_cpu_stat(CPU_STAT).unwrap(),
            CpuStats {
                usage_usec: 3051234,
                user_usec: 2051000,
                system_usec: 1000234,
                nr_periods: 120,
                nr_throttled: 7,
                throttled_usec: 45123,
            }
        );
    }

    #[test]
    fn cpu_stat_without_cpu_controller_has_no_throttling() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        let s = parse_cpu_stat(text).unwrap();
        assert_eq!((s.usage_usec, s.nr_periods, s.throttled_usec), (1500, 0, 0));
    }

    #[test]
    fn memory_stat_keeps_every_key() {
        let text = "anon 1245184\nfile 8192\nkernel 217088\nkernel_stack 32768\n\
            pagetables 36864\nsock 0\nshmem 0\nfile_mapped 0\nfile_dirty 0\n\
            file_writeback 0\nswapcached 0\nanon_thp 0\ninactive_anon 1232896\n\
            active_anon 8192\ninactive_file 8192\nactive_file 0\nunevictable 0\n\
            pgfault 1453\npgmajfault 0\nthp_fault_alloc 0\n";
        let map = parse_flat_keyed("memory.stat", text).unwrap();
        assert_eq!(map.len(), 20);
        assert_eq!(map["anon"], 1245184);
        assert_eq!(map["pgfault"], 1453);
    }

    #[test]
    fn memory_events_oom_kill() {
        let text = "low 0\nhigh 0\nmax 13\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill("memory.events", text).unwrap(), 2);
        // v1 memory.oom_control has the same counter.
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse_oom_kill("memory.oom_control", v1).unwrap(), 5);
        // Kernels before 4.13 have no counter: no kill seen.
        let old = "oom_kill_disable 0\nunder_oom 0\n";
        assert_eq!(parse_oom_kill("memory.oom_control", old).unwrap(), 0);
    }

    #[test]
    fn single_values_and_max() {
        assert_eq!(parse_single_or_max("memory.max", "max\n"), Ok(0));
        assert_eq!(
            parse_single_or_max("memory.max", "67108864\n"),
            Ok(67108864)
        );
        assert_eq!(parse_single_or_max("pids.current", "3\n"), Ok(3));
        assert!(parse_single_or_max("pids.max", "lots\n").is_err());
    }

    #[test]
    fn io_stat_two_devices() {
        let text = "254:0 rbytes=1634304 wbytes=8192 rios=73 wios=2 dbytes=0 dios=0\n\
            8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0 cost.vrate=100.00\n";
        let devs = parse_io_stat(text).unwrap();
        assert_eq!(
            devs,
            vec![
                IoDeviceStats {
                    major: 254,
                    minor: 0,
                    rbytes: 1634304,
                    wbytes: 8192,
                    rios: 73,
                    wios: 2,
                },
                IoDeviceStats {
                    major: 8,
                    minor: 16,
                    rbytes: 4096,
                    wbytes: 0,
                    rios: 1,
                    wios: 0,
                },
            ]
        );
        assert_eq!(parse_io_stat("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert!(parse_flat_keyed("cpu.stat", "usage_usec\n").is_err());
        assert!(parse_flat_keyed("cpu.stat", "usage_usec x\n").is_err());
        assert!(parse_flat_keyed("cpu.stat", "a 1 2\n").is_err());
        assert!(parse_cpu_stat("usage_usec -1\n").is_err());
        assert!(parse_io_stat("8 rbytes=1\n").is_err());
        assert!(parse_io_stat("8:0 rbytes\n").is_err());
        assert!(parse_io_stat("8:0 rbytes=x\n").is_err());
        assert!(parse_io_stat("a:b rbytes=1\n").is_err());
        let long = "x".repeat(10_000);
        let err = parse_flat_keyed("memory.stat", &long).unwrap_err();
        assert_eq!(err.line.len(), 200);
    }

    #[test]
    fn v1_figures_map_to_the_api_units() {
        use libcgroups::stats::BlkioDeviceStat;
        let mut v1 = V1Stats::default();
        v1.cpu.usage.usage_total = 5_000_000;
        // cpuacct.stat ticks, and the per-CPU ns of cpuacct.usage_all.
        v1.cpu.usage.usage_user = 300;
        v1.cpu.usage.usage_kernel = 200;
        v1.cpu.usage.per_core_usage_user = vec![1_000_000, 2_000_000];
        v1.cpu.usage.per_core_usage_kernel = vec![1_500_000, 500_000];
        v1.cpu.throttling.throttled_time = 7_000;
        v1.memory.memory.usage = 4096;
        v1.memory.memory.limit = 0x7FFF_FFFF_FFFF_F000;
        v1.memory.memswap.usage = 8192;
        v1.pids.current = 2;
        let stat = |op: &str, value| BlkioDeviceStat {
            major: 8,
            minor: 0,
            op_type: Some(op.to_owned()),
            value,
        };
        v1.blkio.service_bytes = vec![stat("Read", 100), stat("Write", 200), stat("Total", 300)];
        v1.blkio.serviced = vec![stat("Read", 1), stat("Write", 2)];
        let s = from_v1(&v1, 3);
        assert_eq!(
            (s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec),
            (5000, 3000, 2000)
        );
        assert_eq!(s.cpu.throttled_usec, 7);
        v1.cpu.usage.per_core_usage_user.clear();
        assert_eq!(from_v1(&v1, 0).cpu.user_usec, 3_000_000);
        assert_eq!(
            (s.memory.usage, s.memory.limit, s.memory.swap_usage),
            (4096, 0, 4096)
        );
        assert_eq!(s.memory.oom_kill, 3);
        assert_eq!(
            s.io,
            vec![IoDeviceStats {
                major: 8,
                minor: 0,
                rbytes: 100,
                wbytes: 200,
                rios: 1,
                wios: 2
            }]
        );
    }

    #[test]
    fn proto_conversion_copies_every_field() {
        let mut s = ContainerStats::default();
        s.cpu.usage_usec = 1;
        s.cpu.throttled_usec = 6;
        s.memory.limit = 7;
        s.memory.stat.insert("anon".into(), 8);
        s.pids.current = 9;
        s.io.push(IoDeviceStats {
            major: 10,
            minor: 11,
            rbytes: 12,
            wbytes: 13,
            rios: 14,
            wios: 15,
        });
        let p = proto::StatsContainerResponse::from(s);
        assert_eq!(p.cpu.usage_usec, 1);
        assert_eq!(p.cpu.throttled_usec, 6);
        assert_eq!(p.memory.limit, 7);
        assert_eq!(p.memory.stat["anon"], 8);
        assert_eq!(p.pids.current, 9);
        assert_eq!(p.io.devices[0].wios, 15);
    }
}
