#!/usr/bin/env bash
# End-to-end VM test of nbdcrypt: a Linux guest (qemu, TCG) attaches two decrypted volumes
# served by `nbdcrypt open` (one with --discard passdown, one with --discard ignore) with the
# kernel nbd client over 4 connections each (nbd-client -C 4), makes ext4 filesystems on them
# (mkfs discarding, and mkfs -E nodiscard), writes files, runs a verifying stress-ng --hdd pass
# (one writer per vCPU; the host checks that the I/O used one connection per vCPU), and after
# a server restart verifies the files in a second boot; the host checks the holes discards left in the images and reads the
# passdown volume back with nbdcopy --connections 4.
# Then (nbdcrypt only) a third boot tests nbdcrypt's own kernel attach: the guest runs our
# binary (copied with its shared libraries into an extra initramfs archive) with
# `open --connect /dev/nbd0` on an image on a virtio disk, mkfs, mount, write, `close`, and a
# second attach through the ioctls verifies; the host reads the image back through our server.
#
#   bash vm-tests/run.sh            exit 0 = PASS, non-zero = FAIL
#
# Environment:
#   NBDCRYPT=path     binary to test (default: target/release/nbdcrypt, built with cargo)
#   VM_SERVER=nbdkit  development stand-in: serve a plain raw file with nbdkit instead of
#                     nbdcrypt (the image is then plaintext, and the check is inverted)
#   VM_TIMEOUT=300    hard timeout of each qemu boot, in seconds
#   VM_PHASES=kernel  run only the kernel-attach boot (phase 4), for work on --connect
#   VM_HDD_OPS=512    bogo operations (64 KiB each) of the stress-ng pass, over all vCPUs
#   VM_CPUS=2         vCPUs of the write and verify boots
#   VM_CAPTURE=DIR    record what the guest's kernel client (nbd-client's handshake, then the
#                     kernel's requests) sends to each server in the write boot: fuzz/capture.py
#                     as a TCP proxy in front of both servers saves DIR/kernel-VOLUME-N, one
#                     file per connection (fuzz seeds, docs/reliability.md). Off by default.
# Work files and logs: target/vm-tests/run/ ; cached guest: target/vm-tests/guest/.
set -uo pipefail
export LC_ALL=C PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VM_SERVER=${VM_SERVER:-nbdcrypt}
VM_TIMEOUT=${VM_TIMEOUT:-300}
CACHE="$ROOT/target/vm-tests"
RUN="$CACHE/run"
T0=$(date +%s)

say() { echo "vm-tests: [$(($(date +%s) - T0))s] $*"; }
declare -A SERVER_PID=() PORT=() SAMPLER_PID=() CAPTURE_PID=() GUEST_PORT=()
QEMU_PID=
# The two volumes and their server's --discard policy.
VOLS=(passdown ignore)

