//! Committing a new metadata version to an image (`format-spec.md` §7): the version is
//! encoded and checked before anything is written (`header_io::prepare`), then both copies
//! are written in crash-safe order; a failed write or sync becomes [`VolumeError::Update`]
//! with the state read back from the image (`outcome.rs`).

use std::fs::File;
use std::path::Path;

use crate::format::metadata::Metadata;

use super::error::{UpdateState, VolumeError};
use super::header_io::{next_seqid, prepare, write_copies, LoadedHeader};
use super::outcome::{commit_failed, retry_fix, Commit};

/// What a failed commit that left the previous metadata in force means: the detail, state
/// and fix of its [`VolumeError::Update`].
pub(crate) type Before = (String, UpdateState, String);

/// Nothing written before the commit is used by the metadata in force.
pub(crate) fn nothing_before() -> Before {
    (
        "the previous header is in force".into(),
        UpdateState::Unchanged,
        retry_fix(),
    )
}

/// Commit `md` as the next metadata version of the image loaded as `lh` ([`prepare`], then
/// [`write_prepared`]). Errors: as those.
pub(crate) fn commit(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    md: &Metadata,
    before: Before,
) -> Result<(), VolumeError> {
    let copies = prepare(path, lh, md)?;
    write_prepared(file, path, lh, &copies, before)
}

/// [`write_copies`] of `copies` from [`prepare`]; a failure becomes [`VolumeError::Update`]
/// with the state read back (`outcome.rs`), `before` when the new version is not in force.
pub(crate) fn write_prepared(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    copies: &[(Vec<u8>, u64)],
    before: Before,
) -> Result<(), VolumeError> {
    let c = Commit {
        new_seqid: next_seqid(path, lh.max_seqid)?,
        hdr_size: lh.header.hdr_size,
    };
    write_copies(file, path, copies).map_err(|e| commit_failed(file, path, &c, e, before))
}
