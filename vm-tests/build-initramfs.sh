#!/usr/bin/env bash
# Build (or reuse from cache) the kernel + initramfs of the nbdcrypt VM test guest.
#
#   bash vm-tests/build-initramfs.sh OUTDIR
#
# Produces OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz. Everything comes from Debian
# bookworm packages: the kernel of linux-image-cloud-amd64 (apt-get download + dpkg -x,
# no install), and the busybox-static, nbd-client and e2fsprogs binaries of the host
# (installed by run.sh) with their shared libraries (ldd). Needs no root-only tricks:
# no device nodes are created (the guest mounts devtmpfs first).
#
# The result is keyed on the package versions and on this script and guest-init.sh;
# it is rebuilt only when the key changes. Downloaded .debs are kept in OUTDIR/debs.
set -euo pipefail
export LC_ALL=C PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

OUT=${1:?usage: build-initramfs.sh OUTDIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT/debs"
OUT=$(cd "$OUT" && pwd)

log() { echo "build-initramfs: $*" >&2; }

# Host binaries copied into the guest (package -> binaries).
GUEST_BINS=(/bin/busybox /usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck)
GUEST_PKGS=(busybox-static nbd-client e2fsprogs libc6)
# Kernel modules the guest loads (with their dependencies): everything else it needs
# (ext4, jbd2, crc32c, PCI, 8250 serial console, devtmpfs, gzip initrd) is built into
# Debian's cloud kernel (see the CONFIG_* check below).
GUEST_MODULES=(virtio_pci virtio_net virtio_blk nbd)

# --- resolve the kernel package (metapackage -> versioned image package) -------------
resolve_kernel() {
    KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    KVER=
    [ -n "$KPKG" ] && KVER=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}')
    [ -n "$KPKG" ] && [ -n "$KVER" ] && [ "$KVER" != "(none)" ]
}
if ! resolve_kernel; then
    log "apt lists do not know linux-image-cloud-amd64: apt-get update"
    apt-get update -qq >&2
    resolve_kernel || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
fi

key="kernel=$KPKG=$KVER"
for p in "${GUEST_PKGS[@]}"; do
    key+=" $p=$(dpkg-query -W -f='${Version}' "$p")"
done
key+=" build=$(cat "$HERE/build-initramfs.sh" "$HERE/guest-init.sh" | sha256sum | cut -c1-16)"

if [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$key" ] &&
    [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.cpio.gz" ]; then
    log "cached ($key)"
    exit 0
fi
log "building ($key)"
rm -f "$OUT/key"

# --- kernel ----------------------------------------------------------------------------
deb="$OUT/debs/${KPKG}_${KVER//:/%3a}_amd64.deb"
if [ ! -s "$deb" ]; then
    rm -f "$OUT/debs/${KPKG}_"*.deb
    (cd "$OUT/debs" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER" >&2)
fi
deb=$(ls "$OUT/debs/${KPKG}_"*.deb | head -1)

KX="$OUT/kernel-x"
rm -rf "$KX" && mkdir -p "$KX"
dpkg -x "$deb" "$KX"
UNAME=$(ls "$KX/lib/modules")
config="$KX/boot/config-$UNAME"
for c in BLK_DEV_INITRD RD_GZIP DEVTMPFS PCI SERIAL_8250_CONSOLE INET UNIX EXT4_FS JBD2 CRYPTO_CRC32C; do
    grep -q "^CONFIG_$c=y" "$config" || { log "kernel $UNAME lacks built-in CONFIG_$c"; exit 1; }
done
for c in BLK_DEV_NBD VIRTIO_NET VIRTIO_PCI; do
    grep -Eq "^CONFIG_$c=[ym]" "$config" || { log "kernel $UNAME lacks CONFIG_$c"; exit 1; }
done
# The package ships no modules.dep (depmod runs at install time): generate it.
if [ ! -f "$KX/lib/modules/$UNAME/modules.dep" ]; then
    busybox depmod -b "$KX" "$UNAME"
fi

# --- initramfs tree --------------------------------------------------------------------
R="$OUT/root"
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,mnt,tmp,etc,lib/modules}

# Modules in load order (dependencies first), decompressed.
MODDIR="$KX/lib/modules/$UNAME"
declare -A DEPS=() LOADED=()
while IFS= read -r line; do
    DEPS["${line%%:*}"]="${line#*:}"
done <"$MODDIR/modules.dep"
ORDER=()
load() {
    local m=$1 d
    [ -n "${LOADED[$m]:-}" ] && return 0
    LOADED[$m]=1
    for d in ${DEPS[$m]}; do load "$d"; done
    ORDER+=("$m")
}
for name in "${GUEST_MODULES[@]}"; do
    path=
    for m in "${!DEPS[@]}"; do
        case "${m##*/}" in "$name.ko" | "$name.ko."*) path=$m ;; esac
    done
    if [ -z "$path" ]; then
        grep -q "/$name.ko" "$MODDIR/modules.builtin" && { log "$name is built in"; continue; }
        log "module $name not found"; exit 1
    fi
    load "$path"
done
: >"$R/etc/modules"
for m in "${ORDER[@]}"; do
    dst="$R/lib/modules/$(basename "$m")"
    case "$m" in
    *.ko.xz) xz -dc "$MODDIR/$m" >"${dst%.xz}"; dst=${dst%.xz} ;;
    *.ko.zst) zstd -qdc "$MODDIR/$m" >"${dst%.zst}"; dst=${dst%.zst} ;;
    *.ko.gz) gzip -dc "$MODDIR/$m" >"${dst%.gz}"; dst=${dst%.gz} ;;
    *) cp "$MODDIR/$m" "$dst" ;;
    esac
    echo "/lib/modules/$(basename "$dst")" >>"$R/etc/modules"
done
log "modules: $(xargs -n1 basename <"$R/etc/modules" | tr '\n' ' ')"

# Binaries and their shared libraries.
copy_with_libs() {
    local bin=$1 lib
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$R$lib" ] || { mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; }
    done
}
for b in "${GUEST_BINS[@]}"; do
    [ -x "$b" ] || { log "missing $b (package not installed?)"; exit 1; }
    copy_with_libs "$b"
done
cp /bin/busybox "$R/bin/busybox"
cp /usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck "$R/sbin/"
ln -s mke2fs "$R/sbin/mkfs.ext4"
for a in $(busybox --list); do
    [ -e "$R/sbin/$a" ] || [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done
cp /etc/mke2fs.conf "$R/etc/"
ln -s /proc/mounts "$R/etc/mtab"
cp "$HERE/guest-init.sh" "$R/init"
chmod 755 "$R/init"

(cd "$R" && find . | sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$KX/boot/vmlinuz-$UNAME" "$OUT/vmlinuz"
rm -rf "$KX" "$R"
echo "$key" >"$OUT/key"
log "done: $(du -h "$OUT/initramfs.cpio.gz" | cut -f1) initramfs, kernel $UNAME"
