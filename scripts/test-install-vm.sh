#!/usr/bin/env bash
# The install checks that need a VM (`make test-install-vm`, part of `make test`; ~5 min
# in the test host, most of it two guest boots):
#  - on a machine whose KVM is PVM, husk-check reports that as a FAIL with its reason;
#  - a clone of this checkout under /tmp, and from it, where KVM boots a standard guest
#    (the test host here), scripts/test-install-system.sh: the demo from /tmp, then
#    install.sh into the system paths, the system containerd with the README's snippet,
#    husk-check, `ctr run --runtime io.containerd.husk.v2`, uninstall.
# The clone gets this checkout's tracked files, its husk-demo, the release's husk-vmm and
# shim and the guest image copied in (a fresh build at a new path costs ~10 min on 2 cores; the demo binary is
# pointed at the clone's copies through HUSK_VMM/HUSK_SHIM/HUSK_KERNEL/HUSK_INITRAMFS).
# Where KVM runs directly the system install runs only with HUSK_TEST_SYSTEM_INSTALL=1
# (it writes to /usr/local, /etc/husk and /etc/containerd).
# Usage: scripts/test-install-vm.sh build/dist/husk-<version>-x86_64
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
dist="$(cd "${1:?usage: test-install-vm.sh DIST_DIR}" && pwd -P)"
name="$(basename "$dist")"
mode="$("$root/scripts/testhost/kvm-mode")"
fails=0

if [[ "$mode" == testhost ]]; then
    # This machine's own KVM: husk-check must say why it can't run husk.
    out="$("$dist/bin/husk-check" 2>&1)" && rc=0 || rc=$?
    line="$(grep '^FAIL kvm: ' <<<"$out" || true)"
    if ((rc != 0)) && [[ "$line" == *PVM* || "$line" == *"neither vmx nor svm"* ]]; then
        echo "test-install-vm: PASS husk-check on this machine fails with the PVM case: $line"
    else
        echo "test-install-vm: FAIL husk-check on this machine (exit $rc) did not name the PVM case:" >&2
        printf '%s\n' "$out" >&2
        fails=$((fails + 1))
    fi
fi

clone="$(mktemp -d /tmp/husk-clone.XXXXXX)"
trap 'rm -rf "$clone"' EXIT
c="$clone/husk"
git clone -q "$root" "$c"
# This checkout's tracked files as they are now (uncommitted edits included).
(cd "$root" && git ls-files -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$c" -xf -
mkdir -p "$c/target/release" "$c/build/guest" "$c/build/dist"
# The demo runs the binaries the release ships (static, from the dist tree).
cp "${HUSK_DEMO_BIN:-$root/target/release/husk-demo}" "$dist/bin/husk-vmm" "$dist/bin/husk-jailer" "$dist/bin/containerd-shim-husk-v2" "$c/target/release/"
cp "$root/build/guest/vmlinux" "$root/build/guest/initramfs.cpio" "$c/build/guest/"
cp -a "$dist" "$c/build/dist/$name"
export HUSK_VMM="$c/target/release/husk-vmm" HUSK_JAILER="$c/target/release/husk-jailer" HUSK_SHIM="$c/target/release/containerd-shim-husk-v2"
export HUSK_KERNEL="$c/build/guest/vmlinux" HUSK_INITRAMFS="$c/build/guest/initramfs.cpio"
echo "test-install-vm: clone at $c; running scripts/test-install-system.sh from there ($mode)"
cd "$c"
rc=0
scripts/in-kvm.sh --timeout 2400 -- scripts/test-install-system.sh "build/dist/$name" || rc=$?
if ((rc != 0)); then
    echo "test-install-vm: FAIL scripts/test-install-system.sh (exit $rc)" >&2
    fails=$((fails + 1))
fi
if ((fails)); then
    echo "test-install-vm: $fails failed" >&2
    exit 1
fi
echo "test-install-vm: all passed"
