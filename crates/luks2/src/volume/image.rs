//! Opening and locking image files: the locks of each kind of access ([`Access`],
//! `format-spec.md` §5), and an image as the commands see it ([`OpenedImage`]): the file holding
//! the LUKS2 header, and the file holding the data segment — the same file, or a detached
//! header (cryptsetup `--header`, `format-spec.md` §1.1) and a data file holding only
//! ciphertext.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::VolumeError;
use super::header_io::{load_detached_header, load_header, LoadedHeader};
use super::store::image_len;

/// The open files of one volume. For an image holding its own header, `data` is a second handle
/// of the same open file (it shares the locks).
#[derive(Debug)]
pub struct OpenedImage {
    /// The file holding the header: the image, or the detached header file.
    pub header: File,
    /// Its path.
    pub header_path: PathBuf,
    /// The file holding the data segment.
    pub data: File,
    /// Its path (the `IMAGE` argument).
    pub data_path: PathBuf,
    /// Whether the header is detached.
    pub detached: bool,
}

impl OpenedImage {
    /// Open `image` (and the detached `header` file, if given) with the locks of `access`
    /// (see [`Access`]). With a detached header, the header file gets `access` and the data
    /// file the same, except that header updates ([`Access::HeaderWrite`]) only lock the
    /// data file as [`Access::Inspect`] (they never write it).
    ///
    /// Errors: as [`open_image`], naming the file that failed.
    pub fn open(
        image: &Path,
        header: Option<&Path>,
        access: Access,
    ) -> Result<OpenedImage, VolumeError> {
        match header {
            None => {
                let file = open_image(image, access)?;
                let data = file.try_clone().map_err(|e| VolumeError::Device {
                    path: image.to_owned(),
                    source: e,
                })?;
                Ok(OpenedImage {
                    header: file,
                    header_path: image.to_owned(),
                    data,
                    data_path: image.to_owned(),
                    detached: false,
                })
            }
            Some(h) => {
                let header = open_image(h, access)?;
                let data_access = match access {
                    Access::HeaderWrite => Access::Inspect,
                    a => a,
                };
                let data = open_image(image, data_access)?;
                Ok(OpenedImage {
                    header,
                    header_path: h.to_owned(),
                    data,
                    data_path: image.to_owned(),
                    detached: true,
                })
            }
        }
    }

    /// Read the header ([`load_header`], or [`load_detached_header`] against the data file's
    /// length). Errors: as those.
    pub fn load(&self) -> Result<LoadedHeader, VolumeError> {
        if self.detached {
            let len = image_len(&self.data, &self.data_path)?;
            load_detached_header(&self.header, &self.header_path, len)
        } else {
            load_header(&self.header, &self.header_path)
        }
    }
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

/// Take the locks of `access` on the open `file` at `path` (both kinds: see [`Access`]).
/// Errors: [`VolumeError::Busy`] when another process holds a conflicting lock,
/// [`VolumeError::Io`] when a lock call fails otherwise.
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
