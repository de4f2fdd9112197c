#!/usr/bin/env bash
# run.sh: run a command inside the emulated test host, where /dev/kvm is real KVM.
#
# Usage:
#   scripts/testhost/run.sh [options] -- CMD [ARGS...]
#
# Options:
#   --timeout SECONDS  kill the test host after this long (default 3600); exit 124
#   --mem MiB          test-host memory (default 6144)
#   --cpus N           test-host vCPUs (default 1, or HUSK_TESTHOST_CPUS). With
#                      2, QEMU's multi-threaded TCG sometimes hands a nested
#                      guest's vCPU the test host's own registers (rip in
#                      kvm_amd, cr3 beyond guest RAM): the guest then spins or
#                      triple-faults (5 of 25 device benchmark runs here; 0 of
#                      25 with 1, at the same speed).
#   --rw-dir DIR       share DIR read-write at the same path inside (repeatable;
#                      created if missing). Everything else is a copy-on-write
#                      overlay of the host's root whose writes are lost at the end.
#   --env NAME         pass the variable NAME through (repeatable)
#   --log-dir DIR      keep the serial console log and the test host's dmesg there
#   -q, --quiet        no summary line on stderr
#
# What the command sees: the host's root read-only over virtio-9p with a tmpfs
# overlay on top (so it can write anywhere), fresh /proc /sys /dev /dev/pts
# /dev/shm /run and cgroup2 at /sys/fs/cgroup, /tmp a fresh tmpfs (a working
# directory below /tmp is bound into it from the overlay), loopback up, /dev/kvm
# from kvm-amd (npt=1) on an emulated AMD EPYC, Debian's standard kernel with
# its full module tree (modprobe works), and the caller's working directory.
# Environment: PATH, HOME=/root, TERM=dumb, the variables named by --env, and
# automatically CARGO_TARGET_DIR, CARGO_HOME, RUSTUP_HOME, RUSTUP_TOOLCHAIN,
# RUST_LOG, RUST_BACKTRACE, CI, LANG, LC_ALL and every HUSK_* variable.
# stdin is /dev/null; stdout and stderr (together) stream live to run.sh's
# stdout through a virtio console.
#
# Exit status: the command's own. Otherwise 124 when --timeout hit, and 125
# for a harness failure (bad usage, preparation failed, or the test host
# stopped without reporting a status: panic, crash, early init error); the
# tail of the serial console is printed on stderr then.
#
# Boot: assets from prepare.sh (cached, see there). QEMU runs TCG with
# thread=multi, q35, -cpu EPYC (has svm), -nodefaults, the kernel console on
# the serial port into a log file, `quiet loglevel=3`.
# For experiments on the emulation itself: HUSK_TESTHOST_TCG_THREAD=single|multi
# (default multi), HUSK_TESTHOST_NPT=0|1 (kvm-amd's nested paging, default 1) and
# HUSK_TESTHOST_KVM_AMD=param=value,... (more kvm-amd module parameters);
# HUSK_TESTHOST_LOGLEVEL=N sets its console loglevel (default 3; 5 shows the stack
# traces of soft lockups and warnings).
# A frozen test host (its heartbeat file older than HUSK_TESTHOST_HEARTBEAT_TIMEOUT,
# default 120 s) is stopped with exit 124, like a timeout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 125
}
die() {
    echo "testhost: error: $*" >&2
    exit 125
}

timeout_s=3600
mem=6144
cpus="${HUSK_TESTHOST_CPUS:-1}"
quiet=0
log_dir=""
rw_dirs=()
env_names=()
while (($#)); do
    case "$1" in
        --timeout) timeout_s="${2:?--timeout needs SECONDS}"; shift 2 ;;
        --timeout=*) timeout_s="${1#*=}"; shift ;;
        --mem) mem="${2:?--mem needs MiB}"; shift 2 ;;
        --mem=*) mem="${1#*=}"; shift ;;
        --cpus) cpus="${2:?--cpus needs N}"; shift 2 ;;
        --cpus=*) cpus="${1#*=}"; shift ;;
        --rw-dir) rw_dirs+=("${2:?--rw-dir needs DIR}"); shift 2 ;;
        --rw-dir=*) rw_dirs+=("${1#*=}"); shift ;;
        --env) env_names+=("${2:?--env needs NAME}"); shift 2 ;;
        --env=*) env_names+=("${1#*=}"); shift ;;
        --log-dir) log_dir="${2:?--log-dir needs DIR}"; shift 2 ;;
        --log-dir=*) log_dir="${1#*=}"; shift ;;
        -q | --quiet) quiet=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        *) echo "testhost: unknown option '$1' (the command goes after --)" >&2; usage ;;
    esac
