//! The mount table (`/proc/self/mounts`): which filesystem holds a path, and how the
//! cgroup hierarchies are laid out.

use std::path::{Component, Path};

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push(
                    oct.iter()
                        .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the mount table's text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Mount {
                source: unescape(f.next()?),
                target: unescape(f.next()?),
                fstype: f.next()?.to_owned(),
                options: f.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Whether `path` is `base` or below it, component by component (`/run/husk` is under
/// `/run`, `/runx` is not).
fn is_under(path: &Path, base: &Path) -> bool {
    let mut p = path.components().filter(|c| *c != Component::CurDir);
    for b in base.components().filter(|c| *c != Component::CurDir) {
        if p.next() != Some(b) {
            return false;
        }
    }
    true
}

/// The mount that holds `path` (absolute, symlinks resolved): the longest mount point
/// at or above it, the last one mounted winning where several share a point.
pub fn holding<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if is_under(path, Path::new(&m.target))
            && best.is_none_or(|b| {
                Path::new(&m.target).components().count()
                    >= Path::new(&b.target).components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// How the host's cgroup hierarchies are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup2 alone at /sys/fs/cgroup (unified).
    V2,
    /// Only v1 controller hierarchies.
    V1,
    /// v1 controllers and a cgroup2 hierarchy beside them (systemd's
    /// /sys/fs/cgroup/unified).
    Hybrid,
    /// No cgroup filesystem mounted.
    None,
}

impl CgroupLayout {
    pub fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2 (unified)",
            Self::V1 => "v1",
            Self::Hybrid => "hybrid (v1 controllers, cgroup2 beside them)",
            Self::None => "none",
        }
    }
}

/// The cgroup layout the mount table shows.
pub fn cgroup_layout(mounts: &[Mount]) -> CgroupLayout {
    let v1 = mounts.iter().any(|m| m.fstype == "cgroup");
    let v2_root = holding(mounts, Path::new("/sys/fs/cgroup"))
        .is_some_and(|m| m.fstype == "cgroup2" && m.target == "/sys/fs/cgroup");
    let v2_any = mounts.iter().any(|m| m.fstype == "cgroup2");
    match (v1, v2_root, v2_any) {
        (false, true, _) => CgroupLayout::V2,
        (true, _, true) => CgroupLayout::Hybrid,
        (true, _, false) => CgroupLayout::V1,
        (false, false, true) => CgroupLayout::V2,
        (false, false, false) => CgroupLayout::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development machine's table (cgroups v1 + unified, ext4 root).
    const HYBRID: &str = "\
proc /proc proc rw,relatime 0 0
/dev/vda / ext4 rw,relatime,discard 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
/dev/vda /run/netns ext4 rw,relatime 0 0
";
    /// The test host's: an overlay root, tmpfs /run and /tmp, cgroup2 only.
    const TESTHOST: &str = "\
overlay / overlay rw,relatime,lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work 0 0
run /run tmpfs rw,nosuid,nodev,relatime,mode=755 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,relatime,nsdelegate 0 0
tmp /tmp tmpfs rw,nosuid,nodev 0 0
/dev/sda1 /mnt/my\\040disk ext4 rw 0 0
";

    #[test]
    fn the_deepest_mount_holds_a_path() {
        let m = parse(TESTHOST);
        assert_eq!(
            holding(&m, Path::new("/var/lib/containerd"))
                .unwrap()
                .fstype,
            "overlay"
        );
        assert_eq!(holding(&m, Path::new("/run/husk")).unwrap().fstype, "tmpfs");
        assert_eq!(holding(&m, Path::new("/run")).unwrap().target, "/run");
        // /runx is not under /run.
        assert_eq!(holding(&m, Path::new("/runx/a")).unwrap().target, "/");
        assert_eq!(
            holding(&m, Path::new("/tmp/clone/x")).unwrap().fstype,
            "tmpfs"
        );
        assert_eq!(
            holding(&m, Path::new("/mnt/my disk/a")).unwrap().fstype,
            "ext4"
        );
    }

    #[test]
    fn the_later_of_two_mounts_on_one_point_wins() {
        let m =
            parse("/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\nover /run overlay rw 0 0\n");
        assert_eq!(
            holding(&m, Path::new("/run/husk")).unwrap().fstype,
            "overlay"
        );
    }

    #[test]
    fn cgroup_layouts() {
        assert_eq!(cgroup_layout(&parse(HYBRID)), CgroupLayout::Hybrid);
        assert_eq!(cgroup_layout(&parse(TESTHOST)), CgroupLayout::V2);
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.starts_with("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(cgroup_layout(&parse(&v1)), CgroupLayout::V1);
        assert_eq!(
            cgroup_layout(&parse("/dev/vda / ext4 rw 0 0\n")),
            CgroupLayout::None
        );
    }

    #[test]
    fn escapes_and_bad_lines() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("trail\\04"), "trail\\04");
        assert_eq!(parse("garbage\n\n/dev/x /y ext4 rw 0 0\n").len(), 1);
    }
}
