//! The resources of `UpdateContainer`: the OCI `linux.resources` object as
//! JSON, checked before any cgroup file is written, so a nonsense value is
//! refused whole with the field named instead of half-applied.

use oci_spec::runtime::LinuxResources;

/// Why new resources were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourcesError {
    #[error("Resources are not a valid linux.resources JSON object: {0}")]
    Json(String),
    #[error("Resources JSON is {0} bytes, over the 64 KiB allowed")]
    TooLarge(usize),
    #[error("{field} is {value}: {why}")]
    Invalid {
        field: &'static str,
        value: i128,
        why: &'static str,
    },
    #[error("{field} {value:?} is not a list of numbers and ranges")]
    BadList { field: &'static str, value: String },
    #[error("{0} is not supported on update")]
    Unsupported(&'static str),
}

/// Largest JSON accepted: a resources object is a few hundred bytes.
pub const MAX_RESOURCES_JSON: usize = 64 * 1024;

/// Parses and checks `resources_json` of an `UpdateContainerRequest`.
///
/// Device rules are dropped, as `runc update` ignores them: containerd's CRI sends the
/// container's whole `linux.resources` on UpdateContainerResources, its device cgroup
/// rules included, which are the container's from its creation and do not change.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, ResourcesError> {
    if json.len() > MAX_RESOURCES_JSON {
        return Err(ResourcesError::TooLarge(json.len()));
    }
    let mut resources: LinuxResources =
        serde_json::from_slice(json).map_err(|e| ResourcesError::Json(e.to_string()))?;
    resources.set_devices(None);
    validate(&resources)?;
    Ok(resources)
}

fn invalid(field: &'static str, value: impl Into<i128>, why: &'static str) -> ResourcesError {
    ResourcesError::Invalid {
        field,
        value: value.into(),
        why,
    }
}

/// Smallest memory limit accepted: below this a container cannot exec.
const MIN_MEMORY: i64 = 1 << 20;

/// Refuses values the kernel would refuse late or that make no sense.
pub fn validate(r: &LinuxResources) -> Result<(), ResourcesError> {
    if let Some(memory) = r.memory() {
        let limit = memory.limit();
        for (field, value) in [
            ("memory.limit", limit),
            ("memory.reservation", memory.reservation()),
            ("memory.swap", memory.swap()),
        ] {
            match value {
                Some(v) if v < -1 => {
                    return Err(invalid(field, v, "must be -1 (unlimited) or >= 0"))
                }
                Some(v) if (0..MIN_MEMORY).contains(&v) && field != "memory.reservation" => {
                    return Err(invalid(field, v, "must be at least 1 MiB"));
                }
                _ => {}
            }
        }
        if let (Some(limit), Some(swap)) = (limit, memory.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err(invalid(
                    "memory.swap",
                    swap,
                    "is memory+swap and must not be below memory.limit",
                ));
            }
        }
        if let Some(s) = memory.swappiness() {
            if s > 100 {
                return Err(invalid("memory.swappiness", s, "must be 0..=100"));
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares() {
            if !(2..=262_144).contains(&shares) {
                return Err(invalid("cpu.shares", shares, "must be 2..=262144"));
            }
        }
        if let Some(period) = cpu.period() {
            if !(1000..=1_000_000).contains(&period) {
                return Err(invalid("cpu.period", period, "must be 1000..=1000000 us"));
            }
        }
        if let Some(quota) = cpu.quota() {
            if quota != -1 && !(1000..=i64::from(i32::MAX) * 1000).contains(&quota) {
                return Err(invalid(
                    "cpu.quota",
                    quota,
                    "must be -1 or at least 1000 us",
                ));
            }
        }
        for (field, list) in [("cpu.cpus", cpu.cpus()), ("cpu.mems", cpu.mems())] {
            if let Some(list) = list {
                check_list(field, list)?;
            }
        }
        if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
            return Err(ResourcesError::Unsupported(
                "cpu.realtimeRuntime/realtimePeriod",
            ));
        }
    }
    if let Some(pids) = r.pids() {
        if pids.limit() < -1 {
            return Err(invalid(
                "pids.limit",
                pids.limit(),
                "must be -1, 0 (unlimited) or > 0",
            ));
        }
    }
    if let Some(io) = r.block_io() {
        if let Some(w) = io.weight() {
            if !(10..=1000).contains(&w) {
                return Err(invalid("blockIO.weight", w, "must be 10..=1000"));
            }
        }
    }
    Ok(())
}

/// A cpuset list: "0-3,5", "", or "1".
fn check_list(field: &'static str, list: &str) -> Result<(), ResourcesError> {
    let bad = || ResourcesError::BadList {
        field,
        value: list.chars().take(100).collect(),
    };
    if list.trim().is_empty() {
        return Ok(());
    }
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi || hi > 4096 {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_pids_limits_parse() {
        let r = parse_resources(br#"{"memory":{"limit":67108864},"pids":{"limit":20}}"#).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 20);
    }

    #[test]
    fn empty_object_changes_nothing_and_is_fine() {
        assert!(parse_resources(b"{}").is_ok());
        // The device rules containerd's CRI sends along are ignored, as by runc.
        let r = parse_resources(
            br#"{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":67108864}}"#,
        )
        .unwrap();
        assert!(r.devices().is_none());
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(67108864));
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"memory":{"limit":-5}}"#, "memory.limit is -5"),
            (
                br#"{"memory":{"limit":100}}"#,
                "memory.limit is 100: must be at least 1 MiB",
            ),
            (
                br#"{"memory":{"limit":67108864,"swap":33554432}}"#,
                "memory.swap is 33554432",
            ),
            (br#"{"pids":{"limit":-2}}"#, "pids.limit is -2"),
            (br#"{"cpu":{"period":10}}"#, "cpu.period is 10"),
            (br#"{"cpu":{"quota":5}}"#, "cpu.quota is 5"),
            (br#"{"cpu":{"shares":1}}"#, "cpu.shares is 1"),
            (br#"{"cpu":{"cpus":"0-x"}}"#, "cpu.cpus \"0-x\""),
            (br#"{"cpu":{"cpus":"3-1"}}"#, "cpu.cpus \"3-1\""),
            (br#"{"blockIO":{"weight":5}}"#, "blockIO.weight is 5"),
            (
                br#"{"memory":{"limit":"lots"}}"#,
                "not a valid linux.resources",
            ),
            (b"[1,2", "not a valid linux.resources"),
        ];
        for (json, expected) in cases {
            let err = parse_resources(json).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn oversized_json_is_refused_before_parsing() {
        let big = vec![b' '; MAX_RESOURCES_JSON + 1];
        assert_eq!(
            parse_resources(&big),
            Err(ResourcesError::TooLarge(MAX_RESOURCES_JSON + 1))
        );
    }

    #[test]
    fn cpu_lists() {
        assert!(check_list("cpu.cpus", "0-3,5").is_ok());
        assert!(check_list("cpu.cpus", "").is_ok());
        assert!(check_list("cpu.cpus", "1,").is_err());
    }
}
