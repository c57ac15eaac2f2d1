//! A new keyslot (`format-spec.md` §5, §7.1): the KDF and its cost chosen from cryptsetup's
//! options ([`KdfChoice`], benchmarked unless forced), the keyslot's JSON, a free place for
//! its area in the keyslots area, and its wrapped key material written, synced and proved to
//! unlock from the disk. Used when a volume is created and when a keyslot is added or changed.

use std::fs::File;
use std::path::Path;

use serde_json::Map;

use crate::crypto::kdf::{
    benchmark_argon2, benchmark_pbkdf2, ARGON2_MAX_MEMORY_KIB, ARGON2_MAX_PARALLEL,
    ARGON2_MIN_MEMORY_KIB, ARGON2_MIN_TIME, PBKDF2_MIN_ITERATIONS,
};
use crate::crypto::keyslot::{unwrap_key, wrap_key, KeyslotParams};
use crate::crypto::secret::random_bytes;
use crate::crypto::{Argon2Variant, HashAlg, KdfParams, VolumeKey};
use crate::format::metadata::{Af, Area, Kdf, Keyslot};
use crate::format::{af_material_len, AF_STRIPES, CIPHER, VOLUME_KEY_SIZE};

use super::error::VolumeError;
use super::header_io::LoadedHeader;
use super::host::meminfo_kib;
use super::store::{read_step, sync_step, write_step};

/// Which password-based KDF a new keyslot uses (`--pbkdf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfKind {
    /// PBKDF2-HMAC-SHA256 (RFC 8018).
    Pbkdf2,
    /// Argon2i (RFC 9106).
    Argon2i,
    /// Argon2id (RFC 9106), the default.
    Argon2id,
}

/// KDF cost for a new keyslot, with cryptsetup's names and units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfChoice {
    /// The KDF.
    pub kind: KdfKind,
    /// `--iter-time`: target unlock time in milliseconds for the benchmark (default 2000).
    pub iter_time_ms: u32,
    /// `--pbkdf-memory`: Argon2 memory in KiB (default 1 GiB, capped at half of RAM).
    pub memory_kib: u32,
    /// `--pbkdf-parallel`: Argon2 lanes (default 4, at most the number of CPUs).
    pub parallel: u32,
    /// `--pbkdf-force-iterations`: PBKDF2 iterations or Argon2 time cost; skips the benchmark.
    pub force_iterations: Option<u32>,
}

impl Default for KdfChoice {
    fn default() -> Self {
        KdfChoice {
            kind: KdfKind::Argon2id,
            iter_time_ms: 2000,
            memory_kib: 1 << 20,
            parallel: 4,
            force_iterations: None,
        }
    }
}

/// Bytes of the random salt of a new keyslot's KDF and of the volume key digest.
pub(crate) const SALT_LEN: usize = 32;

/// Turn a [`KdfChoice`] into concrete KDF parameters for a new keyslot, benchmarking unless
/// `force_iterations` is set (`format-spec.md` §5). Argon2 memory is capped at half of RAM.
pub(crate) fn choose_kdf(choice: &KdfChoice) -> Result<KdfParams, VolumeError> {
    let salt = random_bytes(SALT_LEN)?;
    match choice.kind {
        KdfKind::Pbkdf2 => {
            let iterations = match choice.force_iterations {
                Some(n) => n,
                None => benchmark_pbkdf2(HashAlg::Sha256, choice.iter_time_ms, 64)?,
            };
            if iterations < PBKDF2_MIN_ITERATIONS {
                return Err(VolumeError::InvalidArgument(format!(
                    "--pbkdf-force-iterations {iterations} is below the PBKDF2 minimum of {PBKDF2_MIN_ITERATIONS}"
                )));
            }
            Ok(KdfParams::Pbkdf2 {
                hash: HashAlg::Sha256,
                iterations,
                salt,
            })
        }
        KdfKind::Argon2i | KdfKind::Argon2id => {
            let variant = if choice.kind == KdfKind::Argon2id {
                Argon2Variant::Argon2id
            } else {
                Argon2Variant::Argon2i
            };
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let parallel = choice.parallel.clamp(1, cpus.max(1));
            if choice.parallel == 0 || choice.parallel > ARGON2_MAX_PARALLEL {
                return Err(VolumeError::InvalidArgument(format!(
                    "--pbkdf-parallel {} is outside 1..{ARGON2_MAX_PARALLEL}",
                    choice.parallel
                )));
            }
            let half_ram = meminfo_kib("MemTotal").map_or(u64::MAX, |t| t / 2);
            let memory = (choice.memory_kib as u64).min(half_ram) as u32;
            if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&memory) {
                return Err(VolumeError::InvalidArgument(format!(
                    "--pbkdf-memory {memory} KiB is outside {ARGON2_MIN_MEMORY_KIB}..{ARGON2_MAX_MEMORY_KIB}"
                )));
            }
            let (time, memory_kib) = match choice.force_iterations {
                Some(t) if t < ARGON2_MIN_TIME => {
                    return Err(VolumeError::InvalidArgument(format!(
                        "--pbkdf-force-iterations {t} is below the Argon2 minimum of {ARGON2_MIN_TIME}"
                    )))
                }
                Some(t) => (t, memory),
                None => benchmark_argon2(variant, choice.iter_time_ms, memory, parallel)?,
            };
            Ok(KdfParams::Argon2 {
                variant,
                time,
                memory_kib,
                parallel,
                salt,
            })
        }
    }
}

