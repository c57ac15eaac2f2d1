//! Anti-forensic information splitter (LUKS1 spec §2.4, "AF-Splitter"; used unchanged by LUKS2
//! keyslots of type `luks2` with `af.type = "luks1"`), bit-compatible with cryptsetup's
//! `lib/luks1/af.c`.
//!
//! Split: stripes `s_1..s_(n-1)` random, `d_0 = 0`, `d_k = H1(d_(k-1) xor s_k)`,
//! `s_n = d_(n-1) xor D`. Merge recomputes `d_(n-1)` and returns `s_n xor d_(n-1)`.
//! `H1` (diffusion) hashes the buffer in hash-sized blocks: block `i` becomes
//! `hash(be32(i) || block_i)`, truncated to the block's length for a short last block.

use sha2::Digest;
use zeroize::{Zeroize, Zeroizing};

use super::secret::fill_random;
use super::{CryptoError, HashAlg, SecretBytes};

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

fn diffuse_with<D: Digest>(buf: &mut [u8]) {
    let ds = <D as Digest>::output_size();
    for (i, block) in buf.chunks_mut(ds).enumerate() {
        let mut h = D::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*block);
        let mut out = h.finalize();
        block.copy_from_slice(&out[..block.len()]);
        out.as_mut_slice().zeroize();
    }
}

/// H1 diffusion of `buf` in place (see module docs).
fn diffuse(buf: &mut [u8], hash: HashAlg) {
    match hash {
        HashAlg::Sha256 => diffuse_with::<sha2::Sha256>(buf),
        HashAlg::Sha512 => diffuse_with::<sha2::Sha512>(buf),
    }
}

fn material_len(key_len: usize, stripes: u32) -> Result<usize, CryptoError> {
    if key_len == 0 {
        return Err(CryptoError::InvalidAfParams("empty key".into()));
    }
    if stripes == 0 {
        return Err(CryptoError::InvalidAfParams("stripes must be >= 1".into()));
    }
    key_len
        .checked_mul(stripes as usize)
        .ok_or_else(|| CryptoError::InvalidAfParams("key_len * stripes overflows".into()))
}

/// Splits `key` into `key.len() * stripes` bytes of AF material (LUKS1 spec §2.4).
///
/// The first `stripes - 1` stripes come from the OS CSPRNG. cryptsetup only uses 4000 stripes
/// with LUKS1/LUKS2; any `stripes >= 1` is accepted here.
///
/// # Errors
/// [`CryptoError::InvalidAfParams`] for an empty key, zero stripes or size overflow;
/// [`CryptoError::Random`] if the OS generator fails.
pub fn af_split(key: &[u8], stripes: u32, hash: HashAlg) -> Result<SecretBytes, CryptoError> {
    af_split_with(key, stripes, hash, fill_random)
}

/// [`af_split`] with an explicit source for the random stripes (for known-answer tests).
pub(crate) fn af_split_with(
    key: &[u8],
    stripes: u32,
    hash: HashAlg,
    mut fill: impl FnMut(&mut [u8]) -> Result<(), CryptoError>,
) -> Result<SecretBytes, CryptoError> {
    let len = material_len(key.len(), stripes)?;
    let klen = key.len();
    let mut out = SecretBytes::new(vec![0u8; len]);
    let material = out.expose_mut();
    let (random, last) = material.split_at_mut(len - klen);
    fill(random)?;
    let mut d = Zeroizing::new(vec![0u8; klen]);
    for stripe in random.chunks_exact(klen) {
        xor_into(&mut d, stripe);
        diffuse(&mut d, hash);
    }
    last.copy_from_slice(&d);
    xor_into(last, key);
    Ok(out)
}

/// Recovers a `key_len`-byte key from AF material (LUKS1 spec §2.4, AF-merge).
///
/// Only the first `key_len * stripes` bytes of `material` are used (keyslot areas are padded to
/// whole sectors); a longer slice is fine.
///
/// # Errors
/// [`CryptoError::InvalidAfParams`] for `key_len == 0`, zero stripes, overflow, or `material`
/// shorter than `key_len * stripes` bytes.
pub fn af_merge(
    material: &[u8],
    key_len: usize,
    stripes: u32,
    hash: HashAlg,
) -> Result<SecretBytes, CryptoError> {
    let len = material_len(key_len, stripes)?;
    if material.len() < len {
        return Err(CryptoError::InvalidAfParams(format!(
            "AF material is {} bytes, need {len}",
            material.len()
        )));
    }
    let (random, last) = material[..len].split_at(len - key_len);
    let mut d = SecretBytes::new(vec![0u8; key_len]);
    for stripe in random.chunks_exact(key_len) {
        xor_into(d.expose_mut(), stripe);
        diffuse(d.expose_mut(), hash);
    }
    xor_into(d.expose_mut(), last);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_merge_round_trip_small() {
        for (klen, stripes, hash) in [
            (1usize, 1u32, HashAlg::Sha256),
            (20, 4, HashAlg::Sha256),
            (64, 7, HashAlg::Sha512),
            (33, 2, HashAlg::Sha256),
        ] {
            let key: Vec<u8> = (0..klen as u8).collect();
            let m = af_split(&key, stripes, hash).unwrap();
            assert_eq!(m.len(), klen * stripes as usize);
            assert_eq!(
                af_merge(m.expose(), klen, stripes, hash).unwrap().expose(),
                &key[..]
            );
        }
    }

    #[test]
    fn one_stripe_is_identity() {
        let m = af_split(b"abc", 1, HashAlg::Sha256).unwrap();
        assert_eq!(m.expose(), b"abc");
    }

    #[test]
    fn split_with_fixed_stripes_is_deterministic() {
        let key = [0x42u8; 32];
        let fixed = |b: &mut [u8]| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i * 13 + 5) as u8;
            }
            Ok(())
        };
        let a = af_split_with(&key, 4, HashAlg::Sha256, fixed).unwrap();
        let b = af_split_with(&key, 4, HashAlg::Sha256, fixed).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_eq!(
            af_merge(a.expose(), 32, 4, HashAlg::Sha256)
                .unwrap()
                .expose(),
            &key
        );
    }

    #[test]
    fn bad_params() {
        assert!(af_split(b"", 4, HashAlg::Sha256).is_err());
        assert!(af_split(b"k", 0, HashAlg::Sha256).is_err());
        assert!(af_merge(&[0; 10], 4, 3, HashAlg::Sha256).is_err());
    }
}
