//! `husk-initramfs --agent PATH --out FILE`: writes the guest initramfs.

use std::fs;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use husk_guest_image::initramfs;

/// Writes the husk guest initramfs (newc cpio) with the agent as /init.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The husk-agent binary (static; built for x86_64-unknown-linux-musl).
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Where to write the archive (replaced atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let agent = fs::read(&args.agent)
        .with_context(|| format!("Failed to read the agent {}", args.agent.display()))?;
    initramfs::validate_agent(&agent)
        .with_context(|| format!("Invalid agent {}", args.agent.display()))?;

    let mut tmp = args.out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file =
        fs::File::create(&tmp).with_context(|| format!("Failed to create {}", tmp.display()))?;
    let result = initramfs::write_initramfs(&agent, BufWriter::new(file))
        .map_err(anyhow::Error::from)
        .and_then(|w| w.into_inner().map_err(|e| e.into_error().into()))
        .and_then(|f| f.sync_all().map_err(Into::into))
        .and_then(|()| fs::rename(&tmp, &args.out).map_err(Into::into));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("Failed to write {}", args.out.display())));
    }
    let size = fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "husk-initramfs: wrote {} ({size} bytes)",
        args.out.display()
    );
    Ok(())
}
