//! AES-256-GCM sealing used by the key service (`docs/keyservice-api.md` "Wrapped blobs"):
//! keyslot secrets under a KEK version, and KEK material under the root key.
//!
//! A sealed value is `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`; the nonce is random (at
//! most a few million seals per key, far below the 2^32 bound for random 96-bit nonces).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

/// Length of a key: 32 bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes a sealed value adds to its plaintext: nonce (12) and tag (16).
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Sealing or opening failed. Opening fails for a wrong key, wrong associated data or any
/// changed byte, without saying which (GCM cannot tell).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrapError {
    /// The blob does not authenticate under this key and associated data.
    #[error("the sealed value does not authenticate under this key and binding")]
    Open,
    /// The key is not 32 bytes, or the system RNG failed.
    #[error("AES-256-GCM setup failed (bad key length or no randomness)")]
    Setup,
}

/// Associated data binding a wrapped keyslot secret to its place: volume UUID (text as in the
/// LUKS2 header), keyslot number, KEK name and KEK version. Any other place gives
/// [`WrapError::Open`].
pub fn keyslot_aad(volume: &str, slot: u32, kek: &str, version: u32) -> Vec<u8> {
    let mut aad = b"nbdcrypt-keyservice/v1\0".to_vec();
    aad.extend_from_slice(volume.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&slot.to_be_bytes());
    aad.extend_from_slice(kek.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Associated data of KEK material sealed under the root key.
pub fn kek_at_rest_aad(kek: &str, version: u32) -> Vec<u8> {
    let mut aad = b"nbdcrypt-keyd/kek-at-rest\0".to_vec();
    aad.extend_from_slice(kek.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn key(k: &[u8]) -> Result<LessSafeKey, WrapError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, k).map_err(|_| WrapError::Setup)?,
    ))
}

/// Seals `plain` under the 32-byte `k` with associated data `aad`: `nonce ‖ ct ‖ tag`.
///
/// Errors: [`WrapError::Setup`].
pub fn seal(k: &[u8], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, WrapError> {
    let key = key(k)?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| WrapError::Setup)?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| WrapError::Setup)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens a value made by [`seal`] with the same key and associated data.
///
/// Errors: [`WrapError::Open`] (wrong key, binding, or a changed byte), [`WrapError::Setup`].
pub fn open(k: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
    if sealed.len() < OVERHEAD {
        return Err(WrapError::Open);
    }
    let key = key(k)?;
    let nonce =
        Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| WrapError::Open)?;
    let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| WrapError::Open)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_is_checked() {
        let k = [7u8; 32];
        let aad = keyslot_aad("uuid-a", 1, "kek", 2);
        let blob = seal(&k, &aad, b"secret").unwrap();
        assert_eq!(&open(&k, &aad, &blob).unwrap()[..], b"secret");
        for other in [
            keyslot_aad("uuid-b", 1, "kek", 2),
            keyslot_aad("uuid-a", 2, "kek", 2),
            keyslot_aad("uuid-a", 1, "kek2", 2),
            keyslot_aad("uuid-a", 1, "kek", 3),
        ] {
            assert_eq!(open(&k, &other, &blob), Err(WrapError::Open));
        }
        assert_eq!(open(&[8u8; 32], &aad, &blob), Err(WrapError::Open));
    }
}
