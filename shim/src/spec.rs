//! Pure decisions about a container: which pod it belongs to, its OCI spec as the guest
//! must see it, and the VM size it asks for. No I/O here, so all of it is unit-tested.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// CRI annotation naming the pod of a container.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI annotation saying whether a container is the pod's sandbox or one of its containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Where the agent mounts the pod's virtio-fs share in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/husk/shared";
/// The virtio-fs tag of the pod's share.
pub const SHARED_FS_TAG: &str = "husk-shared";
/// Where the agent mounts a CRI pod's `/dev/shm` tmpfs in the guest; the containers'
/// `/dev/shm` binds it (see [`sandbox_shm_source`]).
pub const GUEST_POD_SHM: &str = "/run/husk/shm";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("The OCI spec is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("The OCI spec is not a JSON object")]
    NotAnObject,
    #[error("Container id {0:?} cannot name a directory")]
    BadId(String),
    #[error(
        "husk: the pod asks to share the host's {0} namespace (hostNetwork, hostPID or \
         hostIPC); a husk pod is a virtual machine with namespaces of its own and cannot \
         share the host's: run it with another RuntimeClass"
    )]
    HostNamespace(&'static str),
    #[error(
        "husk: the mount at {0} asks for bidirectional mount propagation (rshared): mounts \
         made inside a husk pod cannot reach the host (the pod is a virtual machine; its \
         volumes are shared through virtio-fs); use HostToContainer or None, or run the \
         pod with another RuntimeClass"
    )]
    BidirectionalPropagation(String),
}

/// The namespaces a CRI pod must have of its own: one missing from a CRI container's
/// spec means the pod shares the host's (`hostNetwork`, `hostPID`, `hostIPC`).
const POD_NAMESPACES: [&str; 3] = ["network", "pid", "ipc"];
/// Namespaces a container of a pod may join by path: the pod's, as containerd's CRI
/// names them, `/proc/<the sandbox task's pid>/ns/<kind>`. The pid is the one the shim
/// reported, the guest's, so the path means the same in the guest and the agent joins
/// it there (after checking it is a container of the pod).
const JOINABLE_NAMESPACES: [&str; 3] = ["pid", "ipc", "uts"];

/// Refuses a CRI container that shares a host namespace (see [`POD_NAMESPACES`]).
/// Plain `ctr` containers are not checked: without `--with-ns`, a container without a
/// network namespace entry simply gets a guest network of its own.
pub fn check_no_host_namespaces(spec: &Value) -> Result<(), SpecError> {
    let annotations = spec.get("annotations");
    if annotations
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .is_none()
    {
        return Ok(());
    }
    let namespaces = spec
        .get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array);
    let has = |kind: &str| {
        namespaces.is_some_and(|ns| {
            ns.iter()
                .any(|n| n.get("type").and_then(Value::as_str) == Some(kind))
        })
    };
    match POD_NAMESPACES.into_iter().find(|k| !has(k)) {
        Some(kind) => Err(SpecError::HostNamespace(kind)),
        None => Ok(()),
    }
}

/// Whether the spec is a CRI pod's sandbox container (the pause container), the one
/// that makes the pod's VM.
pub fn is_cri_sandbox(spec: &Value) -> bool {
    spec.get("annotations")
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("sandbox")
}

/// The host directory a CRI sandbox container binds at `/dev/shm`: containerd's tmpfs
/// for the pod's shared memory (`.../sandboxes/<id>/shm`), which every container of the
/// pod that shares its IPC namespace binds too. Under husk the pod's shared memory is a
/// tmpfs of the same size in the guest instead, so it is guest RAM (bounded by the VM
/// and shared by the pod's containers at memory speed), not host tmpfs pages reached
/// through virtio-fs. `None` for anything but a CRI sandbox container.
pub fn sandbox_shm_source(spec: &Value) -> Option<PathBuf> {
    if !is_cri_sandbox(spec) {
        return None;
    }
    spec.get("mounts")?
        .as_array()?
        .iter()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some("/dev/shm") && is_bind(m))?
        .get("source")
        .and_then(Value::as_str)
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
}

