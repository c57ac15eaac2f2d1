//! The `aes-xts-plain64` sector transform (IEEE 1619-2007 XTS-AES, cryptsetup IV semantics).

use std::fmt;

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use xts_mode::{get_tweak_default, Xts128};

use super::CryptoError;

/// Unit of the `plain64` IV: the tweak counts 512-byte sectors whatever the sector size
/// (cryptsetup LUKS2 behaviour, no `iv_large_sectors`).
pub const IV_SECTOR_SIZE: usize = 512;

// Boxed: keeps the enum small and the key schedules at one heap address (no stray copies when
// the cipher value is moved).
enum Inner {
    Aes128(Box<Xts128<Aes128>>),
    Aes256(Box<Xts128<Aes256>>),
}

/// XTS-AES (IEEE 1619-2007) with a 64-byte key (AES-256-XTS) or 32-byte key (AES-128-XTS).
///
/// The key is `key1 || key2` (data key first, tweak key second), as in IEEE 1619, cryptsetup
/// and the Linux kernel. Each sector is one XTS data unit; its tweak is the `plain64` IV: the
/// sector's position counted in 512-byte units, as a 64-bit little-endian number zero-padded
/// to 16 bytes.
///
/// `Send + Sync`; `Debug` shows only the key size. Note: the expanded AES round keys are wiped on
/// drop only if the `aes` crate's `zeroize` feature is enabled.
pub struct SectorCipher {
    inner: Inner,
}

impl fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.inner {
            Inner::Aes128(_) => 256,
            Inner::Aes256(_) => 512,
        };
        write!(
            f,
            "SectorCipher {{ aes-xts-plain64, key_bits: {bits}, .. }}"
        )
    }
}

/// Checks that `len` bytes can be processed as whole sectors of `sector_size` bytes.
///
/// Valid: `sector_size` a power of two in 512..=4096 and `len` a multiple of it.
///
/// # Errors
/// [`CryptoError::InvalidSectorLayout`] otherwise.
pub fn check_sector_layout(len: usize, sector_size: usize) -> Result<(), CryptoError> {
    if sector_size.is_power_of_two()
        && (IV_SECTOR_SIZE..=4096).contains(&sector_size)
        && len.is_multiple_of(sector_size)
    {
        Ok(())
    } else {
        Err(CryptoError::InvalidSectorLayout { len, sector_size })
    }
}

