//! Operations on the header as a whole (`format-spec.md` §7.5–§7.7, §9.2): erasing every
//! keyslot, repairing the metadata copies, reading the header area for a backup, checking and
//! restoring a backup, and replacing a token (the key-service rewrap). Each is crash-safe as
//! every header update: whatever the metadata in force uses is written and synced first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format;
use crate::format::header::BinaryHeader;
use crate::format::metadata::{Id, Metadata};

use super::commit::{commit, nothing_before};
use super::error::{UpdateState, VolumeError};
use super::header_io::{encode_copies, header_area_len, next_seqid, write_copies, LoadedHeader};
use super::outcome::{commit_failed, unchanged, update_error, Commit};
use super::store::{image_len, read_step, sync_step, write_step};

/// Wipe every keyslot (as `cryptsetup erase`, `format-spec.md` §7.5): the whole keyslots area is
/// overwritten with random bytes and synced, then metadata without keyslots is committed (the
/// digest stays, bound to no keyslot). Afterwards no passphrase opens either header copy.
pub fn erase(file: &File, path: &Path, lh: &LoadedHeader) -> Result<(), VolumeError> {
    // Refused before the keyslots are wiped: the header could not list the change.
    next_seqid(path, lh.max_seqid)?;
    let start = 2 * lh.header.hdr_size;
    let end = start + lh.metadata.config.keyslots_size;
    let mut at = start;
    let again = format!("run `nbdcrypt erase {}` again", path.display());
    let wiping = |e| {
        update_error(
            path,
            UpdateState::KeysDestroyed,
            "the keyslots area may be partly overwritten (keyslots may no longer open) and the header still lists the keyslots".into(),
            again.clone(),
            e,
        )
    };
    while at < end {
        let n = (end - at).min(1 << 20);
        let noise = crate::crypto::random_bytes(n as usize)?;
        write_step(file, path, &noise, at, "wipe keyslots area").map_err(wiping)?;
        at += n;
    }
    sync_step(file, path, "sync wiped keyslots area").map_err(wiping)?;
    let mut md = lh.metadata.clone();
    md.keyslots.clear();
    for d in md.digests.values_mut() {
        d.keyslots.clear();
    }
    for t in md.tokens.values_mut() {
        if let Some(ks) = t.get_mut("keyslots").and_then(|v| v.as_array_mut()) {
            ks.clear();
        }
    }
    md.tokens.retain(|_, t| t["type"] != format::RECOVERY_TOKEN);
    let before = (
        "every keyslot area was wiped and the header still lists the keyslots".into(),
        UpdateState::KeysDestroyed,
        again,
    );
    commit(file, path, lh, &md, before)
}

/// Rewrite both metadata copies from the chosen good one as the next version (`repair`,
/// `format-spec.md` §7.6). Returns `false` (and writes nothing) when both copies were already
/// good and equal.
pub fn repair(file: &File, path: &Path, lh: &LoadedHeader) -> Result<bool, VolumeError> {
    if lh.warnings.is_empty() {
        return Ok(false);
    }
    commit(file, path, lh, &lh.metadata, nothing_before())?;
    Ok(true)
}

/// The header area of the image (both metadata copies and the keyslots area,
/// [`LoadedHeader::header_area_len`] bytes from 0: up to the data segment in an image, the
/// whole header of a detached header file), which is what `cryptsetup luksHeaderBackup` saves.
pub fn header_bytes(file: &File, path: &Path, lh: &LoadedHeader) -> Result<Vec<u8>, VolumeError> {
    let mut buf = vec![0u8; lh.header_area_len() as usize];
    read_step(file, path, &mut buf, 0, "read header area")?;
    Ok(buf)
}