/// Whether the guest keeps a namespace entry: new namespaces (no path) except the
/// network (the guest's network is the pod's), and the pod's pid/ipc/uts joined by
/// `/proc/<pid>/ns/<kind>`.
fn guest_keeps_namespace(ns: &Value) -> bool {
    let kind = ns.get("type").and_then(Value::as_str).unwrap_or("");
    match ns.get("path").and_then(Value::as_str) {
        None | Some("") => kind != "network",
        Some(path) => {
            JOINABLE_NAMESPACES.contains(&kind)
                && path
                    .strip_prefix("/proc/")
                    .and_then(|r| r.strip_suffix(&format!("/ns/{kind}")))
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        }
    }
}

/// The pod a container belongs to: its CRI sandbox for a CRI container, otherwise the
/// container itself (a plain `ctr run` container is a pod of one).
pub fn pod_id(container_id: &str, spec: &Value) -> String {
    let annotations = spec.get("annotations");
    let get = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
    match (get(CONTAINER_TYPE_ANNOTATION), get(SANDBOX_ID_ANNOTATION)) {
        (Some("container"), Some(sandbox)) if valid_id(sandbox) => sandbox.to_owned(),
        _ => container_id.to_owned(),
    }
}

/// Whether an id can be used as one path component.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Where a container's files live in the share, relative to the shared dir.
pub fn container_rel_dir(container_id: &str) -> Result<PathBuf, SpecError> {
    if !valid_id(container_id) {
        return Err(SpecError::BadId(container_id.to_owned()));
    }
    Ok(PathBuf::from(container_id))
}

/// The guest path of a container's root file system.
pub fn guest_rootfs(container_id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container_id}/rootfs")
}

/// The host path of the spec's `root.path` (relative paths are in the bundle; the
/// default is `<bundle>/rootfs`).
pub fn host_root_path(bundle: &Path, spec: &Value) -> PathBuf {
    let p = spec
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .unwrap_or("rootfs");
    bundle.join(p)
}

/// A host path the container bind-mounts, which must be shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBind {
    /// The host path (a file or a directory).
    pub host_source: PathBuf,
    /// Its place in the share, relative to the shared dir.
    pub share_rel: PathBuf,
    /// The spec mounts it read-only (`ro`): the share's bind is read-only on the host
    /// too, so a guest that ignores its own mount flags still cannot write it.
    pub readonly: bool,
}

/// The spec the agent gets, and the host paths to share for it.
#[derive(Debug)]
pub struct GuestSpec {
    pub json: Vec<u8>,
    pub binds: Vec<SharedBind>,
    pub terminal: bool,
}

fn is_bind(mount: &Value) -> bool {
    mount.get("type").and_then(Value::as_str) == Some("bind")
        || mount
            .get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| {
                o.iter()
                    .any(|v| matches!(v.as_str(), Some("bind") | Some("rbind")))
            })
}

