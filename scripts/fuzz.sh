#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short time (CI) or as long as asked (by hand).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]      (default: $FUZZ_SECONDS or 20)
# The build goes to a target dir outside the clone (${HUSK_CACHE_DIR:-/var/cache/husk}/fuzz-target)
# so a re-run does not rebuild it. Only the stable toolchain exists here: cargo-fuzz's
# nightly flags are enabled with RUSTC_BOOTSTRAP=1. Exits non-zero on any crash; prints
# each target's execution count.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
secs="${1:-${FUZZ_SECONDS:-20}}"
export CARGO_TARGET_DIR="${HUSK_CACHE_DIR:-/var/cache/husk}/fuzz-target"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz >&2
fi
cd "$root/fuzz"
failed=0
for target in $(cargo fuzz list); do
    log=$(mktemp)
    echo "fuzz: $target for ${secs}s" >&2
    if cargo fuzz run "$target" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        echo "fuzz: $target ok: ${execs:-?} executions in ${secs}s"
    else
        tail -40 "$log" >&2
        echo "fuzz: $target FAILED (artifacts in fuzz/artifacts/$target/)"
        failed=1
    fi
    rm -f "$log"
done
exit "$failed"
