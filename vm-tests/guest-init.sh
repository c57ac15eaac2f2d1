#!/bin/sh
# /init of the nbdcrypt VM test guest (busybox sh). Parameters come from the kernel
# command line:
#   nbdtest.mode=write|verify  nbdtest.port0=N  nbdtest.port1=N  nbdtest.export=NAME
#   nbdtest.marker=STRING
#   optional: nbdtest.host=10.0.2.2  nbdtest.bs=4096  nbdtest.conns=4  nbdtest.hddops=512
# Two devices, each attached with `nbd-client -C conns` (multi-connection, netlink):
#   /dev/nbd0 from port0 (server with --discard passdown): mkfs.ext4 with its default discard,
#             and an fstrim of the mounted filesystem after a file is deleted;
#   /dev/nbd1 from port1 (server with --discard ignore): mkfs.ext4 -E nodiscard.
# write:  attach, mkfs.ext4, write files of random data and their SHA256SUMS plus a file full
#         of the marker string; a verifying `stress-ng --hdd` pass on /mnt0 (stress-ng comes in
#         an extra initramfs archive); umount, e2fsck -fn, detach; for both devices.
# verify: attach, e2fsck -fn, mount read-only, sha256sum -c, check the marker, detach; both.
# kernel: nbdcrypt's own kernel attach. The first virtio disk (/dev/vda) holds an ext4
#         filesystem with the LUKS2 image kvol.img (4096-byte sectors) and its key file:
#         `nbdcrypt open --connect /dev/nbd0` (netlink), mkfs.ext4, mount, write files, umount,
#         `nbdcrypt close /dev/nbd0`; then a second attach through the ioctls
#         (NBDCRYPT_NBD_API=ioctl) on /dev/nbd1: e2fsck, mount read-only, sha256sum -c,
#         `nbdcrypt open --disconnect /dev/nbd1`; a third attach (/dev/nbd2) ends with SIGTERM
#         to its server, which disconnects the device itself. The host then reads kvol.img back.
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

P_mode= P_port0= P_port1= P_export= P_marker= P_host=10.0.2.2 P_bs=4096 P_conns=4 P_ksize=0 P_hddops=512
for w in $(cat /proc/cmdline); do
    case "$w" in
    nbdtest.*=*)
        k=${w#nbdtest.}; k=${k%%=*}; v=${w#*=}
        case "$k" in *[!a-z0-9_]*) continue ;; esac
        eval "P_$k=\$v"
        ;;
    esac
done
step "mode=$P_mode server=$P_host:$P_port0,$P_port1 export=$P_export bs=$P_bs conns=$P_conns kernel=$(uname -r)"

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

