//! The root key (`docs/keyservice-api.md` "Store"): the 32 random bytes of `root.key`, or
//! Argon2id of a passphrase with the store's salt; the check value that makes a wrong key fail
//! at start; and the CA key, sealed under it.

use std::fs;

use nbdcrypt_luks2::crypto::kdf::argon2_derive;
use nbdcrypt_luks2::crypto::Argon2Variant;
use zeroize::Zeroizing;

use super::conn::{Store, ROOT_KEY_FILE};
use super::error::{io, StoreError};
use crate::wrap::{self, KEY_LEN};

/// How the root key is obtained.
pub enum RootSource {
    /// `root.key` in the data directory (init creates it, mode 0600).
    KeyFile,
    /// Argon2id of this passphrase with the store's salt.
    Passphrase(Zeroizing<Vec<u8>>),
}

/// The unlocked root key (32 bytes, zeroised on drop).
pub struct RootKey(pub(super) Zeroizing<Vec<u8>>);

/// Argon2id cost of a passphrase root key: 64 MiB, 3 passes, 1 lane (stored in the store).
const ARGON2: (u32, u32, u32) = (3, 65536, 1);

/// Associated data of the check value sealed under the root key.
pub(super) fn root_check_aad() -> &'static [u8] {
    b"nbdcrypt-keyd/root-check"
}

/// Associated data of the CA key sealed under the root key.
pub(super) fn ca_key_aad() -> &'static [u8] {
    b"nbdcrypt-keyd/ca-key"
}

/// The root key derived from `passphrase` and `salt` (Argon2id, [`ARGON2`]).
///
/// Errors: [`StoreError::RootKey`].
pub(super) fn derive_root(passphrase: &[u8], salt: &[u8]) -> Result<RootKey, StoreError> {
    let (t, m, p) = ARGON2;
    let k = argon2_derive(
        Argon2Variant::Argon2id,
        t,
        m,
        p,
        passphrase,
        salt,
        &[],
        &[],
        KEY_LEN,
    )
    .map_err(|_| StoreError::RootKey("Argon2id failed"))?;
    Ok(RootKey(Zeroizing::new(k.expose().to_vec())))
}

impl Store {
    /// Whether the root key comes from a passphrase (`true`) or `root.key`.
    pub fn root_is_passphrase(&self) -> Result<bool, StoreError> {
        Ok(self.meta("root_kind")?.as_deref() == Some(b"argon2id"))
    }

    /// Unlocks the root key: reads `root.key`, or derives it from `passphrase`, and checks it.
    ///
    /// Errors: [`StoreError::RootKey`] (wrong passphrase or key file, or the one that is needed
    /// is missing), I/O.
    pub fn unlock(&self, passphrase: Option<&[u8]>) -> Result<RootKey, StoreError> {
        let key = if self.root_is_passphrase()? {
            let p = passphrase.ok_or(StoreError::RootKey(
                "this store's root key is a passphrase: give --root-passphrase-file",
            ))?;
            let salt = self
                .meta("root_salt")?
                .ok_or(StoreError::RootKey("salt missing"))?;
            derive_root(p, &salt)?
        } else {
            let path = self.dir.join(ROOT_KEY_FILE);
            let k = Zeroizing::new(fs::read(&path).map_err(io(&path))?);
            if k.len() != KEY_LEN {
                return Err(StoreError::RootKey("root.key is not 32 bytes"));
            }
            RootKey(k)
        };
        let check = self
            .meta("root_check")?
            .ok_or(StoreError::RootKey("check value missing"))?;
        wrap::open(&key.0, root_check_aad(), &check)
            .map_err(|_| StoreError::RootKey("wrong passphrase or key file"))?;
        Ok(key)
    }

    /// The CA private key (PEM), opened with the root key.
    ///
    /// Errors: [`StoreError::RootKey`] when missing or garbled, [`StoreError::Wrap`].
    pub(super) fn ca_key(&self, root: &RootKey) -> Result<Zeroizing<String>, StoreError> {
        let sealed = self
            .meta("ca_key")?
            .ok_or(StoreError::RootKey("CA key missing"))?;
        let pem = wrap::open(&root.0, ca_key_aad(), &sealed)?;
        Ok(Zeroizing::new(
            String::from_utf8(pem.to_vec()).map_err(|_| StoreError::RootKey("CA key garbled"))?,
        ))
    }
}
