//! The volume layer's errors: [`VolumeError`], one kind per failure class, each naming the
//! image; and [`UpdateState`], where a failed header update left the image.

use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::format::probe::Signature;
use crate::format::FormatError;

/// The state a failed header update left the image in ([`VolumeError::Update`]), found by
/// reading the image back (`outcome.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    /// The metadata in force and every keyslot in use are as before the command.
    Unchanged,
    /// The new metadata is in force: the command's change took effect, a later step did not.
    TookEffect,
    /// The metadata in force is the previous one, but key material it still refers to was
    /// (partly) overwritten: the keyslots named in the message no longer open.
    KeysDestroyed,
    /// The header could not be read back after the failure.
    Unknown,
}

/// Errors of the volume layer, one kind per failure class; each carries the image path.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The image file is missing, unreadable or not a regular file.
    #[error("cannot use {}: {source}", path.display())]
    Device {
        /// Image path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No LUKS2 header in either place.
    #[error("{} is not a valid LUKS device{}", path.display(), found.map(|s| format!(" (it holds {})", s.describe())).unwrap_or_default())]
    NotLuks {
        /// Image path.
        path: PathBuf,
        /// What the image's first bytes look like instead, if recognised
        /// ([`crate::format::probe`]): data that `format` would destroy.
        found: Option<Signature>,
    },
    /// Both metadata copies are damaged, or the metadata is inconsistent with the image.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// Image path.
        path: PathBuf,
        /// What is wrong (names the copy and the check that failed).
        reason: String,
    },
    /// The file is a detached header (cryptsetup `--header`, `format-spec.md` §1.1): its data
    /// segment starts at `data_offset` (bytes), inside the header area, so the data is in
    /// another file. Refused when the file was given as the image.
    #[error("{}: data segment offset {data_offset} overlaps the header: this is a detached header (give the data file as IMAGE and this file as --header)", path.display())]
    DetachedHeader {
        /// The header file given as the image.
        path: PathBuf,
        /// The data segment's offset, bytes.
        data_offset: u64,
    },
    /// A valid LUKS2 volume outside our profile; the reason names the field.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// Image path.
        path: PathBuf,
        /// E.g. `cipher serpent-xts-plain64 is not supported`.
        reason: String,
    },
    /// No keyslot opens with this passphrase (cryptsetup: "No key available with this passphrase.").
    #[error("No key available with this passphrase.")]
    WrongPassphrase,
    /// No keyslot can be tried (cryptsetup: "No usable keyslot is available.").
    #[error("{}: No usable keyslot is available{}.", path.display(), keyslot.map(|k| format!(" (keyslot {k} is not active or not bound to the data segment)")).unwrap_or_default())]
    NoUsableKeyslot {
        /// Image path.
        path: PathBuf,
        /// The keyslot that was asked for, if any.
        keyslot: Option<u32>,
    },
    /// The KDF needs more memory than the machine has available.
    #[error("keyslot {keyslot} needs {need_kib} KiB of memory for Argon2, above the {avail_kib} KiB available (--pbkdf-memory-limit)")]
    OutOfMemory {
        /// Keyslot id.
        keyslot: u32,
        /// Memory the KDF asks for, KiB.
        need_kib: u64,
        /// Memory allowed or available, KiB.
        avail_kib: u64,
    },
    /// A keyslot's KDF (with the digest check) or the digest alone is estimated to take longer
    /// than the limit: refused before it runs (a hostile header's costs, e.g. 2^32-1 iterations).
    #[error("{what} would take about {est_secs} s per try, above the {limit_secs} s limit (--unlock-time-limit)")]
    TooSlow {
        /// What is refused, e.g. `keyslot 0` or `digest 0`.
        what: String,
        /// Estimated seconds (at a fast machine's speed).
        est_secs: u64,
        /// The limit, seconds.
        limit_secs: u64,
    },
    /// Another process holds the image (`flock`).
    #[error("{} is in use by another process", path.display())]
    Busy {
        /// Image path.
        path: PathBuf,
    },
    /// A read, write or sync failed.
    #[error("{op} of {} at offset {offset} failed: {source}", path.display())]
    Io {
        /// What we were doing (`read`, `write`, `fdatasync`, …).
        op: &'static str,
        /// Image path.
        path: PathBuf,
        /// Byte offset in the image.
        offset: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A header or keyslot update failed part-way; `state` is what reading the image back
    /// found (`outcome.rs`): the message says "nothing changed", "the change took effect,
    /// but …", or which keyslots the failure destroyed.
    #[error("{source}; {}", describe(*state, detail))]
    Update {
        /// Image (or detached header) path.
        path: PathBuf,
        /// Where the image is now.
        state: UpdateState,
        /// What is left undone or damaged, one clause.
        detail: String,
        /// What to run to finish or retry (the CLI's hint).
        fix: String,
        /// The failure itself (usually [`VolumeError::Io`]).
        source: Box<VolumeError>,
    },
    /// A parameter out of range (size, sector size, request outside the volume, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// A cryptographic primitive refused its parameters.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

fn describe(state: UpdateState, detail: &str) -> String {
    use UpdateState as S;
    match state {
        S::Unchanged => format!("nothing changed: {detail}"),
        S::TookEffect => format!("the change took effect, but {detail}"),
        S::KeysDestroyed => format!("the header is unchanged, but {detail}"),
        S::Unknown => format!("the header state is unknown: {detail}"),
    }
}

impl VolumeError {
    /// `e` for the image at `path`; its reason (which may quote header strings) escaped for a
    /// terminal.
    pub(crate) fn from_format(path: &std::path::Path, e: FormatError) -> VolumeError {
        let path = path.to_owned();
        let esc = |r: String| crate::format::escape_for_terminal(&r).into_owned();
        match e {
            FormatError::NotLuks => VolumeError::NotLuks { path, found: None },
            FormatError::Unsupported(reason) => VolumeError::Unsupported {
                path,
                reason: esc(reason),
            },
            FormatError::Corrupt(reason) | FormatError::Invalid(reason) => VolumeError::Corrupt {
                path,
                reason: esc(reason),
            },
        }
    }
}
