//! Password-based key derivation (PBKDF2, RFC 8018; Argon2, RFC 9106) and cryptsetup-style
//! cost benchmarks (luks2-facts 1.3, cryptsetup(8) "MINIMAL AND MAXIMAL PBKDF COSTS").

use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{Argon2Variant, CryptoError, HashAlg, KdfParams, SecretBytes};

/// cryptsetup's minimum Argon2 time cost (passes).
pub const ARGON2_MIN_TIME: u32 = 4;
/// cryptsetup's minimum Argon2 memory cost, KiB.
pub const ARGON2_MIN_MEMORY_KIB: u32 = 32;
/// cryptsetup's maximum Argon2 memory cost, KiB (4 GiB).
pub const ARGON2_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// cryptsetup's maximum Argon2 parallel cost (threads).
pub const ARGON2_MAX_PARALLEL: u32 = 4;
/// cryptsetup's minimum PBKDF2 iteration count.
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;

/// PBKDF2-HMAC-SHA256 iterations per second assumed by [`estimated_ms`]: a fast machine (a
/// loaded 2-core test machine measured 3.7 M/s), so the estimate errs low and a header made on
/// a faster machine is not refused on a slower one.
pub const PBKDF2_ITERATIONS_PER_SEC: u64 = 10_000_000;
/// Argon2 work (passes x KiB) per second assumed by [`estimated_ms`]: 2 GiB per second, four lanes
/// on a fast machine (a loaded 2-core test machine measured 0.6 GiB/s).
pub const ARGON2_KIB_PASSES_PER_SEC: u64 = 2 * 1024 * 1024;
/// Default bound on the estimated time of one keyslot try (KDF plus digest), seconds: every
/// cost cryptsetup picks (`--iter-time` up to 60 s, Argon2 at up to 4 GiB) is under it, a header
/// asking for hours (PBKDF2 2^32-1 iterations, Argon2 time 2^24) is over it.
pub const DEFAULT_UNLOCK_TIME_LIMIT_SECS: u64 = 60;

/// The estimated time of one derivation with `params`, in milliseconds, at the fast-machine rates
/// [`PBKDF2_ITERATIONS_PER_SEC`] and [`ARGON2_KIB_PASSES_PER_SEC`] (a work measure, not a promise:
/// a slower machine takes longer). Computed from the header's numbers only, before anything runs.
pub fn estimated_ms(params: &KdfParams) -> u64 {
    match params {
        KdfParams::Pbkdf2 { iterations, .. } => pbkdf2_estimated_ms(*iterations),
        KdfParams::Argon2 {
            time, memory_kib, ..
        } => {
            (u64::from(*time) * u64::from(*memory_kib)).saturating_mul(1000)
                / ARGON2_KIB_PASSES_PER_SEC
        }
    }
}

/// [`estimated_ms`] of PBKDF2-HMAC-SHA256 with `iterations` (a keyslot's KDF or a digest).
pub fn pbkdf2_estimated_ms(iterations: u32) -> u64 {
    u64::from(iterations) * 1000 / PBKDF2_ITERATIONS_PER_SEC
}

/// Derives `out_len` bytes from `passphrase` with the KDF described by `params`.
///
/// - PBKDF2: PBKDF2-HMAC-`hash` (RFC 8018 §5.2), `iterations` >= 1, any salt length.
/// - Argon2: Argon2i/Argon2id version 0x13 (RFC 9106) with empty secret and associated data, as
///   LUKS2 uses it; lanes are computed on threads (the `argon2` crate's `parallel` feature).
///
/// The output is secret (a keyslot area key or similar) and returned zeroizing.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for out-of-range costs, `out_len` (0, or < 4 for Argon2) or a
/// salt shorter than 8 bytes (Argon2); [`CryptoError::OutOfMemory`] if Argon2 cannot allocate memory.
pub fn derive_key(
    params: &KdfParams,
    passphrase: &[u8],
    out_len: usize,
) -> Result<SecretBytes, CryptoError> {
    match params {
        KdfParams::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => pbkdf2_derive(*hash, *iterations, passphrase, salt, out_len),
        KdfParams::Argon2 {
            variant,
            time,
            memory_kib,
            parallel,
            salt,
        } => argon2_derive(
            *variant,
            *time,
            *memory_kib,
            *parallel,
            passphrase,
            salt,
            &[],
            &[],
            out_len,
        ),
    }
}

