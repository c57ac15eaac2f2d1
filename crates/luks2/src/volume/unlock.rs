//! Unlocking (`format-spec.md` §4): trying a passphrase on the keyslots bound to the data
//! segment, as `cryptsetup open` does, until one yields a key the segment digest accepts; and
//! checking a volume key given directly against that digest.

use std::fs::File;
use std::path::Path;

use crate::crypto::digest::verify_digest;
use crate::crypto::kdf::{
    estimated_ms, pbkdf2_estimated_ms, ARGON2_MAX_MEMORY_KIB, DEFAULT_UNLOCK_TIME_LIMIT_SECS,
};
use crate::crypto::keyslot::{keyslot_material_len, unwrap_key, KeyslotParams};
use crate::crypto::{Argon2Variant, CryptoError, HashAlg, KdfParams, VolumeKey};
use crate::format::{self, KdfProfile, KeyslotProfile, VOLUME_KEY_SIZE};

use super::error::VolumeError;
use super::header_io::LoadedHeader;
use super::host::meminfo_kib;
use super::store::read_step;

/// A volume key that passed the digest check, and the keyslot it came from.
pub struct UnlockedKey {
    /// The keyslot id that opened.
    pub keyslot: u32,
    /// The verified volume key (zeroized on drop).
    pub key: VolumeKey,
}

/// Map a keyslot's KDF from the format's view to the crypto layer's parameters.
pub(crate) fn kdf_params(kdf: &KdfProfile) -> KdfParams {
    match kdf {
        KdfProfile::Pbkdf2 { iterations, salt } => KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: *iterations,
            salt: salt.clone(),
        },
        KdfProfile::Argon2 {
            id,
            time,
            memory_kib,
            parallel,
            salt,
        } => KdfParams::Argon2 {
            variant: if *id {
                Argon2Variant::Argon2id
            } else {
                Argon2Variant::Argon2i
            },
            time: *time,
            memory_kib: *memory_kib,
            parallel: *parallel,
            salt: salt.clone(),
        },
    }
}

/// Map a keyslot's profile to the crypto layer's keyslot parameters.
pub(crate) fn keyslot_params(ks: &KeyslotProfile) -> KeyslotParams {
    KeyslotParams {
        kdf: kdf_params(&ks.kdf),
        area_key_size: ks.area_key_size,
        key_size: ks.key_size,
        stripes: ks.stripes,
        af_hash: HashAlg::Sha256,
    }
}

/// Try `passphrase` on the keyslots bound to the data segment's digest (preferred ones first,
/// priority-0 ones only when named by `only`), as `cryptsetup open` does (`format-spec.md` §4):
/// KDF → decrypt the area → AF merge → digest check in constant time.
///
/// Errors: [`VolumeError::WrongPassphrase`] when no slot opens;
/// [`VolumeError::NoUsableKeyslot`] when there is no candidate slot (none bound to the data
/// segment, all `priority` 0, or `only` names an inactive slot); [`VolumeError::Unsupported`]
/// when every candidate slot is outside the profile (the reason names the field);
/// [`VolumeError::OutOfMemory`] when the only candidate slots need more Argon2 memory than
/// `memory_limit_kib` (default: half of RAM; such slots are skipped before anything is
/// allocated) or the allocation fails;
/// [`VolumeError::Io`] when a keyslot area cannot be read.
pub fn unlock(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    passphrase: &[u8],
    only: Option<u32>,
    memory_limit_kib: Option<u64>,
) -> Result<UnlockedKey, VolumeError> {
    unlock_limited(
        file,
        path,
        lh,
        passphrase,
        only,
        memory_limit_kib,
        DEFAULT_UNLOCK_TIME_LIMIT_SECS,
    )
}

/// The keyslots an unlock tries, in order: those of `bound` (the segment digest's) that exist,
/// preferred ones first, priority-0 ones only when named by `only` (and only `only` when
/// given); each once.
fn candidate_keyslots(lh: &LoadedHeader, bound: &[u32], only: Option<u32>) -> Vec<u32> {
    let mut candidates: Vec<(i64, u32)> = Vec::new();
    for id in bound {
        if only.is_some_and(|o| o != *id) {
            continue;
        }
        let prio = lh
            .metadata
            .keyslots
            .get(&format::metadata::Id(*id))
            .map(|k| k.priority.unwrap_or(1))
            .unwrap_or(-1);
        if prio < 0 || (prio == 0 && only.is_none()) {
            continue;
        }
        candidates.push((-prio, *id));
    }
    candidates.sort();
    // A slot listed twice is tried once (the format layer refuses such digests anyway).
    candidates.dedup();
    candidates.into_iter().map(|(_, id)| id).collect()
}

/// How long one try of a keyslot takes on this machine (its KDF and the digest check), in
/// milliseconds: the most of the keyslots [`unlock`] would try with `only`, from
/// [`crate::crypto::kdf::local_ms`]. For "deriving key, about N s" after a prompt; `None`
/// when there is nothing to estimate.
pub fn unlock_time_ms(lh: &LoadedHeader, only: Option<u32>) -> Option<u64> {
    let digest = format::segment_digest(&lh.metadata).ok()?;
    let digest_ms = crate::crypto::kdf::local_ms(
        &KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: digest.iterations,
            salt: Vec::new(),
        },
        HashAlg::Sha256.output_len(),
    )?;
    candidate_keyslots(lh, &digest.keyslots, only)
        .into_iter()
        .filter_map(|id| format::keyslot_profile(&lh.metadata, id).ok())
        .filter_map(|ks| {
            let p = keyslot_params(&ks);
            crate::crypto::kdf::local_ms(&p.kdf, p.area_key_size)
        })
        .max()
        .map(|ms| ms.saturating_add(digest_ms))
}

