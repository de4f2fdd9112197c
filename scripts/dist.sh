#!/usr/bin/env bash
# The release tree and tarball (`make install` installs from the tree, `make dist` packs it).
#
#   scripts/dist.sh stage DIR   assemble DIR from the built files (make image, the musl
#                               release binaries, virtiofsd): bin/, libexec/husk/,
#                               share/husk/, etc/husk/husk.toml, install.sh, VERSION and
#                               SHA256SUMS (every other file's sha256)
#   scripts/dist.sh tar DIR     pack DIR as DIR.tar.gz (one top-level dir, root-owned)
#
# Inputs: target/x86_64-unknown-linux-musl/release/{husk-vmm,husk-jailer,containerd-shim-husk-v2,
# husk-check} (static), build/guest/{vmlinux,initramfs.cpio}, virtiofsd ($HUSK_VIRTIOFSD,
# else ~/.cargo/bin, /usr/libexec, /usr/local/bin), config/, deploy/, scripts/install.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
die() {
    echo "dist: error: $*" >&2
    exit 1
}

find_virtiofsd() {
    local c
    for c in "${HUSK_VIRTIOFSD:-}" "${HOME:-/root}/.cargo/bin/virtiofsd" /root/.cargo/bin/virtiofsd \
        /usr/libexec/virtiofsd /usr/local/bin/virtiofsd; do
        [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
    done
    return 1
}

stage() {
    local out="$1" musl="$root/target/x86_64-unknown-linux-musl/release" f
    for f in "$musl/husk-vmm" "$musl/husk-jailer" "$musl/containerd-shim-husk-v2" "$musl/husk-check"; do
        [[ -x "$f" ]] || die "$f is missing: run make dist (it builds the static binaries)"
    done
    for f in "$root/build/guest/vmlinux" "$root/build/guest/initramfs.cpio"; do
        [[ -f "$f" ]] || die "$f is missing: run make image"
    done
    local vfs
    vfs="$(find_virtiofsd)" || die "virtiofsd not found: scripts/install-virtiofsd.sh builds it (or set HUSK_VIRTIOFSD)"
    "$vfs" --version >/dev/null 2>&1 || die "$vfs --version fails: is it a virtiofsd?"

    rm -rf "$out"
    mkdir -p "$out"/{bin,libexec/husk,share/husk,etc/husk}
    install -m 0755 "$musl/husk-vmm" "$musl/husk-jailer" "$musl/containerd-shim-husk-v2" "$musl/husk-check" "$out/bin/"
    install -m 0755 "$vfs" "$out/libexec/husk/virtiofsd"
    install -m 0644 "$root/build/guest/vmlinux" "$root/build/guest/initramfs.cpio" \
        "$root/deploy/containerd-husk.toml" "$root/deploy/runtimeclass.yaml" \
        "$root/deploy/husk-tmpfiles.conf" "$out/share/husk/"
    install -m 0644 "$root/config/husk.toml" "$out/etc/husk/husk.toml"
    install -m 0755 "$root/scripts/install.sh" "$out/install.sh"
    # The version the binaries print: "0.1.0 (git <commit>)".
    "$out/bin/husk-check" --version | cut -d' ' -f2- >"$out/VERSION"
    (cd "$out" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort |
        xargs -d '\n' sha256sum >SHA256SUMS)
    for f in "$out"/bin/* "$out/libexec/husk/virtiofsd"; do
        if ldd "$f" 2>&1 | grep -q '=>'; then
            echo "dist: $(basename "$f"): dynamically linked ($(ldd "$f" | awk '/=>/ {print $1}' | tr '\n' ' '))" >&2
        else
            echo "dist: $(basename "$f"): static" >&2
        fi
    done
    echo "dist: staged husk $(cat "$out/VERSION") in $out" >&2
}

pack() {
    local dir="${1%/}"
    [[ -f "$dir/SHA256SUMS" ]] || die "$dir is not a staged release tree (run scripts/dist.sh stage first)"
    local mtime
    mtime="$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)"
    tar -C "$(dirname "$dir")" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$mtime" -czf "$dir.tar.gz" "$(basename "$dir")"
    echo "dist: wrote $dir.tar.gz ($(du -h "$dir.tar.gz" | cut -f1))" >&2
}

case "${1:-}" in
    stage) stage "${2:?usage: dist.sh stage DIR}" ;;
    tar) pack "${2:?usage: dist.sh tar DIR}" ;;
    *) die "usage: dist.sh stage|tar DIR" ;;
esac