/// PBKDF2-HMAC (RFC 8018 §5.2) of `password` into `out` (its whole length).
pub(crate) fn pbkdf2_into(
    hash: HashAlg,
    iterations: u32,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if iterations == 0 {
        return Err(CryptoError::InvalidKdfParams(
            "PBKDF2 iterations must be >= 1".into(),
        ));
    }
    if out.is_empty() {
        return Err(CryptoError::InvalidKdfParams(
            "PBKDF2 output length must be >= 1 byte".into(),
        ));
    }
    match hash {
        HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
        HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
    }
    Ok(())
}

fn pbkdf2_derive(
    hash: HashAlg,
    iterations: u32,
    password: &[u8],
    salt: &[u8],
    out_len: usize,
) -> Result<SecretBytes, CryptoError> {
    let mut out = SecretBytes::new(vec![0u8; out_len]);
    pbkdf2_into(hash, iterations, password, salt, out.expose_mut())?;
    Ok(out)
}

/// Argon2 version 0x13 (RFC 9106 §3) with the full input set: `secret` (key K) and `ad`
/// (associated data X) may be empty; LUKS2 always uses both empty (see [`derive_key`]).
///
/// Units: `time` passes, `memory_kib` KiB (1 KiB blocks, >= 8 * `parallel`), `parallel` lanes;
/// `salt` >= 8 bytes; `ad` <= 32 bytes (limit of the `argon2` crate); `out_len` >= 4 bytes.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for parameters the `argon2` crate rejects;
/// [`CryptoError::OutOfMemory`] if the memory cannot be allocated.
#[allow(clippy::too_many_arguments)]
pub fn argon2_derive(
    variant: Argon2Variant,
    time: u32,
    memory_kib: u32,
    parallel: u32,
    passphrase: &[u8],
    salt: &[u8],
    secret: &[u8],
    ad: &[u8],
    out_len: usize,
) -> Result<SecretBytes, CryptoError> {
    let invalid = |e: argon2::Error| CryptoError::InvalidKdfParams(format!("Argon2: {e}"));
    let mut builder = argon2::ParamsBuilder::new();
    builder
        .m_cost(memory_kib)
        .t_cost(time)
        .p_cost(parallel)
        .output_len(out_len);
    if !ad.is_empty() {
        builder.data(argon2::AssociatedData::new(ad).map_err(invalid)?);
    }
    let params = builder.build().map_err(invalid)?;
    let algorithm = match variant {
        Argon2Variant::Argon2i => argon2::Algorithm::Argon2i,
        Argon2Variant::Argon2id => argon2::Algorithm::Argon2id,
    };
    let ctx = if secret.is_empty() {
        argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
    } else {
        argon2::Argon2::new_with_secret(secret, algorithm, argon2::Version::V0x13, params)
            .map_err(invalid)?
    };
    let mut out = SecretBytes::new(vec![0u8; out_len]);
    ctx.hash_password_into(passphrase, salt, out.expose_mut())
        .map_err(|e| match e {
            argon2::Error::OutOfMemory => CryptoError::OutOfMemory { memory_kib },
            other => invalid(other),
        })?;
    Ok(out)
}

/// Fixed benchmark inputs (cryptsetup also benchmarks with a dummy password and salt).
const BENCH_PASSWORD: &[u8] = b"nbdcrypt benchmark passphrase";
const BENCH_SALT: [u8; 32] = [0x5a; 32];

fn time_argon2(
    variant: Argon2Variant,
    time: u32,
    memory_kib: u32,
    parallel: u32,
) -> Result<Duration, CryptoError> {
    let start = Instant::now();
    argon2_derive(
        variant,
        time,
        memory_kib,
        parallel,
        BENCH_PASSWORD,
        &BENCH_SALT,
        &[],
        &[],
        32,
    )?;
    Ok(start.elapsed())
}

fn check_iter_time(iter_time_ms: u32) -> Result<Duration, CryptoError> {
    if iter_time_ms == 0 {
        return Err(CryptoError::InvalidKdfParams(
            "iteration time must be >= 1 ms".into(),
        ));
    }
    Ok(Duration::from_millis(u64::from(iter_time_ms)))
}

