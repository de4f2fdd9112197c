#!/usr/bin/env bash
# Where husk-vmm's seccomp lists (vmm/src/seccomp/x86_64.json) come from: the system calls
# the VMM really makes, per thread, once its threads run.
#
#   scripts/trace-vmm-syscalls.sh wrap DIR
#       prints the path of a wrapper to use as husk-vmm (HUSK_VMM=... for the tests, `vmm`
#       in husk.toml for the shim): it runs target/x86_64-unknown-linux-musl/release/husk-vmm --no-seccomp under
#       `strace -ff` (one file per thread in DIR).
#   scripts/trace-vmm-syscalls.sh summary DIR
#       per thread class (main, vmm-events, vcpu), every call seen after the point where
#       that thread installs its filter, with the arguments the lists check (ioctl request,
#       futex op, mmap/mprotect prot, socket family, madvise advice, ...).
#
# A spawned thread's filtered part starts after its prctl(PR_SET_NAME) (what Rust's thread
# start does last before the thread's own code); the main thread's after its last clone3
# (all threads are spawned before the filters go on). The filters are off while tracing
# (--no-seccomp), so a run shows every call, not just the first one missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cmd=${1:?usage: trace-vmm-syscalls.sh wrap|summary DIR}
dir=${2:?usage: trace-vmm-syscalls.sh wrap|summary DIR}
case "$cmd" in
wrap)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    w="$dir/husk-vmm"
    cat >"$w" <<EOF
#!/bin/sh
exec strace -ff -qq -o "$dir/trace.\$\$" "${HUSK_VMM_REAL:-$root/target/x86_64-unknown-linux-musl/release/husk-vmm}" --no-seccomp "\$@"
EOF
    chmod +x "$w"
    echo "$w"
    ;;
summary)
    for f in "$dir"/trace.*; do
        awk -v file="$f" '
        function key(line,   name, rest, a) {
            name = line; sub(/\(.*/, "", name)
            rest = line; sub(/^[a-z0-9_]+\(/, "", rest)
            split(rest, a, ", ")
            if (name == "ioctl") return name " " a[2]
            if (name == "futex") return name " " a[2]
            if (name == "mmap") return name " prot=" a[3] " flags=" a[4]
            if (name == "mprotect") return name " prot=" a[3]
            if (name == "madvise") return name " " a[3]
            if (name == "socket") return name " " a[1] " " a[2]
            if (name == "fcntl") return name " " a[2]
            if (name == "rt_sigaction") return name " " a[1]
            if (name == "tgkill" || name == "tkill") return name " sig=" a[3]
            if (name == "accept4") return name " " a[4]
            if (name == "prctl") return name " " a[1]
            return name
        }
        /^\+\+\+|^---/ { next }
        { lines[NR] = $0 }
        /^clone3\(|^clone\(/ { lastclone = NR }
        /^prctl\(PR_SET_NAME/ { if (!named) { named = NR; tname = $0; sub(/.*PR_SET_NAME, "/, "", tname); sub(/".*/, "", tname) } }
        /^execve\(/ { ismain = 1 }
        END {
            if (ismain) { cls = "main"; from = lastclone + 1 }
            else if (tname ~ /^vcpu/) { cls = "vcpu"; from = named + 1 }
            else if (tname != "") { cls = tname; from = named + 1 }
            else { cls = "unnamed"; from = 1 }
            for (i = from; i <= NR; i++) {
                l = lines[i]
                if (l !~ /^[a-z0-9_]+\(/) continue
                print cls "\t" key(l)
            }
        }' "$f"
    done | sort | uniq -c | awk '{c=$1; $1=""; sub(/^ /, ""); print $0 "\t" c}' | sort
    ;;
*)
    echo "usage: trace-vmm-syscalls.sh wrap|summary DIR" >&2
    exit 2
    ;;
esac
