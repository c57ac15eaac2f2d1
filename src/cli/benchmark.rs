//! `nbdcrypt benchmark`: like `cryptsetup benchmark`, what the KDFs reach in the requested time
//! and the XTS sector transform's throughput per sector size, on this machine, in memory.
//! Figures, not tests: nothing here asserts a speed.

use std::time::Instant;

use crate::crypto::kdf::{benchmark_argon2, benchmark_pbkdf2};
use crate::crypto::{random_bytes, Argon2Variant, HashAlg, SectorCipher};
use crate::volume::VolumeError;

use super::error::CliError;

/// `nbdcrypt benchmark`.
#[derive(clap::Args)]
pub struct BenchmarkArgs {
    /// KDF target time, milliseconds.
    #[arg(long, short = 'i', value_name = "MS", default_value_t = 2000)]
    iter_time: u32,
    /// Argon2 memory cost in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 1 << 20)]
    pbkdf_memory: u32,
    /// Argon2 parallel lanes.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pbkdf_parallel: u32,
}

impl BenchmarkArgs {
    /// Runs `benchmark`.
    pub fn run(self) -> Result<(), CliError> {
        benchmark(self.iter_time, self.pbkdf_memory, self.pbkdf_parallel)
    }
}

/// Bytes encrypted per XTS measurement.
const XTS_BYTES: usize = 64 << 20;

/// Run the benchmark and print the table. `iter_time_ms` is the KDF target (cryptsetup's
/// `--iter-time`); Argon2 uses `memory_kib` and `parallel` as `format` would.
fn benchmark(iter_time_ms: u32, memory_kib: u32, parallel: u32) -> Result<(), CliError> {
    println!("# Tests are approximate using memory only (no storage IO).");
    let iters = benchmark_pbkdf2(HashAlg::Sha256, iter_time_ms, 32).map_err(VolumeError::from)?;
    println!(
        "PBKDF2-sha256    {:>10} iterations per second for 256-bit key",
        u64::from(iters) * 1000 / u64::from(iter_time_ms.max(1))
    );
    for (name, v) in [
        ("argon2i", Argon2Variant::Argon2i),
        ("argon2id", Argon2Variant::Argon2id),
    ] {
        let (time, memory) =
            benchmark_argon2(v, iter_time_ms, memory_kib, parallel).map_err(VolumeError::from)?;
        println!(
            "{name:<9} {time:>4} iterations, {memory:>7} memory, {parallel} parallel threads (CPUs) for 256-bit key (requested {iter_time_ms} ms time)"
        );
    }
    println!("#     Algorithm |       Key |  Sector |      Encryption |      Decryption");
    let key = random_bytes(64).map_err(VolumeError::from)?;
    let cipher = SectorCipher::new(&key).map_err(VolumeError::from)?;
    let mut buf = vec![0u8; XTS_BYTES];
    // Warm-up pass, untimed: the first touch of a fresh allocation pays its page faults, and
    // the thread pool that splits large buffers starts its threads.
    cipher.encrypt(&mut buf, 4096, 0);
    for sector in [512usize, 4096] {
        let t = Instant::now();
        cipher.encrypt(&mut buf, sector, 0);
        let enc = mib_per_s(t);
        let t = Instant::now();
        cipher.decrypt(&mut buf, sector, 0);
        let dec = mib_per_s(t);
        println!(
            "        aes-xts |      512b | {sector:>6}b | {enc:>10.1} MiB/s | {dec:>10.1} MiB/s"
        );
    }
    Ok(())
}

/// XTS encryption throughput in memory on this machine at `sector` bytes per sector, MiB/s
/// (one warm-up pass, then one timed pass over 64 MiB): the figure `wipe` compares itself with.
pub fn xts_encrypt_mib_per_s(sector: usize) -> Result<f64, CliError> {
    let key = random_bytes(64).map_err(VolumeError::from)?;
    let cipher = SectorCipher::new(&key).map_err(VolumeError::from)?;
    let mut buf = vec![0u8; XTS_BYTES];
    cipher.encrypt(&mut buf, sector, 0);
    let t = Instant::now();
    cipher.encrypt(&mut buf, sector, 0);
    Ok(mib_per_s(t))
}

fn mib_per_s(since: Instant) -> f64 {
    (XTS_BYTES as f64 / (1 << 20) as f64) / since.elapsed().as_secs_f64()
}
