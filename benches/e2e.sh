#!/usr/bin/env bash
# End-to-end NBD benchmark: nbdcrypt against qemu-nbd (LUKS1), nbdkit + luks filter
# (LUKS1) and unencrypted nbdkit file, each serving an equal 1 GiB volume from tmpfs over a Unix
# socket, driven by the same fio nbd-engine jobs and nbdcopy, interleaved (every repetition
# runs each job on every server in turn, the server order rotating), medians reported.
#
# Usage: bash benches/e2e.sh            (about 6 minutes on a 2-core machine)
# Environment:
#   RUNTIME=3    seconds per fio job
#   REPS=3       repetitions of every job on every server (the median is reported)
#   SECTOR=512   nbdcrypt's encryption sector size, 512 (as LUKS1) or 4096
#   INLINE_LIMIT=BYTES   nbdcrypt's --inline-limit (default: its own, 65536; 0 = nothing inline)
#   SERVERS="nbdcrypt nbdkit-luks qemu-nbd nbdkit-file"   subset / order of the servers
#   NBDCRYPT_B=PATH   another nbdcrypt binary (say, a build of an earlier commit): adds the server
#                "nbdcrypt-b", served like nbdcrypt from its own equal image, for comparing two
#                builds side by side in one run (a ratio row nbdcrypt / nbdcrypt-b is printed)
#   JOBS="seqwrite seqread seqwrite1m seqread1m randread32 randwrite32 lat1 copyin copyout"
#                subset of the jobs (the default; seqwrite1m / seqread1m are 1 MiB sequential at
#                QD8); also seqwrite1 / seqread1: 4 MiB sequential at QD1
#   KEEP=1       keep the work directory (images, logs, fio JSON) instead of deleting it
#   PROFILE=1    instead of the comparison, record each fio job (RUNTIME s, once) on each server
#                of SERVERS (default then: nbdcrypt) with `perf record` (linux-perf) and print
#                where the server's CPU time goes: top functions and a breakdown by category
#                (the fio jobs of JOBS; copyin/copyout are skipped)
# Prints one Markdown table of medians (MB/s = 10^6 bytes/s) with ratio rows, the server's CPU
# time per MB moved (what a job costs the server, less sensitive to other load than
# throughput), the spread of every cell, and the performance targets whose servers ran (ratios
# to nbdkit+luks need SERVERS to hold nbdkit-luks, to nbdkit file nbdkit-file). Run by hand;
# not part of tests/run.sh.
set -euo pipefail
# resolved before the cd below, so a path relative to where the script was started works
[ -n "${NBDCRYPT_B:-}" ] && NBDCRYPT_B=$(realpath "$NBDCRYPT_B")
if [ -n "${NBDCRYPT_B:-}" ] && ! { [ -f "$NBDCRYPT_B" ] && [ -x "$NBDCRYPT_B" ]; }; then
    echo "e2e: NBDCRYPT_B=$NBDCRYPT_B is not an executable file" >&2
    exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH"

PROFILE=${PROFILE:-0}
RUNTIME=${RUNTIME:-3}
REPS=${REPS:-3}
SECTOR=${SECTOR:-512}
INLINE_ARGS=()
if [ -n "${INLINE_LIMIT:-}" ]; then
    INLINE_ARGS=(--inline-limit "$INLINE_LIMIT")
fi
if [ "$PROFILE" = 1 ]; then
    read -r -a SERVERS <<<"${SERVERS:-nbdcrypt}"
else
    read -r -a SERVERS <<<"${SERVERS:-nbdcrypt nbdkit-luks qemu-nbd nbdkit-file}"
fi
if [ -n "${NBDCRYPT_B:-}" ]; then
    [[ " ${SERVERS[*]} " == *" nbdcrypt-b "* ]] || SERVERS+=(nbdcrypt-b)
fi
SIZE=$((1 << 30)) # volume size of every export, bytes

log() { echo "e2e: $*" >&2; }
# a figure as printed in the tables: whole from 1000 on, else one decimal
fmt() { awk -v x="$1" 'BEGIN { if (x >= 1000) printf "%.0f", x; else printf "%.1f", x }'; }