cleanup() {
    local p
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -TERM "$QEMU_PID" 2>/dev/null # timeout(1) passes it on to qemu
        wait "$QEMU_PID" 2>/dev/null
    fi
    for p in "${SAMPLER_PID[@]}" "${CAPTURE_PID[@]}"; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    for p in "${SERVER_PID[@]}"; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null
            wait "$p" 2>/dev/null
        fi
    done
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

show() { # print a log file, without terminal escape sequences and carriage returns
    echo "----- $1 -----"
    if [ -f "$2" ]; then
        sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e 's/\r$//' "$2"
    else
        echo "(missing)"
    fi
    echo "----- end of $1 -----"
}

fail() {
    echo "vm-tests: FAIL: $*"
    for f in format-passdown.log format-ignore.log server-passdown-1.log server-ignore-1.log \
        console-write.log server-passdown-2.log server-ignore-2.log console-verify.log \
        nbdcopy.log e2fsck-copy.log debugfs.log format-kvol.log console-kernel.log \
        nbdcrypt-0.log nbdcrypt-1.log nbdcrypt-2.log server-kvol.log nbdcopy-kvol.log e2fsck-kvol.log \
        debugfs-kvol.log; do
        [ -f "$RUN/$f" ] && show "$f" "$RUN/$f"
    done
    echo "FAIL: nbdcrypt VM test ($VM_SERVER): $* (logs in $RUN)"
    echo "vm-tests: 0 passed, 1 failed"
    exit 1
}

# --- host packages (idempotent: installs only what is missing) ---------------------------
APT_UPDATED=
apt_install() {
    [ -n "$APT_UPDATED" ] || { apt-get update -qq && APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
if ! command -v qemu-system-x86_64 >/dev/null; then
    say "installing qemu-system-x86"
    # Not the plain `apt-get install qemu-system-x86`: that would remove the preinstalled
    # qemu-utils backport; this keeps a consistent bookworm pair.
    [ -n "$APT_UPDATED" ] || { apt-get update -qq && APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades --no-install-recommends \
        qemu-system-x86 qemu-utils/bookworm || fail "cannot install qemu-system-x86"
fi
missing=()
pkgs=(busybox-static cpio nbd-client e2fsprogs libnbd-bin stress-ng)
[ "$VM_SERVER" = nbdkit ] && pkgs+=(nbdkit)
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install --no-install-recommends "${missing[@]}" || fail "cannot install ${missing[*]}"
fi

# --- guest kernel and initramfs (cached) ------------------------------------------------
mkdir -p "$CACHE"
bash "$HERE/build-initramfs.sh" "$CACHE/guest" || fail "building the guest initramfs"

# --- the server under test ----------------------------------------------------------------
case "$VM_SERVER" in
nbdcrypt)
    if [ -z "${NBDCRYPT:-}" ]; then
        say "cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet --bin nbdcrypt) || fail "cargo build --release"
        NBDCRYPT="$ROOT/target/release/nbdcrypt"
    fi
    [ -x "$NBDCRYPT" ] || fail "no nbdcrypt binary at $NBDCRYPT"
    ;;
nbdkit) ;;
*) fail "unknown VM_SERVER=$VM_SERVER (nbdcrypt or nbdkit)" ;;
esac

rm -rf "$RUN"
mkdir -p "$RUN"
declare -A IMG=([passdown]="$RUN/passdown.img" [ignore]="$RUN/ignore.img")
KEY="$RUN/key"
EXPORT=vol
MARKER="NBDTEST-PLAINTEXT-MARKER-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
umask 077
printf '%s' "$(head -c 24 /dev/urandom | base64)" >"$KEY"

pick_port() { # a TCP port on 127.0.0.1 that nothing listens on
    local p i
    for i in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

start_server() { # $1 = volume (passdown|ignore), $2 = run number; sets PORT[$1], SERVER_PID[$1]
    local vol=$1 name="server-$1-$2" port
    port=$(pick_port) || fail "no free TCP port"
    local log="$RUN/$name.log"
    case "$VM_SERVER" in
    nbdcrypt)
        "$NBDCRYPT" open "${IMG[$vol]}" --key-file "$KEY" --listen "127.0.0.1:$port" \
            --export-name "$EXPORT" --discard "$vol" </dev/null >"$log" 2>&1 &
        ;;
    nbdkit)
        # The stand-in's file plugin punches holes on TRIM whatever the volume.
        nbdkit -f -p "$port" -i 127.0.0.1 -e "$EXPORT" file "${IMG[$vol]}" </dev/null >"$log" 2>&1 &
        ;;
    esac
    SERVER_PID[$vol]=$!
    PORT[$vol]=$port
    local i size
    for i in $(seq 300); do
        kill -0 "${SERVER_PID[$vol]}" 2>/dev/null || {
            wait "${SERVER_PID[$vol]}"
            fail "$name: server exited with status $? before accepting connections"
        }
        if size=$(nbdinfo --size "nbd://127.0.0.1:$port/$EXPORT" 2>/dev/null); then
            say "$name: $VM_SERVER (pid ${SERVER_PID[$vol]}) serves $EXPORT ($size bytes) on 127.0.0.1:$port"
            return 0
        fi
        sleep 0.1
    done
    fail "$name: server not ready on 127.0.0.1:$port after 30 s"
}

