//! LUKS2 `pbkdf2` digest (LUKS2 spec §3.3): the stored check value of a volume key is
//! PBKDF2-HMAC-`hash`(password = volume key, `salt`, `iterations`) (RFC 8018 §5.2), whose length
//! is the JSON `digest` length (32 bytes for sha256 as cryptsetup writes it).

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::kdf::pbkdf2_into;
use super::{CryptoError, HashAlg};

/// Computes a LUKS2 `pbkdf2` digest of `volume_key`: `out_len` bytes (32 for sha256).
///
/// The digest is not secret (it is stored in the header). `iterations` >= 1.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for `iterations == 0` or `out_len == 0`.
pub fn compute_digest(
    hash: HashAlg,
    iterations: u32,
    salt: &[u8],
    volume_key: &[u8],
    out_len: usize,
) -> Result<Vec<u8>, CryptoError> {
    let mut out = vec![0u8; out_len];
    pbkdf2_into(hash, iterations, volume_key, salt, &mut out)?;
    Ok(out)
}

/// Checks a candidate `volume_key` against a stored digest `expected` (any length >= 1, the
/// digest is recomputed at that length); the comparison is constant time (`subtle`).
///
/// Returns `Ok(false)` for a wrong key.
///
/// # Errors
/// [`CryptoError::InvalidKdfParams`] for `iterations == 0` or an empty `expected` (which would
/// otherwise match every key).
pub fn verify_digest(
    hash: HashAlg,
    iterations: u32,
    salt: &[u8],
    volume_key: &[u8],
    expected: &[u8],
) -> Result<bool, CryptoError> {
    if expected.is_empty() {
        return Err(CryptoError::InvalidKdfParams(
            "empty digest would match any key".into(),
        ));
    }
    let actual = Zeroizing::new(compute_digest(
        hash,
        iterations,
        salt,
        volume_key,
        expected.len(),
    )?);
    Ok(bool::from(actual.as_slice().ct_eq(expected)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_expected_is_error() {
        assert!(verify_digest(HashAlg::Sha256, 1000, b"salt", b"key", &[]).is_err());
    }

    #[test]
    fn verify_round_trip() {
        let d = compute_digest(HashAlg::Sha256, 1000, b"salt", b"key", 32).unwrap();
        assert!(verify_digest(HashAlg::Sha256, 1000, b"salt", b"key", &d).unwrap());
        assert!(!verify_digest(HashAlg::Sha256, 1000, b"salt", b"kez", &d).unwrap());
        assert!(!verify_digest(HashAlg::Sha256, 1001, b"salt", b"key", &d).unwrap());
    }
}