# The jobs and their column headings; unknown names are refused before anything is set up.
read -r -a JOBS <<<"${JOBS:-seqwrite seqread seqwrite1m seqread1m randread32 randwrite32 lat1 copyin copyout}"
declare -A HEAD=(
    [seqwrite]="seq write 4M QD8 MB/s" [seqread]="seq read 4M QD8 MB/s"
    [seqwrite1]="seq write 4M QD1 MB/s" [seqread1]="seq read 4M QD1 MB/s"
    [seqwrite1m]="seq write 1M QD8 MB/s" [seqread1m]="seq read 1M QD8 MB/s"
    [randread32]="4k randread QD32 IOPS" [randwrite32]="4k randwrite QD32 IOPS"
    [lat1]="4k randread QD1 µs" [copyin]="nbdcopy write MB/s" [copyout]="nbdcopy read MB/s"
)
for j in "${JOBS[@]}"; do
    [ -n "${HEAD[$j]:-}" ] || { log "unknown job $j (known: $(printf '%s\n' "${!HEAD[@]}" | sort | xargs))"; exit 1; }
done
for s in "${SERVERS[@]}"; do
    case $s in
        nbdcrypt | nbdcrypt-b | qemu-nbd | nbdkit-luks | nbdkit-file) ;;
        *) log "unknown server $s (known: nbdcrypt nbdcrypt-b nbdkit-file nbdkit-luks qemu-nbd)"; exit 1 ;;
    esac
done

# --- packages (idempotent; only the missing ones are installed) --------------------------
# qemu-utils: tests/run.sh pairs the bookworm qemu-utils with qemu-system-x86; an installed
# qemu-utils (whatever its version) is left alone, a missing one comes from bookworm likewise.
pkgs=(fio nbdkit libnbd-bin qemu-utils jq)
[ "$PROFILE" = 1 ] && pkgs+=(linux-perf)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    targets=("${missing[@]/#qemu-utils/qemu-utils/bookworm}")
    install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
            --no-install-recommends "${targets[@]}"
    }
    install || { apt-get update -q && install; }
fi

# --- build --------------------------------------------------------------------------------
# The release code with line tables, for perf's DWARF call graphs (Cargo.toml [profile.profiling]).
log "cargo build --profile profiling"
cargo build --profile profiling --locked -q
NBDCRYPT="$PWD/target/profiling/nbdcrypt"

# --- work directory, cleanup --------------------------------------------------------------
WORK=$(mktemp -d /dev/shm/nbdcrypt-e2e.XXXXXX)
cleanup() {
    local f pid
    for f in "$WORK"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    # nbdcrypt removes its pid file on exit; wait for all servers to go before deleting images
    for f in "$WORK"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        for _ in $(seq 50); do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASS="$WORK/pass"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$PASS"

# --- images: four equal 1 GiB volumes ------------------------------------------------------
log "creating images in $WORK"
make_image() {
    local s=$1 img="$WORK/$1.img" try
    case $s in
        nbdcrypt | nbdcrypt-b)
            # LUKS2, the 16 MiB header in front of the 1 GiB volume; PBKDF2 with 1000
            # iterations, so unlocking is instant and the peak RSS is the server's, not Argon2's.
            "$NBDCRYPT" format "$img" --size $((SIZE + (16 << 20))) --key-file "$PASS" \
                --sector-size "$SECTOR" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
                --batch-mode >/dev/null
            ;;
        qemu-nbd | nbdkit-luks)
            # LUKS1 (nbdkit's luks filter reads LUKS1 only) made by qemu-img:
            # aes-256-xts-plain64, sha256, 512-byte sectors; one image per server. qemu-img's
            # PBKDF calibration sometimes fails on a busy machine ("Unable to get accurate CPU
            # usage"): try again.
            for try in 1 2 3 4 5; do
                qemu-img create -q -f luks --object "secret,id=sec0,file=$PASS" \
                    -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=10 \
                    "$img" "$SIZE" && return 0
                log "qemu-img create failed (attempt $try)"
            done
            return 1
            ;;
        nbdkit-file)
            truncate -s "$SIZE" "$img"
            ;;
    esac
}
for s in "${SERVERS[@]}"; do
    make_image "$s"
