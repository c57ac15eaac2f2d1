//! The image file: the only code that touches it. Modelled on cryptsetup's `lib/luks2`, one
//! concern per file; each file imports only the ones listed above it here (no cycle):
//!
//! - `error`: [`VolumeError`] and [`UpdateState`].
//! - `host`: what the machine offers (memory, from `/proc/meminfo`).
//! - `store`: every `pread`/`pwrite`/`fdatasync` of the image and the two test hooks (the I/O
//!   fault injector [`FAULT_IO_ENV`] and the crash-step hook [`FAULT_STEP_ENV`]).
//! - `header_io`: reading and writing both metadata copies ([`load_header`], the encoding
//!   and write order of a new metadata version).
//! - `image`: opening and locking image files ([`Access`], [`open_image`], [`OpenedImage`]).
//! - `outcome`: where a failed header update left the image, read back.
//! - `commit`: committing a new metadata version, a failure classified by `outcome`.
//! - `keyslot_create`: a new keyslot: KDF choice and cost, JSON, area placement, wrapped key
//!   material written and verified.
//! - `create`: creating a volume ([`format`], [`FormatOptions`]).
//! - `keyslot_change`: adding, changing and removing keyslots.
//! - `header_ops`: whole-header operations: erase, repair, backup, restore, token replacement.
//! - `relock`: a header update on an image held open for serving.
//! - `unlock`: finding the volume key with a passphrase; checking a given volume key.
//! - `locks`, `holes`, `data`: the plaintext view of the data segment ([`Volume`]): the
//!   region locks of read-modify-write, the image's holes (discard), sector I/O.
//! - `wipe`: encrypted zeros over the whole data segment, resumable.
//!
//! Byte offsets here are always bytes; "sector" means the segment's encryption sector
//! (512 or 4096 bytes) unless it says 512-byte sector. On-disk bytes ↔ types is the `format`
//! layer's: here "format" survives only as the public name of volume creation ([`format`],
//! cryptsetup's `luksFormat`).

mod commit;
mod create;
mod data;
mod error;
mod header_io;
mod header_ops;
mod holes;
mod host;
mod image;
mod keyslot_change;
mod keyslot_create;
mod locks;
mod outcome;
mod relock;
mod store;
mod unlock;
mod wipe;

#[cfg(test)]
mod tests;

pub use create::{format, FormatOptions};
pub use data::{Volume, MAX_ALLOCATION_RUNS, PUNCH_ALIGN};
pub use error::{UpdateState, VolumeError};
pub use header_io::{load_detached_header, load_header, probe_content, LoadedHeader};
pub use header_ops::{
    check_backup, check_backup_fits, copy_header_area, erase, header_bytes, repair, replace_token,
    restore_header, BackupSource, COPY_CHUNK,
};
pub use holes::{segment_hole_bytes, Discard, Run};
pub use image::{open_image, Access, OpenedImage};
pub use keyslot_change::{add_keyslot, change_keyslot, kill_keyslot, NewKeyslot, MAX_KEYSLOTS};
pub use keyslot_create::{KdfChoice, KdfKind};
pub use relock::update_held_header;
pub use store::{FAULT_IO_ENV, FAULT_STEP_ENV};
pub use unlock::{
    unlock, unlock_limited, unlock_time_ms, verify_volume_key, verify_volume_key_limited,
    UnlockedKey,
};
pub use wipe::{
    read_wipe_state, remove_wipe_state, wipe, wipe_state_path, write_wipe_state, WipeState,
    WIPE_CHECKPOINT, WIPE_SIGINT_ENV, WIPE_STATE_SUFFIX,
};
