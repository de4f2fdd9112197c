#!/usr/bin/env bash
# The demo: a private containerd (Debian's) with husk registered, a busybox image built
# here from busybox-static and imported (no registry), and
#   ctr run --rm --runtime io.containerd.husk.v2 husk-busybox uname -r
# in a husk VM, printing the guest kernel's version next to the host's. Runs where KVM
# can boot a standard guest: here, or in the test host (scripts/in-kvm.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
echo "demo: a container under containerd + containerd-shim-husk-v2, in a husk VM" >&2
"$root/scripts/in-kvm.sh" --timeout 900 -- "$root/target/release/husk-demo"