done
# 1 GiB of random data: the source of the nbdcopy writes (and of the prefill).
head -c "$SIZE" /dev/urandom >"$WORK/src.bin"

# --- servers --------------------------------------------------------------------------------
sock() { echo "$WORK/$1.sock"; }
uri() { echo "nbd+unix:///?socket=$(sock "$1")"; }
pidof_server() { cat "$WORK/$1.pid"; }

start() {
    local s=$1 img="$WORK/$1.img" sk pf="$WORK/$1.pid"
    sk=$(sock "$s")
    case $s in
        nbdcrypt | nbdcrypt-b)
            local bin=$NBDCRYPT
            [ "$s" = nbdcrypt-b ] && bin=${NBDCRYPT_B:?NBDCRYPT_B=PATH names the nbdcrypt-b binary}
            NBDCRYPT_LOG=warn "$bin" open "$img" --key-file "$PASS" --socket "$sk" \
                --pid-file "$pf" "${INLINE_ARGS[@]}" >"$WORK/$s.log" 2>&1 &
            echo $! >"$WORK/$s.bg.pid" # killed on exit even if it never wrote its pid file
            ;;
        qemu-nbd)
            qemu-nbd --object "secret,id=sec0,file=$PASS" \
                --image-opts "driver=luks,key-secret=sec0,file.filename=$img" \
                -k "$sk" -t -e 8 --pid-file "$pf" --fork >"$WORK/$s.log" 2>&1
            ;;
        nbdkit-luks)
            nbdkit -U "$sk" -P "$pf" file "$img" --filter=luks "passphrase=+$PASS" \
                >"$WORK/$s.log" 2>&1
            ;;
        nbdkit-file)
            nbdkit -U "$sk" -P "$pf" file "$img" >"$WORK/$s.log" 2>&1
            ;;
        *)
            log "unknown server $s"
            exit 1
            ;;
    esac
    for _ in $(seq 100); do
        [ -s "$pf" ] && [ -S "$sk" ] && break
        sleep 0.1
    done
    if ! [ -s "$pf" ]; then
        log "$s did not start:"
        cat "$WORK/$s.log" >&2
        exit 1
    fi
    local size
    size=$(nbdinfo --size "$(uri "$s")")
    if [ "$size" != "$SIZE" ]; then
        log "$s serves $size bytes, expected $SIZE"
        exit 1
    fi
}

for s in "${SERVERS[@]}"; do
    start "$s"
    # Unmeasured pass writing every byte, so that no job reads tmpfs holes or first-touches
    # pages (and every server has the same, full, image).
    nbdcopy --request-size=4194304 --flush "$WORK/src.bin" "$(uri "$s")"
    log "$s ready (pid $(pidof_server "$s")), prefilled"
done

# --- jobs: each prints one number -------------------------------------------------------
# fio_job NAME SERVER FIELD FIO-ARGS... ; FIELD is a jq expression on the job's JSON.
fio_job() {
    local name=$1 s=$2 field=$3 out="$WORK/fio-$1-$2.json"
    shift 3
    rm -f "$out" "$WORK/moved" # a failed job must not leave the last one's figures behind
    fio --name="$name" --ioengine=nbd --uri="$(uri "$s")" --size="$SIZE" \
        --time_based --runtime="$RUNTIME" --output-format=json --output="$out" "$@" >/dev/null ||
        { log "fio $name on $s failed"; return 1; }
    jq -r '.jobs[0] | .read.io_bytes + .write.io_bytes' "$out" >"$WORK/moved"
    jq -r ".jobs[0] | $field" "$out"
}
# MB/s of a timed command moving SIZE bytes.
timed_mbs() {
    local t0 t1
    t0=$EPOCHREALTIME
    rm -f "$WORK/moved"
    "$@" >/dev/null || { log "$1 failed"; return 1; }
    t1=$EPOCHREALTIME
    echo "$SIZE" >"$WORK/moved"
    awk -v b="$SIZE" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f\n", b / (z - a) / 1e6 }'
}