stop_server() { # $1 = volume, $2 = run number; SIGTERM, the server must exit 0 within 20 s
    local vol=$1 name="server-$1-$2" i rc pid=${SERVER_PID[$1]}
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        SERVER_PID[$vol]=
        fail "$name: server did not exit within 20 s of SIGTERM"
    fi
    wait "$pid"
    rc=$?
    SERVER_PID[$vol]=
    [ "$rc" -eq 0 ] || fail "$name: server exited with status $rc on SIGTERM (expected 0)"
    say "$name: server exited 0 on SIGTERM"
}

# VM_CAPTURE: $1 = volume. A capture proxy (fuzz/capture.py) on a free port in front of its
# server; the guest is given that port (GUEST_PORT[$1]) instead of the server's.
start_capture() {
    local vol=$1 port i
    port=$(pick_port) || fail "no free TCP port"
    /usr/bin/python3 "$ROOT/fuzz/capture.py" "tcp:127.0.0.1:$port" "tcp:127.0.0.1:${PORT[$vol]}" \
        "$VM_CAPTURE" "kernel-$vol" </dev/null >"$RUN/capture-$vol.log" 2>&1 &
    CAPTURE_PID[$vol]=$!
    for i in $(seq 100); do
        [ "$(tcp_sockets "$port" listen)" -gt 0 ] && break
        sleep 0.1
    done
    [ "$(tcp_sockets "$port" listen)" -gt 0 ] || fail "capture proxy for $vol not listening on 127.0.0.1:$port"
    GUEST_PORT[$vol]=$port
    say "capture: guest's connections to the $vol server go through 127.0.0.1:$port into $VM_CAPTURE"
}
stop_capture() { # $1 = volume; after its server stopped: the proxy's last files are written
    local vol=$1 i
    for i in $(seq 50); do # its sockets closed (capture.py writes each file before closing)
        [ "$(tcp_sockets "${GUEST_PORT[$vol]}" open)" -eq 0 ] && break
        sleep 0.1
    done
    kill "${CAPTURE_PID[$vol]}" 2>/dev/null
    wait "${CAPTURE_PID[$vol]}" 2>/dev/null
    unset "CAPTURE_PID[$vol]" "GUEST_PORT[$vol]"
}
tcp_sockets() { # number of sockets on local port $1: $2 = listen, or open (neither listening nor TIME_WAIT)
    awk -v p=":$(printf '%04X' "$1")" -v w="$2" \
        '$2 ~ p"$" && (w == "listen" ? $4 == "0A" : $4 != "0A" && $4 != "06")' /proc/net/tcp | wc -l
}

# Largest number of established TCP connections to 127.0.0.1:$1 seen while it runs (from
# /proc/net/tcp, every 0.2 s), written to $2.
sample_connections() {
    local hex max=0 n
    hex=$(printf '%04X' "$1")
    echo 0 >"$2"
    while :; do
        n=$(awk -v p=":$hex" '$2 ~ p"$" && $4 == "01"' /proc/net/tcp | wc -l)
        if [ "$n" -gt "$max" ]; then
            max=$n
            echo "$max" >"$2"
        fi
        sleep 0.2
    done
}