/// The keyslot JSON for freshly wrapped key material.
pub(crate) fn keyslot_json(params: &KdfParams, area_offset: u64, area_size: u64) -> Keyslot {
    let kdf = match params {
        KdfParams::Pbkdf2 {
            iterations, salt, ..
        } => Kdf {
            kind: "pbkdf2".into(),
            hash: Some("sha256".into()),
            iterations: Some(*iterations),
            time: None,
            memory: None,
            cpus: None,
            salt: salt.clone(),
            extra: Map::new(),
        },
        KdfParams::Argon2 {
            variant,
            time,
            memory_kib,
            parallel,
            salt,
        } => Kdf {
            kind: match variant {
                Argon2Variant::Argon2i => "argon2i",
                Argon2Variant::Argon2id => "argon2id",
            }
            .into(),
            hash: None,
            iterations: None,
            time: Some(*time),
            memory: Some(*memory_kib),
            cpus: Some(*parallel),
            salt: salt.clone(),
            extra: Map::new(),
        },
    };
    Keyslot {
        kind: "luks2".into(),
        key_size: VOLUME_KEY_SIZE as u32,
        af: Some(Af {
            kind: "luks1".into(),
            stripes: AF_STRIPES,
            hash: "sha256".into(),
            extra: Map::new(),
        }),
        area: Area {
            kind: "raw".into(),
            offset: area_offset,
            size: area_size,
            encryption: Some(CIPHER.into()),
            key_size: Some(VOLUME_KEY_SIZE as u32),
            extra: Map::new(),
        },
        kdf: Some(kdf),
        priority: None,
        extra: Map::new(),
    }
}

/// Parameters (KDF chosen or benchmarked) and place of a new 512-bit `luks2` keyslot area:
/// `(params, offset, size)`, size rounded up to 4096 bytes. Errors: bad KDF costs; no room
/// left in the keyslots area.
pub(crate) fn new_area(
    lh: &LoadedHeader,
    kdf: &KdfChoice,
) -> Result<(KeyslotParams, u64, u64), VolumeError> {
    let params = KeyslotParams {
        kdf: choose_kdf(kdf)?,
        area_key_size: VOLUME_KEY_SIZE,
        key_size: VOLUME_KEY_SIZE,
        stripes: AF_STRIPES,
        af_hash: HashAlg::Sha256,
    };
    let size = af_material_len(VOLUME_KEY_SIZE as u64, AF_STRIPES as u64).div_ceil(4096) * 4096;
    let at = free_area(lh, size).ok_or_else(|| {
        VolumeError::InvalidArgument("no room left in the keyslots area for a new keyslot".into())
    })?;
    Ok((params, at, size))
}

/// A 4096-aligned free byte range of `size` bytes in the keyslots area, first fit.
pub(crate) fn free_area(lh: &LoadedHeader, size: u64) -> Option<u64> {
    let start = 2 * lh.header.hdr_size;
    let end = start + lh.metadata.config.keyslots_size;
    let mut used: Vec<(u64, u64)> = lh
        .metadata
        .keyslots
        .values()
        .map(|k| (k.area.offset, k.area.offset + k.area.size))
        .collect();
    used.sort();
    let mut at = start;
    for (a, b) in used {
        if at + size <= a {
            return Some(at);
        }
        at = at.max(b.div_ceil(4096) * 4096);
    }
    (at + size <= end).then_some(at)
}

/// Wrap `vk`, write the area at `at`, sync, and prove it unlocks with `pass` from the disk:
/// one write and one sync step. Errors: [`VolumeError::Io`] (also when the area read back does
/// not unlock), [`VolumeError::Crypto`].
pub(crate) fn write_area(
    file: &File,
    path: &Path,
    params: &KeyslotParams,
    pass: &[u8],
    vk: &VolumeKey,
    at: u64,
) -> Result<(), VolumeError> {
    let material = wrap_key(params, pass, vk.expose())?;
    write_step(file, path, &material, at, "keyslot area")?;
    sync_step(file, path, "sync keyslot area")?;
    let mut back = vec![0u8; material.len()];
    read_step(file, path, &mut back, at, "read back keyslot area")?;
    let again = unwrap_key(params, pass, &back)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(again.expose(), vk.expose())) {
        return Err(VolumeError::Io {
            op: "verify keyslot area",
            path: path.to_owned(),
            offset: at,
            source: std::io::Error::other("the keyslot area read back does not unlock"),
        });
    }
    Ok(())
}