job() {
    local j=$1 s=$2
    case $j in
        seqwrite) fio_job "$j" "$s" '.write.bw_bytes / 1e6' --rw=write --bs=4M --iodepth=8 ;;
        seqread) fio_job "$j" "$s" '.read.bw_bytes / 1e6' --rw=read --bs=4M --iodepth=8 ;;
        seqwrite1m) fio_job "$j" "$s" '.write.bw_bytes / 1e6' --rw=write --bs=1M --iodepth=8 ;;
        seqread1m) fio_job "$j" "$s" '.read.bw_bytes / 1e6' --rw=read --bs=1M --iodepth=8 ;;
        seqwrite1) fio_job "$j" "$s" '.write.bw_bytes / 1e6' --rw=write --bs=4M --iodepth=1 ;;
        seqread1) fio_job "$j" "$s" '.read.bw_bytes / 1e6' --rw=read --bs=4M --iodepth=1 ;;
        randread32) fio_job "$j" "$s" '.read.iops' --rw=randread --bs=4k --iodepth=32 ;;
        randwrite32) fio_job "$j" "$s" '.write.iops' --rw=randwrite --bs=4k --iodepth=32 ;;
        lat1) fio_job "$j" "$s" '.read.lat_ns.mean / 1000' --rw=randread --bs=4k --iodepth=1 ;;
        copyin) timed_mbs nbdcopy --request-size=4194304 --flush "$WORK/src.bin" "$(uri "$s")" ;;
        copyout) timed_mbs nbdcopy --request-size=4194304 --no-extents "$(uri "$s")" null: ;;
    esac
}

label() {
    case $1 in
        nbdcrypt) echo "nbdcrypt (LUKS2, $SECTOR B sectors)" ;;
        nbdcrypt-b) echo "nbdcrypt-b ($NBDCRYPT_B)" ;;
        nbdkit-luks) echo "nbdkit file + luks filter (LUKS1)" ;;
        qemu-nbd) echo "qemu-nbd (LUKS1)" ;;
        nbdkit-file) echo "nbdkit file (unencrypted)" ;;
    esac
}