/// Next probe size: scale `cur` so the next run should take `probe_budget` (a third of the
/// target), at least doubling and at most x16, capped at `max`. Probing stops once a run takes
/// half the budget, so the benchmark costs about half the target time in total.
fn next_probe(cur: u64, elapsed: Duration, probe_budget: Duration, max: u64) -> u64 {
    let e = elapsed.as_nanos().max(1);
    let factor = (probe_budget.as_nanos() / e).clamp(2, 16) as u64;
    cur.saturating_mul(factor).min(max)
}

/// This machine's KDF speed, measured once (about 40 ms) the first time [`local_ms`] asks:
/// PBKDF2-HMAC-SHA256 per iteration and block, Argon2id per KiB and pass on one lane.
struct LocalRates {
    pbkdf2_ns_per_iteration: f64,
    argon2_ns_per_kib_pass: f64,
    cpus: u32,
}

fn local_rates() -> Option<&'static LocalRates> {
    static RATES: std::sync::OnceLock<Option<LocalRates>> = std::sync::OnceLock::new();
    RATES
        .get_or_init(|| {
            const ITERATIONS: u32 = 20_000;
            const MEMORY_KIB: u32 = 16 << 10;
            let mut out = Zeroizing::new([0u8; 32]);
            let start = Instant::now();
            pbkdf2_into(
                HashAlg::Sha256,
                ITERATIONS,
                BENCH_PASSWORD,
                &BENCH_SALT,
                &mut *out,
            )
            .ok()?;
            let pbkdf2 = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
            let argon2 = time_argon2(Argon2Variant::Argon2id, 1, MEMORY_KIB, 1).ok()?;
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            Some(LocalRates {
                pbkdf2_ns_per_iteration: pbkdf2.max(1e-3),
                argon2_ns_per_kib_pass: (argon2.as_nanos() as f64 / f64::from(MEMORY_KIB))
                    .max(1e-3),
                cpus,
            })
        })
        .as_ref()
}

/// How long one derivation of `out_len` bytes with `params` takes on this machine, in
/// milliseconds: from a measurement of this machine made once ([`LocalRates`]), scaled
/// linearly (PBKDF2 by iterations and output blocks; Argon2 by passes × KiB over the lanes
/// this machine runs at once). For telling a user how long to wait ("deriving key, about
/// 2 s"), not for a limit ([`estimated_ms`] is the limit's measure). `None` when the
/// measurement itself failed.
pub fn local_ms(params: &KdfParams, out_len: usize) -> Option<u64> {
    let r = local_rates()?;
    let ns = match params {
        KdfParams::Pbkdf2 {
            hash, iterations, ..
        } => {
            let blocks = out_len.div_ceil(hash.output_len()).max(1) as f64;
            f64::from(*iterations) * blocks * r.pbkdf2_ns_per_iteration
        }
        KdfParams::Argon2 {
            time,
            memory_kib,
            parallel,
            ..
        } => {
            let lanes = f64::from((*parallel).clamp(1, r.cpus.max(1)));
            f64::from(*time) * f64::from(*memory_kib) * r.argon2_ns_per_kib_pass / lanes
        }
    };
    Some((ns / 1e6).min(u64::MAX as f64) as u64)
}

