#!/usr/bin/env bash
# Builds the husk guest kernel from Debian's linux-source-6.1 with our config
# (guest-image/kernel/husk-guest.config) and caches the result outside the clone,
# keyed by (source package version, config hash, this script's hash), so a re-run
# takes seconds and a fresh machine builds it once.
#
# Usage: build-kernel.sh OUT_DIR [FRAGMENT]
#                         -> OUT_DIR/vmlinux, OUT_DIR/bzImage, OUT_DIR/config
# FRAGMENT: config lines appended to ours, for a test-only variant (the hostile-guest
# kernel, kernel/husk-guest-hostile.fragment). It is part of the cache key, and it shares
# the build tree, so a variant rebuilds incrementally (about a minute) after the main one.
# Env:   HUSK_CACHE_DIR (default /var/cache/husk)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-kernel.sh OUT_DIR [FRAGMENT]}
fragment=${2:-}
cache=${HUSK_CACHE_DIR:-/var/cache/husk}
config="$here/kernel/husk-guest.config"

if ! dpkg -s linux-source-6.1 >/dev/null 2>&1; then
    echo "build-kernel: installing linux-source-6.1 and the kernel build dependencies" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-source-6.1 bc bison flex \
        libelf-dev libssl-dev cpio xz-utils >&2
fi
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
cfghash=$( (cat "$config" ${fragment:+"$fragment"} "$0") | sha256sum | cut -c1-16)
key="linux-source-6.1_${srcver}_${cfghash}"
dest="$cache/kernel/$key"

# One build at a time: two checkouts building at once would share the build tree.
mkdir -p "$cache/kernel-build"
exec 9>"$cache/kernel-build/.lock"
flock 9
if [ ! -f "$dest/vmlinux" ] || [ ! -f "$dest/bzImage" ]; then
    # One build tree per source version: config changes rebuild incrementally.
    tree="$cache/kernel-build/linux-source-6.1_${srcver}"
    if [ ! -f "$tree/.extracted" ]; then
        echo "build-kernel: extracting linux-source-6.1 $srcver into $tree" >&2
        rm -rf "$tree" && mkdir -p "$tree"
        tar -xaf /usr/src/linux-source-6.1.tar.xz -C "$tree" --strip-components=1
        touch "$tree/.extracted"
    fi
    echo "build-kernel: building $key (a clean build takes 5-11 min on 2 cores)" >&2
    cat "$config" ${fragment:+"$fragment"} >"$tree/.config"
    # (A fragment's lines override ours: kconfig says so on stderr, kept in the log.)
    make -C "$tree" olddefconfig >"$cache/kernel-build/olddefconfig.log" 2>&1 || {
        cat "$cache/kernel-build/olddefconfig.log" >&2
        exit 1
    }
    if [ -n "$fragment" ]; then
        # Every line of the fragment must survive olddefconfig (a dependency can veto one).
        while IFS= read -r line; do
            case $line in
            CONFIG_* | "# CONFIG_"*" is not set")
                grep -qxF "$line" "$tree/.config" || {
                    echo "build-kernel: $fragment: '$line' did not take" >&2
                    exit 1
                }
                ;;
            esac
        done <"$fragment"
    fi
    start=$(date +%s)
    make -C "$tree" -j"$(nproc)" vmlinux bzImage >"$cache/kernel-build/last-build.log" 2>&1 || {
        tail -40 "$cache/kernel-build/last-build.log" >&2
        echo "build-kernel: kernel build failed (log: $cache/kernel-build/last-build.log)" >&2
        exit 1
    }
    echo "build-kernel: built in $(( $(date +%s) - start ))s" >&2
    mkdir -p "$dest.tmp"
    cp "$tree/vmlinux" "$dest.tmp/vmlinux"
    cp "$tree/arch/x86/boot/bzImage" "$dest.tmp/bzImage"
    cp "$tree/.config" "$dest.tmp/config"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
mkdir -p "$out"
for f in vmlinux bzImage config; do
    cp -f "$dest/$f" "$out/$f"
done
echo "build-kernel: $out (cache key $key)" >&2
