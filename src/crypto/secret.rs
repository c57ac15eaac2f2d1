//! Zeroizing containers for secrets (passphrases, volume keys, derived keys, AF material).

use std::fmt;

use zeroize::Zeroizing;

use super::CryptoError;

/// A heap buffer of secret bytes, wiped (zeroized) when dropped.
///
/// `Debug` prints only the length: `SecretBytes([REDACTED; 64 bytes])`. Cloning makes a second
/// independently zeroized copy. There is deliberately no `PartialEq`: compare secrets with
/// `subtle` in constant time.
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

/// A user passphrase (arbitrary bytes, no encoding assumed, no trailing newline).
pub type Passphrase = SecretBytes;

/// A LUKS2 volume key (the segment encryption key; 64 bytes for aes-xts-plain64 with AES-256).
pub type VolumeKey = SecretBytes;

impl SecretBytes {
    /// Takes ownership of `v`; the bytes are wiped when the result is dropped.
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    /// `len` bytes from the operating system CSPRNG (`getrandom`).
    ///
    /// # Errors
    /// [`CryptoError::Random`] if the OS generator fails.
    pub fn random(len: usize) -> Result<Self, CryptoError> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        fill_random(&mut v)?;
        Ok(Self(v))
    }

    /// Borrows the secret bytes. Keep the borrow short; do not copy into non-zeroizing buffers.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access for in-place construction (e.g. a KDF writing its output).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

/// `len` random bytes from the OS CSPRNG (`getrandom`), for non-secret values such as salts.
///
/// # Errors
/// [`CryptoError::Random`] if the OS generator fails.
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    fill_random(&mut v)?;
    Ok(v)
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(vec![0x41; 64]);
        assert_eq!(format!("{s:?}"), "SecretBytes([REDACTED; 64 bytes])");
    }

    #[test]
    fn random_has_len_and_differs() {
        let a = SecretBytes::random(32).unwrap();
        let b = SecretBytes::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(!a.is_empty());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(random_bytes(16).unwrap().len(), 16);
    }
}
