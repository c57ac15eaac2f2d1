//! The files `nbdcrypt-keyd` reads and writes itself: the root passphrase file and the
//! certificates and keys it hands out (created new, never overwritten, keys 0600).

use std::path::Path;

use zeroize::Zeroizing;

use super::error::KeydError;

/// The root passphrase: the first line of `path`, without its newline.
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeydError> {
    let raw = Zeroizing::new(std::fs::read(path).map_err(|source| KeydError::Io {
        path: path.into(),
        source,
    })?);
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(Zeroizing::new(line.to_vec()))
}

/// Creates `path` (it must not exist, not even as a symlink) with permissions `mode`, writes
/// `bytes` and syncs ([`nbdcrypt_luks2::fsutil::write_new`]).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeydError> {
    nbdcrypt_luks2::fsutil::write_new(path, bytes, mode).map_err(|source| KeydError::Io {
        path: path.into(),
        source,
    })
}