/// Adjusts containerd's OCI spec for the guest:
/// - `root.path` becomes the container's rootfs in the share;
/// - a bind of the pod's shared memory dir `pod_shm` (see [`sandbox_shm_source`]) binds
///   the guest's pod tmpfs [`GUEST_POD_SHM`] instead;
/// - other bind mounts of host paths are shared: their sources move into the share
///   (one asking for bidirectional propagation, `rshared`, is refused: a guest mount
///   cannot reach the host; `rslave` works as under runc, since the share's bind of a
///   shared host mount receives the host's later mounts and virtiofsd serves them);
/// - host devices (`linux.devices`), host hooks and Intel RDT go (they name host things);
/// - the network namespace goes (the VM is the pod's boundary, and its containers share
///   the guest's network), as do namespaces joined by host path, except the pod's pid,
///   ipc and uts namespaces (see [`JOINABLE_NAMESPACES`]);
/// - the cgroup path is one inside the guest (`/husk/<container>`).
pub fn adjust_for_guest(
    container_id: &str,
    spec: &[u8],
    pod_shm: Option<&Path>,
) -> Result<GuestSpec, SpecError> {
    let rel = container_rel_dir(container_id)?;
    let mut spec: Value = serde_json::from_slice(spec)?;
    let obj = spec.as_object_mut().ok_or(SpecError::NotAnObject)?;

    let readonly = obj
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    obj.insert(
        "root".into(),
        json!({"path": guest_rootfs(container_id), "readonly": readonly}),
    );
    obj.remove("hooks");

    let mut binds = Vec::new();
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let shared = m.get("options").and_then(Value::as_array).is_some_and(|o| {
                o.iter()
                    .any(|v| matches!(v.as_str(), Some("rshared" | "shared")))
            });
            if shared {
                let dest = m.get("destination").and_then(Value::as_str).unwrap_or("?");
                return Err(SpecError::BidirectionalPropagation(dest.to_owned()));
            }
            let Some(src) = m.get("source").and_then(Value::as_str) else {
                continue;
            };
            if pod_shm.is_some_and(|shm| Path::new(src) == shm) {
                m["source"] = Value::String(GUEST_POD_SHM.into());
                continue;
            }
            let name = Path::new(src)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into());
            let share_rel = rel.join("mounts").join(format!("{i}-{name}"));
            let guest = Path::new(GUEST_SHARED_DIR).join(&share_rel);
            let readonly = m
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| v.as_str() == Some("ro")));
            binds.push(SharedBind {
                host_source: PathBuf::from(src),
                share_rel,
                readonly,
            });
            m["source"] = Value::String(guest.to_string_lossy().into_owned());
        }
    }

    let terminal = obj
        .get("process")
        .and_then(|p| p.get("terminal"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("devices");
        linux.remove("intelRdt");
        linux.insert(
            "cgroupsPath".into(),
            Value::String(format!("/husk/{container_id}")),
        );
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            ns.retain(guest_keeps_namespace);
        }
    }
    Ok(GuestSpec {
        json: serde_json::to_vec(&spec)?,
        binds,
        terminal,
    })
}

/// The network namespace the spec joins by path (`linux.namespaces` entry of type
/// `network` with a `path`): the pod's netns made by the CRI plugin's CNI call, or
/// `ctr run --with-ns network:/var/run/netns/X`. `None` for a new or no network
/// namespace, i.e. no NIC for the pod.
pub fn network_namespace(spec: &Value) -> Option<PathBuf> {
    spec.get("linux")?
        .get("namespaces")?
        .as_array()?
        .iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// vCPUs and memory for a pod's VM: the config's defaults plus what the first container's
/// limits ask for (CPU quota rounded up to whole vCPUs, memory limit in MiB), capped.
pub fn vm_size(
    vcpus: u8,
    memory_mib: u64,
    max_vcpus: u8,
    max_memory_mib: u64,
    spec: &Value,
) -> (u8, u64) {
    let resources = spec.get("linux").and_then(|l| l.get("resources"));
    let cpu = resources.and_then(|r| r.get("cpu"));
    let quota = cpu.and_then(|c| c.get("quota")).and_then(Value::as_i64);
    let period = cpu.and_then(|c| c.get("period")).and_then(Value::as_u64);
    let extra_cpus = match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p),
        _ => 0,
    };
    let limit = resources
        .and_then(|r| r.get("memory"))
        .and_then(|m| m.get("limit"))
        .and_then(Value::as_i64)
        .filter(|l| *l > 0)
        .map_or(0, |l| (l as u64).div_ceil(1 << 20));
    let cpus = (u64::from(vcpus) + extra_cpus).min(u64::from(max_vcpus));
    let mem = memory_mib.saturating_add(limit).min(max_memory_mib);
    (u8::try_from(cpus).unwrap_or(max_vcpus), mem)
}

