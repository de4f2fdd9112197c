#!/usr/bin/env bash
# Installs husk from a release tree (the unpacked husk-<version>-x86_64.tar.gz, or the
# tree `make dist` stages in build/dist/): `make install` and the tarball both run this.
#
# Usage: [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=/etc] ./install.sh [--uninstall]
#
#   $PREFIX/bin/               husk-vmm, husk-jailer, containerd-shim-husk-v2, husk-check
#   $PREFIX/libexec/husk/      virtiofsd (husk's own; a virtiofsd elsewhere is left alone)
#   $PREFIX/share/husk/        vmlinux, initramfs.cpio (the guest), containerd-husk.toml,
#                              runtimeclass.yaml, installed-files (what to uninstall)
#   $SYSCONFDIR/husk/husk.toml the shim's config, pointing at the files above. A file
#                              you edited is kept: the new one goes to husk.toml.new.
#   $SYSCONFDIR/tmpfiles.d/husk.conf  transparent huge pages for shared memory on
#                              request (shmem_enabled=advise) at every boot; applied now
#                              too when DESTDIR is empty (guest RAM in 2 MiB pages boots
#                              far faster; see deploy/husk-tmpfiles.conf).
#
# DESTDIR is a staging root for packaging: files go under it, but every path written into
# them (husk.toml, the containerd snippet) is the final one.
# --uninstall removes what installed-files lists, except a husk.toml you edited.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
PREFIX="${PREFIX%/}"
SYSCONFDIR="${SYSCONFDIR%/}"
DESTDIR="${DESTDIR%/}"

