#!/usr/bin/env bash
# Builds and runs husk's integration tests (crate tests/, all of them, including the
# #[ignore]d ones that boot guests) against the release binaries and the guest image,
# where KVM can boot a standard guest (scripts/in-kvm.sh). HUSK_REQUIRE_KVM=1 makes a
# guest-booting test fail, not skip, if KVM turns out unusable there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

# Build the test executables on this machine (fast) and list them: the dev profile, as
# `make unit` built them (they drive containerd and guests; the binaries they run,
# husk-vmm and the shim, are the release ones, see tests/src/lib.rs).
# (Not `tee /dev/stderr`: when stderr is a file, tee reopens and truncates it.)
build=$(cargo test -p husk-tests --no-run 2>&1) || {
    printf '%s\n' "$build" >&2
    echo "integration: building the tests failed" >&2
    exit 1
}
printf '%s\n' "$build" >&2
bins=$(printf '%s\n' "$build" | sed -n 's/^ *Executable .*(\(.*\))$/\1/p')
[ -n "$bins" ] || { echo "integration: no test executables were built" >&2; exit 1; }
# HUSK_INTEGRATION_ONLY="<name> ..." runs only tests/<name>.rs for each name (`make
# test-shim` uses it).
only="${HUSK_INTEGRATION_ONLY:-}"
if [ -n "$only" ]; then
    bins=$(for n in $only; do
        printf '%s\n' "$build" | sed -n "s/^ *Executable tests\/$n.rs (\(.*\))$/\1/p"
    done)
fi
[ -n "$bins" ] || { echo "integration: no test executable matches ${only:-anything}" >&2; exit 1; }

# The unit of running (and of retrying after a frozen test host) is one test: EXE#NAME.
# HUSK_INTEGRATION_TESTS=<substring> runs only the tests whose names contain it (with
# HUSK_INTEGRATION_ONLY, to rerun one test as the suite runs it).
filter="${HUSK_INTEGRATION_TESTS:-}"
units=()
for t in $bins; do
    names=$("$t" --list --include-ignored 2>/dev/null | sed -n 's/^\(.*\): test$/\1/p') || {
        echo "integration: cannot list the tests of $t" >&2
        exit 1
    }
    for n in $names; do
        [[ -z "$filter" || "$n" == *"$filter"* ]] && units+=("$t#$n")
    done
done
[ "${#units[@]}" -ne 0 ] || { echo "integration: no tests found" >&2; exit 1; }

# The runner lives in the workspace: the test host sees the machine's files, but its /tmp
# is a fresh tmpfs. It runs the tests it is given (EXE#NAME) one after another and ends
# each with a line `@@ result EXE#NAME <passed> <failed> <exit status>`.
mkdir -p "$root/build"
runner=$(mktemp "$root/build/integration.XXXXXX")
fifo="$root/build/integration.fifo.$$"
results="$root/build/integration.results.$$"
trap 'rm -f "$runner" "$fifo" "$results"' EXIT
cat >"$runner" <<'RUNNER'
set -u; cd "$1"; shift; log=$(mktemp)
count() { sed -n "s/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\\$1/p" "$log" | awk '{s+=$1} END {print s+0}'; }
for u in "$@"; do
  echo "=== $u"
  # One guest at a time: under emulation two nested guests starve each other.
  # Output streams live (a hang shows where it is) and is kept for the counts.
  "${u%%#*}" --include-ignored --exact "${u#*#}" --test-threads=1 2>&1 | tee "$log"; s=${PIPESTATUS[0]}
  echo "@@ result $u $(count 1) $(count 2) $s"
done
RUNNER

export HUSK_REQUIRE_KVM=1
# Under software emulation the test host itself occasionally hangs (DESIGN.md; seen here
# about one run in three): no output for HUSK_INTEGRATION_IDLE seconds (no test prints
# nothing for that long) or the overall watchdog ends that attempt. A hang or harness
# failure (exit 124/125) gets another try, said loudly, for the executables that had not
# finished; a failing test is never retried.
timeout_s="${HUSK_INTEGRATION_TIMEOUT:-3600}"
idle_s="${HUSK_INTEGRATION_IDLE:-300}"

