#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made fresh from real peers (docs/reliability.md):
#   seeds/luks2_header/   both metadata copies (first 2*hdr_size bytes) of cryptsetup- and
#                         nbdcrypt-made images (flag byte 0 and 1 = "reseal" variants)
#   seeds/keyslot_unlock/ flag, passphrase, header + first keyslot area of nbdcrypt-made images
#                         with cheap KDFs (cryptsetup benchmarks its digest iterations, which
#                         the target skips as too expensive, so its images are not used here)
#   seeds/nbd_session/    the bytes nbdinfo, nbdinfo --list, qemu-io, nbdcopy and nbdsh sent
#                         to `nbdcrypt open`, recorded through capture.py, and the sessions
#                         checked in under regressions/nbd_session/ (among them the Linux
#                         kernel client's, recorded by `VM_CAPTURE=DIR bash vm-tests/run.sh`)
# usage: fuzz/make-seeds.sh [NBDCRYPT_BINARY]   (default target/debug/nbdcrypt)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
NBDCRYPT=${1:-$PWD/../target/debug/nbdcrypt}
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
work=$(mktemp -d)
trap 'kill $(cat "$work"/pids 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
rm -rf seeds && mkdir -p seeds/luks2_header seeds/keyslot_unlock seeds/nbd_session
pass='fuzz passphrase'
printf '%s' "$pass" >"$work/key"
cheap_pbkdf2=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
cheap_argon=(--pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 64 --pbkdf-parallel 1)

# $1 image, $2 seed name: both copies, plain and reseal-flagged
header_seed() {
    local hs
    hs=$(od -An -tu8 -j8 -N8 --endian=big "$1" | tr -d ' ')
    for flag in 0 1; do
        { printf "\\x0$flag"; head -c $((2 * hs)) "$1"; } >"seeds/luks2_header/$2-$flag"
    done
}
# $1 image, $2 seed name: header and the first keyslot area (32 KiB + 250 KiB)
keyslot_seed() {
    { printf '\x01'; printf "\\x$(printf %02x ${#pass})"; printf '%s' "$pass"
      head -c $((32768 + 256000)) "$1"; } >"seeds/keyslot_unlock/$2"
}

for sector in 512 4096; do
    for kdf in pbkdf2 argon2id; do
        img=$work/cs-$kdf-$sector.img
        truncate -s 17M "$img"
        if [ $kdf = pbkdf2 ]; then a=("${cheap_pbkdf2[@]}"); else a=("${cheap_argon[@]}"); fi
        cryptsetup luksFormat --type luks2 --batch-mode "${a[@]}" --sector-size $sector \
            --label fuzz --key-file "$work/key" "$img"
        header_seed "$img" "cryptsetup-$kdf-$sector"
        img=$work/nc-$kdf-$sector.img
        "$NBDCRYPT" format "$img" --size 17M --sector-size $sector "${a[@]}" \
            --key-file "$work/key" >/dev/null
        header_seed "$img" "nbdcrypt-$kdf-$sector"
        keyslot_seed "$img" "nbdcrypt-$kdf-$sector"
    done
done
img=$work/cs-64k.img
truncate -s 20M "$img"
cryptsetup luksFormat --type luks2 --batch-mode "${cheap_pbkdf2[@]}" --luks2-metadata-size 64k \
    --key-file "$work/key" "$img"
printf 'second %s' "$pass" >"$work/key2"
cryptsetup luksAddKey --batch-mode "${cheap_pbkdf2[@]}" --key-file "$work/key" "$img" "$work/key2"
header_seed "$img" cryptsetup-64k-two-slots

# NBD sessions: a 1 MiB export named "vol", as in the nbd_session target.
img=$work/nc-pbkdf2-512.img
"$NBDCRYPT" open "$img" --key-file "$work/key" --socket "$work/srv.sock" --export-name vol \
    2>"$work/server.log" &
echo $! >>"$work/pids"
for _ in $(seq 100); do [ -S "$work/srv.sock" ] && break; sleep 0.1; done
record() {
    local name=$1; shift
    /usr/bin/python3 "$PWD/capture.py" "$work/cap.sock" "$work/srv.sock" seeds/nbd_session "$name" &
    local cap=$!
    for _ in $(seq 100); do [ -S "$work/cap.sock" ] && break; sleep 0.05; done
    "$@" >/dev/null
    sleep 0.3
    kill $cap; wait $cap 2>/dev/null || true
    rm -f "$work/cap.sock"
}
uri="nbd+unix:///vol?socket=$work/cap.sock"
record nbdinfo nbdinfo "$uri"
record nbdinfo-map nbdinfo --map "$uri"
record nbdinfo-list nbdinfo --list "nbd+unix://?socket=$work/cap.sock"
record qemu-io qemu-io -f raw -c 'write -P 0x5a 4096 64k' -c 'read -P 0x5a 4096 64k' \
    -c 'write -z 0 4096' -c 'flush' -c 'aio_write -P 1 0 512' -c 'aio_flush' -c 'discard 0 4k' \
    "nbd+unix:///vol?socket=$work/cap.sock"
head -c 300000 /dev/urandom >"$work/src.bin"
truncate -s 1M "$work/src.bin"
record nbdcopy-to nbdcopy "$work/src.bin" "$uri"
record nbdcopy-from nbdcopy "$uri" "$work/dst.bin"
record nbdsh /usr/bin/nbdsh --base-allocation -u "$uri" -c '
h.pwrite(b"x" * 4096, 8192, nbd.CMD_FLAG_FUA)
h.pread(4096, 8192)
h.zero(4096, 0)
h.trim(4096, 0)
h.cache(4096, 0)
h.flush()
h.block_status(65536, 0, lambda *a: 0)
'
# The kernel client runs only in the VM test's guest: its session is checked in (see above).
cp regressions/nbd_session/* seeds/nbd_session/
ls -l seeds/*
