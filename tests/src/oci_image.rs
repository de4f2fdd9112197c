//! OCI image archives built from a root directory, for `ctr images import`:
//! there is no registry on our machines, so the test images (busybox, the
//! CRI's pause image) are made here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::containerd::run;

fn sha256_file(p: &Path) -> Result<String> {
    let o = run(Command::new("sha256sum").arg(p))?;
    Ok(o.stdout
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned())
}

/// Writes `bytes` as a blob of the OCI layout at `layout`; returns (digest, size).
fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes)?;
    let sum = sha256_file(&tmp)?;
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&sum))?;
    Ok((format!("sha256:{sum}"), bytes.len()))
}

/// Packs `root` as the one layer of image `name` (an image config's
/// `config` object: Entrypoint, Cmd, Env, User, ...) into the OCI archive
/// `dir/archive`, and returns its path. Files are owned by root, mtimes 0.
pub fn build_archive(
    dir: &Path,
    root: &Path,
    name: &str,
    config: serde_json::Value,
    archive: &str,
) -> Result<PathBuf> {
    let layer = dir.join(format!("{archive}.layer.tar"));
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(root)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layout = dir.join(format!("{archive}.oci"));
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer_bytes = std::fs::read(&layer)?;
    let (layer_digest, layer_size) = put_blob(&layout, &layer_bytes)?;
    let image_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put_blob(&layout, image_config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put_blob(&layout, manifest.to_string().as_bytes())?;
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string())?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let out = dir.join(archive);
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&out)
        .arg("."))?;
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_file(&layer);
    Ok(out)
}
