#!/usr/bin/env bash
# Installs virtiofsd (the vhost-user virtio-fs backend husk-vmm's fs device talks to) on a
# Debian 12 machine, as root. Idempotent: does nothing when virtiofsd is already on PATH or
# in ~/.cargo/bin. Builds it from crates.io with `cargo install` (about two minutes).
set -euo pipefail

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if command -v virtiofsd >/dev/null 2>&1 || [ -x "$cargo_bin/virtiofsd" ]; then
    exit 0
fi

packages=(libseccomp-dev libcap-ng-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-virtiofsd: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists yet.
    if ! apt-get install -y -q "${missing[@]}" >/tmp/husk-apt-virtiofsd.log 2>&1; then
        apt-get update -q >>/tmp/husk-apt-virtiofsd.log 2>&1
        apt-get install -y -q "${missing[@]}" >>/tmp/husk-apt-virtiofsd.log 2>&1 || {
            tail -30 /tmp/husk-apt-virtiofsd.log >&2
            echo "install-virtiofsd: apt-get install failed (log: /tmp/husk-apt-virtiofsd.log)" >&2
            exit 1
        }
    fi
fi

echo "install-virtiofsd: building virtiofsd with cargo install (takes a few minutes)" >&2
# Its own target dir, so it never fights the project's build for the cargo lock.
CARGO_TARGET_DIR="${TMPDIR:-/tmp}/husk-virtiofsd-build" cargo install virtiofsd --locked
echo "install-virtiofsd: installed $cargo_bin/virtiofsd" >&2