attach() { # $1 = device number; port from nbdtest.port$1
    dev=/dev/nbd$1
    eval "port=\$P_port$1"
    i=0
    while [ ! -e "$dev" ]; do
        i=$((i + 1)); [ $i -gt 50 ] && fail "no $dev"; sleep 0.1
    done
    step "nbd-client $P_host $port $dev -N $P_export -b $P_bs -C $P_conns"
    nbd-client "$P_host" "$port" "$dev" -N "$P_export" -b "$P_bs" -C "$P_conns" ||
        fail "nbd-client attach $dev"
    size=$(blockdev --getsize64 "$dev")
    disc=$(cat /sys/block/nbd$1/queue/discard_max_bytes)
    step "attached $dev: $size bytes, logical block $(blockdev --getss "$dev"), discard_max_bytes $disc"
    [ "$size" -gt 0 ] || fail "$dev has size 0"
    [ "$disc" -gt 0 ] || fail "$dev: the kernel did not enable discard (NBD_FLAG_SEND_TRIM)"
}
detach() { # $1 = device number
    nbd-client -d /dev/nbd$1 || fail "nbd-client -d /dev/nbd$1"
    step "detached /dev/nbd$1"
}
fsck() { # $1 = device number, $2 = when
    e2fsck -fn /dev/nbd$1; rc=$?
    [ $rc -eq 0 ] || fail "e2fsck -fn /dev/nbd$1 exit $rc ($2)"
    step "e2fsck clean (/dev/nbd$1, $2)"
}
write_files() { # $1 = mount point
    mkdir -p "$1/data" "$1/small" || fail "mkdir"
    n=0
    for size in 1 511 4096 65537 1048576 3000000 8388608; do
        n=$((n + 1))
        head -c $size /dev/urandom >"$1/data/random$n" || fail "write random$n"
    done
    i=0
    while [ $i -lt 100 ]; do
        i=$((i + 1))
        head -c $((i * 97)) /dev/urandom >"$1/small/s$i" || fail "write small/s$i"
    done
    i=0
    while [ $i -lt 2000 ]; do
        i=$((i + 1)); echo "$P_marker line $i"
    done >"$1/data/marker" || fail "write marker"
    (cd "$1" && sha256sum data/* small/* >SHA256SUMS) || fail "sha256sum"
    step "wrote $(wc -l <"$1/SHA256SUMS") files, $(du -sk "$1" | cut -f1) KiB in $1"
}
verify_files() { # $1 = mount point
    [ -s "$1/SHA256SUMS" ] || fail "no SHA256SUMS in $1"
    count=$(wc -l <"$1/SHA256SUMS")
    [ "$count" -eq 108 ] || fail "$1/SHA256SUMS lists $count files, expected 108"
    (cd "$1" && sha256sum -c SHA256SUMS >/tmp/check.log 2>&1) || {
        grep -v ': OK$' /tmp/check.log; fail "checksum mismatch in $1"
    }
    step "all $count checksums OK in $1"
    grep -qF "$P_marker line 2000" "$1/data/marker" || fail "marker not found in $1"
}

# stress-ng --hdd on the mounted filesystem $1: one stress-ng per CPU, pinned to it (taskset),
# so that its requests leave through that CPU's blk-mq hardware queue, which nbd maps to one of
# its connections (the host checks that every connection carried requests). Each writes a
# 4 MiB file sequentially in 64 KiB O_DIRECT|O_DSYNC writes (past the page cache, each made
# durable before it returns: FUA or FLUSH requests on the wire), reads it back sequentially
# with O_DIRECT and compares every byte with the pattern written (--verify: a mismatch is a
# "fail" line and exit status 2), truncates it and starts over, until its share of P_hddops
# bogo operations (one per 64 KiB read or write). Not rd-rnd/wr-rnd: their offsets are only
# 512-byte aligned, and O_DIRECT on this 4096-byte-block device refuses them (EINVAL).
# Required of each: exit status 0, no "fail:" line, "successful run completed" and its share
# of operations in the metrics line (a run stopped early still says "successful").
stress_hdd() {
    command -v stress-ng >/dev/null || fail "no stress-ng in the guest"
    dir=$1
    ncpu=$(nproc)
    per=$((P_hddops / ncpu))
    [ "$per" -gt 0 ] || fail "nbdtest.hddops=$P_hddops for $ncpu CPUs"
    step "on each of $ncpu CPUs: taskset -c CPU stress-ng --hdd 1 --hdd-bytes 4M --hdd-write-size 64k --hdd-opts direct,dsync,wr-seq,rd-seq --hdd-ops $per --verify --metrics-brief --temp-path $dir/stress-CPU"
    t0=$(cut -d" " -f1 /proc/uptime)
    pids=
    for c in $(seq 0 $((ncpu - 1))); do
        mkdir -p "$dir/stress-$c" || fail "mkdir $dir/stress-$c"
        taskset -c "$c" stress-ng --hdd 1 --hdd-bytes 4M --hdd-write-size 64k \
            --hdd-opts direct,dsync,wr-seq,rd-seq --hdd-ops "$per" --verify --metrics-brief \
            --temp-path "$dir/stress-$c" >"/tmp/stress-$c.log" 2>&1 &
        pids="$pids $!"
    done
    c=0 total=0
    for pid in $pids; do
        wait "$pid"
        rc=$?
        log=/tmp/stress-$c.log
        sed "s/^/[cpu $c] /" "$log"
        [ $rc -eq 0 ] || fail "stress-ng --hdd on CPU $c: exit status $rc"
        ! grep -q 'fail:' "$log" || fail "stress-ng --hdd on CPU $c reported a failure"
        grep -q 'successful run completed' "$log" || fail "stress-ng --hdd on CPU $c: no 'successful run completed'"
        ops=$(awk '$2 == "metrc:" && $4 == "hdd" && $5 ~ /^[0-9]+$/ { print $5; exit }' "$log")
        [ -n "$ops" ] || fail "stress-ng --hdd on CPU $c printed no bogo operations"
        [ "$ops" -ge "$per" ] || fail "stress-ng --hdd on CPU $c did $ops bogo operations, expected $per"
        # The workers remove their files and directories: nothing may be left.
        [ -z "$(ls -A "$dir/stress-$c")" ] || fail "stress-ng left files in $dir/stress-$c"
        rmdir "$dir/stress-$c" || fail "rmdir $dir/stress-$c"
        total=$((total + ops)) c=$((c + 1))
    done
    t1=$(cut -d" " -f1 /proc/uptime)
    echo "NBDTEST-STRESS: $total bogo ops on $ncpu CPUs (64 KiB writes and verified reads: $((total * 64 / 1024)) MiB), $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

kernel_attach() { # $1 = device number; nbdcrypt open --connect, checks size and block size
    dev=/dev/nbd$1
    i=0
    while [ ! -e "$dev" ]; do
        i=$((i + 1)); [ $i -gt 50 ] && fail "no $dev"; sleep 0.1
    done
    step "nbdcrypt open /disk/kvol.img --connect $dev (NBDCRYPT_NBD_API=${NBDCRYPT_NBD_API:-auto})"
    nbdcrypt open /disk/kvol.img --key-file /disk/key --connect "$dev" 2>>/disk/nbdcrypt-$1.log ||
        { cat /disk/nbdcrypt-$1.log; fail "nbdcrypt open --connect $dev"; }
    # The command returned: the device must be usable now, served by a background process.
    pid=$(cat /sys/block/nbd$1/pid 2>/dev/null) || fail "$dev not connected after open --connect returned"
    size=$(blockdev --getsize64 "$dev")
    ss=$(blockdev --getss "$dev")
    step "attached $dev: $size bytes, logical block $ss, server pid $pid"
    [ "$size" -eq "$P_ksize" ] || fail "$dev has $size bytes, expected $P_ksize"
    [ "$ss" -eq 4096 ] || fail "$dev logical block size $ss, expected the volume's 4096"
}
kernel_detach() { # $1 = device number, $2 = command (close or open --disconnect)
    step "nbdcrypt $2 /dev/nbd$1"
    # shellcheck disable=SC2086
    nbdcrypt $2 /dev/nbd$1 || fail "nbdcrypt $2 /dev/nbd$1"
    [ ! -e /sys/block/nbd$1/pid ] || fail "/dev/nbd$1 still connected after nbdcrypt $2"
    # close waits for the server: no nbdcrypt process is left running.
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = nbdcrypt ] || continue
        grep -q '^State:.*Z' "$p/status" 2>/dev/null && continue
        fail "an nbdcrypt process (${p#/proc/}) still runs after nbdcrypt $2"
    done
    step "detached /dev/nbd$1"
}

case "$P_mode" in
kernel)
    mkdir -p /disk
    i=0
    while [ ! -e /dev/vda ]; do
        i=$((i + 1)); [ $i -gt 50 ] && fail "no /dev/vda"; sleep 0.1
    done
    mount -t ext4 /dev/vda /disk || fail "mount /dev/vda"
    kernel_attach 0
    step "mkfs.ext4 /dev/nbd0"
    mkfs.ext4 -F -q -L kvol /dev/nbd0 || fail "mkfs.ext4 /dev/nbd0"
    mkdir -p /mnt0
    mount -t ext4 /dev/nbd0 /mnt0 || fail "mount /dev/nbd0"
    write_files /mnt0
    umount /mnt0 || fail "umount /mnt0"
    kernel_detach 0 close
    export NBDCRYPT_NBD_API=ioctl
    kernel_attach 1
    fsck 1 second-attach
    mount -t ext4 -o ro /dev/nbd1 /mnt0 || fail "mount ro /dev/nbd1"
    verify_files /mnt0
    umount /mnt0 || fail "umount /mnt0"
    kernel_detach 1 "open --disconnect"
    # SIGTERM to the server disconnects the device itself (through netlink again).
    unset NBDCRYPT_NBD_API
    kernel_attach 2
    tgid=$(awk '/^Tgid:/ {print $2}' "/proc/$pid/status")
    step "kill -TERM $tgid (the server of /dev/nbd2)"
    kill -TERM "$tgid" || fail "kill -TERM $tgid"
    i=0
    while [ -e /sys/block/nbd2/pid ] || grep -q '^State:.*[RS]' "/proc/$tgid/status" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 300 ] && fail "/dev/nbd2 still connected or its server running 30 s after SIGTERM"
        sleep 0.1
    done
    step "SIGTERM: /dev/nbd2 disconnected, server gone"
    umount /disk || fail "umount /disk"
    finish PASS
    ;;
write)
    attach 0
    attach 1
    step "mkfs.ext4 /dev/nbd0 (discards the whole device first)"
    mkfs.ext4 -F -q -L nbdtest0 /dev/nbd0 || fail "mkfs.ext4 /dev/nbd0"
    step "mkfs.ext4 -E nodiscard /dev/nbd1"
    mkfs.ext4 -F -q -E nodiscard -L nbdtest1 /dev/nbd1 || fail "mkfs.ext4 /dev/nbd1"
    for d in 0 1; do
        mkdir -p /mnt$d
        mount -t ext4 /dev/nbd$d /mnt$d || fail "mount /dev/nbd$d"
        step "mounted /dev/nbd$d; writing files"
        write_files /mnt$d
    done
    stress_hdd /mnt0
    # Free space next to the files, then TRIM it through the filesystem: the files stay intact.
    head -c 4194304 /dev/urandom >/mnt0/scratch || fail "write scratch"
    sync
    rm /mnt0/scratch
    sync
    fstrim -v /mnt0 || fail "fstrim /mnt0"
    for d in 0 1; do
        sync
        umount /mnt$d || fail "umount /mnt$d"
        fsck $d after-write
        detach $d
    done
    finish PASS
    ;;
verify)
    for d in 0 1; do
        attach $d
        fsck $d before-mount
        mkdir -p /mnt$d
        mount -t ext4 -o ro /dev/nbd$d /mnt$d || fail "mount ro /dev/nbd$d"
        verify_files /mnt$d
        umount /mnt$d || fail "umount /mnt$d"
        detach $d
    done
    finish PASS
    ;;
*)
    fail "unknown nbdtest.mode '$P_mode'"
    ;;
esac
