//! A header update on an image this process already holds open for serving (the key-service
//! rewrap, `format-spec.md` §9.2): the serving `flock` is raised to a header writer's for the update and
//! lowered again (`format-spec.md` §5, §7).
//!
//! While serving, the header file is held with `flock` shared (so cryptsetup can read it but
//! not write it) and the `fcntl` lock of [`Access::ReadShared`] or [`Access::WriteExclusive`]
//! that keeps nbdcrypt processes apart. A header writer needs `flock` exclusive. Opening a
//! second handle with that lock would conflict with our own (a `flock` belongs to the open file
//! description), so the held handle's `flock` is converted in place. The `fcntl` lock is left
//! as it is: every nbdcrypt process holding the image (serving, inspecting, writing a header)
//! holds a `flock` on it, so an exclusive `flock` alone proves that no other one does.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::VolumeError;
use super::image::Access;

/// Runs `update` (a header update such as [`super::replace_token`]) on the header file `path`,
/// held open as `held` with the locks of `access` ([`Access::ReadShared`] or
/// [`Access::WriteExclusive`]), with a header writer's exclusive `flock`:
///
/// 1. the `flock` becomes exclusive (fails with [`VolumeError::Busy`] while cryptsetup or any
///    other process holds one on the file: nothing is written then);
/// 2. `update` gets a read-write handle of the same file (opened through `path`, checked to
///    be the same inode; it takes no locks of its own);
/// 3. the `flock` goes back to shared.
///
/// Linux converts a `flock` by dropping the old lock and taking the new one; when the
/// exclusive lock is refused, the shared one is taken again at once. If another process takes
/// an exclusive `flock` in that instant, serving continues without the shared `flock` and a
/// warning says so (the `fcntl` lock that keeps nbdcrypt processes apart is never dropped).
///
/// Errors: [`VolumeError::Busy`], [`VolumeError::Device`] (the write handle), [`VolumeError::Io`],
/// [`VolumeError::InvalidArgument`] for another `access`; else whatever `update` returns.
pub fn update_held_header<T>(
    held: &File,
    path: &Path,
    access: Access,
    update: impl FnOnce(&File) -> Result<T, VolumeError>,
) -> Result<T, VolumeError> {
    if !matches!(access, Access::ReadShared | Access::WriteExclusive) {
        return Err(VolumeError::InvalidArgument(format!(
            "update_held_header: the image is held as {access:?}, not for serving"
        )));
    }
    let restore_flock = || {
        if let Err(e) = held.try_lock_shared() {
            tracing::warn!(
                path = %path.display(),
                "the shared flock could not be taken back after a header update ({e:?}); \
                 serving continues without it"
            );
        }
    };
    if let Err(e) = held.try_lock() {
        restore_flock();
        return Err(match e {
            std::fs::TryLockError::WouldBlock => VolumeError::Busy {
                path: path.to_owned(),
            },
            std::fs::TryLockError::Error(source) => VolumeError::Io {
                op: "lock",
                path: path.to_owned(),
                offset: 0,
                source,
            },
        });
    }
    let result = write_handle(held, path).and_then(|w| update(&w));
    restore_flock();
    result
}

/// A read-write handle of the file `held` is open on, opened through `path` and checked to be
/// the same inode; takes no locks.
fn write_handle(held: &File, path: &Path) -> Result<File, VolumeError> {
    let device = |source| VolumeError::Device {
        path: path.to_owned(),
        source,
    };
    let w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(device)?;
    let (a, b) = (
        held.metadata().map_err(device)?,
        w.metadata().map_err(device)?,
    );
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(device(std::io::Error::other(
            "the path now names another file than the one being served",
        )));
    }
    Ok(w)
}