/// Finds Argon2 costs so that one derivation takes about `iter_time_ms` milliseconds here.
///
/// Like cryptsetup (luks2-facts 1.3): `parallel` (1..=4 threads) is kept; memory starts at
/// `max_memory_kib` (KiB, 32..=4194304) with the time cost (passes) at least 4; if 4 passes at that
/// memory take longer than the target, memory is lowered (never below 32 KiB) until they fit,
/// otherwise the time cost is raised. Returns `(time, memory_kib)`.
///
/// Method: runs at time cost 4 with growing memory (at most up to `max_memory_kib`) until one
/// takes about a third of the target, then linear extrapolation in `time * memory`. The whole
/// benchmark costs about half the target time plus one small warm-up run. Timing is wall-clock
/// (a loaded machine yields lower costs) and the result is typically within ±30 % of the target.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for `iter_time_ms == 0` or out-of-range memory/parallel;
/// [`CryptoError::Kdf`] if memory cannot be allocated.
pub fn benchmark_argon2(
    variant: Argon2Variant,
    iter_time_ms: u32,
    max_memory_kib: u32,
    parallel: u32,
) -> Result<(u32, u32), CryptoError> {
    let target = check_iter_time(iter_time_ms)?;
    if !(1..=ARGON2_MAX_PARALLEL).contains(&parallel) {
        return Err(CryptoError::InvalidKdfParams(format!(
            "Argon2 parallel cost {parallel} outside 1..={ARGON2_MAX_PARALLEL}"
        )));
    }
    if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&max_memory_kib) {
        return Err(CryptoError::InvalidKdfParams(format!(
            "Argon2 memory {max_memory_kib} KiB outside \
             {ARGON2_MIN_MEMORY_KIB}..={ARGON2_MAX_MEMORY_KIB}"
        )));
    }
    let min_mem = ARGON2_MIN_MEMORY_KIB.max(8 * parallel);
    let max_mem = u64::from(max_memory_kib);
    let probe_budget = target / 3;

    // Warm-up (page faults, CPU feature detection), not measured.
    time_argon2(variant, 1, min_mem, parallel)?;

    // Probe at the minimum time cost, which is what the result will use unless memory is at its
    // maximum: the first pass also pays for faulting in fresh memory, so single-pass probes
    // would overestimate the cost of later passes.
    let mut mem = u64::from(min_mem.max(1024)).min(max_mem);
    let mut elapsed = time_argon2(variant, ARGON2_MIN_TIME, mem as u32, parallel)?;
    while elapsed < probe_budget / 2 && mem < max_mem {
        mem = next_probe(mem, elapsed, probe_budget, max_mem);
        elapsed = time_argon2(variant, ARGON2_MIN_TIME, mem as u32, parallel)?;
    }
    // Linear model: cost(t, m) = elapsed * (t / 4) * (m / mem).
    let ns_per_kib = (elapsed.as_nanos() as f64 / mem as f64).max(1e-3);
    let target_ns = target.as_nanos() as f64;
    let min_time = f64::from(ARGON2_MIN_TIME);

    let time_at_max = min_time * target_ns / (ns_per_kib * max_mem as f64);
    if time_at_max >= min_time {
        let time = time_at_max.floor().min(f64::from(u32::MAX)) as u32;
        Ok((time.max(ARGON2_MIN_TIME), max_memory_kib))
    } else {
        let mem_fit = (target_ns / ns_per_kib).floor() as u64;
        let mem_fit = mem_fit.clamp(u64::from(min_mem), max_mem) as u32;
        Ok((ARGON2_MIN_TIME, mem_fit))
    }
}

