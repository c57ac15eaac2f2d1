#!/bin/sh
# /init of the nbdcrypt VM test guest (busybox sh). Parameters come from the kernel
# command line:
#   nbdtest.mode=write|verify  nbdtest.port=N  nbdtest.export=NAME  nbdtest.marker=STRING
#   optional: nbdtest.host=10.0.2.2  nbdtest.bs=4096
# write:  attach /dev/nbd0, mkfs.ext4, write files of random data and their SHA256SUMS
#         plus a file full of the marker string, umount, e2fsck -fn, detach.
# verify: attach, e2fsck -fn, mount read-only, sha256sum -c, check the marker, detach.
# Last line printed: "NBDTEST-RESULT: PASS" or "NBDTEST-RESULT: FAIL <why>"; then power off.
export PATH=/sbin:/bin
# No /dev/console in the initramfs (no mknod needed to build it): get one from devtmpfs.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

finish() {
    sync
    echo "NBDTEST-RESULT: $*"
    poweroff -f
    sleep 10
}
fail() { finish "FAIL $*"; }
step() { echo "nbdtest: [$(cut -d" " -f1 /proc/uptime)] $*"; }

P_mode= P_port=10809 P_export= P_marker= P_host=10.0.2.2 P_bs=4096
for w in $(cat /proc/cmdline); do
    case "$w" in
    nbdtest.*=*)
        k=${w#nbdtest.}; k=${k%%=*}; v=${w#*=}
        case "$k" in *[!a-z_]*) continue ;; esac
        eval "P_$k=\$v"
        ;;
    esac
done
step "mode=$P_mode server=$P_host:$P_port export=$P_export bs=$P_bs kernel=$(uname -r)"

# --- kernel modules and network ---
while read -r m; do
    insmod "$m" || fail "insmod $m"
done </etc/modules
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "no eth0"; sleep 0.1
done
ip addr add 10.0.2.15/24 dev eth0 || fail "ip addr"
ip link set eth0 up || fail "ip link up"

attach() {
    i=0
    while [ ! -e /dev/nbd0 ]; do
        i=$((i + 1)); [ $i -gt 50 ] && fail "no /dev/nbd0"; sleep 0.1
    done
    step "nbd-client $P_host $P_port /dev/nbd0 -N $P_export -b $P_bs"
    nbd-client "$P_host" "$P_port" /dev/nbd0 -N "$P_export" -b "$P_bs" || fail "nbd-client attach"
    size=$(blockdev --getsize64 /dev/nbd0)
    step "attached /dev/nbd0: $size bytes, logical block $(blockdev --getss /dev/nbd0)"
    [ "$size" -gt 0 ] || fail "/dev/nbd0 has size 0"
}
detach() {
    nbd-client -d /dev/nbd0 || fail "nbd-client -d"
    step "detached"
}
fsck() {
    e2fsck -fn /dev/nbd0; rc=$?
    [ $rc -eq 0 ] || fail "e2fsck -fn exit $rc ($1)"
    step "e2fsck clean ($1)"
}

case "$P_mode" in
write)
    attach
    step "mkfs.ext4"
    mkfs.ext4 -F -q -L nbdtest /dev/nbd0 || fail "mkfs.ext4"
    mount -t ext4 /dev/nbd0 /mnt || fail "mount"
    step "mounted; writing files"
    mkdir -p /mnt/data /mnt/small || fail "mkdir"
    n=0
    for size in 1 511 4096 65537 1048576 3000000 8388608; do
        n=$((n + 1))
        head -c $size /dev/urandom >/mnt/data/random$n || fail "write random$n"
    done
    i=0
    while [ $i -lt 100 ]; do
        i=$((i + 1))
        head -c $((i * 97)) /dev/urandom >/mnt/small/s$i || fail "write small/s$i"
    done
    i=0
    while [ $i -lt 2000 ]; do
        i=$((i + 1)); echo "$P_marker line $i"
    done >/mnt/data/marker || fail "write marker"
    step "written; sha256sum"
    (cd /mnt && sha256sum data/* small/* >SHA256SUMS) || fail "sha256sum"
    step "wrote $(wc -l </mnt/SHA256SUMS) files, $(du -sk /mnt | cut -f1) KiB"
    sync
    umount /mnt || fail "umount"
    fsck after-write
    detach
    finish PASS
    ;;
verify)
    attach
    fsck before-mount
    mount -t ext4 -o ro /dev/nbd0 /mnt || fail "mount ro"
    [ -s /mnt/SHA256SUMS ] || fail "no SHA256SUMS"
    count=$(wc -l </mnt/SHA256SUMS)
    [ "$count" -eq 108 ] || fail "SHA256SUMS lists $count files, expected 108"
    (cd /mnt && sha256sum -c SHA256SUMS >/tmp/check.log 2>&1) || {
        grep -v ': OK$' /tmp/check.log; fail "checksum mismatch"
    }
    step "all $count checksums OK"
    grep -qF "$P_marker line 2000" /mnt/data/marker || fail "marker not found in the file"
    umount /mnt || fail "umount"
    detach
    finish PASS
    ;;
*)
    fail "unknown nbdtest.mode '$P_mode'"
    ;;
esac