# An extra initramfs archive $1 (gzip'ed cpio) with the programs $2... in /bin (stripped of
# debug information: a debug build of nbdcrypt is ~100 MB of it) and their shared libraries
# (ldd). Appended to the cached guest initramfs: the kernel unpacks concatenated archives in
# order.
extra_initramfs() {
    local out=$1 xr="$RUN/xroot" bin lib
    shift
    rm -rf "$xr"
    mkdir -p "$xr/bin"
    for bin in "$@"; do
        strip -o "$xr/bin/$(basename "$bin")" "$bin" 2>/dev/null || cp "$bin" "$xr/bin/"
        for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
            mkdir -p "$xr$(dirname "$lib")"
            cp -L "$lib" "$xr$lib"
        done
    done
    (cd "$xr" && find . | sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$out" || return 1
    rm -rf "$xr"
}

# stress-ng --hdd in the write boot (guest-init.sh stress_hdd): total bogo operations (64 KiB
# direct writes and reads), 2 workers sharing the bytes.
HDD_OPS=${VM_HDD_OPS:-512}
# vCPUs of the write and verify boots. nbd gives each connection its own blk-mq hardware queue
# and a CPU submits through one queue: with one vCPU all I/O would use one of the 4 sockets
# (seen: 913 requests on one, 0 on the three others), with N vCPUs up to N of them. 2 keeps
# TCG on this 2-core machine fast (4 vCPUs: all 4 used, but the write boot took 106 s, not 67).
VM_CPUS=${VM_CPUS:-2}

boot() { # $1 = mode (write|verify), $2 = initrd (default: the cached guest initramfs)
    local mode=$1 initrd=${2:-$CACHE/guest/initramfs.cpio.gz} log="$RUN/console-$1.log" rc result t=$(date +%s) v
    say "boot ($mode): qemu, guest console in $log"
    for v in "${VOLS[@]}"; do
        sample_connections "${PORT[$v]}" "$RUN/conns-$v-$mode" &
        SAMPLER_PID[$v]=$!
    done
    timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -smp "$VM_CPUS" -m 512 -nographic -no-reboot \
        -kernel "$CACHE/guest/vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 loglevel=4 edd=off nbdtest.mode=$mode nbdtest.port0=${GUEST_PORT[passdown]:-${PORT[passdown]}} nbdtest.port1=${GUEST_PORT[ignore]:-${PORT[ignore]}} nbdtest.conns=4 nbdtest.export=$EXPORT nbdtest.marker=$MARKER nbdtest.hddops=$HDD_OPS" \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
        </dev/null >"$log" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID" # in the background so that a trapped signal interrupts the wait
    rc=$?
    QEMU_PID=
    for v in "${VOLS[@]}"; do
        kill "${SAMPLER_PID[$v]}" 2>/dev/null
        wait "${SAMPLER_PID[$v]}" 2>/dev/null
        SAMPLER_PID[$v]=
    done
    result=$(grep -a -o 'NBDTEST-RESULT: .*' "$log" | tail -1 | tr -d '\r')
    [ "$rc" -eq 124 ] && fail "boot ($mode): qemu timed out after $VM_TIMEOUT s (${result:-no result line})"
    [ "$rc" -eq 0 ] || fail "boot ($mode): qemu exited with status $rc (${result:-no result line})"
    [ "$result" = "NBDTEST-RESULT: PASS" ] || fail "boot ($mode): ${result:-no NBDTEST-RESULT line}"
    for v in "${VOLS[@]}"; do
        # nbd-client -C 4: four connections to each server at once (multi-conn).
        [ "$(cat "$RUN/conns-$v-$mode")" -ge 4 ] ||
            fail "boot ($mode): at most $(cat "$RUN/conns-$v-$mode") connections to the $v server at once, expected 4"
    done
    say "boot ($mode): guest PASS in $(($(date +%s) - t))s (4 connections to each server)"
}

VM_PHASES=${VM_PHASES:-all}
# Phases 1-3 (nbd-client against the host's server) unless VM_PHASES=kernel.
if [ "$VM_PHASES" != kernel ]; then
# --- 1. fresh volumes, fully allocated, boot 1 writes ---------------------------------------
# Random bytes over the whole data segment first, so the images start without holes and the
# holes that discards punch can be seen (a fresh image is sparse).
for v in "${VOLS[@]}"; do
    case "$VM_SERVER" in
    nbdcrypt)
        say "format ${IMG[$v]} (256M, pbkdf2 1000 iterations), data segment filled with random bytes"
        "$NBDCRYPT" format "${IMG[$v]}" --size 256M --key-file "$KEY" --pbkdf pbkdf2 \
            --pbkdf-force-iterations 1000 </dev/null >"$RUN/format-$v.log" 2>&1 ||
            fail "nbdcrypt format exited with status $?"
        [ -s "${IMG[$v]}" ] || fail "nbdcrypt format exited 0 but left no image"
        dd if=/dev/urandom of="${IMG[$v]}" bs=1M seek=16 count=240 conv=notrunc status=none ||
            fail "filling ${IMG[$v]}"
        ;;
    nbdkit)
        head -c 256M /dev/urandom >"${IMG[$v]}" || fail "filling ${IMG[$v]}"
        ;;
    esac
done
blocks() { stat -c %b "$1"; }
for v in "${VOLS[@]}"; do start_server "$v" 1; done
if [ -n "${VM_CAPTURE:-}" ]; then
    mkdir -p "$VM_CAPTURE" && VM_CAPTURE=$(cd "$VM_CAPTURE" && pwd) || fail "VM_CAPTURE: cannot make $VM_CAPTURE"
    for v in "${VOLS[@]}"; do start_capture "$v"; done