die() {
    echo "install: error: $*" >&2
    exit 1
}
[[ "$PREFIX" == /* ]] || die "PREFIX must be an absolute path, not '$PREFIX'"
[[ "$SYSCONFDIR" == /* ]] || die "SYSCONFDIR must be an absolute path, not '$SYSCONFDIR'"
[[ -z "$DESTDIR" || "$DESTDIR" == /* ]] || die "DESTDIR must be an absolute path, not '$DESTDIR'"

share="$PREFIX/share/husk"
conf="$SYSCONFDIR/husk/husk.toml"
manifest="$share/installed-files"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# The sha256 a manifest records for path $2 (empty if none).
recorded() { [[ -f "$1" ]] && awk -v p="$2" '$2 == p { print $1 }' "$1" | tail -n1; }

uninstall() {
    local m="$DESTDIR$manifest" p h kept=0
    [[ -f "$m" ]] || die "$m does not exist: husk is not installed with PREFIX=$PREFIX${DESTDIR:+ DESTDIR=$DESTDIR}"
    while read -r h p; do
        [[ -n "$p" && "$p" != "$manifest" ]] || continue
        if [[ "$p" == "$conf" && -f "$DESTDIR$p" && "$(sha "$DESTDIR$p")" != "$h" ]]; then
            echo "install: kept $p: it was edited after the install" >&2
            kept=1
            continue
        fi
        rm -f "$DESTDIR$p"
    done <"$m"
    rm -f "$m"
    for d in "$share" "$PREFIX/libexec/husk" "$SYSCONFDIR/husk"; do
        rmdir "$DESTDIR$d" 2>/dev/null || true
    done
    echo "install: husk removed from ${DESTDIR}${PREFIX}$( ((kept)) && echo " (your $conf stays)")" >&2
    echo "install: remove the husk runtime tables from /etc/containerd/config.toml yourself, then restart containerd" >&2
    echo "install: /sys/kernel/mm/transparent_hugepage/shmem_enabled keeps its value until the next boot" >&2
}

if [[ "${1:-}" == --uninstall ]]; then
    uninstall
    exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1' (usage: [PREFIX=..] [DESTDIR=..] install.sh [--uninstall])"

# The release tree must be complete and unmodified.
[[ -f "$here/SHA256SUMS" ]] || die "$here/SHA256SUMS is missing: run install.sh from an unpacked release (or make install)"
(cd "$here" && sha256sum --quiet -c SHA256SUMS) || die "the release tree $here does not match its SHA256SUMS"
version="$(cat "$here/VERSION")"

new_manifest="$(mktemp)"
trap 'rm -f "$new_manifest"' EXIT
old_manifest="$DESTDIR$manifest"

# put SRC MODE DEST: install one file and record it.
put() {
    install -D -m "$2" "$1" "$DESTDIR$3"
    echo "$(sha "$DESTDIR$3")  $3" >>"$new_manifest"
}

for b in husk-vmm husk-jailer containerd-shim-husk-v2 husk-check; do
    put "$here/bin/$b" 0755 "$PREFIX/bin/$b"
done
put "$here/libexec/husk/virtiofsd" 0755 "$PREFIX/libexec/husk/virtiofsd"
put "$here/share/husk/vmlinux" 0644 "$share/vmlinux"
put "$here/share/husk/initramfs.cpio" 0644 "$share/initramfs.cpio"
put "$here/share/husk/runtimeclass.yaml" 0644 "$share/runtimeclass.yaml"
put "$here/share/husk/husk-tmpfiles.conf" 0644 "$SYSCONFDIR/tmpfiles.d/husk.conf"
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
# Now as well as at the next boot, unless the admin chose otherwise than the kernel's
# default (`never`): `deny`/`force` and the others are left alone.
if [[ -z "$DESTDIR" && -w "$thp" ]] && grep -q '\[never\]' "$thp"; then
    echo advise >"$thp" && echo "install: $thp: never -> advise (huge pages for guest RAM)" >&2
fi

# The containerd snippet and husk.toml, with this install's paths.
tmpfile="$(mktemp)"
trap 'rm -f "$new_manifest" "$tmpfile"' EXIT
sed "s#\"/etc/husk/husk.toml\"#\"$conf\"#" "$here/share/husk/containerd-husk.toml" >"$tmpfile"
put "$tmpfile" 0644 "$share/containerd-husk.toml"

{
    echo "# Installed by husk $version (PREFIX=$PREFIX): paths point at this install."
    sed -e "s#^kernel = .*#kernel = \"$share/vmlinux\"#" \
        -e "s#^initramfs = .*#initramfs = \"$share/initramfs.cpio\"#" \
        -e "s#^vmm = .*#vmm = \"$PREFIX/bin/husk-vmm\"#" \
        -e "s#^jailer = .*#jailer = \"$PREFIX/bin/husk-jailer\"#" \
        -e "s#^virtiofsd = .*#virtiofsd = \"$PREFIX/libexec/husk/virtiofsd\"#" \
        "$here/etc/husk/husk.toml"
} >"$tmpfile"
target="$DESTDIR$conf"
if [[ ! -e "$target" ]] || cmp -s "$tmpfile" "$target" ||
    [[ "$(sha "$target")" == "$(recorded "$old_manifest" "$conf")" ]]; then
    # New, the same, or the previous install's unedited file: (re)place it.
    put "$tmpfile" 0644 "$conf"
    rm -f "$target.new"
else
    put "$tmpfile" 0644 "$conf.new"
    # Record the shipped file's sha for husk.toml: the edited one differs from it, so
    # uninstall and the next upgrade keep it too.
    echo "$(sha "$tmpfile")  $conf" >>"$new_manifest"
    echo "install: kept your edited $conf; this version's defaults are in $conf.new (diff them)" >&2
fi

# Files the previous install had and this one does not: remove them.
if [[ -f "$old_manifest" ]]; then
    while read -r _ p; do
        [[ -n "$p" && "$p" != "$manifest" && "$p" != "$conf" ]] || continue
        [[ -n "$(recorded "$new_manifest" "$p")" ]] || rm -f "$DESTDIR$p"
    done <"$old_manifest"
fi
install -D -m 0644 "$new_manifest" "$DESTDIR$manifest"

cat >&2 <<EOF
install: husk $version installed into ${DESTDIR}${PREFIX} (config $conf)
install: next steps:
  1. husk-check                  # is this host ready? every line must say PASS
  2. register husk with containerd: append $share/containerd-husk.toml to
     /etc/containerd/config.toml and restart containerd:
       cat $share/containerd-husk.toml >>/etc/containerd/config.toml
       systemctl restart containerd
  3. ctr run --rm --runtime io.containerd.husk.v2 IMAGE ID CMD
  4. Kubernetes: kubectl apply -f $share/runtimeclass.yaml
The containerd snippet ($share/containerd-husk.toml):
EOF
sed 's/^/    /' "$DESTDIR$share/containerd-husk.toml" >&2
