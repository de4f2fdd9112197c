#!/usr/bin/env bash
# prepare.sh: build (once) the assets the emulated test host boots from.
#
# Output, in a cache dir outside the clone:
#   ${HUSK_CACHE_DIR:-/var/cache/husk}/testhost/
#     kernel-<abi>_<pkgversion>/          Debian's standard kernel, unpacked
#       vmlinuz
#       modules/<kver>/...                full module tree, uncompressed, depmod'ed
#     <key>/                              key = <pkgversion>_<abi>_<hash of harness files>
#       vmlinuz                           hard link to the kernel above
#       initrd.cpio.gz                    busybox + bootstrap modules + init scripts
#       modules -> ../kernel-.../modules  the full tree (run.sh bind-mounts it
#                                         at /lib/modules/<kver> inside the test
#                                         host so modprobe works there)
#       kver                              the kernel release, e.g. 6.1.0-56-amd64
#
# The kernel comes from the apt package that linux-image-amd64 depends on
# (linux-image-6.1.0-NN-amd64), fetched with `apt-get download` and unpacked
# with `dpkg-deb -x`: nothing is installed into the host's /boot or /lib/modules.
#
# Idempotent and safe to run concurrently (flock); when the assets exist it
# only asks apt-cache for the current kernel package (well under a second).
# Prints the asset dir on stdout (last line); progress goes to stderr.
#
# Environment:
#   HUSK_CACHE_DIR               cache root (default /var/cache/husk)
#   HUSK_TESTHOST_KERNEL_PKG     kernel package to use instead of the one
#                                linux-image-amd64 depends on
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
cache_root="${HUSK_CACHE_DIR:-/var/cache/husk}/testhost"

log() { echo "testhost/prepare: $*" >&2; }
die() {
    echo "testhost/prepare: error: $*" >&2
    exit 1
}

# Modules the initrd loads at boot, by name; their dependencies are added
# from modules.dep. Bootstrap (virtio PCI transport, 9p root, overlay, the
# virtio console the command's output goes through), KVM on AMD-V, and what
# container tests want early (tun, fuse, veth, bridge, br_netfilter).
# Anything else loads on demand with modprobe inside the test host.
BOOT_MODULES=(
    virtio_pci virtio_console 9pnet_virtio 9p overlay
    irqbypass ccp kvm kvm-amd
    tun fuse veth bridge br_netfilter
)

# Files whose content goes into the initrd: any change gives a new key.
HARNESS_FILES=("$here/prepare.sh" "$here/init" "$here/stage2")

# --- host packages --------------------------------------------------------

apt_updated=0
apt_update_once() {
    if ((apt_updated == 0)); then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

# Install whichever of the given Debian packages are missing.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]} and not root to install them"
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

ensure_packages qemu-system-x86 busybox-static cpio kmod xz-utils zstd

# --- which kernel ---------------------------------------------------------

# Print the binary package linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64.
kernel_pkg_name() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
# Print the candidate version of package $1.
pkg_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }'
}

kpkg="${HUSK_TESTHOST_KERNEL_PKG:-}"
[[ -n "$kpkg" ]] || kpkg="$(kernel_pkg_name)"
if [[ -z "$kpkg" ]]; then
    apt_update_once
    kpkg="$(kernel_pkg_name)"
fi
[[ -n "$kpkg" ]] || die "cannot find the kernel package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
kver_pkg="$(pkg_candidate "$kpkg")"
if [[ -z "$kver_pkg" ]]; then
    apt_update_once
    kver_pkg="$(pkg_candidate "$kpkg")"
fi
[[ -n "$kver_pkg" ]] || die "apt knows no installable version of $kpkg"
kabi="${kpkg#linux-image-}" # e.g. 6.1.0-56-amd64

harness_hash="$(cat "${HARNESS_FILES[@]}" | sha256sum | cut -c1-12)"
key="${kver_pkg}_${kabi}_${harness_hash}"
key="${key//[^A-Za-z0-9._+-]/_}" # a version may hold ':' (epoch)
kdir="$cache_root/kernel-${kabi}_${kver_pkg//[^A-Za-z0-9._+-]/_}"
out="$cache_root/$key"

if [[ -f "$out/.complete" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -f "$out/.complete" ]]; then # built by someone else while we waited
    echo "$out"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt-get download runs as _apt and must reach $tmp/deb

# --- kernel and module tree (shared by all keys of this kernel) -----------

