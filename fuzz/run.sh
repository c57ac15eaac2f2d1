#!/usr/bin/env bash
# Short fuzz run of every target (tests/run.sh calls it; docs/reliability.md has the long run):
# fresh seeds from real peers (make-seeds.sh), then each target for FUZZ_SECONDS (default 60)
# on corpus/TARGET (kept between runs, gitignored) plus seeds/TARGET. Exit 1 on any crash;
# the input that crashed is in artifacts/TARGET/ (replay: cargo fuzz run TARGET FILE).
# cargo-fuzz needs nightly flags (-Z sanitizer): RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cargo fmt --check
bash make-seeds.sh "${1:-$PWD/../target/debug/nbdcrypt}" >/dev/null
cargo fuzz build
declare -A max_len=([luks2_header]=140000 [keyslot_unlock]=300000 [nbd_session]=65536)
for t in luks2_header keyslot_unlock nbd_session; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" \
        -max_len="${max_len[$t]}" -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
        tail -60 "$log"
        echo "fuzz/run.sh: $t crashed; input in fuzz/artifacts/$t/"
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz/run.sh: $t: $execs executions in $secs s, corpus $(ls "corpus/$t" | wc -l) inputs"
    rm -f "$log"
done
