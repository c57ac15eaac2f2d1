//! Where a failed header update left the image: a write or sync of a keyslot or
//! header command that fails is reported with the state the image is in afterwards, found by
//! reading it back rather than guessed from which step failed.
//!
//! The commit point of a metadata update (`format-spec.md` §7) is the first header copy with
//! the new `seqid` that passes its checksum: readers take the valid copy with the higher
//! `seqid` (LUKS2 spec §2), so from then on the new metadata is in force even if the other
//! copy is never written. A torn (short) write of that first copy may or may not leave it
//! valid (the bytes not written may equal the new ones, e.g. the JSON area's zero padding),
//! which is why both copies are read back after a failure.

use std::fs::File;
use std::path::Path;

use super::error::{UpdateState, VolumeError};
use super::header_io::copy_seqids;

/// Build the [`VolumeError::Update`] for `source`.
pub(crate) fn update_error(
    path: &Path,
    state: UpdateState,
    detail: String,
    fix: String,
    source: VolumeError,
) -> VolumeError {
    VolumeError::Update {
        path: path.to_owned(),
        state,
        detail,
        fix,
        source: Box::new(source),
    }
}

/// A metadata commit to `new_seqid`, with copies of `hdr_size` bytes at 0 and `hdr_size`.
pub(crate) struct Commit {
    pub new_seqid: u64,
    pub hdr_size: u64,
}

/// What reading back both copies after a failed commit found.
pub(crate) enum AfterCommit {
    /// No valid copy carries the new `seqid`; `note` names a copy left damaged, if any.
    Before { note: String },
    /// A valid copy carries the new `seqid`; `left` says what of the commit is missing.
    After { left: String },
    /// Could not be read back.
    Unreadable(String),
}

impl Commit {
    /// Read both copies back from `file` and classify.
    pub(crate) fn read_back(&self, file: &File, path: &Path, failed: &VolumeError) -> AfterCommit {
        let (p, s) = match copy_seqids(file, path, self.hdr_size) {
            Ok(v) => v,
            Err(e) => return AfterCommit::Unreadable(e.to_string()),
        };
        let sync_failed = matches!(
            failed,
            VolumeError::Io {
                op: "fdatasync",
                ..
            }
        );
        let new = Some(self.new_seqid);
        if p == new || s == new {
            let mut left = Vec::new();
            for (name, c) in [("primary", p), ("secondary", s)] {
                match c {
                    c if c == new => {}
                    Some(_) => left.push(format!(
                        "the {name} header copy still holds the previous version"
                    )),
                    None => left.push(format!("the {name} header copy is damaged (torn write)")),
                }
            }
            if sync_failed {
                left.push("syncing it to the disk failed, so a crash may still bring back the previous version".into());
            }
            if left.is_empty() {
                left.push("a later step failed".into());
            }
            AfterCommit::After {
                left: left.join("; "),
            }
        } else if p.is_none() && s.is_none() {
            AfterCommit::Unreadable("neither header copy is valid".into())
        } else {
            let mut note = String::new();
            for (name, c) in [("primary", p), ("secondary", s)] {
                if c.is_none() {
                    note = format!(
                        " (the {name} header copy is not valid now; `nbdcrypt repair IMAGE` rewrites it)"
                    );
                }
            }
            AfterCommit::Before { note }
        }
    }
}

/// The error of a failed commit (write or sync of a header copy): [`UpdateState::Unchanged`] or
/// [`UpdateState::TookEffect`] as read back; `before` (detail, state, fix) when the new version
/// is not in force.
pub(crate) fn commit_failed(
    file: &File,
    path: &Path,
    c: &Commit,
    e: VolumeError,
    before: (String, UpdateState, String),
) -> VolumeError {
    let img = path.display();
    match c.read_back(file, path, &e) {
        AfterCommit::Before { note } => {
            update_error(path, before.1, format!("{}{note}", before.0), before.2, e)
        }
        AfterCommit::After { left } => update_error(
            path,
            UpdateState::TookEffect,
            left,
            format!("run `nbdcrypt repair {img}` once the disk works, to write both header copies"),
            e,
        ),
        AfterCommit::Unreadable(why) => update_error(
            path,
            UpdateState::Unknown,
            why,
            format!("check the volume with `nbdcrypt dump {img}`; restore a header backup if it does not load"),
            e,
        ),
    }
}

/// The hint when nothing changed.
pub(crate) fn retry_fix() -> String {
    "free space on the disk (or fix the I/O error) and run the command again".into()
}

/// A failure before anything the metadata in force uses was written:
/// [`UpdateState::Unchanged`] with `detail` and the retry hint.
pub(crate) fn unchanged(path: &Path, detail: &str, e: VolumeError) -> VolumeError {
    update_error(path, UpdateState::Unchanged, detail.into(), retry_fix(), e)
}
