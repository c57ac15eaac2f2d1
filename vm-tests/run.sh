#!/usr/bin/env bash
# End-to-end VM test of nbdcrypt: a Linux guest (qemu, TCG) attaches the decrypted volume
# served by `nbdcrypt open` with the kernel nbd client, makes an ext4 filesystem on it,
# writes files, and after a server restart verifies them in a second boot.
#
#   bash vm-tests/run.sh            exit 0 = PASS, non-zero = FAIL
#
# Environment:
#   NBDCRYPT=path     binary to test (default: target/release/nbdcrypt, built with cargo)
#   VM_SERVER=nbdkit  development stand-in: serve a plain raw file with nbdkit instead of
#                     nbdcrypt (the image is then plaintext, and the check is inverted)
#   VM_TIMEOUT=300    hard timeout of each qemu boot, in seconds
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
SERVER_PID=
QEMU_PID=

cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -TERM "$QEMU_PID" 2>/dev/null # timeout(1) passes it on to qemu
        wait "$QEMU_PID" 2>/dev/null
    fi
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
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
    for f in format.log server-1.log console-write.log server-2.log console-verify.log; do
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
pkgs=(busybox-static cpio nbd-client e2fsprogs libnbd-bin)
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
IMG="$RUN/volume.img"
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

start_server() { # $1 = log name; sets PORT, SERVER_PID
    PORT=$(pick_port) || fail "no free TCP port"
    local log="$RUN/$1.log"
    case "$VM_SERVER" in
    nbdcrypt)
        "$NBDCRYPT" open "$IMG" --key-file "$KEY" --listen "127.0.0.1:$PORT" --export-name "$EXPORT" \
            </dev/null >"$log" 2>&1 &
        ;;
    nbdkit)
        nbdkit -f -p "$PORT" -i 127.0.0.1 -e "$EXPORT" file "$IMG" </dev/null >"$log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    local i size
    for i in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            wait "$SERVER_PID"
            fail "$1: server exited with status $? before accepting connections"
        }
        if size=$(nbdinfo --size "nbd://127.0.0.1:$PORT/$EXPORT" 2>/dev/null); then
            say "$1: $VM_SERVER (pid $SERVER_PID) serves $EXPORT ($size bytes) on 127.0.0.1:$PORT"
            return 0
        fi
        sleep 0.1
    done
    fail "$1: server not ready on 127.0.0.1:$PORT after 30 s"
}

stop_server() { # $1 = log name; SIGTERM, the server must exit 0 within 20 s
    local i rc
    kill -TERM "$SERVER_PID" 2>/dev/null
    for i in $(seq 200); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
        fail "$1: server did not exit within 20 s of SIGTERM"
    fi
    wait "$SERVER_PID"
    rc=$?
    SERVER_PID=
    [ "$rc" -eq 0 ] || fail "$1: server exited with status $rc on SIGTERM (expected 0)"
    say "$1: server exited 0 on SIGTERM"
}

boot() { # $1 = mode (write|verify)
    local mode=$1 log="$RUN/console-$1.log" rc result t=$(date +%s)
    say "boot ($mode): qemu, guest console in $log"
    timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
        -kernel "$CACHE/guest/vmlinuz" -initrd "$CACHE/guest/initramfs.cpio.gz" \
        -append "console=ttyS0 panic=-1 loglevel=4 edd=off nbdtest.mode=$mode nbdtest.port=$PORT nbdtest.export=$EXPORT nbdtest.marker=$MARKER" \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
        </dev/null >"$log" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID" # in the background so that a trapped signal interrupts the wait
    rc=$?
    QEMU_PID=
    result=$(grep -a -o 'NBDTEST-RESULT: .*' "$log" | tail -1 | tr -d '\r')
    [ "$rc" -eq 124 ] && fail "boot ($mode): qemu timed out after $VM_TIMEOUT s (${result:-no result line})"
    [ "$rc" -eq 0 ] || fail "boot ($mode): qemu exited with status $rc (${result:-no result line})"
    [ "$result" = "NBDTEST-RESULT: PASS" ] || fail "boot ($mode): ${result:-no NBDTEST-RESULT line}"
    say "boot ($mode): guest PASS in $(($(date +%s) - t))s"
}

# --- 1. fresh volume, boot 1 writes --------------------------------------------------------
case "$VM_SERVER" in
nbdcrypt)
    say "format $IMG (256M, pbkdf2 1000 iterations)"
    "$NBDCRYPT" format "$IMG" --size 256M --key-file "$KEY" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        </dev/null >"$RUN/format.log" 2>&1 || fail "nbdcrypt format exited with status $?"
    [ -s "$IMG" ] || fail "nbdcrypt format exited 0 but left no image"
    ;;
nbdkit)
    truncate -s 256M "$IMG" || fail "truncate"
    ;;
esac
start_server server-1
boot write
stop_server server-1

# --- 2. the data at rest must not be plaintext ----------------------------------------------
found=$(grep -a -c -F -e "$MARKER" -e "lost+found" "$IMG")
case "$VM_SERVER" in
nbdcrypt)
    [ "$found" -eq 0 ] || fail "the image holds plaintext: $found lines match the marker or lost+found"
    say "image holds no plaintext marker"
    ;;
nbdkit)
    # The stand-in serves a plain file: the check must see the plaintext there.
    [ "$found" -gt 0 ] || fail "plaintext check is blind: marker not found in the plain image"
    say "stand-in image is plaintext as expected ($found matching lines)"
    ;;
esac

# --- 3. restart the server, boot 2 verifies ----------------------------------------------
start_server server-2
boot verify
stop_server server-2

rm -f "$IMG"
echo "PASS: nbdcrypt VM test ($VM_SERVER): wrote and verified ext4 over NBD across a server restart in $(($(date +%s) - T0))s"
echo "vm-tests: 1 passed, 0 failed"