/// [`unlock`] with a bound on the estimated time of one try ([`estimated_ms`] of the keyslot's
/// KDF plus the digest's PBKDF2), `time_limit_secs`: slots above it are skipped before their
/// KDF runs, and a digest above it alone is refused at once.
///
/// Errors: as [`unlock`]; [`VolumeError::TooSlow`] naming the digest, or the first slot
/// skipped when no candidate slot was tried.
pub fn unlock_limited(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    passphrase: &[u8],
    only: Option<u32>,
    memory_limit_kib: Option<u64>,
    time_limit_secs: u64,
) -> Result<UnlockedKey, VolumeError> {
    let limit = memory_limit_kib.or_else(|| meminfo_kib("MemTotal").map(|t| t / 2));
    let digest =
        format::segment_digest(&lh.metadata).map_err(|e| VolumeError::from_format(path, e))?;
    let limit_ms = time_limit_secs.saturating_mul(1000);
    let digest_ms = pbkdf2_estimated_ms(digest.iterations);
    if digest_ms > limit_ms {
        return Err(VolumeError::TooSlow {
            what: format!("digest {}", digest.id),
            est_secs: digest_ms / 1000,
            limit_secs: time_limit_secs,
        });
    }
    let candidates = candidate_keyslots(lh, &digest.keyslots, only);
    if candidates.is_empty() {
        return Err(VolumeError::NoUsableKeyslot {
            path: path.to_owned(),
            keyslot: only,
        });
    }
    let mut unsupported: Option<String> = None;
    let mut over_limit: Option<VolumeError> = None;
    let mut tried = 0;
    for id in candidates {
        let ks = match format::keyslot_profile(&lh.metadata, id) {
            Ok(ks) => ks,
            Err(e) => {
                unsupported.get_or_insert(e.to_string());
                continue;
            }
        };
        if let KdfProfile::Argon2 { memory_kib, .. } = ks.kdf {
            // Refused before anything is allocated; the next slot is tried.
            if memory_kib > ARGON2_MAX_MEMORY_KIB {
                unsupported.get_or_insert(format!(
                    "keyslot {id} argon2 memory {memory_kib} KiB is above the maximum of {ARGON2_MAX_MEMORY_KIB} KiB"
                ));
                continue;
            }
            if let Some(limit) = limit.filter(|l| u64::from(memory_kib) > *l) {
                over_limit.get_or_insert(VolumeError::OutOfMemory {
                    keyslot: id,
                    need_kib: memory_kib.into(),
                    avail_kib: limit,
                });
                continue;
            }
        }
        let params = keyslot_params(&ks);
        let ms = estimated_ms(&params.kdf).saturating_add(digest_ms);
        if ms > limit_ms {
            // Refused before the KDF runs; the next slot is tried.
            over_limit.get_or_insert(VolumeError::TooSlow {
                what: format!("keyslot {id}"),
                est_secs: ms / 1000,
                limit_secs: time_limit_secs,
            });
            continue;
        }
        let len = keyslot_material_len(ks.key_size, ks.stripes);
        let mut area = vec![0u8; len];
        read_step(file, path, &mut area, ks.area_offset, "read keyslot area")?;
        tried += 1;
        let candidate = unwrap_key(&params, passphrase, &area).map_err(|e| match e {
            CryptoError::OutOfMemory { memory_kib } => VolumeError::OutOfMemory {
                keyslot: id,
                need_kib: memory_kib.into(),
                avail_kib: meminfo_kib("MemAvailable").unwrap_or(0),
            },
            e => VolumeError::Corrupt {
                path: path.to_owned(),
                reason: format!("keyslot {id}: {e}"),
            },
        })?;
        if verify_digest(
            HashAlg::Sha256,
            digest.iterations,
            &digest.salt,
            candidate.expose(),
            &digest.digest,
        )? {
            return Ok(UnlockedKey {
                keyslot: id,
                key: candidate,
            });
        }
    }
    match (over_limit, unsupported) {
        (Some(e), _) if tried == 0 => Err(e),
        (_, Some(reason)) if tried == 0 => Err(VolumeError::Unsupported {
            path: path.to_owned(),
            reason,
        }),
        _ => Err(VolumeError::WrongPassphrase),
    }
}

/// Check that `vk` is this volume's key (the segment digest, constant time), e.g. a key given
/// with `--volume-key-file`. Errors: [`VolumeError::InvalidArgument`] when it is not.
pub fn verify_volume_key(path: &Path, lh: &LoadedHeader, vk: &[u8]) -> Result<(), VolumeError> {
    verify_volume_key_limited(path, lh, vk, DEFAULT_UNLOCK_TIME_LIMIT_SECS)
}

/// [`verify_volume_key`] with a bound on the digest's estimated time, `time_limit_secs`.
/// Errors: as [`verify_volume_key`]; [`VolumeError::TooSlow`] naming the digest.
pub fn verify_volume_key_limited(
    path: &Path,
    lh: &LoadedHeader,
    vk: &[u8],
    time_limit_secs: u64,
) -> Result<(), VolumeError> {
    let d = format::segment_digest(&lh.metadata).map_err(|e| VolumeError::from_format(path, e))?;
    let ms = pbkdf2_estimated_ms(d.iterations);
    if ms > time_limit_secs.saturating_mul(1000) {
        return Err(VolumeError::TooSlow {
            what: format!("digest {}", d.id),
            est_secs: ms / 1000,
            limit_secs: time_limit_secs,
        });
    }
    if vk.len() != VOLUME_KEY_SIZE
        || !verify_digest(HashAlg::Sha256, d.iterations, &d.salt, vk, &d.digest)?
    {
        return Err(VolumeError::InvalidArgument(
            "the volume key does not match this volume's digest".into(),
        ));
    }
    Ok(())
}