if [[ ! -f "$kdir/.complete" ]]; then
    log "fetching $kpkg=$kver_pkg"
    mkdir -p "$tmp/deb"
    # apt drops privileges to _apt for downloads; let it write there.
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp/deb"; fi
    (cd "$tmp/deb" && apt-get download -q "$kpkg=$kver_pkg" >&2) || {
        apt_update_once
        (cd "$tmp/deb" && apt-get download -q "$kpkg=$kver_pkg" >&2)
    } || die "apt-get download $kpkg=$kver_pkg failed"
    log "unpacking"
    dpkg-deb -x "$tmp/deb/"*.deb "$tmp/x"

    kverdirs=("$tmp/x/lib/modules/"*)
    ((${#kverdirs[@]} == 1)) || die "expected one module dir in $kpkg, found ${#kverdirs[@]}"
    kver="$(basename "${kverdirs[0]}")"
    [[ -f "$tmp/x/boot/vmlinuz-$kver" ]] || die "no boot/vmlinuz-$kver in $kpkg"

    rm -rf "$tmp/kernel"
    mkdir -p "$tmp/kernel/modules"
    mv "$tmp/x/boot/vmlinuz-$kver" "$tmp/kernel/vmlinuz"
    mv "${kverdirs[0]}" "$tmp/kernel/modules/$kver"
    rm -rf "$tmp/x" "$tmp/deb"

    # busybox insmod reads only plain ELF modules: decompress any that the
    # package ships compressed (Debian 12's are plain; later ones are .ko.xz).
    ncomp=0
    while IFS= read -r -d '' f; do
        case "$f" in
            *.ko.xz) xz -dq "$f" ;;
            *.ko.zst) zstd -dq --rm "$f" ;;
            *.ko.gz) gzip -dq "$f" ;;
        esac
        ncomp=$((ncomp + 1))
    done < <(find "$tmp/kernel/modules/$kver" -type f \( -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
    ((ncomp == 0)) || log "decompressed $ncomp modules"

    # The package leaves modules.dep to its postinst: generate it here.
    # (depmod -b wants <base>/lib/modules/<kver>; point it at our tree.)
    mkdir -p "$tmp/depmod/lib"
    ln -s "$tmp/kernel/modules" "$tmp/depmod/lib/modules"
    depmod -b "$tmp/depmod" "$kver"
    rm -rf "$tmp/depmod"
    echo "$kver" >"$tmp/kernel/kver"
    echo "$kpkg=$kver_pkg" >"$tmp/kernel/package"
    touch "$tmp/kernel/.complete"

    rm -rf "$kdir"
    mv "$tmp/kernel" "$kdir"
fi
kver="$(cat "$kdir/kver")"
moddir="$kdir/modules/$kver"

# --- initrd ---------------------------------------------------------------

log "building initrd for $kver"
root="$tmp/initrd"
mkdir -p "$root"/{bin,dev,proc,sys,ctl,newroot,mnt/lower,mnt/rw,lib/modules/"$kver"}

# busybox-static, with a symlink for each applet.
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
ln -s bin "$root/sbin"

# Resolve modules.dep: emit each module's dependencies before the module.
declare -A dep_of=() seen=()
while IFS= read -r line; do
    m="${line%%:*}"
    dep_of["$m"]="${line#*:}"
done <"$moddir/modules.dep"
# Map module names (dashes and underscores are the same) to paths.
declare -A path_of=()
for m in "${!dep_of[@]}"; do
    n="$(basename "$m" .ko)"
    path_of["${n//-/_}"]="$m"
done
order=()
visit() {
    local m="$1"
    [[ -n "${seen[$m]:-}" ]] && return 0
    seen["$m"]=1
    # modules.dep lists the full closure; deepest dependencies come last.
    local deps
    read -r -a deps <<<"${dep_of[$m]}"
    local i
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do visit "${deps[i]}"; done
    order+=("$m")
}
for name in "${BOOT_MODULES[@]}"; do
    n="${name//-/_}"
    if [[ -z "${path_of[$n]:-}" ]]; then
        # Built into this kernel? Then there is nothing to load.
        if grep -qE "/${name//[-_]/[-_]}\.ko\$" "$moddir/modules.builtin"; then
            continue
        fi
        die "module $name is neither in modules.dep nor built in"
    fi
    visit "${path_of[$n]}"
done
for m in "${order[@]}"; do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$m")"
    cp "$moddir/$m" "$root/lib/modules/$kver/$m"
done
printf '%s\n' "${order[@]}" >"$root/lib/modules/$kver/load-order"
echo "$kver" >"$root/kver"
log "initrd modules: $(printf '%s ' "${order[@]}" | sed 's#[^ ]*/##g; s#\.ko##g')"

install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/stage2" "$root/stage2"

mkdir -p "$tmp/out"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc --owner=0:0) |
    gzip -1 >"$tmp/out/initrd.cpio.gz"
ln "$kdir/vmlinuz" "$tmp/out/vmlinuz" 2>/dev/null || cp "$kdir/vmlinuz" "$tmp/out/vmlinuz"
ln -s "../$(basename "$kdir")/modules" "$tmp/out/modules"
echo "$kver" >"$tmp/out/kver"
echo "$kpkg=$kver_pkg harness=$harness_hash" >"$tmp/out/source"
touch "$tmp/out/.complete"

rm -rf "$out"
mv "$tmp/out" "$out"
log "ready: $out ($(du -h "$out/initrd.cpio.gz" | cut -f1) initrd)"
echo "$out"
