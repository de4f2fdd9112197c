#!/usr/bin/env bash
# The install without a VM (`make test-install`, part of `make test`):
#  1. install.sh of the staged release tree into a throwaway DESTDIR: the files land
#     where the README says, husk.toml points at them, every binary's --version names
#     the release's version and commit, and the containerd snippet is printed;
#  2. an edited husk.toml survives a reinstall (the new one goes to husk.toml.new) and
#     an uninstall, which removes everything else;
#  3. an unedited install uninstalls to an empty DESTDIR;
#  4. the tarball: its SHA256SUMS holds, lists every file, and its install.sh installs
#     byte for byte what `make install` installs.
# Usage: scripts/test-install.sh build/dist/husk-<version>-x86_64
set -euo pipefail
dist="$(cd "${1:?usage: test-install.sh DIST_DIR}" && pwd -P)"
tarball="$dist.tar.gz"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/husk-test-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "test-install: PASS $*"; }
bad() {
    echo "test-install: FAIL $*" >&2
    fails=$((fails + 1))
}
check() { # check DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
# Every file under $1 with its sha256, paths relative to $1.
tree() { (cd "$1" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -r -d '\n' sha256sum); }

version="$(cat "$dist/VERSION")"
P=/usr/local

# --- 1. install ---------------------------------------------------------------
a="$tmp/a"
PREFIX=$P DESTDIR="$a" "$dist/install.sh" 2>"$tmp/install.log" || {
    cat "$tmp/install.log" >&2
    bad "install.sh into DESTDIR exits 0"
}
for f in bin/husk-vmm bin/husk-jailer bin/containerd-shim-husk-v2 bin/husk-check libexec/husk/virtiofsd; do
    check "$P/$f is installed and executable" test -x "$a$P/$f"
done
for f in vmlinux initramfs.cpio containerd-husk.toml runtimeclass.yaml installed-files; do
    check "$P/share/husk/$f is installed" test -f "$a$P/share/husk/$f"
done
check "/etc/husk/husk.toml is installed" test -f "$a/etc/husk/husk.toml"
check "/etc/tmpfiles.d/husk.conf sets shmem huge pages to advise at boot" \
    grep -qx 'w /sys/kernel/mm/transparent_hugepage/shmem_enabled - - - - advise' "$a/etc/tmpfiles.d/husk.conf"
for k in "kernel = \"$P/share/husk/vmlinux\"" "initramfs = \"$P/share/husk/initramfs.cpio\"" \
    "vmm = \"$P/bin/husk-vmm\"" "jailer = \"$P/bin/husk-jailer\"" "virtiofsd = \"$P/libexec/husk/virtiofsd\""; do
    check "husk.toml says $k" grep -qxF "$k" "$a/etc/husk/husk.toml"
done
for b in husk-vmm husk-jailer containerd-shim-husk-v2 husk-check; do
    out="$("$a$P/bin/$b" --version 2>&1 || true)"
    check "$b --version prints '$b $version' (got '$out')" test "$out" = "$b $version"
done
check "install.sh prints the containerd snippet" grep -q 'runtime_type = "io.containerd.husk.v2"' "$tmp/install.log"
check "install.sh tells to run husk-check" grep -q husk-check "$tmp/install.log"
# husk-check reads the installed config with the shim's rules and finds the guest files.
"$a$P/bin/husk-check" --config "$a/etc/husk/husk.toml" >"$tmp/check.out" 2>&1 || true
check "husk-check reads the installed husk.toml" grep -q "^PASS config: $a/etc/husk/husk.toml is valid" "$tmp/check.out"

# --- 2. an edited husk.toml survives reinstall and uninstall --------------------
echo "vcpus = 2 # mine" >>"$a/etc/husk/husk.toml"
edited="$(sha256sum <"$a/etc/husk/husk.toml")"
PREFIX=$P DESTDIR="$a" "$dist/install.sh" 2>"$tmp/reinstall.log" || bad "reinstall exits 0"
check "reinstall keeps the edited husk.toml" test "$(sha256sum <"$a/etc/husk/husk.toml")" = "$edited"
check "reinstall writes husk.toml.new" cmp -s "$a/etc/husk/husk.toml.new" <(head -n -1 "$a/etc/husk/husk.toml")
check "reinstall says so" grep -q "kept your edited /etc/husk/husk.toml" "$tmp/reinstall.log"
PREFIX=$P DESTDIR="$a" "$dist/install.sh" --uninstall 2>"$tmp/uninstall.log" || bad "uninstall exits 0"
left="$(cd "$a" && find . -type f | sort | tr '\n' ' ')"
check "uninstall leaves only the edited husk.toml (left: $left)" test "$left" = "./etc/husk/husk.toml "
check "uninstall says it kept it" grep -q "kept /etc/husk/husk.toml" "$tmp/uninstall.log"

# --- 3. an unedited round trip leaves nothing ------------------------------------
b="$tmp/b"
PREFIX=$P DESTDIR="$b" "$dist/install.sh" 2>/dev/null || bad "install into a second DESTDIR"
tree "$b" >"$tmp/make-install.tree"
# Installing twice changes nothing.
PREFIX=$P DESTDIR="$b" "$dist/install.sh" 2>/dev/null || bad "install over itself"
check "installing twice gives the same files" cmp -s "$tmp/make-install.tree" <(tree "$b")
PREFIX=$P DESTDIR="$b" "$dist/install.sh" --uninstall 2>/dev/null || bad "uninstall of the second DESTDIR"
check "uninstall removes every file" test -z "$(find "$b" -type f)"
check "uninstall removes husk's dirs" test ! -e "$b$P/share/husk" -a ! -e "$b/etc/husk" -a ! -e "$b$P/libexec/husk"

# --- 4. the tarball ---------------------------------------------------------------
check "the tarball $tarball exists" test -f "$tarball"
mkdir "$tmp/x"
tar -C "$tmp/x" -xzf "$tarball"
top="$(ls "$tmp/x")"
check "the tarball holds one dir $(basename "$dist") (holds: $top)" test "$top" = "$(basename "$dist")"
x="$tmp/x/$top"
check "the tarball's SHA256SUMS holds" bash -c "cd '$x' && sha256sum --quiet -c SHA256SUMS"
check "SHA256SUMS lists every file of the tarball" cmp -s \
    <(cd "$x" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort) \
    <(awk '{print $2}' "$x/SHA256SUMS" | LC_ALL=C sort)
PREFIX=$P DESTDIR="$tmp/c" "$x/install.sh" 2>/dev/null || bad "the tarball's install.sh exits 0"
check "the tarball installs exactly what make install installs" cmp -s "$tmp/make-install.tree" <(tree "$tmp/c")
for f in husk-vmm husk-jailer containerd-shim-husk-v2 husk-check; do
    if ldd "$x/bin/$f" 2>&1 | grep -q '=>'; then
        bad "$f in the tarball is static (ldd: $(ldd "$x/bin/$f" | tr '\n' ' '))"
    else
        ok "$f in the tarball is static"
    fi
done
# A corrupted tree refuses to install.
echo x >>"$x/share/husk/runtimeclass.yaml"
if PREFIX=$P DESTDIR="$tmp/d" "$x/install.sh" 2>"$tmp/corrupt.log"; then
    bad "install.sh refuses a tree that does not match SHA256SUMS"
else
    check "install.sh refuses a tree that does not match SHA256SUMS" grep -q "does not match" "$tmp/corrupt.log"
fi

if ((fails)); then
    echo "test-install: $fails checks failed" >&2
    exit 1
fi
echo "test-install: all checks passed"