/// Check a header backup (the bytes of `cryptsetup luksHeaderBackup`): at least one valid
/// metadata copy, and exactly as long as its data offset. Returns the valid copy with the
/// higher `seqid`. Errors: [`VolumeError::Corrupt`] naming what is wrong, with `backup` as path.
pub fn check_backup(backup: &Path, bytes: &[u8]) -> Result<(BinaryHeader, Metadata), VolumeError> {
    let corrupt = |reason: String| VolumeError::Corrupt {
        path: backup.to_owned(),
        reason,
    };
    let copy_at = |at: u64| -> Result<(BinaryHeader, Metadata), String> {
        let first = bytes
            .get(at as usize..at as usize + format::header::BINARY_HEADER_SIZE)
            .ok_or("too short")?;
        let h = BinaryHeader::decode(first).map_err(|e| e.to_string())?;
        let all = bytes
            .get(at as usize..(at + h.hdr_size) as usize)
            .ok_or("too short")?;
        format::decode_copy(all, at).map_err(|e| e.to_string())
    };
    let primary = copy_at(0);
    let secondary = match &primary {
        Ok((h, _)) => copy_at(h.hdr_size),
        Err(_) => format::header::ALLOWED_HDR_SIZES
            .iter()
            .map(|s| copy_at(*s))
            .find(|r| r.is_ok())
            .unwrap_or(Err("no valid copy".into())),
    };
    let (h, md) = match (primary, secondary) {
        (Ok(p), Ok(s)) => {
            if s.0.seqid > p.0.seqid {
                s
            } else {
                p
            }
        }
        (Ok(c), Err(_)) | (Err(_), Ok(c)) => c,
        (Err(p), Err(s)) => {
            return Err(corrupt(format!(
                "not a LUKS2 header backup: primary: {p}; secondary: {s}"
            )))
        }
    };
    format::data_segment(&md, u64::MAX).map_err(|e| corrupt(e.to_string()))?;
    let want = header_area_len(&h, &md);
    if bytes.len() as u64 != want {
        return Err(corrupt(format!(
            "backup is {} bytes, its header says the header area is {want}",
            bytes.len(),
        )));
    }
    Ok((h, md))
}

/// Write a checked header backup over the image's header area (`header-restore`,
/// `format-spec.md` §7.7): the backup's keyslots area first, synced; then the backup's chosen
/// valid copy, re-encoded as the next version (`seqid` above the image's `image_seqid` and the
/// backup's own) to the secondary and the primary place, each synced — a damaged copy in the
/// backup is never written. The image must be longer than the backup (a detached header
/// file: at least as long). A restore stopped before its header writes leaves neither header able to open: run it again.
pub fn restore_header(
    file: &File,
    path: &Path,
    bytes: &[u8],
    image_seqid: Option<u64>,
) -> Result<(), VolumeError> {
    let (h, md) = check_backup(path, bytes)?;
    let len = image_len(file, path)?;
    // A detached header file (data at offset 0 elsewhere) is exactly the backup's size.
    let detached = md.segments.values().next().is_some_and(|s| s.offset == 0);
    if len < bytes.len() as u64 || (len == bytes.len() as u64 && !detached) {
        return Err(VolumeError::InvalidArgument(format!(
            "the image ({len} bytes) is not larger than the header backup ({} bytes)",
            bytes.len()
        )));
    }
    let seqid = next_seqid(path, image_seqid.unwrap_or(0).max(h.seqid))?;
    let copies = encode_copies(path, &h, &md, seqid)?;
    for (c, at) in &copies {
        format::decode_copy(c, *at).map_err(|e| VolumeError::from_format(path, e))?;
    }
    let ks_start = 2 * h.hdr_size;
    let area = &bytes[ks_start as usize..];
    let mut old = vec![0u8; area.len()];
    read_step(file, path, &mut old, ks_start, "read keyslots area")?;
    let again = "run header-restore again with the same backup".to_string();
    let replaced = (
        "the keyslots area is partly or wholly the backup's, so keyslots of the header in force may no longer open".to_string(),
        UpdateState::KeysDestroyed,
        again.clone(),
    );
    let keyslots_failed = |e| {
        let mut now = vec![0u8; old.len()];
        match file.read_exact_at(&mut now, ks_start) {
            Ok(()) if now == old => unchanged(path, "the keyslots area was not overwritten", e),
            _ => update_error(path, replaced.1, replaced.0.clone(), again.clone(), e),
        }
    };
    write_step(file, path, area, ks_start, "keyslots area").map_err(keyslots_failed)?;
    sync_step(file, path, "sync keyslots area").map_err(keyslots_failed)?;
    let before = if old == area {
        nothing_before()
    } else {
        replaced
    };
    let c = Commit {
        new_seqid: seqid,
        hdr_size: h.hdr_size,
    };
    write_copies(file, path, &copies).map_err(|e| commit_failed(file, path, &c, e, before))
}

/// Replace token `id` of the image loaded as `lh` with `token`, as the next metadata version
/// (crash-safe as every header update, `format-spec.md` §7): the key-service rewrap of an
/// `nbdcrypt-keyservice` token (§9.2). Keyslots and their areas are not touched.
///
/// Errors: [`VolumeError::InvalidArgument`] when there is no token `id` or the metadata no
/// longer fits; [`VolumeError::Update`] on write failures (with the state read back).
pub fn replace_token(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    id: u32,
    token: serde_json::Value,
) -> Result<(), VolumeError> {
    let mut md = lh.metadata.clone();
    let Some(slot) = md.tokens.get_mut(&Id(id)) else {
        return Err(VolumeError::InvalidArgument(format!("no token {id}")));
    };
    *slot = token;
    commit(file, path, lh, &md, nothing_before())
}