fi
# stress-ng and its libraries (~35 MB) ride along in the write boot only.
extra_initramfs "$RUN/stress-ng.cpio.gz" "$(command -v stress-ng)" || fail "building the stress-ng initramfs archive"
cat "$CACHE/guest/initramfs.cpio.gz" "$RUN/stress-ng.cpio.gz" >"$RUN/initrd-write.gz"
boot write "$RUN/initrd-write.gz"
rm -f "$RUN/initrd-write.gz" "$RUN/stress-ng.cpio.gz"
# The guest checked stress-ng's exit status and bogo operations; repeat its summary here.
stress=$(grep -a -o 'NBDTEST-STRESS: .*' "$RUN/console-write.log" | tail -1 | tr -d '\r')
[ -n "$stress" ] || fail "boot (write): no stress-ng summary (NBDTEST-STRESS line) on the guest console"
say "stress-ng --hdd on /mnt0 (passdown, 4 connections): ${stress#NBDTEST-STRESS: }"
for v in "${VOLS[@]}"; do stop_server "$v" 1; done
if [ -n "${VM_CAPTURE:-}" ]; then
    for v in "${VOLS[@]}"; do stop_capture "$v"; done
    say "capture: $(ls "$VM_CAPTURE"/kernel-* 2>/dev/null | wc -l) sessions in $VM_CAPTURE: $(cd "$VM_CAPTURE" && ls -l kernel-* | awk '{printf "%s %s B, ", $NF, $5}')"
fi
if [ "$VM_SERVER" = nbdcrypt ]; then
    # Multi-conn in use, not only connected: of the guest's 4 connections to the passdown
    # server (the last 4 to close; the first was nbdinfo's probe), one per vCPU must have
    # carried at least half of a stress-ng writer's share. The boot's I/O (mkfs, files,
    # stress-ng, jbd2 commits) is submitted from both vCPUs: even with both stress-ng pinned
    # to vCPU 0 two connections carried 1001 and 716 requests; with one vCPU it was 913, 0, 0, 0.
    reqs=$(grep 'connection closed' "$RUN/server-passdown-1.log" | tail -4 | grep -o ' requests=[0-9]*' |
        cut -d= -f2 | tr '\n' ' ')
    say "requests per connection to the passdown server in the write boot: $reqs"
    used=0
    for r in $reqs; do
        [ "$r" -ge $((HDD_OPS / VM_CPUS / 2)) ] && used=$((used + 1))
    done
    want=$((VM_CPUS < 4 ? VM_CPUS : 4))
    [ "$used" -ge "$want" ] ||
        fail "boot (write): $used connections carried requests ($reqs), expected $want (one per vCPU)"
fi

# --- 2. holes from discards; the data at rest must not be plaintext -------------------------
full=$((256 * 1024 * 2)) # 512-byte blocks of a fully allocated 256M image
bp=$(blocks "${IMG[passdown]}")
bi=$(blocks "${IMG[ignore]}")
say "allocated 512-byte blocks: passdown $bp, ignore $bi (fully allocated: $full)"
# mkfs.ext4 discarded the whole passdown device: most of it is holes now.
[ "$bp" -lt $((full / 2)) ] || fail "passdown image has $bp blocks allocated: mkfs.ext4's discard punched no holes"
if [ "$VM_SERVER" = nbdcrypt ]; then
    # --discard ignore: TRIM never touches the image (and WRITE_ZEROES writes ciphertext).
    [ "$bi" -ge "$full" ] || fail "ignore image lost blocks ($bi < $full): a discard reached it"
fi
for v in "${VOLS[@]}"; do
    found=$(grep -a -c -F -e "$MARKER" -e "lost+found" "${IMG[$v]}")
    case "$VM_SERVER" in
    nbdcrypt)
        [ "$found" -eq 0 ] || fail "the $v image holds plaintext: $found lines match the marker or lost+found"
        say "$v image holds no plaintext marker"
        ;;
    nbdkit)
        # The stand-in serves a plain file: the check must see the plaintext there.
        [ "$found" -gt 0 ] || fail "plaintext check is blind: marker not found in the plain $v image"
        say "stand-in $v image is plaintext as expected ($found matching lines)"
        ;;
    esac
