#!/usr/bin/env bash
# The demo: boot the husk guest (our kernel, husk-agent as PID 1) in husk-vmm with two
# vCPUs and show its console; the agent reports ready and powers the VM off.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
echo "demo: booting build/guest/vmlinux + build/guest/initramfs.cpio in husk-vmm" >&2
"$root/scripts/in-kvm.sh" --timeout 900 -- \
    "$root/target/release/husk-vmm" --kernel build/guest/vmlinux \
    --initramfs build/guest/initramfs.cpio --vcpus 2 --memory 256 \
    --cmdline "husk.test=poweroff" --exit-stats
echo "demo: husk-vmm exited 0 (clean guest poweroff)" >&2
