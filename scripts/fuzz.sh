#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short time (CI) or as long as asked (by hand).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]      (default: $FUZZ_SECONDS or 20)
# The build goes to a target dir outside the clone (${HUSK_CACHE_DIR:-/var/cache/husk}/fuzz-target)
# so a re-run does not rebuild it. Each target starts from its committed seeds
# (fuzz/seeds/<target>/) plus a work corpus kept outside the clone
# (${HUSK_CACHE_DIR:-/var/cache/husk}/fuzz-corpus/<target>/), which receives the new
# inputs, so every run goes on from where the last one got. Only the stable toolchain
# exists here: cargo-fuzz's nightly flags are enabled with RUSTC_BOOTSTRAP=1. Exits
# non-zero on any crash; prints each target's execution count.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
secs="${1:-${FUZZ_SECONDS:-20}}"
cache="${HUSK_CACHE_DIR:-/var/cache/husk}"
export CARGO_TARGET_DIR="$cache/fuzz-target"
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
    corpus="$cache/fuzz-corpus/$target"
    seeds="$root/fuzz/seeds/$target"
    mkdir -p "$corpus"
    # The first directory gets what libFuzzer finds; the seeds are only read.
    dirs=("$corpus")
    if [ -d "$seeds" ]; then
        dirs+=("$seeds")
    fi
    if cargo fuzz run "$target" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 \
        >"$log" 2>&1; then
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
