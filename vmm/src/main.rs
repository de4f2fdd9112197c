//! husk-vmm command line: parse a [`VmConfig`] (or, to restore a snapshot, a
//! [`RestoreConfig`]) from flags or a JSON file, boot or restore, and exit with a code that
//! says how the guest ended (0 poweroff or snapshot written, 1 VMM error, 2 guest kernel
//! panic, 3 guest crash).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use husk_vmm::config::{ConfigFile, RestoreConfig};
use husk_vmm::devices::virtio::block::BlockConfig;
use husk_vmm::devices::virtio::fs::FsConfig;
use husk_vmm::devices::virtio::net::NetConfig;
use husk_vmm::devices::virtio::vsock::VsockConfig;
use husk_vmm::seccomp::{Filters, Seccomp};
use husk_vmm::{ConsoleConfig, Vm, VmConfig, VmExit};

#[derive(Parser, Debug)]
#[command(
    name = "husk-vmm",
    version = husk_version::VERSION,
    about = "husk's KVM virtual machine monitor"
)]
struct Cli {
    /// JSON config file (the same fields as the flags); conflicts with the flags.
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "cmdline", "vcpus", "memory", "console", "fs", "vsock", "block", "net", "snapshot_to", "restore_from"])]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long, required_unless_present_any = ["config", "restore_from"])]
    kernel: Option<PathBuf>,
    /// Initramfs (newc cpio).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Extra kernel command line, appended to husk's own.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Serial console: stdout, off, or file:PATH.
    #[arg(long, default_value = "stdout")]
    console: ConsoleConfig,
    /// Hybrid vsock device: cid=CID,uds=PATH. Host programs connect to PATH and write
    /// `CONNECT <port>\n`; guest connections to the host's port P reach `PATH_P`.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<VsockConfig>,
    /// virtio-fs device: tag=TAG,socket=PATH[,queues=N][,queue_size=N] (repeatable); PATH
    /// is a running virtiofsd's vhost-user socket.
    #[arg(long, value_name = "SPEC")]
    fs: Vec<FsConfig>,
    /// virtio-blk device: path=IMAGE[,ro][,id=NAME] (repeatable; /dev/vda, /dev/vdb, ...).
    #[arg(long, value_name = "SPEC")]
    block: Vec<BlockConfig>,
    /// virtio-net device on a tap: tap=NAME|fd=N[,mac=MAC][,mtu=N] (repeatable; eth0,
    /// eth1, ...). tap=NAME opens (or creates) the tap from /dev/net/tun; fd=N takes an
    /// inherited tap fd opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR. Without mac= the MAC is
    /// random (locally administered).
    #[arg(long, value_name = "SPEC")]
    net: Vec<NetConfig>,
    /// Snapshot directory: `vm.state` and `vm.mem` are created there now, and written when
    /// SIGUSR2 asks for a snapshot; the VMM then ends (exit code 0).
    #[arg(long, value_name = "DIR")]
    snapshot_to: Option<PathBuf>,
    /// Restore the VM snapshotted in DIR instead of booting one. vCPUs, memory, kernel and
    /// command line come from the snapshot; the devices (--vsock, --fs, --block, --net) must
    /// be the snapshot's, in kind, number and order, with backends of this run's own.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initramfs", "cmdline", "vcpus", "memory"])]
    restore_from: Option<PathBuf>,
    /// Print VM exit counts as a JSON line on stderr when the guest ends.
    #[arg(long)]
    exit_stats: bool,
    /// Run without the seccomp filters (debugging only: a guest that escapes into the VMM
    /// then reaches every system call).
    #[arg(long)]
    no_seccomp: bool,
    /// A name for this VM in `ps` and the log; the shim passes the pod's directory on the
    /// host (a jailed VMM's paths are all inside its jail).
    #[arg(long)]
    id: Option<String>,
    /// Test hook: make a system call no filter allows once the filters are on, so that the
    /// VMM dies by SIGSYS (also `HUSK_SECCOMP_SELFTEST=1`, which reaches a shim's VMM).
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
}

impl Cli {
    fn vm_config(&self) -> anyhow::Result<ConfigFile> {
        if let Some(path) = &self.config {
            return Ok(ConfigFile::from_json_file(path)?);
        }
        if let Some(dir) = &self.restore_from {
            return Ok(ConfigFile::Restore(RestoreConfig {
                restore_from: dir.clone(),
                console: self.console.clone(),
                vsock: self.vsock.clone(),
                fs: self.fs.clone(),
                block: self.block.clone(),
                net: self.net.clone(),
                snapshot_to: self.snapshot_to.clone(),
            }));
        }
        Ok(ConfigFile::Boot(VmConfig {
            kernel: self.kernel.clone().context("--kernel is required")?,
            initramfs: self.initramfs.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory,
            console: self.console.clone(),
            vsock: self.vsock.clone(),
            fs: self.fs.clone(),
            block: self.block.clone(),
            net: self.net.clone(),
            snapshot_to: self.snapshot_to.clone(),
        }))
    }
}

fn main() -> ExitCode {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .finish();
    // Not `.init()`: that would pass the rust-vmm crates' `log` records on unlimited.
    let logging = tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            husk_vmm::devices::virtio::ratelimit::install_log_bridge().map_err(|e| e.to_string())
        });
    if let Err(e) = logging {
        eprintln!("husk-vmm: cannot set up logging: {e}");
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(exit) => ExitCode::from(exit.exit_code() as u8),
        Err(e) => {
            eprintln!("husk-vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<VmExit> {
    let config = cli.vm_config()?;
    if let Some(id) = &cli.id {
        tracing::info!("husk-vmm for {id}");
    }
    let seccomp = if cli.no_seccomp {
        tracing::warn!(
            "--no-seccomp: husk-vmm runs WITHOUT its seccomp filters; a guest that escapes \
             into the VMM reaches every system call. Use this for debugging only."
        );
        Seccomp::Off
    } else {
        Seccomp::On(std::sync::Arc::new(Filters::compile()?))
    };
    let selftest = cli.seccomp_selftest
        || std::env::var("HUSK_SECCOMP_SELFTEST").is_ok_and(|v| !v.is_empty() && v != "0");
    husk_vmm::devices::state_dump::install()?;
    let vm = match &config {
        ConfigFile::Boot(c) => Vm::new(c)?,
        ConfigFile::Restore(r) => Vm::restore(r)
            .with_context(|| format!("cannot restore {}", r.restore_from.display()))?,
    };
    let (exit, stats) = vm.run(seccomp, selftest)?;
    match &exit {
        VmExit::PowerOff => tracing::info!("guest powered off"),
        VmExit::Panic(reason) => eprintln!("husk-vmm: guest kernel panic: {reason}"),
        VmExit::Crash(reason) => eprintln!("husk-vmm: guest crashed: {reason}"),
        VmExit::Snapshotted(dir) => eprintln!("husk-vmm: snapshot written to {}", dir.display()),
    }
    if cli.exit_stats {
        let kvm = stats
            .kvm_exits
            .map_or_else(|| "null".to_owned(), |n| n.to_string());
        eprintln!(
            "{{\"vmm_exits\":{},\"kvm_exits\":{},\"by_kind\":{}}}",
            stats.vmm_exits, kvm, stats.breakdown
        );
    }
    Ok(exit)
}
