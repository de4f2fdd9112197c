#!/usr/bin/env bash
# Runs a command where KVM can boot a standard guest: here, if this machine's /dev/kvm can
# (VT-x/AMD-V), or inside the test host (scripts/testhost/run.sh) when it can't (PVM).
# Usage: scripts/in-kvm.sh [--timeout SECONDS] [--rw-dir DIR]... -- CMD [ARGS...]
# --rw-dir: a directory whose writes must outlive the test host (the test host's root is a
# throwaway overlay); created if missing. The command sees HUSK_KVM_RAN_IN=direct|testhost
# (where it runs, for reports). Not HUSK_KVM_MODE: that one forces kvm-mode's answer, and
# inside the test host (real, if emulated, AMD-V) a nested in-kvm.sh must run directly.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
timeout_s=3600
rw=()
while (($#)); do
    case "$1" in
        --timeout) timeout_s=$2; shift 2 ;;
        --rw-dir) mkdir -p "$2"; rw+=(--rw-dir "$(cd "$2" && pwd -P)"); shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
mode=$("$here/testhost/kvm-mode")
export HUSK_KVM_RAN_IN=$mode
if [ "$mode" = direct ]; then
    exec timeout --kill-after=10 "$timeout_s" "$@"
fi
echo "in-kvm: this machine's KVM cannot boot a standard guest; running in the test host" >&2
exec "$here/testhost/run.sh" --timeout "$timeout_s" "${rw[@]+"${rw[@]}"}" -- "$@"