/// Finds a PBKDF2 iteration count so that deriving `out_len` bytes (the real output length
/// matters: each `hash.output_len()` block costs one full run of iterations) takes about
/// `iter_time_ms` milliseconds here. Result >= 1000 (cryptsetup's minimum).
///
/// Method: runs with growing iteration counts until one takes about a third of the target,
/// then linear extrapolation; the benchmark costs about half the target time.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for `iter_time_ms == 0` or `out_len == 0`.
pub fn benchmark_pbkdf2(
    hash: HashAlg,
    iter_time_ms: u32,
    out_len: usize,
) -> Result<u32, CryptoError> {
    let target = check_iter_time(iter_time_ms)?;
    if out_len == 0 {
        return Err(CryptoError::InvalidKdfParams(
            "PBKDF2 output length must be >= 1 byte".into(),
        ));
    }
    let probe_budget = target / 3;
    let mut out = Zeroizing::new(vec![0u8; out_len]);
    let mut run = |iterations: u32| -> Result<Duration, CryptoError> {
        let start = Instant::now();
        pbkdf2_into(hash, iterations, BENCH_PASSWORD, &BENCH_SALT, &mut out)?;
        Ok(start.elapsed())
    };
    let mut iterations: u64 = 1000;
    let mut elapsed = run(iterations as u32)?;
    while elapsed < probe_budget / 2 && iterations < u64::from(u32::MAX) {
        iterations = next_probe(iterations, elapsed, probe_budget, u64::from(u32::MAX));
        elapsed = run(iterations as u32)?;
    }
    let per_iter_ns = (elapsed.as_nanos() as f64 / iterations as f64).max(1e-3);
    let result = (target.as_nanos() as f64 / per_iter_ns).floor();
    Ok(result.clamp(f64::from(PBKDF2_MIN_ITERATIONS), f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_estimates_scale_with_the_work_and_the_lanes() {
        let pbkdf2 = |iterations| KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations,
            salt: vec![0; 32],
        };
        let argon2 = |time, parallel| KdfParams::Argon2 {
            variant: Argon2Variant::Argon2id,
            time,
            memory_kib: 1 << 20,
            parallel,
            salt: vec![0; 32],
        };
        let ms = |p: &KdfParams, len| local_ms(p, len).expect("measured");
        let one = ms(&pbkdf2(10_000_000), 32);
        assert!(one > 0);
        assert!(ms(&pbkdf2(20_000_000), 32).abs_diff(2 * one) <= 1);
        assert!(
            ms(&pbkdf2(10_000_000), 64).abs_diff(2 * one) <= 1,
            "two output blocks"
        );
        let a = ms(&argon2(4, 1), 64);
        assert!(a > 0 && ms(&argon2(8, 1), 64).abs_diff(2 * a) <= 1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            assert!(
                ms(&argon2(4, 2), 64).abs_diff(a / 2) <= 1,
                "two lanes at once"
            );
        }
    }

    #[test]
    fn estimated_cost_separates_real_from_hostile_headers() {
        let limit = DEFAULT_UNLOCK_TIME_LIMIT_SECS * 1000;
        let pbkdf2 = |iterations| KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations,
            salt: vec![0; 32],
        };
        let argon2 = |time, memory_kib| KdfParams::Argon2 {
            variant: Argon2Variant::Argon2id,
            time,
            memory_kib,
            parallel: 4,
            salt: vec![0; 32],
        };
        // What cryptsetup writes: --iter-time 60 s on a fast core; Argon2 at its 4 GiB maximum.
        assert!(estimated_ms(&pbkdf2(300_000_000)) < limit);
        assert!(estimated_ms(&argon2(4, 4 * 1024 * 1024)) < limit);
        assert!(estimated_ms(&argon2(12, 1024 * 1024)) < limit);
        // Hostile: hours to a year per try.
        assert!(estimated_ms(&pbkdf2(u32::MAX)) > 400_000);
        assert!(estimated_ms(&argon2(1 << 24, 32)) > limit);
        assert!(estimated_ms(&argon2(u32::MAX, 4 * 1024 * 1024)) > limit);
        assert_eq!(estimated_ms(&pbkdf2(1000)), 0);
    }

    #[test]
    fn pbkdf2_zero_iterations_rejected() {
        let p = KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: 0,
            salt: vec![0; 32],
        };
        assert!(matches!(
            derive_key(&p, b"x", 32),
            Err(CryptoError::InvalidKdfParams(_))
        ));
    }

    #[test]
    fn argon2_bad_params_rejected() {
        let short_salt = KdfParams::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 1,
            memory_kib: 64,
            parallel: 1,
            salt: vec![0; 4],
        };
        assert!(matches!(
            derive_key(&short_salt, b"x", 32),
            Err(CryptoError::InvalidKdfParams(_))
        ));
        let too_little_mem = KdfParams::Argon2 {
            variant: Argon2Variant::Argon2i,
            time: 1,
            memory_kib: 16,
            parallel: 4,
            salt: vec![0; 32],
        };
        assert!(matches!(
            derive_key(&too_little_mem, b"x", 32),
            Err(CryptoError::InvalidKdfParams(_))
        ));
    }

    #[test]
    fn benchmark_rejects_bad_inputs() {
        assert!(benchmark_argon2(Argon2Variant::Argon2id, 0, 1024, 1).is_err());
        assert!(benchmark_argon2(Argon2Variant::Argon2id, 10, 16, 1).is_err());
        assert!(benchmark_argon2(Argon2Variant::Argon2id, 10, 1024, 5).is_err());
        assert!(benchmark_pbkdf2(HashAlg::Sha256, 0, 32).is_err());
        assert!(benchmark_pbkdf2(HashAlg::Sha256, 10, 0).is_err());
    }
}
