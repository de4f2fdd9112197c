//! The files a shim leaves for the next one: one serde struct per file, each with its
//! file name and version, written atomically and read back exactly, so that `shim
//! delete` after a crash reads what `start`/`create` wrote (runtime-rs keeps the same in
//! `sandbox_persist.rs`).
//!
//! | file | struct | where | written | read |
//! |---|---|---|---|---|
//! | `husk.json` | [`BundleState`] | the container's bundle | Create | `shim delete` |
//! | `pids.json` | [`PodPids`] | the pod dir | pod start | `shim delete` |
//! | `network.json` | [`crate::network::NetState`] | the pod dir | before the taps | teardown |
//! | `jail.json` | [`crate::jail::JailState`] | the pod dir | before the VMM | teardown |

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A persisted file's contract. The file is the struct's fields (its serde form,
/// unknown fields refused) plus `"version"`, which [`write`] adds and [`read`] checks
/// first: one place versions every file.
pub trait Persisted: Serialize + DeserializeOwned {
    /// Its name in its directory.
    const FILE: &'static str;
    /// The version this shim writes and the only one it reads.
    const VERSION: u32;
}

/// The key of the version in every file.
const VERSION_KEY: &str = "version";

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("Cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is version {found}; this shim reads version {expected}")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

/// Writes `value` to `dir/T::FILE`: a temporary file, synced, renamed over the old one,
/// so a reader sees the old file or the new one, never half of one.
pub fn write<T: Persisted>(dir: &Path, value: &T) -> Result<(), PersistError> {
    let path = dir.join(T::FILE);
    let tmp = dir.join(format!(".{}.tmp", T::FILE));
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| PersistError::Io { what, path, source }
    };
    let malformed = |source| PersistError::Malformed {
        path: path.clone(),
        source,
    };
    let mut json = serde_json::to_value(value).map_err(malformed)?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert(VERSION_KEY.into(), T::VERSION.into());
    }
    let text = serde_json::to_vec_pretty(&json).map_err(malformed)?;
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&text).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

/// Reads `dir/T::FILE`; `Ok(None)` if there is none (whoever would have written it never
/// got that far).
pub fn read<T: Persisted>(dir: &Path) -> Result<Option<T>, PersistError> {
    let path = dir.join(T::FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                what: "read",
                path,
                source,
            })
        }
    };
    // The version first, so that a file of another version says so rather than failing
    // on a field it does not know.
    let malformed = |source| PersistError::Malformed {
        path: path.clone(),
        source,
    };
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).map_err(malformed)?;
    let found = json
        .as_object_mut()
        .and_then(|o| o.remove(VERSION_KEY))
        .and_then(|v| v.as_u64())
        .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    if found != T::VERSION {
        return Err(PersistError::Version {
            path,
            found,
            expected: T::VERSION,
        });
    }
    serde_json::from_value(json).map(Some).map_err(malformed)
}

/// What `shim delete` needs to find a container's pod after the shim died; written into
/// the bundle at Create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleState {
    /// The pod's directory (`<state_dir>/<namespace>/<pod>`).
    pub pod_dir: PathBuf,
    /// The VMM and virtiofsd binaries the pod ran, so that a reused pid of something
    /// else is never killed.
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
}

impl Persisted for BundleState {
    const FILE: &'static str = "husk.json";
    const VERSION: u32 = 1;
}

/// The processes of a running pod, for `shim delete` after its shim died (0: not
/// started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodPids {
    pub shim: i32,
    pub vmm: i32,
    pub virtiofsd: i32,
}

impl Persisted for PodPids {
    const FILE: &'static str = "pids.json";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-persist-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn what_is_written_is_read_back_exactly() {
        let d = temp("round");
        assert_eq!(read::<PodPids>(&d).unwrap(), None);
        let p = PodPids {
            shim: 10,
            vmm: 11,
            virtiofsd: 12,
        };
        write(&d, &p).unwrap();
        assert_eq!(read::<PodPids>(&d).unwrap(), Some(p));
        let b = BundleState {
            pod_dir: "/run/husk/default/p".into(),
            vmm: "/usr/bin/husk-vmm".into(),
            virtiofsd: "/v".into(),
        };
        write(&d, &b).unwrap();
        assert_eq!(read::<BundleState>(&d).unwrap(), Some(b));
        // The version is in the file.
        let text = std::fs::read_to_string(d.join(BundleState::FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn another_version_a_torn_file_and_an_unknown_field_are_errors_naming_the_file() {
        let d = temp("bad");
        let path = d.join(PodPids::FILE);
        std::fs::write(
            &path,
            r#"{"version": 2, "shim": 1, "vmm": 2, "virtiofsd": 3, "new": 4}"#,
        )
        .unwrap();
        let e = read::<PodPids>(&d).unwrap_err();
        assert!(
            matches!(
                e,
                PersistError::Version {
                    found: 2,
                    expected: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("pids.json"), "{e}");
        std::fs::write(
            &path,
            r#"{"version": 1, "shim": 1, "vmm": 2, "virtiofsd": 3, "new": 4}"#,
        )
        .unwrap();
        assert!(matches!(
            read::<PodPids>(&d),
            Err(PersistError::Malformed { .. })
        ));
        std::fs::write(&path, r#"{"version": 1, "shim": 1"#).unwrap();
        assert!(matches!(
            read::<PodPids>(&d),
            Err(PersistError::Malformed { .. })
        ));
        // A file from before versioning has none: version 0.
        std::fs::write(&path, r#"{"shim": 1, "vmm": 2, "virtiofsd": 3}"#).unwrap();
        assert!(matches!(
            read::<PodPids>(&d),
            Err(PersistError::Version { found: 0, .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
