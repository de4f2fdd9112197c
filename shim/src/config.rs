//! The shim's configuration: one TOML file, `/etc/husk/husk.toml` unless the runtime
//! options (`ConfigPath`, e.g. `ctr run --runtime-config-path` or the CRI runtime's
//! `options`) or the `HUSK_CONFIG` environment variable name another. Every key is
//! optional and has the default documented on its field; an unknown key is an error, so
//! a typo is never silently ignored. `config/husk.toml` in the repository is the
//! annotated example.

use std::path::{Path, PathBuf};

use husk_vm_config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use serde::Deserialize;

/// The default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/husk.toml";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read the husk config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Bad husk config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Bad husk config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Everything the shim needs to start a pod's VM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Guest kernel, an ELF vmlinux or a bzImage. Default `/usr/share/husk/vmlinux`.
    pub kernel: PathBuf,
    /// Guest initramfs with husk-agent as /init. Default `/usr/share/husk/initramfs.cpio`.
    pub initramfs: PathBuf,
    /// The husk-vmm binary. Default `/usr/local/bin/husk-vmm`.
    pub vmm: PathBuf,
    /// The virtiofsd binary. Default `/usr/local/bin/virtiofsd`.
    pub virtiofsd: PathBuf,
    /// vCPUs of a pod's VM before the containers' CPU limits are added. Default 1.
    pub vcpus: u8,
    /// Guest memory in MiB before the containers' memory limits are added. Default 256.
    pub memory_mib: u64,
    /// Upper bound on vCPUs, whatever the limits ask for. Default 8.
    pub max_vcpus: u8,
    /// Upper bound on guest memory in MiB. Default 8192.
    pub max_memory_mib: u64,
    /// Extra guest kernel command line (husk-vmm `--cmdline`). Default `"quiet"`.
    pub kernel_cmdline: String,
    /// Whether husk-vmm runs in its jail (SECURITY.md): started by `jailer` in new
    /// namespaces with a root holding only what the VM needs, as an unprivileged uid of
    /// its own, with no capabilities. Default true; false only for debugging.
    pub jail: bool,
    /// The husk-jailer binary. Default `/usr/local/bin/husk-jailer`.
    pub jailer: PathBuf,
    /// The uids (and gids, the same numbers) of jailed VMMs: one per running pod, leased
    /// from `jail_id_first .. jail_id_first + jail_id_count`. Default 1500000000 and 65536,
    /// far from login users and from the subordinate ids of user namespaces.
    pub jail_id_first: u32,
    pub jail_id_count: u32,
    /// Extra virtiofsd arguments. Default `["--cache=auto", "--sandbox=namespace",
    /// "--seccomp=kill", "--modcaps=-mknod:-setfcap"]`: virtiofsd in its own mount, PID and
    /// network namespaces with the shared dir as its root, under its seccomp filter.
    pub virtiofsd_args: Vec<String>,
    /// Where pods' state lives: `<state_dir>/<namespace>/<pod>/` holds the shared dir,
    /// sockets, console and VMM logs. Default `/run/husk`.
    pub state_dir: PathBuf,
    /// How long to wait for the guest's agent after starting husk-vmm, in seconds.
    /// Default 60 (raise it where guests boot under emulation).
    pub boot_timeout_secs: u64,
    /// Deadline of ordinary agent calls, in seconds. Default 60.
    pub rpc_timeout_secs: u64,
    /// Shim log level: error, warn, info, debug or trace. Default `info`. Logs go to
    /// containerd's log (the bundle's `log` FIFO), as containerd expects of a shim.
    pub log_level: String,
    /// Whether pods of the configured size are restored from a template VM (booted once
    /// to "agent ready" and snapshotted) instead of booting. Default true; false boots
    /// every pod (README, "The pod template").
    pub template: bool,
    /// Where templates live, one directory per VM shape. Default `<state_dir>/.templates`
    /// (a tmpfs in the default `/run/husk`: rebuilt once per host boot anyway).
    pub template_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kernel: "/usr/share/husk/vmlinux".into(),
            initramfs: "/usr/share/husk/initramfs.cpio".into(),
            vmm: "/usr/local/bin/husk-vmm".into(),
            virtiofsd: "/usr/local/bin/virtiofsd".into(),
            jail: true,
            jailer: "/usr/local/bin/husk-jailer".into(),
            jail_id_first: 1_500_000_000,
            jail_id_count: 65_536,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 8192,
            kernel_cmdline: "quiet".into(),
            virtiofsd_args: [
                "--cache=auto",
                "--sandbox=namespace",
                "--seccomp=kill",
                "--modcaps=-mknod:-setfcap",
            ]
            .map(String::from)
            .to_vec(),
            state_dir: "/run/husk".into(),
            boot_timeout_secs: 60,
            rpc_timeout_secs: 60,
            log_level: "info".into(),
            template: true,
            template_dir: None,
        }
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Parses and checks a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.max_vcpus > MAX_VCPUS {
            return Err(invalid(format!(
                "max_vcpus = {} is more than husk-vmm takes ({MAX_VCPUS})",
                self.max_vcpus
            )));
        }
        if self.max_memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(format!(
                "max_memory_mib = {} is more than husk-vmm takes ({MAX_MEMORY_MIB})",
                self.max_memory_mib
            )));
        }
        if self.vcpus == 0 || self.vcpus > self.max_vcpus {
            return Err(invalid(format!(
                "vcpus = {} must be between 1 and max_vcpus ({})",
                self.vcpus, self.max_vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > self.max_memory_mib {
            return Err(invalid(format!(
                "memory_mib = {} must be between {MIN_MEMORY_MIB} and max_memory_mib ({})",
                self.memory_mib, self.max_memory_mib
            )));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(invalid(format!(
                "log_level = {:?} is not one of {LOG_LEVELS:?}",
                self.log_level
            )));
        }
        if self.boot_timeout_secs == 0 || self.rpc_timeout_secs == 0 {
            return Err(invalid("timeouts must be at least 1 second".into()));
        }
        if self.jail_id_first == 0
            || self.jail_id_count == 0
            || u64::from(self.jail_id_first) + u64::from(self.jail_id_count) > u64::from(u32::MAX)
        {
            return Err(invalid(format!(
                "jail_id_first = {} and jail_id_count = {} must name ids from 1 to {} (never root's 0)",
                self.jail_id_first,
                self.jail_id_count,
                u32::MAX - 1
            )));
        }
        for (key, p) in [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("vmm", &self.vmm),
            ("virtiofsd", &self.virtiofsd),
            ("jailer", &self.jailer),
            ("state_dir", &self.state_dir),
        ]
        .into_iter()
        .chain(self.template_dir.iter().map(|d| ("template_dir", d)))
        {
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "{key} = {:?} must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    /// Reads the config from `explicit` (runtime options), else `$HUSK_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`]. A file named explicitly or by the environment must exist;
    /// the default file may be absent, and then every default applies.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        let (path, required) = match (explicit, env) {
            (Some(p), _) => (p.to_owned(), true),
            (None, Some(e)) => (PathBuf::from(e), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::parse(&text, &path)?, Some(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok((Self::default(), None))
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Where templates live (`template_dir`, else `<state_dir>/.templates`).
    pub fn template_dir(&self) -> PathBuf {
        self.template_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join(".templates"))
    }

    /// Checks that the files the VM needs exist, so a missing kernel is reported by name
    /// before anything is started.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let jailer = self.jail.then_some(("jailer", &self.jailer));
        for (key, p) in [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("vmm", &self.vmm),
            ("virtiofsd", &self.virtiofsd),
        ]
        .into_iter()
        .chain(jailer)
        {
            if !p.is_file() {
                let fix = match key {
                    "kernel" | "initramfs" => {
                        "install husk's guest image (`make install`, or install.sh from the \
                         release tarball) or point `kernel`/`initramfs` in husk.toml at it"
                    }
                    "virtiofsd" => {
                        "install virtiofsd (scripts/install-virtiofsd.sh) or point `virtiofsd` \
                         in husk.toml at it"
                    }
                    _ => "install husk (`make install`) or point it in husk.toml at the binary",
                };
                return Err(ConfigError::Invalid {
                    path: p.clone(),
                    message: format!("{key} {} does not exist: {fix}", p.display()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/husk/husk.toml"))
    }

    /// husk-vmm's own limits (husk-vm-config's) bound the config: a VM the VMM would
    /// refuse at boot is refused here, naming the key.
    #[test]
    fn limits_are_husk_vmms() {
        let e = parse("max_vcpus = 64").unwrap_err().to_string();
        assert!(
            e.contains("max_vcpus = 64") && e.contains(&MAX_VCPUS.to_string()),
            "{e}"
        );
        assert!(parse(&format!("max_vcpus = {MAX_VCPUS}")).is_ok());
        let e = parse("memory_mib = 32").unwrap_err().to_string();
        assert!(e.contains(&format!("between {MIN_MEMORY_MIB}")), "{e}");
        let e = parse(&format!("max_memory_mib = {}", MAX_MEMORY_MIB + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_memory_mib"), "{e}");
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.state_dir, PathBuf::from("/run/husk"));
        assert_eq!(c.log_level, "info");
        assert!(c.template);
    }

    #[test]
    fn the_shipped_example_is_exactly_the_defaults() {
        let text = include_str!("../../config/husk.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
            kernel = "/k"
            initramfs = "/i"
            vmm = "/v"
            virtiofsd = "/f"
            vcpus = 2
            memory_mib = 512
            max_vcpus = 4
            max_memory_mib = 1024
            kernel_cmdline = ""
            virtiofsd_args = ["--cache=auto"]
            jail = false
            jailer = "/j"
            jail_id_first = 5000
            jail_id_count = 10
            state_dir = "/s"
            boot_timeout_secs = 600
            rpc_timeout_secs = 5
            log_level = "debug"
            template = false
            template_dir = "/t"
            "#,
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.virtiofsd_args, ["--cache=auto"]);
        assert!(!c.jail);
        assert_eq!(c.jailer, PathBuf::from("/j"));
        assert_eq!((c.jail_id_first, c.jail_id_count), (5000, 10));
        assert_eq!(c.boot_timeout_secs, 600);
        assert_eq!(c.log_level, "debug");
        assert!(!c.template);
        assert_eq!(c.template_dir(), PathBuf::from("/t"));
        assert_eq!(
            Config::default().template_dir(),
            PathBuf::from("/run/husk/.templates")
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("kernal = \"/k\"").unwrap_err().to_string();
        assert!(e.contains("kernal"), "{e}");
        assert!(e.contains("/etc/husk/husk.toml"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_errors() {
        assert!(parse("vcpus = \"two\"").is_err());
        assert!(parse("vcpus = 0").is_err());
        assert!(parse("vcpus = 9").is_err());
        assert!(parse("memory_mib = 16").is_err());
        assert!(parse("log_level = \"loud\"").is_err());
        assert!(parse("kernel = \"relative/vmlinux\"").is_err());
        assert!(parse("boot_timeout_secs = 0").is_err());
        assert!(parse("jail_id_first = 0").is_err());
        assert!(parse("jail_id_count = 0").is_err());
        assert!(parse("jail_id_first = 4294967295").is_err());
        assert!(parse("jailer = \"husk-jailer\"").is_err());
        assert!(parse("template_dir = \"templates\"").is_err());
        assert!(parse("template = \"yes\"").is_err());
    }

    #[test]
    fn explicit_path_must_exist_default_may_not() {
        let e = Config::load(Some(Path::new("/nonexistent/husk.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/husk.toml"));
    }

    #[test]
    fn explicit_file_is_read() {
        let dir = std::env::temp_dir().join(format!("husk-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("husk.toml");
        std::fs::write(&p, "vcpus = 2\n").unwrap();
        let (c, used) = Config::load(Some(&p)).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(used.as_deref(), Some(p.as_path()));
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_kernel_is_named() {
        let c = Config {
            kernel: "/nonexistent/vmlinux".into(),
            ..Config::default()
        };
        let e = c.check_files().unwrap_err().to_string();
        assert!(
            e.contains("kernel /nonexistent/vmlinux does not exist"),
            "{e}"
        );
    }
}
