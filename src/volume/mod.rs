//! The image file: the only code that touches it. Header reading (both copies, strict checks),
//! `format`, unlocking a keyslot, and the plaintext view of the data segment in bytes.
//!
//! Byte offsets here are always bytes; "sector" means the segment's encryption sector
//! (512 or 4096 bytes) unless it says 512-byte sector.

mod data;
mod error;
mod format;
mod header_io;
mod unlock;

pub use data::Volume;
pub use error::VolumeError;
pub use format::{format, FormatOptions, KdfChoice, KdfKind};
pub use header_io::{load_header, LoadedHeader};
pub use unlock::{unlock, UnlockedKey};

use std::fs::File;
use std::path::Path;

/// How an image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only, no lock: `dump`, `test-passphrase`.
    Inspect,
    /// Read only, shared lock: serving with `--read-only`.
    ReadShared,
    /// Read-write, exclusive lock: serving, formatting.
    WriteExclusive,
}

/// Open an existing image file. Errors: [`VolumeError::Device`] when it is missing or
/// unreadable, [`VolumeError::Busy`] when another process holds a conflicting lock
/// (`flock(2)`, as cryptsetup on image files).
pub fn open_image(path: &Path, access: Access) -> Result<File, VolumeError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(access == Access::WriteExclusive)
        .open(path)
        .map_err(|e| VolumeError::Device {
            path: path.to_owned(),
            source: e,
        })?;
    if !file
        .metadata()
        .map_err(|e| VolumeError::Device {
            path: path.to_owned(),
            source: e,
        })?
        .is_file()
    {
        return Err(VolumeError::Device {
            path: path.to_owned(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    lock(&file, path, access)?;
    Ok(file)
}

pub(crate) fn lock(file: &File, path: &Path, access: Access) -> Result<(), VolumeError> {
    let r = match access {
        Access::Inspect => return Ok(()),
        Access::ReadShared => file.try_lock_shared(),
        Access::WriteExclusive => file.try_lock(),
    };
    match r {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(VolumeError::Busy {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(VolumeError::Io {
            op: "lock",
            path: path.to_owned(),
            offset: 0,
            source: e,
        }),
    }
}
