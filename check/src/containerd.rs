//! What containerd says about itself: `containerd --version` and `containerd config
//! dump` (the merged config it would run with).

/// The runtime type the shim answers to.
pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";

/// containerd's release as (major, minor), from `containerd --version`, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` (Debian)
/// or `containerd containerd.io v1.7.2 0cae528dd6cb` (upstream).
pub fn parse_version(output: &str) -> Option<(u32, u32, String)> {
    let v = output.split_whitespace().nth(2)?;
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v.to_owned()))
}

/// What the config dump tells about husk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// Runtime tables whose `runtime_type` is [`RUNTIME_TYPE`], by their dotted path
    /// (e.g. `plugins.io.containerd.grpc.v1.cri.containerd.runtimes.husk`).
    pub husk_runtimes: Vec<String>,
    /// Whether the CRI plugin is in `disabled_plugins`.
    pub cri_disabled: bool,
    /// containerd's `root` (where its snapshots live).
    pub root: Option<String>,
    /// The CRI plugin's `default_runtime_name` when `runtimes` has no entry of that name
    /// (containerd 1.6's CRI plugin then refuses to load).
    pub cri_default_missing: Option<String>,
}

fn walk(v: &toml::Value, path: &mut Vec<String>, found: &mut Vec<String>) {
    let Some(t) = v.as_table() else { return };
    if t.get("runtime_type").and_then(toml::Value::as_str) == Some(RUNTIME_TYPE) {
        found.push(path.join("."));
    }
    for (k, v) in t {
        path.push(k.clone());
        walk(v, path, found);
        path.pop();
    }
}

/// Parses `containerd config dump`'s TOML.
pub fn parse_dump(text: &str) -> Result<Dump, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut husk_runtimes = Vec::new();
    walk(&v, &mut Vec::new(), &mut husk_runtimes);
    let cri_disabled = v
        .get("disabled_plugins")
        .and_then(toml::Value::as_array)
        .is_some_and(|a| {
            a.iter().filter_map(toml::Value::as_str).any(|p| {
                matches!(
                    p,
                    "cri" | "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.runtime"
                )
            })
        });
    let cri = v
        .get("plugins")
        .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
        .and_then(|c| c.get("containerd"));
    let cri_default_missing = cri.and_then(|c| {
        let name = c.get("default_runtime_name")?.as_str()?;
        let defined = c
            .get("runtimes")
            .and_then(toml::Value::as_table)
            .is_some_and(|r| r.contains_key(name));
        (!defined).then(|| name.to_owned())
    });
    Ok(Dump {
        husk_runtimes,
        cri_disabled,
        root: v
            .get("root")
            .and_then(toml::Value::as_str)
            .map(str::to_owned),
        cri_default_missing,
    })
}

/// The CRI handler name of a runtime found at `path` (its last component), which is
/// what a RuntimeClass's `handler` must say.
pub fn handler_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_debian_and_upstream_builds() {
        assert_eq!(
            parse_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"
            ),
            Some((1, 6, "1.6.20~ds1".into()))
        );
        assert_eq!(
            parse_version("containerd containerd.io v1.7.2 0cae528dd6cb5"),
            Some((1, 7, "1.7.2".into()))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 v2.0.0 207ad71"),
            Some((2, 0, "2.0.0".into()))
        );
        assert_eq!(parse_version("bash: containerd: command not found"), None);
    }

    /// The shape of a containerd 1.6 dump (cut down) with deploy/containerd-husk.toml merged.
    const DUMP: &str = r#"
disabled_plugins = []
root = "/var/lib/containerd"
state = "/run/containerd"
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
          runtime_type = "io.containerd.husk.v2"
          pod_annotations = []
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk.options]
            ConfigPath = "/etc/husk/husk.toml"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
"#;

    #[test]
    fn a_merged_snippet_is_found_with_its_handler() {
        let d = parse_dump(DUMP).unwrap();
        assert_eq!(
            d.husk_runtimes,
            ["plugins.io.containerd.grpc.v1.cri.containerd.runtimes.husk"]
        );
        assert_eq!(handler_name(&d.husk_runtimes[0]), "husk");
        assert!(!d.cri_disabled);
        assert_eq!(d.root.as_deref(), Some("/var/lib/containerd"));
        assert_eq!(d.cri_default_missing, None);
    }

    #[test]
    fn husk_alone_drops_the_default_runc() {
        // What containerd 1.6 dumps for Debian's config plus a runtimes.husk table only.
        let cut = DUMP.replace("runtimes.runc]", "runtimes.other]");
        let d = parse_dump(&cut).unwrap();
        assert_eq!(d.cri_default_missing.as_deref(), Some("runc"));
    }

    #[test]
    fn debian_defaults_have_no_husk_runtime() {
        let plain = DUMP.replace("io.containerd.husk.v2", "io.containerd.runc.v2");
        let d = parse_dump(&plain).unwrap();
        assert!(d.husk_runtimes.is_empty());
        // A comment naming husk is not a registration.
        let commented = format!("# runtime_type = \"{RUNTIME_TYPE}\"\n{plain}");
        assert!(parse_dump(&commented).unwrap().husk_runtimes.is_empty());
    }

    #[test]
    fn disabled_cri_and_bad_text() {
        let d = parse_dump("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n").unwrap();
        assert!(d.cri_disabled);
        assert_eq!(d.root, None);
        assert!(parse_dump("[[[ not toml").is_err());
    }
}