# --- profile mode ---------------------------------------------------------------------------
# Where one server's CPU time goes under one fio job: perf samples (cpu-clock, 999 Hz, DWARF
# call graphs) of the server process only. Categories: self time of user-space functions
# (XTS/AES, memset/memcpy), and for the kernel the system call (or page fault) each sample is in.
profile() {
    local s=$1 j=$2 data="$WORK/perf-$1-$2.data" pid rep
    pid=$(pidof_server "$s")
    perf record -q -e cpu-clock -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$data" \
        -- sleep $((RUNTIME + 1)) 2>/dev/null &
    local perf_pid=$!
    sleep 0.5
    local v
    v=$(job "$j" "$s")
    wait "$perf_pid" || true
    echo
    echo "### $(label "$s"), ${HEAD[$j]% *}: $(fmt "$v") ${HEAD[$j]##* }"
    echo
    rep="$WORK/perf-$s-$j.txt"
    perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep . |
        sed -E 's/( +-)+ *$//' >"$rep"
    echo "Top 10 functions by self time (% of the server's samples):"
    echo
    echo '```'
    sort -k2 -g -r "$rep" | awk 'NR <= 10 { s = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "%7s  %s\n", s, substr($0, 1, 110) }'
    echo '```'
    echo
    awk '
        { c = $1 + 0; self = $2 + 0; $1 = ""; $2 = ""; sub(/^ +\[.\] +/, ""); sym = $0 }
        sym ~ /^(aes::|nbdcrypt::crypto::xts(_ni)?::)/ { cat["XTS/AES (user)"] += self }
        sym ~ /^__(memset|memmove|memcpy)/ { cat["memset/memcpy (user)"] += self }
        sym ~ /^__x64_sys_(sendto|recvfrom|sendmsg|recvmsg|read|write|writev|readv)$/ { cat["socket read/write syscalls"] += c }
        sym ~ /^__x64_sys_(pread64|pwrite64|fdatasync|fsync)$/ { cat["image pread/pwrite/fdatasync syscalls"] += c }
        sym ~ /^__x64_sys_(futex|sched_yield|epoll_wait|epoll_pwait)$/ { cat["thread wake-ups and sleeps (futex, epoll_wait)"] += c }
        sym ~ /^asm_exc_page_fault$/ { cat["page faults"] += c }
        END {
            n = split("XTS/AES (user)|memset/memcpy (user)|socket read/write syscalls|image pread/pwrite/fdatasync syscalls|thread wake-ups and sleeps (futex, epoll_wait)|page faults", k, "|")
            for (i = 1; i <= n; i++) { printf "- %s: %.1f %%\n", k[i], cat[k[i]]; t += cat[k[i]] }
            printf "- everything else (tokio, rayon, allocator, NBD codec, other kernel): %.1f %%\n", 100 - t
        }' "$rep"
}
if [ "$PROFILE" = 1 ]; then
    for s in "${SERVERS[@]}"; do
        for j in "${JOBS[@]}"; do
            [[ $j == copy* ]] || profile "$s" "$j"
        done
    done
    exit 0
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A SAMPLES=() CPU=()
HZ=$(getconf CLK_TCK)
# user + system time of a server process and all its threads, clock ticks (/proc/PID/stat)
# (fields after the parenthesised command name, which may hold spaces: utime and stime are 12, 13)
cpu_ticks() { sed 's/.*) //' "/proc/$(pidof_server "$1")/stat" | awk '{ print $12 + $13 }'; }
n=${#SERVERS[@]}
for ((r = 0; r < REPS; r++)); do
    log "repetition $((r + 1))/$REPS"
    for j in "${JOBS[@]}"; do
        for ((k = 0; k < n; k++)); do
            s=${SERVERS[$(((k + r) % n))]}
            c0=$(cpu_ticks "$s")
            v=$(job "$j" "$s")
            c1=$(cpu_ticks "$s")
            SAMPLES[$j,$s]+="$v "
            # server CPU time (user + system, all threads) per MB moved, µs
            CPU[$j,$s]+="$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v b="$(cat "$WORK/moved")" 'BEGIN { printf "%.1f", b ? c / hz * 1e6 / (b / 1e6) : 0 }') "
        done
    done
done

# --- report -----------------------------------------------------------------------------
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
spread() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", fmt(lo), fmt(hi) } function fmt(x) { return x >= 1000 ? sprintf("%.0f", x) : sprintf("%.1f", x) }'; }
declare -A MED=()
for j in "${JOBS[@]}"; do
    for s in "${SERVERS[@]}"; do
        MED[$j,$s]=$(median <<<"${SAMPLES[$j,$s]}")
    done
done
declare -A RSS=()
for s in "${SERVERS[@]}"; do
    RSS[$s]=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$(pidof_server "$s")/status")
done

has() { [[ " ${SERVERS[*]} " == *" $1 "* ]]; }

echo
echo "End-to-end, $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')),"
echo "kernel $(uname -r); $(fio --version), nbdkit $(nbdkit --version | awk '{print $2}'), $(qemu-nbd --version | head -1),"
echo "libnbd $(nbdcopy --version | awk 'NR==1 {print $2}'); nbdcrypt $(git rev-parse --short HEAD 2>/dev/null || echo '?');"
echo "1 GiB volumes on tmpfs, Unix sockets; fio nbd engine, 1 connection, ${RUNTIME} s per job; medians of $REPS interleaved runs;"
echo "load average $LOAD_BEFORE before the runs, $(cut -d' ' -f1-3 /proc/loadavg) after (the machine is shared)."
echo
hdr="| server |"
sep="|---|"
for j in "${JOBS[@]}"; do
    hdr+=" ${HEAD[$j]} |"
    sep+="---|"
done
echo "$hdr peak RSS MiB |"
echo "$sep---|"
for s in "${SERVERS[@]}"; do
    row="| $(label "$s") |"
    for j in "${JOBS[@]}"; do row+=" $(fmt "${MED[$j,$s]}") |"; done
    echo "$row ${RSS[$s]} |"
done
if has nbdcrypt; then
    for o in nbdkit-luks nbdkit-file qemu-nbd nbdcrypt-b; do
        has "$o" || continue
        row="| *nbdcrypt / $o* |"
        for j in "${JOBS[@]}"; do
            row+=" $(awk -v a="${MED[$j,nbdcrypt]}" -v b="${MED[$j,$o]}" 'BEGIN { printf "%.2f", b ? a / b : 0 }') |"
        done
        echo "$row $(awk -v a="${RSS[nbdcrypt]}" -v b="${RSS[$o]}" 'BEGIN { printf "%.2f", b ? a / b : 0 }') |"
    done
    [[ " ${JOBS[*]} " == *" lat1 "* ]] && echo "(Latency, µs: lower is better, so its ratio should be small.)"
fi
echo
echo "Server CPU time (user + system, all threads) per MB moved, µs, medians: what a job costs the"
echo "server, less sensitive than throughput to the load beside it (lower is better):"
echo
cpu_hdr="| server |"
for j in "${JOBS[@]}"; do cpu_hdr+=" ${HEAD[$j]% *} |"; done # the job, without its unit
echo "$cpu_hdr"
echo "$sep"
for s in "${SERVERS[@]}"; do
    row="| $(label "$s") |"
    for j in "${JOBS[@]}"; do row+=" $(fmt "$(median <<<"${CPU[$j,$s]}")") |"; done
    echo "$row"
done
echo
echo "Spread (min–max of the $REPS runs):"
echo
echo "$hdr"
echo "$sep"
for s in "${SERVERS[@]}"; do
    row="| $(label "$s") |"
    for j in "${JOBS[@]}"; do row+=" $(spread <<<"${SAMPLES[$j,$s]}") |"; done
    echo "$row"
done

# Performance targets (ratios of medians from this run), those whose servers ran.
if has nbdcrypt && { has nbdkit-luks || has nbdkit-file; }; then
    echo
    echo "Targets:"
    check() { # DESCRIPTION VALUE OP LIMIT
        awk -v d="$1" -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
            ok = (op == ">=") ? v >= l : v <= l
            miss = 100 * (op == ">=" ? (l - v) / l : (v - l) / l)
            printf "- %s: %.3f (target %s %s) %s\n", d, v, op, l, ok ? "met" : (miss < 1 ? "MISSED by < 1 %" : sprintf("MISSED by %.0f %%", miss))
        }'
    }
    r() { awk -v a="${MED[$1,nbdcrypt]}" -v b="${MED[$1,$2]}" 'BEGIN { printf "%.4f", a / b }'; }
    # JOB SERVER: targets of jobs or reference servers left out (JOBS=, SERVERS=) are skipped
    ran() { [[ " ${JOBS[*]} " == *" $1 "* ]] && has "$2"; }
    ran seqwrite nbdkit-luks && check "seq write 4M / nbdkit+luks" "$(r seqwrite nbdkit-luks)" ">=" 2
    ran seqread nbdkit-luks && check "seq read 4M / nbdkit+luks" "$(r seqread nbdkit-luks)" ">=" 2
    ran seqwrite nbdkit-file && check "seq write 4M / nbdkit file" "$(r seqwrite nbdkit-file)" ">=" 0.8
    ran seqread nbdkit-file && check "seq read 4M / nbdkit file" "$(r seqread nbdkit-file)" ">=" 0.8
    ran seqwrite1m nbdkit-luks && check "seq write 1M / nbdkit+luks" "$(r seqwrite1m nbdkit-luks)" ">=" 2
    ran seqread1m nbdkit-luks && check "seq read 1M / nbdkit+luks" "$(r seqread1m nbdkit-luks)" ">=" 2
    ran seqwrite1m nbdkit-file && check "seq write 1M / nbdkit file" "$(r seqwrite1m nbdkit-file)" ">=" 0.8
    ran seqread1m nbdkit-file && check "seq read 1M / nbdkit file" "$(r seqread1m nbdkit-file)" ">=" 0.8
    ran randread32 nbdkit-luks && check "4k randread QD32 IOPS / nbdkit+luks" "$(r randread32 nbdkit-luks)" ">=" 1.3
    ran randwrite32 nbdkit-luks && check "4k randwrite QD32 IOPS / nbdkit+luks" "$(r randwrite32 nbdkit-luks)" ">=" 1.3
    ran lat1 nbdkit-file && check "4k QD1 latency / nbdkit file" "$(r lat1 nbdkit-file)" "<=" 1.2
    echo "- nbdcrypt peak RSS (VmHWM): ${RSS[nbdcrypt]} MiB"
fi
