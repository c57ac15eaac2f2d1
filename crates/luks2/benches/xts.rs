//! Sector transform throughput: nbdcrypt's `SectorCipher` against OpenSSL's EVP aes-256-xts, in
//! the same process, one core, per sector size (the target: ≥ 1.0 × OpenSSL at 4096-byte
//! sectors, ≥ 0.9 × at 512). Run with `cargo bench -p nbdcrypt-luks2 --bench xts`; prints one table.
//!
//! Both sides do the same work per sector: one XTS data unit with its own plain64 tweak
//! (OpenSSL: re-initialising the IV on a context whose key schedule is kept, as dm-crypt's and
//! qemu's userspace paths do). Buffers are 64 KiB, below `PARALLEL_THRESHOLD`, so ours stays on
//! one thread. Time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so
//! other processes on a shared machine cost neither side the time they are descheduled (they
//! still disturb caches). Rounds alternate ours/OpenSSL; the table shows the median MB/s of
//! each and the median of the per-round ratios.
//! A third column is the `aes` crate alone in ECB over the same buffer, 240 blocks per call: the
//! ceiling for any XTS built on it (XTS adds the tweak XORs on top).

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::{array::Array, consts::U16, BlockCipherEncrypt, KeyInit};
use nbdcrypt_luks2::crypto::xts::PARALLEL_THRESHOLD;
use nbdcrypt_luks2::crypto::SectorCipher;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

const BUF: usize = 64 * 1024;
// The one-core comparison must stay on one thread.
const _: () = assert!(BUF < PARALLEL_THRESHOLD);
const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// This thread's CPU time, seconds.
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux supports.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// MB/s (10^6 bytes per second of this thread's CPU time) of `f` applied to a `BUF`-byte
/// buffer for about `ROUND_TIME` of CPU time.
fn rate(mut f: impl FnMut(&mut [u8], u64)) -> f64 {
    let mut buf = vec![0x5au8; BUF];
    let start = cpu_time();
    let mut bytes = 0u64;
    let mut iv = 0u64;
    while cpu_time() - start < ROUND_TIME.as_secs_f64() {
        f(&mut buf, iv);
        iv += (BUF / 512) as u64;
        bytes += BUF as u64;
    }
    black_box(&buf);
    bytes as f64 / (cpu_time() - start) / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let key: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let ours = SectorCipher::new(&key).unwrap();
    let mut out = vec![0u8; BUF + 16];
    let ecb = aes::Aes256::new_from_slice(&key[..32]).unwrap();
    let path = std::env::var("NBDCRYPT_XTS_IMPL").unwrap_or_else(|_| "default".into());
    println!("XTS path: {path} (NBDCRYPT_XTS_IMPL); MB/s of CPU time, one thread");
    println!(
        "| direction | sector | nbdcrypt MB/s | OpenSSL MB/s | ratio (median) | aes ECB MB/s |"
    );
    println!("|---|---|---|---|---|---|");
    for sector in [512usize, 4096] {
        for encrypt in [true, false] {
            let mut ctx = CipherCtx::new().unwrap();
            if encrypt {
                ctx.encrypt_init(Some(Cipher::aes_256_xts()), Some(&key), None)
                    .unwrap();
            } else {
                ctx.decrypt_init(Some(Cipher::aes_256_xts()), Some(&key), None)
                    .unwrap();
            }
            let (mut a, mut b, mut c, mut ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(rate(|buf, iv| {
                    if encrypt {
                        ours.encrypt(buf, sector, iv)
                    } else {
                        ours.decrypt(buf, sector, iv)
                    }
                }));
                b.push(rate(|buf, iv| {
                    for (k, s) in buf.chunks_exact(sector).enumerate() {
                        let tweak = (iv as u128 + (k * sector / 512) as u128).to_le_bytes();
                        if encrypt {
                            ctx.encrypt_init(None, None, Some(&tweak)).unwrap();
                        } else {
                            ctx.decrypt_init(None, None, Some(&tweak)).unwrap();
                        }
                        ctx.cipher_update(s, Some(&mut out)).unwrap();
                    }
                }));
                ratio.push(a[a.len() - 1] / b[b.len() - 1]);
                c.push(rate(|buf, _| {
                    let (blocks, _) = Array::<u8, U16>::slice_as_chunks_mut(buf);
                    for w in blocks.chunks_mut(240) {
                        ecb.encrypt_blocks(w);
                    }
                }));
            }
            let (a, b, c, ratio) = (median(a), median(b), median(c), median(ratio));
            let dir = if encrypt { "encrypt" } else { "decrypt" };
            println!("| {dir} | {sector} B | {a:.0} | {b:.0} | {ratio:.2} | {c:.0} |");
        }
    }
}
