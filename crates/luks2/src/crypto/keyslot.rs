//! LUKS2 `luks2` keyslot wrap/unwrap (LUKS2 spec §3.2; cryptsetup
//! `lib/luks2/luks2_keyslot_luks2.c`; luks2-facts 1.2 "Unlock algorithm").
//!
//! Layout of the keyslot binary area as cryptsetup 2.6 writes it:
//! 1. area key = KDF(passphrase, `kdf` params), `area.key_size` bytes;
//! 2. AF material = AF-split(volume key, `af.stripes`, `af.hash`), `key_size * stripes` bytes,
//!    placed in a zero-filled buffer of that size rounded up to 512 bytes (cryptsetup allocates
//!    `AF_split_sectors(key_size, stripes) * 512` bytes with `crypt_safe_alloc`, which zeroes);
//! 3. that buffer is encrypted with `aes-xts-plain64` under the area key, 512-byte sectors, IV =
//!    sector index counted from 0 at the start of the area (not from the area's disk offset).
//!
//! The JSON `area.size` is this length rounded up to 4096 bytes (e.g. 256000 → 258048 for a
//! 64-byte key); filling the rest of the area (cryptsetup: random data at format time) is the
//! caller's job.

use super::af::{af_merge, af_split};
use super::kdf::derive_key;
use super::xts::SectorCipher;
use super::{CryptoError, HashAlg, KdfParams, SecretBytes, VolumeKey};

/// The only keyslot area cipher supported here (LUKS2 `area.encryption`).
pub const KEYSLOT_AREA_CIPHER: &str = "aes-xts-plain64";

/// Sector size (bytes) of keyslot area encryption; also the AF material rounding unit.
pub const KEYSLOT_SECTOR_SIZE: usize = 512;

/// The parameters of one LUKS2 `luks2` keyslot (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyslotParams {
    /// Passphrase → area key derivation (JSON `kdf`).
    pub kdf: KdfParams,
    /// Area encryption key size in bytes (JSON `area.key_size`): 64 (AES-256-XTS) or 32.
    pub area_key_size: usize,
    /// Volume key size in bytes (JSON `key_size`), e.g. 64.
    pub key_size: usize,
    /// AF stripes (JSON `af.stripes`); cryptsetup only supports 4000.
    pub stripes: u32,
    /// AF hash (JSON `af.hash`).
    pub af_hash: HashAlg,
}

/// Length in bytes of the encrypted AF material: `key_size * stripes` rounded up to 512.
///
/// For `key_size` 64 and 4000 stripes: 256000 (already a multiple of 512). Saturates instead of
/// overflowing for absurd (hostile header) values, so callers get [`CryptoError::AreaTooShort`].
pub fn keyslot_material_len(key_size: usize, stripes: u32) -> usize {
    key_size
        .saturating_mul(stripes as usize)
        .div_ceil(KEYSLOT_SECTOR_SIZE)
        .saturating_mul(KEYSLOT_SECTOR_SIZE)
}

fn area_cipher(params: &KeyslotParams, passphrase: &[u8]) -> Result<SectorCipher, CryptoError> {
    if params.area_key_size != 32 && params.area_key_size != 64 {
        return Err(CryptoError::UnsupportedKeySize(params.area_key_size));
    }
    let area_key = derive_key(&params.kdf, passphrase, params.area_key_size)?;
    SectorCipher::new(area_key.expose())
}

/// Wraps `volume_key` for a keyslot: returns the encrypted AF material,
/// [`keyslot_material_len`]`(key_size, stripes)` bytes, to be written at the start of the
/// keyslot area. The KDF runs once (this takes the configured KDF time).
///
/// # Errors
/// [`CryptoError::KeyLengthMismatch`] if `volume_key.len() != params.key_size`;
/// [`CryptoError::UnsupportedKeySize`] for an area key size other than 32/64; KDF and AF errors.
pub fn wrap_key(
    params: &KeyslotParams,
    passphrase: &[u8],
    volume_key: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if volume_key.len() != params.key_size {
        return Err(CryptoError::KeyLengthMismatch {
            expected: params.key_size,
            actual: volume_key.len(),
        });
    }
    let material = af_split(volume_key, params.stripes, params.af_hash)?;
    let cipher = area_cipher(params, passphrase)?;
    let mut buf = vec![0u8; keyslot_material_len(params.key_size, params.stripes)];
    buf[..material.len()].copy_from_slice(material.expose());
    cipher.encrypt(&mut buf, KEYSLOT_SECTOR_SIZE, 0);
    Ok(buf)
}

/// Unwraps a keyslot: returns the candidate volume key (`params.key_size` bytes) from `area`,
/// the keyslot area starting at its first byte (it may be longer than the material, e.g. the
/// whole `area.size`). A wrong passphrase yields a wrong key, not an error: the caller must
/// check the candidate with the segment's digest ([`super::verify_digest`]).
///
/// # Errors
/// [`CryptoError::AreaTooShort`] if `area` is shorter than [`keyslot_material_len`];
/// [`CryptoError::UnsupportedKeySize`] for an area key size other than 32/64; KDF and AF errors.
pub fn unwrap_key(
    params: &KeyslotParams,
    passphrase: &[u8],
    area: &[u8],
) -> Result<VolumeKey, CryptoError> {
    let needed = keyslot_material_len(params.key_size, params.stripes);
    if params.key_size == 0 || params.stripes == 0 {
        return Err(CryptoError::InvalidAfParams(
            "key_size and stripes must be >= 1".into(),
        ));
    }
    if area.len() < needed {
        return Err(CryptoError::AreaTooShort {
            needed,
            actual: area.len(),
        });
    }
    let cipher = area_cipher(params, passphrase)?;
    let mut material = SecretBytes::new(area[..needed].to_vec());
    cipher.decrypt(material.expose_mut(), KEYSLOT_SECTOR_SIZE, 0);
    af_merge(
        material.expose(),
        params.key_size,
        params.stripes,
        params.af_hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_len_rounding() {
        assert_eq!(keyslot_material_len(64, 4000), 256000);
        assert_eq!(keyslot_material_len(32, 4000), 128000);
        assert_eq!(keyslot_material_len(20, 4), 512);
        assert_eq!(keyslot_material_len(33, 4000), 132096);
        assert!(keyslot_material_len(usize::MAX / 2, 4000) >= usize::MAX - 511);
    }

    #[test]
    fn padding_is_zero_before_encryption() {
        let params = KeyslotParams {
            kdf: KdfParams::Pbkdf2 {
                hash: HashAlg::Sha256,
                iterations: 1000,
                salt: vec![1; 32],
            },
            area_key_size: 64,
            key_size: 33,
            stripes: 5,
            af_hash: HashAlg::Sha256,
        };
        let vk = [9u8; 33];
        let area = wrap_key(&params, b"pw", &vk).unwrap();
        assert_eq!(area.len(), 512);
        let key = derive_key(&params.kdf, b"pw", 64).unwrap();
        let mut plain = area.clone();
        SectorCipher::new(key.expose())
            .unwrap()
            .decrypt(&mut plain, 512, 0);
        assert!(plain[33 * 5..].iter().all(|&b| b == 0));
    }
}
