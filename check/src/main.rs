//! husk-check: can this host run husk pods? One line per check, PASS or FAIL with the
//! reason and the fix; exit 0 only when every check passes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use husk_check::checks;
use husk_check::shim_config::Config;
use husk_check::{host, mounts, Check};

#[derive(Parser, Debug)]
#[command(
    name = "husk-check",
    version = husk_version::VERSION,
    about = "Tells whether this host can run husk (containerd-shim-husk-v2) and what to fix"
)]
struct Cli {
    /// The shim's config file (default: $HUSK_CONFIG, else /etc/husk/husk.toml, as the
    /// shim reads it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's config file for `containerd config dump` (default: containerd's own,
    /// /etc/containerd/config.toml).
    #[arg(long)]
    containerd_config: Option<PathBuf>,
    /// The containerd binary (default: found on PATH).
    #[arg(long)]
    containerd: Option<PathBuf>,
}

/// Where the installed containerd snippet is, for the fix text.
fn snippet_path(config: &Config) -> String {
    // kernel = <prefix>/share/husk/vmlinux: the snippet was installed beside it.
    config
        .kernel
        .parent()
        .map(|d| d.join("containerd-husk.toml"))
        .filter(|p| p.is_file())
        .map_or_else(
            || "deploy/containerd-husk.toml".to_owned(),
            |p| p.display().to_string(),
        )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out: Vec<Check> = Vec::new();

    let cpuinfo = host::read("/proc/cpuinfo").unwrap_or_default();
    let virt = checks::cpu_virt(&cpuinfo);
    let pvm = checks::pvm_loaded(
        host::read("/proc/modules").as_deref(),
        Path::new("/sys/module/kvm_pvm").exists(),
    );
    let (kvm, api) = host::kvm();
    out.push(checks::kvm(&kvm, api, pvm, virt));
    out.push(checks::cpu(virt));
    out.push(checks::tun(&host::tun()));
    out.push(checks::huge_pages(
        host::read("/sys/kernel/mm/transparent_hugepage/shmem_enabled").as_deref(),
    ));

    let loaded = Config::load(cli.config.as_deref());
    out.push(checks::config(
        &loaded
            .as_ref()
            .map(|(_, p)| p.as_ref().map(|p| p.display().to_string()))
            .map_err(ToString::to_string),
    ));
    let config = loaded.map(|(c, _)| c).unwrap_or_default();

    out.push(checks::guest_file(
        "kernel",
        "kernel",
        &config.kernel,
        &host::head(&config.kernel, 0x400),
        checks::kernel_format,
    ));
    out.push(checks::guest_file(
        "initramfs",
        "initramfs",
        &config.initramfs,
        &host::head(&config.initramfs, 16),
        checks::initramfs_format,
    ));
    let install = "install husk (make install, or install.sh from the release tarball)";
    out.push(checks::program(
        "husk-vmm",
        &config.vmm,
        &host::version(&config.vmm),
        install,
    ));
    if config.jail {
        out.push(checks::program(
            "husk-jailer",
            &config.jailer,
            &host::version(&config.jailer),
            install,
        ));
    }
    out.push(checks::program(
        "virtiofsd",
        &config.virtiofsd,
        &host::version(&config.virtiofsd),
        "install virtiofsd there (the release tarball and make install bring one; scripts/install-virtiofsd.sh builds it) or set virtiofsd in husk.toml",
    ));
    match host::which("containerd-shim-husk-v2") {
        Some(shim) => out.push(checks::program("shim", &shim, &host::version(&shim), install)),
        None => out.push(Check::fail("shim", "containerd-shim-husk-v2 is not on PATH (containerd finds the shim of io.containerd.husk.v2 there)", format!("{install}; it goes to /usr/local/bin"))),
    }

    let containerd = cli.containerd.clone().or_else(|| host::which("containerd"));
    let mut dump_root = None;
    match containerd {
        None => out.push(Check::fail(
            "containerd",
            "containerd is not on PATH",
            "apt-get install containerd",
        )),
        Some(ctrd) => {
            out.push(checks::containerd_version(&host::version(&ctrd)));
            let mut args = Vec::new();
            let cfg;
            if let Some(c) = &cli.containerd_config {
                cfg = c.display().to_string();
                args.extend(["--config", cfg.as_str()]);
            }
            args.extend(["config", "dump"]);
            let dump = host::run(&ctrd, &args, Duration::from_secs(20));
            if let Ok(t) = &dump {
                dump_root = husk_check::containerd::parse_dump(t)
                    .ok()
                    .and_then(|d| d.root);
            }
            out.push(checks::containerd_runtime(&dump, &snippet_path(&config)));
        }
    }

    let table = mounts::parse(&host::read("/proc/self/mounts").unwrap_or_default());
    out.push(checks::cgroups(&table));
    let root = PathBuf::from(dump_root.unwrap_or_else(|| "/var/lib/containerd".into()));
    out.push(checks::filesystem(
        "containerd-root",
        "containerd's root",
        &host::resolve(&root),
        &table,
    ));
    out.push(checks::filesystem(
        "state-dir",
        "husk's state_dir",
        &host::resolve(&config.state_dir),
        &table,
    ));

    let mut failed = 0;
    for c in &out {
        println!("{}", c.line());
        failed += usize::from(!c.passes());
    }
    if failed == 0 {
        println!("husk-check: this host can run husk");
        ExitCode::SUCCESS
    } else {
        println!("husk-check: {failed} of {} checks failed", out.len());
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snippet_is_named_where_it_was_installed_or_in_the_repo() {
        let c = Config {
            kernel: "/nonexistent/share/husk/vmlinux".into(),
            ..Config::default()
        };
        assert_eq!(snippet_path(&c), "deploy/containerd-husk.toml");
    }
}