impl SectorCipher {
    /// Builds the cipher from `key1 || key2`: 64 bytes (AES-256-XTS) or 32 bytes (AES-128-XTS).
    ///
    /// # Errors
    /// [`CryptoError::UnsupportedKeySize`] for any other key length.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let inner = match key.len() {
            64 => {
                let (k1, k2) = key.split_at(32);
                let c1 = Aes256::new_from_slice(k1)
                    .map_err(|_| CryptoError::UnsupportedKeySize(key.len()))?;
                let c2 = Aes256::new_from_slice(k2)
                    .map_err(|_| CryptoError::UnsupportedKeySize(key.len()))?;
                Inner::Aes256(Box::new(Xts128::new(c1, c2)))
            }
            32 => {
                let (k1, k2) = key.split_at(16);
                let c1 = Aes128::new_from_slice(k1)
                    .map_err(|_| CryptoError::UnsupportedKeySize(key.len()))?;
                let c2 = Aes128::new_from_slice(k2)
                    .map_err(|_| CryptoError::UnsupportedKeySize(key.len()))?;
                Inner::Aes128(Box::new(Xts128::new(c1, c2)))
            }
            n => return Err(CryptoError::UnsupportedKeySize(n)),
        };
        Ok(Self { inner })
    }

    /// Key length in bytes (32 or 64).
    pub fn key_len(&self) -> usize {
        match self.inner {
            Inner::Aes128(_) => 32,
            Inner::Aes256(_) => 64,
        }
    }

    /// Encrypts `buf` in place as consecutive sectors of `sector_size` bytes.
    ///
    /// The k-th sector (k from 0) is one XTS data unit with tweak
    /// `first_iv + k * (sector_size / 512)` (128-bit little-endian, i.e. `plain64`). `first_iv` is
    /// therefore the position of `buf` relative to the segment start in 512-byte units, also for
    /// 4096-byte sectors (luks2-facts 9.5).
    ///
    /// # Panics
    /// If `sector_size` is not a power of two in 512..=4096 or `buf.len()` is not a multiple of
    /// it (a caller bug; use [`check_sector_layout`] to validate untrusted sizes first).
    pub fn encrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        self.apply(buf, sector_size, first_iv, true);
    }

    /// Decrypts `buf` in place; exact inverse of [`SectorCipher::encrypt`] with the same
    /// `sector_size` (bytes) and `first_iv` (512-byte units).
    ///
    /// # Panics
    /// As [`SectorCipher::encrypt`].
    pub fn decrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        self.apply(buf, sector_size, first_iv, false);
    }

    fn apply(&self, buf: &mut [u8], sector_size: usize, first_iv: u64, encrypt: bool) {
        if let Err(e) = check_sector_layout(buf.len(), sector_size) {
            panic!("SectorCipher: {e}");
        }
        let step = (sector_size / IV_SECTOR_SIZE) as u128;
        for (k, sector) in buf.chunks_exact_mut(sector_size).enumerate() {
            // u64 sector numbers plus a u32-bounded count never overflow u128.
            let tweak = get_tweak_default(first_iv as u128 + k as u128 * step);
            match (&self.inner, encrypt) {
                (Inner::Aes256(x), true) => x.encrypt_sector(sector, tweak),
                (Inner::Aes256(x), false) => x.decrypt_sector(sector, tweak),
                (Inner::Aes128(x), true) => x.encrypt_sector(sector, tweak),
                (Inner::Aes128(x), false) => x.decrypt_sector(sector, tweak),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_sync() {
        assert_send_sync::<SectorCipher>();
    }

    #[test]
    fn key_sizes() {
        assert!(SectorCipher::new(&[1; 64]).is_ok());
        assert!(SectorCipher::new(&[1; 32]).is_ok());
        assert!(matches!(
            SectorCipher::new(&[1; 48]),
            Err(CryptoError::UnsupportedKeySize(48))
        ));
    }

    #[test]
    fn layout_checks() {
        assert!(check_sector_layout(4096, 512).is_ok());
        assert!(check_sector_layout(8192, 4096).is_ok());
        assert!(check_sector_layout(0, 1024).is_ok());
        assert!(check_sector_layout(4096, 256).is_err());
        assert!(check_sector_layout(4096, 8192).is_err());
        assert!(check_sector_layout(1000, 512).is_err());
        assert!(check_sector_layout(3072, 3072).is_err());
    }

    #[test]
    fn debug_hides_key() {
        let c = SectorCipher::new(&[0xAB; 64]).unwrap();
        let s = format!("{c:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab"),
            "{s}"
        );
        assert!(s.contains("512"));
    }

    /// A 4096-byte sector at IV n equals nothing else than one data unit with tweak n, and the
    /// next 4096-byte sector uses tweak n + 8.
    #[test]
    fn large_sector_iv_steps_by_eight() {
        let c = SectorCipher::new(&[7; 64]).unwrap();
        let pt: Vec<u8> = (0..8192u32).map(|i| (i * 31) as u8).collect();
        let mut whole = pt.clone();
        c.encrypt(&mut whole, 4096, 16);
        let mut second = pt[4096..].to_vec();
        c.encrypt(&mut second, 4096, 24);
        assert_eq!(&whole[4096..], &second[..]);
        c.decrypt(&mut whole, 4096, 16);
        assert_eq!(whole, pt);
    }

    #[test]
    #[should_panic(expected = "invalid sector layout")]
    fn misaligned_panics() {
        let c = SectorCipher::new(&[7; 64]).unwrap();
        let mut b = vec![0u8; 700];
        c.encrypt(&mut b, 512, 0);
    }
}