run_once() {
    rm -f "$fifo" && mkfifo "$fifo"
    "$root/scripts/in-kvm.sh" --timeout "$timeout_s" -- bash "$runner" "$root" "$@" >"$fifo" 2>&1 &
    local pid=$! line hung=0 start st
    exec 3<"$fifo"
    while true; do
        start=$SECONDS
        if IFS= read -r -u 3 -t "$idle_s" line; then
            # The test host's console ends lines with CR LF.
            line=${line%$'\r'}
            printf '%s\n' "$line"
            [[ "$line" == "@@ result "* ]] && printf '%s\n' "${line#@@ result }" >>"$results"
            continue
        else
            st=$?
        fi
        if ((st > 128)); then
            # A signal can interrupt read before its timeout: only real silence counts.
            # What was read so far is kept in $line.
            printf '%s' "$line"
            if ((SECONDS - start >= idle_s)); then
                hung=1
                break
            fi
            continue
        fi
        [ -n "$line" ] && printf '%s\n' "$line"
        break
    done
    if ((hung)); then
        echo "integration: no output for ${idle_s}s: the test host hung; stopping it" >&2
        kill -TERM "$pid" 2>/dev/null
        # What the test host's runner says on its way out (its last heartbeat, console).
        timeout 30 cat <&3
        exec 3<&-
        wait "$pid" 2>/dev/null
        return 124
    fi
    exec 3<&-
    wait "$pid"
}

# Runs the given tests, giving those a hung test host left unfinished up to four more
# tries. Adds to $passed and puts the failing tests in $failing (and any never run in
# $unrun).
run_suite() {
    local remaining=("$@") attempt rc t r p f s left
    failing=()
    unrun=()
    : >"$results"
    for attempt in 1 2 3 4 5; do
        rc=0
        run_once "${remaining[@]}" || rc=$?
        left=()
        for t in "${remaining[@]}"; do
            r=$(awk -v t="$t" '$1 == t {print $2, $3, $4}' "$results" | tail -n 1)
            if [ -z "$r" ]; then
                left+=("$t")
                continue
            fi
            read -r p f s <<<"$r"
            if [ "$f" -ne 0 ] || [ "$s" -ne 0 ]; then
                failing+=("$t")
                fail_counts+=("$t $p $f $s")
            else
                passed=$((passed + p))
            fi
        done
        remaining=("${left[@]+"${left[@]}"}")
        : >"$results"
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 125 ]; then
            echo "integration: the test host run failed (exit $rc)" >&2
            exit "$rc"
        fi
        [ "${#remaining[@]}" -eq 0 ] && return 0
        echo "integration: attempt $attempt: the test host hung or failed (exit $rc);" \
            "${#remaining[@]} tests left to run" >&2
    done
    unrun=("${remaining[@]}")
}

passed=0
fail_counts=()
run_suite "${units[@]}"
# Under emulation (the test host) nested guests sometimes fail for the emulator's own
# reasons: the test host freezes (its heartbeat stops), a guest vCPU stalls for minutes
# (RCU stall reports on its console) or triple-faults. A failing test therefore gets
# exactly one more run there, said loudly; a test that fails twice fails the suite.
# Where KVM runs directly there is no second run.
flaky=()
if [ "${#failing[@]}" -ne 0 ] && [ "$("$root/scripts/testhost/kvm-mode")" = testhost ] &&
    [ "${HUSK_INTEGRATION_RERUN:-1}" = 1 ]; then
    first_failing=("${failing[@]}")
    fail_counts=()
    echo "integration: RERUN under emulation of ${#first_failing[@]} failing test(s):" \
        "${first_failing[*]}" >&2
    run_suite "${first_failing[@]}"
    for t in "${first_failing[@]}"; do
        case " ${failing[*]} ${unrun[*]} " in
            *" $t "*) ;;
            *) flaky+=("$t") ;;
        esac
    done
fi
failed=0
for c in "${fail_counts[@]+"${fail_counts[@]}"}"; do
    read -r t p f s <<<"$c"
    failed=$((failed + (f > 0 ? f : 1)))
    echo "integration: FAILED $t (exit status $s)" >&2
done
for t in "${flaky[@]+"${flaky[@]}"}"; do
    echo "integration: FLAKY $t failed once under emulation and passed when rerun (output above)" >&2
done
echo "integration: $passed passed, $failed failed, ${#flaky[@]} passed only on rerun"
if [ "${#unrun[@]}" -ne 0 ]; then
    echo "integration: not run after 5 tries: ${unrun[*]}" >&2
    exit 124
fi
[ "$failed" -eq 0 ]
