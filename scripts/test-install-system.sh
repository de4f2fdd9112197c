#!/usr/bin/env bash
# Run by scripts/test-install-vm.sh from a clone under /tmp, where KVM boots a standard
# guest (inside the test host, whose root is a throwaway overlay). Checks, in order:
#  1. /tmp is a real filesystem here (not the overlay root) and the clone's
#     scripts/demo.sh runs a container under husk;
#  2. the release tree's install.sh (what `make install` runs) with PREFIX=/usr/local
#     into the system paths, then exactly the README's steps: append the installed
#     containerd snippet to Debian's /etc/containerd/config.toml and start the system
#     containerd; husk-check passes; the CRI plugin loaded; the busybox test image is
#     imported and `ctr run --rm --runtime io.containerd.husk.v2` prints the guest
#     kernel's release;
#  3. uninstall removes the installed files.
# Outside the test host step 2 and 3 write to the real /usr/local, /etc/husk and
# /etc/containerd: they run only with HUSK_TEST_SYSTEM_INSTALL=1.
# Usage: scripts/test-install-system.sh DIST_DIR
set -uo pipefail
dist="$(cd "${1:?usage: test-install-system.sh DIST_DIR}" && pwd -P)"
root="$(pwd -P)"
fails=0
ok() { echo "test-install-system: PASS $*"; }
bad() {
    echo "test-install-system: FAIL $*" >&2
    fails=$((fails + 1))
}
finish() {
    if ((fails)); then
        echo "test-install-system: $fails checks failed" >&2
        exit 1
    fi
    echo "test-install-system: all checks passed"
    exit 0
}

# --- 1. the demo from a checkout under /tmp -------------------------------------
fs="$(stat -f -c %T /tmp)"
if [[ "$fs" != overlayfs ]]; then ok "/tmp is $fs (cwd $root)"; else bad "/tmp is on the overlay root"; fi
start=$SECONDS
demo="$(scripts/demo.sh 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$demo" | sed 's/^/  demo | /'
if ((rc == 0)) && grep -q '^guest kernel: ' <<<"$demo"; then
    ok "scripts/demo.sh from $root ($((SECONDS - start)) s)"
else
    bad "scripts/demo.sh from $root exited $rc"
fi

if [[ ! -d /run/husk-testhost && "${HUSK_TEST_SYSTEM_INSTALL:-}" != 1 ]]; then
    echo "test-install-system: SKIP the system install: not in the test host (HUSK_TEST_SYSTEM_INSTALL=1 installs into this machine's /usr/local, /etc/husk and /etc/containerd)"
    finish
fi

# --- 2. make install's install.sh, the system containerd, ctr run ----------------
# As systemd starts containerd (Debian's unit has no PATH of its own).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"$dist/bin/husk-check" >/dev/null 2>&1 && bad "husk-check passes before the install" ||
    ok "husk-check fails before the install"
# The kernel's default, which install.sh must change (the test host starts at advise).
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
echo never >"$thp"
out="$("$dist/bin/husk-check" 2>&1)"
if grep -q '^WARN huge-pages: ' <<<"$out"; then ok "husk-check warns of shmem_enabled=never"; else
    bad "husk-check did not warn of shmem_enabled=never:"
    printf '%s\n' "$out" | sed 's/^/  husk-check | /' >&2
fi
PREFIX=/usr/local "$dist/install.sh" || bad "install.sh exited $?"
if grep -q '\[advise\]' "$thp" && grep -q "^w $thp .* advise$" /etc/tmpfiles.d/husk.conf; then
    ok "install.sh set $thp to advise, now and at boot (/etc/tmpfiles.d/husk.conf)"
else
    bad "install.sh left $thp at '$(cat "$thp")' or did not install /etc/tmpfiles.d/husk.conf"
fi
ls -l /usr/local/bin/husk-vmm /usr/local/bin/husk-jailer /usr/local/bin/containerd-shim-husk-v2 /usr/local/bin/husk-check \
    /usr/local/libexec/husk/virtiofsd /usr/local/share/husk /etc/husk/husk.toml | sed 's/^/  /'

# The test host's root is an overlay: containerd's root (overlay snapshots) needs a real
# filesystem, as on any node (husk-check says so otherwise).
mkdir -p /var/lib/containerd
mount -t tmpfs -o mode=0711 containerd-root /var/lib/containerd || bad "mount a tmpfs on /var/lib/containerd"
# The README's step, verbatim.
cat /usr/local/share/husk/containerd-husk.toml >>/etc/containerd/config.toml
log=/run/containerd-test.log
containerd >"$log" 2>&1 &
ctrd=$!
for _ in $(seq 1 300); do
    ctr version >/dev/null 2>&1 && break
    kill -0 "$ctrd" 2>/dev/null || break
    sleep 0.5
done
if ctr version >/dev/null 2>&1; then ok "the system containerd runs with the merged config"; else
    bad "containerd did not come up:"
    tail -n 30 "$log" >&2
    finish
fi
out="$(husk-check 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/  husk-check | /'
if ((rc == 0)); then ok "husk-check passes"; else bad "husk-check exited $rc"; fi
cri="$(ctr plugins ls | awk '$2 == "cri" {print $NF}')"
if [[ "$cri" == ok ]]; then ok "the CRI plugin loaded with the merged config"; else bad "the CRI plugin is '$cri'"; fi

work="$(mktemp -d /tmp/husk-sys.XXXXXX)"
archive="$("$root/target/release/husk-demo" --busybox-archive "$work")" || bad "build the busybox archive"
ctr images import "$archive" >/dev/null || bad "ctr images import"
start=$SECONDS
out="$(timeout 900 ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/husk-busybox:latest husk-install-test uname -r 2>&1)" && rc=0 || rc=$?
guest="$(tr -d '\r' <<<"$out" | tail -n1)"
host="$(uname -r)"
if ((rc == 0)) && [[ -n "$guest" && "$guest" != "$host" ]]; then
    ok "ctr run --rm --runtime io.containerd.husk.v2 ... uname -r: guest kernel $guest (test host $host), $((SECONDS - start)) s"
else
    bad "ctr run exited $rc: $out"
    tail -n 40 "$log" >&2
fi
kill "$ctrd"
wait "$ctrd" 2>/dev/null
rm -rf "$work"

# --- 3. uninstall ------------------------------------------------------------------
PREFIX=/usr/local "$dist/install.sh" --uninstall || bad "uninstall exited $?"
left=""
for f in /usr/local/bin/husk-vmm /usr/local/bin/husk-jailer /usr/local/bin/containerd-shim-husk-v2 /usr/local/bin/husk-check \
    /usr/local/libexec/husk /usr/local/share/husk /etc/husk /etc/tmpfiles.d/husk.conf; do
    [[ -e "$f" ]] && left="$left $f"
done
if [[ -z "$left" ]]; then ok "uninstall removed every installed file"; else bad "left after uninstall:$left"; fi
finish