/// The `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`, sent by
/// the CRI plugin and by `ctr run --runtime-config-path`): field 2 of that message. Other
/// option types carry no config path.
pub fn config_path_from_options(type_url: &str, value: &[u8]) -> Option<PathBuf> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut rest = value;
    while !rest.is_empty() {
        let (key, n) = read_varint(rest)?;
        rest = &rest[n..];
        let field = key >> 3;
        match key & 7 {
            0 => {
                let (_, n) = read_varint(rest)?;
                rest = &rest[n..];
            }
            2 => {
                let (len, n) = read_varint(rest)?;
                let len = usize::try_from(len).ok()?;
                let body = rest.get(n..n.checked_add(len)?)?;
                rest = &rest[n + len..];
                if field == 2 && !body.is_empty() {
                    return Some(PathBuf::from(String::from_utf8(body.to_vec()).ok()?));
                }
            }
            1 => rest = rest.get(8..)?,
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cri_sandbox_container_is_the_sandbox() {
        let with = |t: &str| json!({"annotations": {CONTAINER_TYPE_ANNOTATION: t}});
        assert!(is_cri_sandbox(&with("sandbox")));
        assert!(!is_cri_sandbox(&with("container")));
        assert!(!is_cri_sandbox(&json!({"annotations": {}})));
        assert!(!is_cri_sandbox(&json!({})));
    }

    #[test]
    fn the_network_namespace_is_read_from_the_spec() {
        let ns = |v: Value| network_namespace(&json!({ "linux": { "namespaces": v } }));
        assert_eq!(
            ns(json!([
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "mount"}
            ])),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        assert_eq!(
            ns(json!([{"type": "network"}])),
            None,
            "a new netns: no NIC"
        );
        assert_eq!(ns(json!([{"type": "network", "path": ""}])), None);
        assert_eq!(ns(json!([{"type": "ipc", "path": "/proc/1/ns/ipc"}])), None);
        assert_eq!(network_namespace(&json!({})), None);
        assert_eq!(network_namespace(&json!({"linux": {}})), None);
    }

    fn ctr_spec() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {"terminal": false, "args": ["echo", "hello"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "hostname": "c1",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts",
                 "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind"]}
            ],
            "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
            "linux": {
                "cgroupsPath": "/default/c1",
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "ipc"},
                    {"type": "uts", "path": "/proc/42/ns/net"}, {"type": "mount"},
                    {"type": "network"}, {"type": "cgroup", "path": "/proc/42/ns/cgroup"},
                    {"type": "user", "path": "/proc/1/ns/user"}
                ]
            }
        })
    }

    #[test]
    fn pods_group_by_cri_sandbox_id() {
        let plain = json!({});
        assert_eq!(pod_id("c1", &plain), "c1");
        let sandbox = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "sandbox", SANDBOX_ID_ANNOTATION: "pod1"}});
        assert_eq!(pod_id("pod1", &sandbox), "pod1");
        let member = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "container", SANDBOX_ID_ANNOTATION: "pod1"}});
        assert_eq!(pod_id("c2", &member), "pod1");
        // A hostile sandbox id cannot name a directory elsewhere: own pod.
        let evil = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "container", SANDBOX_ID_ANNOTATION: "../../etc"}});
        assert_eq!(pod_id("c3", &evil), "c3");
    }

    #[test]
    fn root_path_is_resolved_in_the_bundle() {
        let b = Path::new("/run/b");
        assert_eq!(
            host_root_path(b, &json!({})),
            PathBuf::from("/run/b/rootfs")
        );
        assert_eq!(
            host_root_path(b, &json!({"root": {"path": "rfs"}})),
            PathBuf::from("/run/b/rfs")
        );
        assert_eq!(
            host_root_path(b, &json!({"root": {"path": "/srv/root"}})),
            PathBuf::from("/srv/root")
        );
    }

    #[test]
    fn ids_are_single_path_components() {
        assert!(valid_id("busybox-1_a.b"));
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(adjust_for_guest("../x", b"{}", None).is_err());
    }

    #[test]
    fn spec_is_adjusted_for_the_guest() {
        let g = adjust_for_guest("c1", &serde_json::to_vec(&ctr_spec()).unwrap(), None).unwrap();
        let s: Value = serde_json::from_slice(&g.json).unwrap();
        assert_eq!(s["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(s["root"]["readonly"], false);
        assert!(s.get("hooks").is_none());
        assert!(s["linux"].get("devices").is_none());
        assert_eq!(s["linux"]["cgroupsPath"], "/husk/c1");
        // Device cgroup rules stay: they restrict, they do not name host files.
        assert_eq!(s["linux"]["resources"]["devices"][0]["allow"], false);
        let ns: Vec<_> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        // The pod's pid namespace joined by /proc/<pid>/ns/pid stays (the pid is the
        // guest's); a path of the wrong kind, the network and other joins go.
        assert_eq!(ns, ["pid", "ipc", "mount"]);
        assert_eq!(s["linux"]["namespaces"][0]["path"], "/proc/42/ns/pid");
        // Untouched fields survive.
        assert_eq!(s["hostname"], "c1");
        assert_eq!(s["process"]["args"][1], "hello");
        assert!(!g.terminal);
    }

    #[test]
    fn cri_pods_sharing_a_host_namespace_are_refused() {
        let cri = |ns: Value| {
            json!({"annotations": {CONTAINER_TYPE_ANNOTATION: "sandbox"},
                   "linux": {"namespaces": ns}})
        };
        let all = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                         {"type": "network", "path": "/var/run/netns/cni-1"}]);
        assert!(check_no_host_namespaces(&cri(all)).is_ok());
        for (missing, ns) in [
            ("network", json!([{"type": "pid"}, {"type": "ipc"}])),
            ("pid", json!([{"type": "ipc"}, {"type": "network"}])),
            ("ipc", json!([{"type": "pid"}, {"type": "network"}])),
        ] {
            let e = check_no_host_namespaces(&cri(ns)).unwrap_err();
            assert!(
                matches!(e, SpecError::HostNamespace(k) if k == missing),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("host's {missing} namespace")),
                "{e}"
            );
        }
        // Not a CRI container: a ctr container without a network entry is not refused.
        assert!(check_no_host_namespaces(&json!({"linux": {"namespaces": []}})).is_ok());
    }

    #[test]
    fn bind_mounts_move_into_the_share() {
        let g = adjust_for_guest("c1", &serde_json::to_vec(&ctr_spec()).unwrap(), None).unwrap();
        let s: Value = serde_json::from_slice(&g.json).unwrap();
        assert_eq!(s["mounts"][0]["source"], "proc");
        assert_eq!(
            s["mounts"][1]["source"],
            "/run/husk/shared/c1/mounts/1-hosts"
        );
        assert_eq!(
            s["mounts"][2]["source"],
            "/run/husk/shared/c1/mounts/2-data"
        );
        assert_eq!(
            g.binds,
            vec![
                SharedBind {
                    host_source: "/var/lib/x/hosts".into(),
                    share_rel: "c1/mounts/1-hosts".into(),
                    readonly: true,
                },
                SharedBind {
                    host_source: "/srv/data".into(),
                    share_rel: "c1/mounts/2-data".into(),
                    readonly: false,
                },
            ]
        );
    }

    /// A CRI pod's /dev/shm: the sandbox container names containerd's shm dir; it and
    /// the pod's other containers bind the guest's pod tmpfs instead of sharing the
    /// host dir; other binds still move into the share.
    #[test]
    fn the_pods_shared_memory_is_the_guests_tmpfs() {
        let shm = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/shm";
        let spec = |kind: &str| {
            json!({
                "annotations": {CONTAINER_TYPE_ANNOTATION: kind},
                "mounts": [
                    {"destination": "/dev/shm", "type": "bind", "source": shm,
                     "options": ["rbind", "ro"]},
                    {"destination": "/data", "type": "bind", "source": "/srv/data",
                     "options": ["rbind"]},
                ]
            })
        };
        assert_eq!(
            sandbox_shm_source(&spec("sandbox")),
            Some(PathBuf::from(shm))
        );
        assert_eq!(sandbox_shm_source(&spec("container")), None);
        assert_eq!(
            sandbox_shm_source(&json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "sandbox"}, "mounts": [
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]})),
            None
        );
        for kind in ["sandbox", "container"] {
            let raw = serde_json::to_vec(&spec(kind)).unwrap();
            let g = adjust_for_guest("c1", &raw, Some(Path::new(shm))).unwrap();
            let s: Value = serde_json::from_slice(&g.json).unwrap();
            assert_eq!(s["mounts"][0]["source"], GUEST_POD_SHM);
            assert_eq!(
                s["mounts"][1]["source"],
                "/run/husk/shared/c1/mounts/1-data"
            );
            assert_eq!(g.binds.len(), 1);
            assert_eq!(g.binds[0].host_source, PathBuf::from("/srv/data"));
        }
        // Without a pod shm (a plain ctr container) the bind is shared as any other.
        let raw = serde_json::to_vec(&spec("container")).unwrap();
        assert_eq!(adjust_for_guest("c1", &raw, None).unwrap().binds.len(), 2);
    }

    #[test]
    fn bidirectional_propagation_is_refused_naming_the_mount() {
        let spec = json!({"mounts": [
            {"destination": "/a", "type": "bind", "source": "/srv/a", "options": ["rbind", "rslave"]},
            {"destination": "/b", "type": "bind", "source": "/srv/b", "options": ["rbind", "rshared"]},
        ]});
        let e = adjust_for_guest("c1", &serde_json::to_vec(&spec).unwrap(), None).unwrap_err();
        assert!(
            matches!(&e, SpecError::BidirectionalPropagation(d) if d == "/b"),
            "{e}"
        );
        assert!(e.to_string().contains("HostToContainer"), "{e}");
        let ok = json!({"mounts": [
            {"destination": "/a", "type": "bind", "source": "/srv/a", "options": ["rbind", "rslave"]},
        ]});
        assert!(adjust_for_guest("c1", &serde_json::to_vec(&ok).unwrap(), None).is_ok());
    }

    #[test]
    fn terminal_and_readonly_root_are_kept() {
        let spec = json!({"process": {"terminal": true}, "root": {"path": "r", "readonly": true}});
        let g = adjust_for_guest("t", &serde_json::to_vec(&spec).unwrap(), None).unwrap();
        let s: Value = serde_json::from_slice(&g.json).unwrap();
        assert!(g.terminal);
        assert_eq!(s["root"]["readonly"], true);
        assert!(adjust_for_guest("t", b"[1]", None).is_err());
        assert!(adjust_for_guest("t", b"{", None).is_err());
    }

    #[test]
    fn vm_grows_with_limits_and_is_capped() {
        assert_eq!(vm_size(1, 256, 8, 8192, &json!({})), (1, 256));
        let limited = json!({"linux": {"resources": {
            "cpu": {"quota": 150000, "period": 100000},
            "memory": {"limit": 536870912}}}});
        assert_eq!(vm_size(1, 256, 8, 8192, &limited), (3, 768));
        assert_eq!(vm_size(1, 256, 2, 512, &limited), (2, 512));
        let unlimited = json!({"linux": {"resources": {
            "cpu": {"quota": -1, "period": 100000}, "memory": {"limit": -1}}}});
        assert_eq!(vm_size(2, 256, 8, 8192, &unlimited), (2, 256));
    }

    #[test]
    fn config_path_comes_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url: "x" (1), config_path: "/etc/h.toml" (2) }
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/h.toml");
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &v),
            Some(PathBuf::from("/etc/h.toml"))
        );
        assert_eq!(
            config_path_from_options("containerd.runc.v1.Options", &v),
            None
        );
        // Truncated or garbage bytes are no path, never a panic.
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &v[..8]),
            None
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[0xff; 12]),
            None
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[]),
            None
        );
    }
}
