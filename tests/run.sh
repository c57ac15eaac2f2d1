#!/usr/bin/env bash
# The project's test command (README "Tests"; `.ci/run` runs exactly this):
# installs the system packages the tests need (idempotent), then runs every test, the VM test
# included. Exit 0 only if everything passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH"

# Real peers the tests drive: cryptsetup (interop), libnbd (nbdinfo, nbdcopy, Python nbd),
# qemu-utils (qemu-io, qemu-img), nbd-client (list mode here, attach in the guest), Python
# cryptography (independent AES-XTS), OpenSSL headers (the XTS differential test), the openssl
# command (test certificates for TLS), systemd (only its systemd-socket-activate, to test socket
# activation; systemd need not run), groff-base (nroff renders the generated man pages), curl
# and sqlite3 (the key service's HTTPS client and an editor of its audit table, in
# tests/it/keyservice.rs), age (opens escrow packages as an officer would), and the VM harness's
# guest packages (stress-ng: its verifying --hdd pass on the guest's ext4), fdisk (sfdisk) and
# dosfstools (partition tables and FAT that `format` must recognise before destroying them).
# qemu-system-x86 comes only from bookworm and needs the bookworm qemu-utils beside it (a plain install of it
# removes the preinstalled qemu-utils backport).
pkgs=(cryptsetup-bin libnbd-bin python3-libnbd python3-cryptography nbd-client nbdkit
      qemu-system-x86 busybox-static cpio e2fsprogs libssl-dev pkg-config systemd openssl
      groff-base curl sqlite3 age stress-ng fdisk dosfstools)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
            --no-install-recommends "${pkgs[@]}" qemu-utils/bookworm
    }
    install || { apt-get update -q && install; }
fi

echo "tests/run.sh: cargo fmt --check, clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "tests/run.sh: cargo test"
cargo test --workspace --locked
# The XTS paths this CPU does not pick by itself (docs/performance.md): the fused AES-NI path
# without VAES, and the portable one over the `aes` crate, against the same KATs and OpenSSL.
for impl in aesni portable; do
    echo "tests/run.sh: XTS known answers with NBDCRYPT_XTS_IMPL=$impl"
    NBDCRYPT_XTS_IMPL=$impl cargo test --locked -p nbdcrypt-luks2 --test it -- crypto_kat:: volume_model::
done

# 60 s per target (FUZZ_SECONDS overrides it).
export FUZZ_SECONDS=${FUZZ_SECONDS:-60}
echo "tests/run.sh: fuzz, $FUZZ_SECONDS s per target (fuzz/run.sh; long run: docs/reliability.md)"
bash fuzz/run.sh "$PWD/target/debug/nbdcrypt"

echo "tests/run.sh: VM test (kernel nbd-client in a QEMU guest)"
NBDCRYPT="$PWD/target/debug/nbdcrypt" bash vm-tests/run.sh </dev/null