done
(($# > 0)) || { echo "testhost: no command given" >&2; usage; }
[[ "$timeout_s" =~ ^[0-9]+$ && "$timeout_s" -gt 0 ]] || die "--timeout must be a positive number of seconds"
[[ "$mem" =~ ^[0-9]+$ && "$mem" -ge 512 ]] || die "--mem must be at least 512 (MiB)"
[[ "$cpus" =~ ^[0-9]+$ && "$cpus" -ge 1 ]] || die "--cpus must be a positive number"

# --- one test host at a time ----------------------------------------------
# Two test hosts on this machine's 2 cores starve each other (and the nested guests'
# watchdogs then fire). A second run waits for the first, saying so every 60 s (which
# also keeps the integration runner's idle watch from taking the wait for a hang).
# HUSK_TESTHOST_LOCK names the lock file; the --timeout starts once the lock is held.
lock="${HUSK_TESTHOST_LOCK:-/run/lock/husk-testhost.lock}"
mkdir -p "$(dirname "$lock")"
exec 9>>"$lock"
if ! flock -n 9; then
    echo "testhost: another test host is running (lock $lock); waiting for it" >&2
    until flock -w 60 9; do
        echo "testhost: still waiting for the other test host (lock $lock)" >&2
    done
fi

# --- assets ---------------------------------------------------------------

assets="$("$here/prepare.sh")" || die "prepare.sh failed"
kver="$(cat "$assets/kver")"
moddir="$(cd "$assets/modules/$kver" && pwd -P)"

# --- per-run control dir (shared read-write as 9p tag huskctl) -------------

tmp="$(mktemp -d "${TMPDIR:-/tmp}/husk-testhost.XXXXXX")"
ctl="$tmp/ctl"
mkdir "$ctl"
console_log="$tmp/console.log"
qemu_err="$tmp/qemu.err"
qpid=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$qpid" ]] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$qpid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "testhost: interrupted" >&2; exit 130' INT
# How long ago the test host last showed life (stage2 writes ctl/heartbeat every 10 s):
# tells a hung test host from a command that went quiet.
heartbeat() {
    if [[ -s "${ctl:-/nonexistent}/heartbeat" ]]; then
        local age=$(($(date +%s) - $(stat -c %Y "$ctl/heartbeat")))
        echo "testhost: its last heartbeat was $age s ago (uptime, load, newest kernel message): $(cat "$ctl/heartbeat")" >&2
    else
        echo "testhost: it sent no heartbeat" >&2
    fi
}
# A function, not a command string: bash parses a trap's string when the signal comes, and a
# TERM arriving inside the watchdog's $(( $(...) )) once made that parse fail ("trap:
# unexpected EOF"), skipping the report.
on_term() {
    echo "testhost: terminated" >&2
    heartbeat
    echo "testhost: last lines of its serial console:" >&2
    tail -n 40 "$console_log" 2>/dev/null | sed "s/^/  | /" >&2
    exit 143
}
trap on_term TERM HUP

# Single-quote $1 for a POSIX shell (the config is read by busybox sh).
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

cwd="$(pwd -P)"
tmp_tmpfs=1
rw_real=()
for d in "${rw_dirs[@]}"; do
    mkdir -p "$d"
    r="$(cd "$d" && pwd -P)"
    [[ "$r" != / ]] || die "--rw-dir / is not allowed"
    rw_real+=("$r")
done
# /tmp inside is always its own tmpfs: on the overlay root, containerd's snapshots (an
# overlay's upper dir on an overlay) fail with "invalid argument" (a clone under /tmp used
# to hit that). A working directory below /tmp stays visible: its top-level entry under
# /tmp is bound from the overlay into the tmpfs (HT_TMP_KEEP). Shares below /tmp are
# mounted on the tmpfs at their paths anyway. Only a working directory of /tmp itself
# keeps the old overlay /tmp.
tmp_keep=""
in_share=0
for r in "${rw_real[@]}"; do [[ "$cwd" == "$r" || "$cwd" == "$r"/* ]] && in_share=1; done
if [[ "$cwd" == /tmp ]]; then
    tmp_tmpfs=0
    echo "testhost: warning: the working directory is /tmp itself, so /tmp inside is the overlay root, where containerd's snapshots fail; cd to a directory below /tmp or elsewhere" >&2
elif [[ "$cwd" == /tmp/* ]] && ((!in_share)); then
    tmp_keep="${cwd#/tmp/}"
    tmp_keep="${tmp_keep%%/*}"
fi
case "$cwd" in
    /run | /run/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*)
        inside=0
        for r in "${rw_real[@]}"; do [[ "$cwd" == "$r" || "$cwd" == "$r"/* ]] && inside=1; done
        ((inside)) || die "the working directory $cwd is hidden inside the test host (fresh /run, /proc, /sys, /dev); cd elsewhere or share it with --rw-dir"
        ;;
esac

{
    echo "HT_MSIZE=512000"
    echo "HT_ROOT_CACHE=loose"
    echo "HT_UPPER_SIZE=75%"
    echo "HT_HOSTNAME=husk-testhost"
    echo "HT_TMP_TMPFS=$tmp_tmpfs"
    echo "HT_TMP_KEEP=$(shq "$tmp_keep")"
    echo "HT_MODDIR=$(shq "$moddir")"
    echo "HT_RW_COUNT=${#rw_real[@]}"
    for i in "${!rw_real[@]}"; do echo "HT_RW_$i=$(shq "${rw_real[i]}")"; done
} >"$ctl/config"

# The command script, run by the host's bash under `env -i` inside.
{
    echo "# generated by scripts/testhost/run.sh"
    echo "export HOME=/root TERM=dumb"
    printf 'export PATH=%q\n' "$PATH"
    auto=(CARGO_TARGET_DIR CARGO_HOME RUSTUP_HOME RUSTUP_TOOLCHAIN RUST_LOG RUST_BACKTRACE CI LANG LC_ALL)
    for n in "${auto[@]}" $(compgen -v HUSK_ || true) "${env_names[@]}"; do
        [[ "$n" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env $n is not a variable name"
        # Forcing the test host is for this machine: inside it KVM is AMD-V (emulated), and
        # a forced mode there would nest a test host in the test host.
        [[ "$n" == HUSK_KVM_MODE ]] && continue
        if [[ -v "$n" ]]; then printf 'export %s=%q\n' "$n" "${!n}"; fi
    done
    printf 'cd -- %q || { echo "testhost: cannot enter %q inside the test host" >&2; exit 125; }\n' "$cwd" "$cwd"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$ctl/cmd.sh"

# --- boot -----------------------------------------------------------------

qemu_args=(
    -accel "tcg,thread=${HUSK_TESTHOST_TCG_THREAD:-multi}"
    -M q35 -cpu EPYC -smp "$cpus" -m "$mem"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$assets/vmlinuz" -initrd "$assets/initrd.cpio.gz"
    -append "console=ttyS0 quiet loglevel=${HUSK_TESTHOST_LOGLEVEL:-3} panic=-1 mitigations=off husk.npt=${HUSK_TESTHOST_NPT:-1} husk.kvm_amd=${HUSK_TESTHOST_KVM_AMD:-}"
    # Kernel console and init messages: a log file, printed on failure.
    -serial "file:$console_log"
    # The command's stdout/stderr: virtio console hvc0 -> our stdout.
    -device virtio-serial-pci
    -chardev "stdio,id=hvc0,signal=off"
    -device "virtconsole,chardev=hvc0"
    # The host's root, read-only; remap inode numbers of other mounts.
    -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
    -fsdev "local,id=huskctl,path=$ctl,security_model=none"
    -device "virtio-9p-pci,fsdev=huskctl,mount_tag=huskctl"
)
for i in "${!rw_real[@]}"; do
    qemu_args+=(
        -fsdev "local,id=huskrw$i,path=${rw_real[i]},security_model=none,multidevs=remap"
        -device "virtio-9p-pci,fsdev=huskrw$i,mount_tag=huskrw$i"
    )
done

now_ms() { local t="${EPOCHREALTIME/./}"; echo $((t / 1000)); }
start_ms="$(now_ms)"
qemu-system-x86_64 "${qemu_args[@]}" </dev/null 2>"$qemu_err" &
qpid=$!

# Is the QEMU child still running (not a zombie)?
alive() {
    local _pid _comm state
    read -r _pid _comm state _ 2>/dev/null <"/proc/$qpid/stat" || return 1
    [[ "$state" != Z ]]
}

# Watchdog loop; also notes when the command started (ctl/boot_uptime appears).
timed_out=0
boot_ms=""
deadline_ms=$((start_ms + timeout_s * 1000))
# A test host whose heartbeat (written every 10 s once its command runs) is older than
# this has frozen: the emulation hangs now and then (README). Stopped like a timeout.
hb_limit_s="${HUSK_TESTHOST_HEARTBEAT_TIMEOUT:-120}"
froze=0
checks=0
while alive; do
    now="$(now_ms)"
    if [[ -z "$boot_ms" && -e "$ctl/boot_uptime" ]]; then boot_ms=$((now - start_ms)); fi
    if ((now >= deadline_ms)); then
        timed_out=1
        break
    fi
    checks=$((checks + 1))
    # No heartbeat at all 30 s after the command started is a freeze too.
    if ((checks % 25 == 0)) && [[ -n "$boot_ms" && ! -e "$ctl/exit" ]] &&
        if [[ -s "$ctl/heartbeat" ]]; then
            (($(date +%s) - $(stat -c %Y "$ctl/heartbeat") > hb_limit_s))
        else
            ((now - start_ms - boot_ms > 30000))
        fi; then
        froze=1
        timed_out=1
        break
    fi
    sleep 0.2
done
if ((froze)); then
    echo "testhost: the test host froze (no heartbeat for more than $hb_limit_s s); stopping it" >&2
fi
if ((timed_out)); then
    kill -TERM "$qpid" 2>/dev/null || true
    sleep 1
    kill -KILL "$qpid" 2>/dev/null || true
fi
qrc=0
wait "$qpid" || qrc=$?
qpid=""
end_ms="$(now_ms)"

if [[ -n "$log_dir" ]]; then
    mkdir -p "$log_dir"
    cp "$console_log" "$log_dir/testhost-console.log" 2>/dev/null || true
    cp "$ctl/dmesg" "$log_dir/testhost-dmesg.log" 2>/dev/null || true
fi

secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }
show_failure() {
    echo "testhost: last lines of the serial console ($console_log):" >&2
    tail -n 40 "$console_log" 2>/dev/null | sed 's/^/  | /' >&2 || true
    if [[ -s "$qemu_err" ]]; then
        echo "testhost: QEMU said:" >&2
        tail -n 20 "$qemu_err" | sed 's/^/  | /' >&2
    fi
}

if ((timed_out)); then
    ((froze)) || echo "testhost: test host timed out after $timeout_s s" >&2
    heartbeat
    show_failure
    exit 124
fi

# The status: ctl/exit, else the marker line on the serial console.
rc=""
if [[ -s "$ctl/exit" ]]; then
    rc="$(tr -dc 0-9 <"$ctl/exit")"
fi
if [[ -z "$rc" ]]; then
    rc="$(sed -n 's/^HUSK_TESTHOST_EXIT=\([0-9]\{1,3\}\).*/\1/p' "$console_log" 2>/dev/null | tail -n1)"
fi
if [[ -z "$rc" ]]; then
    err="$(sed -n 's/^HUSK_TESTHOST_ERROR=//p' "$console_log" 2>/dev/null | tail -n1)"
    echo "testhost: the test host stopped without an exit status (QEMU exit $qrc after $(secs $((end_ms - start_ms))) s)${err:+: $err}" >&2
    show_failure
    exit 125
fi

if ((!quiet)); then
    guest_boot="$(cat "$ctl/boot_uptime" 2>/dev/null || echo '?')"
    echo "testhost: exit $rc; command started $(secs "${boot_ms:-0}") s after launch (guest uptime ${guest_boot} s), total $(secs $((end_ms - start_ms))) s" >&2
fi
exit "$rc"