done

# --- 3. restart the servers, boot 2 verifies; nbdcopy -C 4 reads the passdown volume -------
for v in "${VOLS[@]}"; do start_server "$v" 2; done
boot verify
COPY="$RUN/passdown-plain.img"
nbdcopy --connections 4 "nbd://127.0.0.1:${PORT[passdown]}/$EXPORT" "$COPY" >"$RUN/nbdcopy.log" 2>&1 ||
    fail "nbdcopy --connections 4 from the passdown server"
for v in "${VOLS[@]}"; do stop_server "$v" 2; done
e2fsck -fn "$COPY" >"$RUN/e2fsck-copy.log" 2>&1 || fail "e2fsck -fn of the nbdcopy copy"
rm -rf "$RUN/files"
mkdir "$RUN/files"
debugfs -R "rdump / $RUN/files" "$COPY" >"$RUN/debugfs.log" 2>&1 || fail "debugfs rdump of the copy"
n=$(cd "$RUN/files" && sha256sum -c SHA256SUMS 2>>"$RUN/debugfs.log" | grep -c ': OK$')
[ "$n" -eq 108 ] || fail "nbdcopy copy: $n of 108 checksums OK"
say "nbdcopy --connections 4 copy: e2fsck clean, all $n checksums OK"

rm -rf "$COPY" "$RUN/files" "${IMG[passdown]}" "${IMG[ignore]}"
fi # phases 1-3

