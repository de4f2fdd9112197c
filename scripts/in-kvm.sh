#!/usr/bin/env bash
# Runs a command where KVM can boot a standard guest: here, if this machine's /dev/kvm can
# (VT-x/AMD-V), or inside the test host (scripts/testhost/run.sh) when it can't (PVM).
# Usage: scripts/in-kvm.sh [--timeout SECONDS] -- CMD [ARGS...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
timeout_s=3600
if [ "${1:-}" = "--timeout" ]; then timeout_s=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
mode=$("$here/testhost/kvm-mode")
if [ "$mode" = direct ]; then
    exec timeout --kill-after=10 "$timeout_s" "$@"
fi
echo "in-kvm: this machine's KVM cannot boot a standard guest; running in the test host" >&2
exec "$here/testhost/run.sh" --timeout "$timeout_s" -- "$@"
