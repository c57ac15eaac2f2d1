//! Soak: 4 connections at once (multi-conn) doing random reads and writes of
//! 512 B - 1 MiB at byte offsets against a running `nbdcrypt open`, each checked against a model
//! (each connection owns a quarter of the export, so its model is exact), for a bounded time
//! (`SOAK_SECS`, default 20). Zero mismatches; the server's RSS is measured at the start and
//! the end and must stay roughly flat.

// The helpers of tests/it, included: this binary is separate (tests/README.md).
#[path = "it/common/mod.rs"]
mod common;

use common::nbd::{Raw, CMD_FLUSH, CMD_WRITE};
use common::*;
use std::time::{Duration, Instant};

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap()))
        .unwrap()
}

#[test]
fn four_connections_random_io_verified() {
    const SIZE: usize = 32 << 20;
    const CONNS: usize = 4;
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("vol.img");
    format_cheap(&img, &key, "48M", 512, "pbkdf2");
    let mut srv = Server::start(&img, &key, &[]);
    let pid = srv.child.as_ref().unwrap().id();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let sock = srv.socket.clone();
    // The start RSS is taken once every connection has filled its region (buffers warm).
    let filled = std::sync::Arc::new(std::sync::Barrier::new(CONNS + 1));
    let workers: Vec<_> = (0..CONNS)
        .map(|n| {
            let sock = sock.clone();
            let filled = filled.clone();
            std::thread::spawn(move || {
                let region = SIZE / CONNS;
                let base = n * region;
                let (mut r, size, _) = Raw::go(&sock);
                assert_eq!(size as usize, SIZE);
                // Start from known contents: the region is written once in 1 MiB pieces.
                let mut model = pattern(region, 1000 + n as u64);
                for (i, piece) in model.chunks(1 << 20).enumerate() {
                    let off = (base + (i << 20)) as u64;
                    r.try_request(0, CMD_WRITE, 1, off, piece.len() as u32, piece)
                        .unwrap();
                    assert_eq!(r.reply().unwrap(), (0, 1));
                }
                filled.wait();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let (mut reads, mut writes, mut bytes) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let len = 512 + (next() % ((1 << 20) - 511)) as usize;
                    let off = (next() % (region - len + 1) as u64) as usize;
                    let at = (base + off) as u64;
                    match next() % 16 {
                        0 => {
                            r.request(0, CMD_FLUSH, 3, 0, 0);
                            assert_eq!(r.reply().unwrap(), (0, 3));
                        }
                        1..=7 => {
                            let data = pattern(len, next());
                            r.try_request(0, CMD_WRITE, 2, at, len as u32, &data)
                                .unwrap();
                            assert_eq!(r.reply().unwrap(), (0, 2));
                            model[off..off + len].copy_from_slice(&data);
                            writes += 1;
                        }
                        _ => {
                            let got = r.read(at, len as u32);
                            assert!(
                                got == model[off..off + len],
                                "connection {n}: mismatch reading {len} bytes at {at}"
                            );
                            reads += 1;
                        }
                    }
                    bytes += len as u64;
                }
                // Everything once more, in 1 MiB reads.
                for (i, want) in model.chunks(1 << 20).enumerate() {
                    let got = r.read((base + (i << 20)) as u64, want.len() as u32);
                    assert!(got == want, "connection {n}: final mismatch in MiB {i}");
                }
                (reads, writes, bytes)
            })
        })
        .collect();
    filled.wait();
    let rss_start = vm_rss_kib(pid);
    let mut samples = vec![rss_start];
    while Instant::now() + Duration::from_secs(1) < deadline {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(vm_rss_kib(pid));
    }
    let (mut reads, mut writes, mut bytes) = (0, 0, 0);
    for w in workers {
        let (r, w, b) = w.join().unwrap();
        reads += r;
        writes += w;
        bytes += b;
    }
    let rss_end = vm_rss_kib(pid);
    let (st, _) = srv.stop();
    assert!(st.success());
    eprintln!(
        "soak: {secs} s, {CONNS} connections, {reads} verified reads, {writes} writes, \
         {} MiB moved, 0 mismatches; server RSS {rss_start} KiB -> {rss_end} KiB \
         (per second: {samples:?})",
        bytes >> 20
    );
    // Flat: whatever the server allocates per request must be returned (a leak of even one
    // buffer per request would be gigabytes here). Generous: allocator caches and 4 sessions.
    assert!(
        rss_end < rss_start + (96 << 10),
        "server RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}