# --- 4. nbdcrypt open --connect in the guest (kernel attach through netlink, then ioctls) ---
KERNEL_PHASE="skipped with VM_SERVER=$VM_SERVER"
if [ "$VM_SERVER" = nbdcrypt ]; then
    KD="$RUN/kdisk"
    rm -rf "$KD"
    mkdir -p "$KD"
    say "format kvol.img (64M, 4096-byte sectors, pbkdf2 1000 iterations) on a virtio disk"
    "$NBDCRYPT" format "$KD/kvol.img" --size 64M --sector-size 4096 --key-file "$KEY" --pbkdf pbkdf2 \
        --pbkdf-force-iterations 1000 </dev/null >"$RUN/format-kvol.log" 2>&1 ||
        fail "nbdcrypt format kvol.img exited with status $?"
    cp "$KEY" "$KD/key"
    KSIZE=$(( (64 << 20) - (16 << 20) ))
    mkfs.ext4 -q -F -d "$KD" "$RUN/kdisk.img" 128M >"$RUN/mkfs-kdisk.log" 2>&1 || fail "mkfs.ext4 -d of the virtio disk"
    # Our binary and its shared libraries (ldd), as an extra cpio archive appended to the
    # guest's initramfs (the kernel unpacks concatenated archives in order).
    extra_initramfs "$RUN/nbdcrypt.cpio.gz" "$NBDCRYPT" || fail "building the nbdcrypt initramfs archive"
    cat "$CACHE/guest/initramfs.cpio.gz" "$RUN/nbdcrypt.cpio.gz" >"$RUN/initrd-kernel.gz"
    say "boot (kernel): qemu, guest console in $RUN/console-kernel.log"
    t=$(date +%s)
    timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
        -kernel "$CACHE/guest/vmlinuz" -initrd "$RUN/initrd-kernel.gz" \
        -append "console=ttyS0 panic=-1 loglevel=4 edd=off nbdtest.mode=kernel nbdtest.ksize=$KSIZE nbdtest.marker=$MARKER" \
        -drive file="$RUN/kdisk.img",format=raw,if=virtio \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
        </dev/null >"$RUN/console-kernel.log" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID"
    rc=$?
    QEMU_PID=
    for n in 0 1 2; do
        debugfs -R "dump /nbdcrypt-$n.log $RUN/nbdcrypt-$n.log" "$RUN/kdisk.img" >/dev/null 2>&1
    done
    result=$(grep -a -o 'NBDTEST-RESULT: .*' "$RUN/console-kernel.log" | tail -1 | tr -d '\r')
    [ "$rc" -eq 124 ] && fail "boot (kernel): qemu timed out after $VM_TIMEOUT s (${result:-no result line})"
    [ "$rc" -eq 0 ] || fail "boot (kernel): qemu exited with status $rc (${result:-no result line})"
    [ "$result" = "NBDTEST-RESULT: PASS" ] || fail "boot (kernel): ${result:-no NBDTEST-RESULT line}"
    # The first attach went through netlink, the second through the ioctls; both ended with
    # the kernel's DISC (nothing left in flight), and both servers wiped their keys.
    grep -q 'interface="netlink"' "$RUN/nbdcrypt-0.log" || fail "first attach: not through netlink"
    grep -q 'interface="ioctl"' "$RUN/nbdcrypt-1.log" || fail "second attach: not through the ioctls"
    grep -q 'signal received: disconnecting' "$RUN/nbdcrypt-2.log" || fail "attach 2: SIGTERM did not disconnect"
    for n in 0 1 2; do
        grep -q 'disconnected .*end=Disconnected' "$RUN/nbdcrypt-$n.log" || fail "attach $n: the session did not end with DISC"
        grep -q 'stopped; keys wiped' "$RUN/nbdcrypt-$n.log" || fail "attach $n: the server did not stop cleanly"
    done
    say "boot (kernel): guest PASS in $(($(date +%s) - t))s (open --connect through netlink, close; through the ioctls, open --disconnect; SIGTERM)"
    # The image as the guest left it, read back on the host through our NBD server.
    rm -f "$KD/kvol.img"
    debugfs -R "dump /kvol.img $KD/kvol.img" "$RUN/kdisk.img" >"$RUN/debugfs-kvol.log" 2>&1 ||
        fail "debugfs dump of kvol.img"
    found=$(grep -a -c -F -e "$MARKER" -e "lost+found" "$KD/kvol.img")
    [ "$found" -eq 0 ] || fail "kvol.img holds plaintext: $found lines match the marker or lost+found"
    "$NBDCRYPT" open "$KD/kvol.img" --key-file "$KEY" --socket "$RUN/kvol.sock" --fork \
        --pid-file "$RUN/kvol.pid" </dev/null >"$RUN/server-kvol.log" 2>&1 ||
        fail "nbdcrypt open --fork of kvol.img exited with status $?"
    SERVER_PID[kvol]=$(cat "$RUN/kvol.pid")
    nbdcopy "nbd+unix:///?socket=$RUN/kvol.sock" "$RUN/kvol-plain.img" >"$RUN/nbdcopy-kvol.log" 2>&1 ||
        fail "nbdcopy of kvol.img"
    kill -TERM "${SERVER_PID[kvol]}"
    SERVER_PID[kvol]=
    e2fsck -fn "$RUN/kvol-plain.img" >"$RUN/e2fsck-kvol.log" 2>&1 || fail "e2fsck -fn of kvol.img's plaintext"
    rm -rf "$RUN/files"
    mkdir "$RUN/files"
    debugfs -R "rdump / $RUN/files" "$RUN/kvol-plain.img" >>"$RUN/debugfs-kvol.log" 2>&1 ||
        fail "debugfs rdump of kvol.img's plaintext"
    n=$(cd "$RUN/files" && sha256sum -c SHA256SUMS 2>>"$RUN/debugfs-kvol.log" | grep -c ': OK$')
    [ "$n" -eq 108 ] || fail "kvol.img read back on the host: $n of 108 checksums OK"
    say "kvol.img read back on the host (nbdcrypt open --fork, nbdcopy): e2fsck clean, all $n checksums OK"
    rm -rf "$KD" "$RUN/files" "$RUN/kdisk.img" "$RUN/kvol-plain.img" "$RUN/initrd-kernel.gz"
    KERNEL_PHASE="open --connect / close in the guest, ioctl re-attach, host read-back OK"
fi
echo "PASS: nbdcrypt VM test ($VM_SERVER): ext4 over NBD with 4 connections, discard passdown and ignore, written and verified across a server restart; kernel attach: $KERNEL_PHASE; in $(($(date +%s) - T0))s"
echo "vm-tests: 1 passed, 0 failed"
