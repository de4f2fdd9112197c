#!/usr/bin/env bash
# Installs everything husk's build, demo and tests need on a Debian 12 machine (as root).
# Idempotent and quick when all is already there: only missing packages are installed.
set -euo pipefail

packages=(
    # guest kernel build
    linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils zstd
    # test host and the microvm peer in the boot benchmark
    qemu-system-x86 busybox-static kmod
    # device tests: ext4 images for virtio-blk; virtiofsd's build dependencies
    e2fsprogs libseccomp-dev libcap-ng-dev
    # build tools; shellcheck for `make lint`
    build-essential pkg-config shellcheck
    # the shim's tests and the demo: a private containerd (and runc beside it), ctr,
    # script(1) for `ctr task exec -t`
    containerd runc bsdutils
    # the report's third runtime (`make report`)
    crun
    # pod networking tests and benchmark: CNI plugins (bridge, host-local, loopback in
    # /usr/lib/cni; portmap needs iptables), ip netns / tuntap and tc
    containernetworking-plugins iptables iproute2
    # the CRI tests' client (crate husk-cri): k8s-cri compiles the CRI protos with protoc
    protobuf-compiler
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists yet.
    if ! apt-get install -y -q "${missing[@]}" >/tmp/husk-apt.log 2>&1; then
        apt-get update -q >>/tmp/husk-apt.log 2>&1
        apt-get install -y -q "${missing[@]}" >>/tmp/husk-apt.log 2>&1 || {
            tail -30 /tmp/husk-apt.log >&2
            echo "install-deps: apt-get install failed (log: /tmp/husk-apt.log)" >&2
            exit 1
        }
    fi
fi

# The agent is a static musl binary.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    echo "install-deps: adding the x86_64-unknown-linux-musl target" >&2
    rustup target add x86_64-unknown-linux-musl >&2
fi

# Huge pages for guest RAM on request, as install.sh sets on a host it installs on
# (deploy/husk-tmpfiles.conf): a machine that builds and tests husk runs its guests too.
# Only the kernel's default (`never`) is changed.
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
if [[ -w "$thp" ]] && grep -q '\[never\]' "$thp"; then
    echo "install-deps: $thp: never -> advise (huge pages for guest RAM)" >&2
    echo advise >"$thp"
fi

# virtio-fs backend (cargo install, ~2 min the first time).
"$(dirname "${BASH_SOURCE[0]}")/install-virtiofsd.sh"
