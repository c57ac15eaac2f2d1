//! Wiping a volume: encrypted zeros over the whole data segment (`format --wipe`, `wipe`),
//! so the export reads as zeros and the image's free space hides nothing; stoppable and
//! resumable through a small state file beside the image (`format-spec.md` §10).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::data::Volume;
use super::error::VolumeError;

/// Suffix of the wipe state file, added to the image (data file) path:
/// `vol.img` → `vol.img.nbdcrypt-wipe`.
pub const WIPE_STATE_SUFFIX: &str = ".nbdcrypt-wipe";

/// Bytes written between two checkpoints (`fdatasync`, then the state file rewritten).
pub const WIPE_CHECKPOINT: u64 = 32 << 20;

/// Bytes given to one [`Volume::write_zeroes`] call; the stop flag is checked between calls.
const WIPE_CHUNK: u64 = 8 << 20;

/// Test hook, honoured only in debug builds: with `NBDCRYPT_WIPE_SIGINT_AT=BYTES` the wipe
/// sends itself SIGINT once it has written that many bytes, so the interruption path (signal
/// handler, checkpoint, state file) is tested without timing.
pub const WIPE_SIGINT_ENV: &str = "NBDCRYPT_WIPE_SIGINT_AT";

/// The state file's JSON (`format-spec.md` §10): which volume, and how far the wipe got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeState {
    /// The LUKS2 header's UUID.
    pub uuid: String,
    /// The volume's size in bytes when the wipe started.
    pub size: u64,
    /// Encryption sector size in bytes.
    pub sector_size: u32,
    /// Bytes from the start of the volume known to be wiped and synced.
    pub done: u64,
}

/// The state file of the data file `image`.
pub fn wipe_state_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(WIPE_STATE_SUFFIX);
    PathBuf::from(s)
}

/// Read the state file of `image`; `Ok(None)` when there is none.
///
/// Errors: [`VolumeError::Device`] when it cannot be read, [`VolumeError::Corrupt`] when it
/// is not a state file.
pub fn read_wipe_state(image: &Path) -> Result<Option<WipeState>, VolumeError> {
    let path = wipe_state_path(image);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VolumeError::Device { path, source: e }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| VolumeError::Corrupt {
            path,
            reason: format!("not a wipe state file: {e}"),
        })
}

/// Write `state` to the state file of `image` (0600): a fresh temporary file, synced, renamed
/// over it; no symlink at either name is followed ([`crate::fsutil::replace`]).
///
/// Errors: [`VolumeError::Io`].
pub fn write_wipe_state(image: &Path, state: &WipeState) -> Result<(), VolumeError> {
    let path = wipe_state_path(image);
    let text = serde_json::to_vec(state).expect("state serialises");
    crate::fsutil::replace(&path, &text, 0o600).map_err(|e| VolumeError::Io {
        op: "write",
        path: path.clone(),
        offset: 0,
        source: e,
    })
}

/// Remove the state file of `image`, if any. Errors: [`VolumeError::Io`].
pub fn remove_wipe_state(image: &Path) -> Result<(), VolumeError> {
    let path = wipe_state_path(image);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::Io {
            op: "remove",
            path,
            offset: 0,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Write encrypted zeros over `[from, size)` of `vol` (bytes; `from` a multiple of the sector
/// size), calling `progress(done)` after every chunk. Every [`WIPE_CHECKPOINT`] bytes, and when
/// `stop` is seen set, the image is synced and `state` (with `done` updated) written to the
/// state file of `image`. Returns how far it got: `vol.size()` when finished (the state file
/// is then removed), less when stopped (the state file says where to resume).
///
/// Errors: [`VolumeError::InvalidArgument`] for a read-only volume or a bad `from`;
/// [`VolumeError::Io`] on write, sync or state-file failures (the state file then still
/// names the last checkpoint, so a resume rewrites what may be missing).
pub fn wipe(
    vol: &Volume,
    image: &Path,
    mut state: WipeState,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, VolumeError> {
    let size = vol.size();
    let ss = u64::from(vol.sector_size());
    if state.done > size || !state.done.is_multiple_of(ss) {
        return Err(VolumeError::InvalidArgument(format!(
            "cannot resume a wipe at byte {} of a {size}-byte volume",
            state.done
        )));
    }
    let sigint_at = cfg!(debug_assertions)
        .then(|| std::env::var(WIPE_SIGINT_ENV).ok()?.parse::<u64>().ok())
        .flatten();
    let mut done = state.done;
    let mut since_checkpoint = 0;
    write_wipe_state(image, &state)?;
    while done < size {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = (size - done).min(WIPE_CHUNK);
        vol.write_zeroes(done, n, false)?;
        done += n;
        since_checkpoint += n;
        progress(done);
        if since_checkpoint >= WIPE_CHECKPOINT {
            vol.flush()?;
            state.done = done;
            write_wipe_state(image, &state)?;
            since_checkpoint = 0;
        }
        if sigint_at.is_some_and(|at| done >= at) {
            // SAFETY: raise(3) is always safe to call.
            unsafe { libc::raise(libc::SIGINT) };
        }
    }
    vol.flush()?;
    if done == size {
        remove_wipe_state(image)?;
    } else {
        state.done = done;
        write_wipe_state(image, &state)?;
    }
    Ok(done)
}
