//! The image file: the only code that touches it. Header reading (both copies, strict checks),
//! `format`, unlocking a keyslot, and the plaintext view of the data segment in bytes.
//!
//! Byte offsets here are always bytes; "sector" means the segment's encryption sector
//! (512 or 4096 bytes) unless it says 512-byte sector.

mod data;
mod error;
mod format;
mod header_io;
mod image;
mod outcome;
mod relock;
mod store;
mod unlock;
mod update;
mod wipe;

pub use data::{segment_hole_bytes, Discard, Run, Volume, MAX_ALLOCATION_RUNS, PUNCH_ALIGN};
pub use error::VolumeError;
pub use format::{format, FormatOptions, KdfChoice, KdfKind};
pub use header_io::{load_detached_header, load_header, LoadedHeader};
pub use image::OpenedImage;
pub use outcome::UpdateState;
pub use relock::update_held_header;
pub use store::FAULT_IO_ENV;
pub use unlock::{unlock, UnlockedKey};
pub use update::{
    add_keyslot, change_keyslot, check_backup, erase, header_bytes, kill_keyslot, repair,
    replace_token, restore_header, verify_volume_key, NewKeyslot, FAULT_STEP_ENV, MAX_KEYSLOTS,
};
pub use wipe::{
    read_wipe_state, remove_wipe_state, wipe, wipe_state_path, write_wipe_state, WipeState,
    WIPE_CHECKPOINT, WIPE_SIGINT_ENV, WIPE_STATE_SUFFIX,
};

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A field of `/proc/meminfo` in KiB (e.g. `MemTotal`, `MemAvailable`), if readable.
pub(crate) fn meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How an image is opened, and which locks are held while the `File` lives.
///
/// Two kinds of lock, as they serve two purposes (`format-spec.md` §5):
/// - `flock(2)` is cryptsetup's lock on image files: readers take it shared, header writers
///   exclusive. We hold it shared while inspecting or serving, so `cryptsetup luksDump` and
///   `open --test-passphrase` work on a served image, and exclusive only while formatting.
/// - An open-file-description `fcntl` lock on byte 0 keeps nbdcrypt processes apart: a
///   read-write server excludes every other server; read-only servers share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only; `flock` shared: `dump`, `test-passphrase`.
    Inspect,
    /// Read only; `flock` shared, `fcntl` read lock: serving with `--read-only`.
    ReadShared,
    /// Read-write; `flock` shared, `fcntl` write lock: serving.
    WriteExclusive,
    /// Read-write; `flock` exclusive, `fcntl` write lock: `format` and every header update.
    HeaderWrite,
}

/// Length in bytes of the open image `file` at `path`.
///
/// Errors: [`VolumeError::Device`] when its metadata cannot be read.
pub(crate) fn image_len(file: &File, path: &Path) -> Result<u64, VolumeError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| VolumeError::Device {
            path: path.to_owned(),
            source: e,
        })
}

/// Open an existing image file with the locks of `access`. Errors: [`VolumeError::Device`]
/// when it is missing, unreadable or not a regular file; [`VolumeError::Busy`] when another
/// process holds a conflicting lock.
pub fn open_image(path: &Path, access: Access) -> Result<File, VolumeError> {
    let device = |e| VolumeError::Device {
        path: path.to_owned(),
        source: e,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(matches!(
            access,
            Access::WriteExclusive | Access::HeaderWrite
        ))
        .open(path)
        .map_err(device)?;
    if !file.metadata().map_err(device)?.is_file() {
        return Err(device(std::io::Error::other("not a regular file")));
    }
    lock(&file, path, access)?;
    Ok(file)
}

pub(crate) fn lock(file: &File, path: &Path, access: Access) -> Result<(), VolumeError> {
    let busy = || VolumeError::Busy {
        path: path.to_owned(),
    };
    let io = |e| VolumeError::Io {
        op: "lock",
        path: path.to_owned(),
        offset: 0,
        source: e,
    };
    let r = match access {
        Access::HeaderWrite => file.try_lock(),
        _ => file.try_lock_shared(),
    };
    match r {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(busy()),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let kind = match access {
        Access::Inspect => return Ok(()),
        Access::ReadShared => libc::F_RDLCK,
        Access::WriteExclusive | Access::HeaderWrite => libc::F_WRLCK,
    };
    // SAFETY: a zeroed `flock` is a valid value; the fd is open for the call's duration.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(busy()),
        _ => Err(io(e)),
    }
}
