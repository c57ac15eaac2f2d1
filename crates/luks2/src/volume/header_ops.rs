//! Operations on the header as a whole (`format-spec.md` §7.5–§7.7, §9.2): erasing every
//! keyslot, repairing the metadata copies, reading the header area for a backup, checking and
//! restoring a backup, and replacing a token (the key-service rewrap). Each is crash-safe as
//! every header update: whatever the metadata in force uses is written and synced first.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

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

/// Largest piece of a header area held in memory at once when it is copied (`header-backup`,
/// `header-restore`): a copy streams in pieces of this size, whatever the header area's size.
pub const COPY_CHUNK: u64 = 1 << 20;

/// The header area of the image (both metadata copies and the keyslots area,
/// [`LoadedHeader::header_area_len`] bytes from 0: up to the data segment in an image, the
/// whole header of a detached header file), which is what `cryptsetup luksHeaderBackup` saves.
/// In memory whole: for tests and small headers; copies use [`copy_header_area`].
pub fn header_bytes(file: &File, path: &Path, lh: &LoadedHeader) -> Result<Vec<u8>, VolumeError> {
    let mut out = Vec::new();
    copy_header_area(file, path, lh, &mut out, path)?;
    Ok(out)
}

/// Copy the header area of the image (as [`header_bytes`]) to `out`, named `out_path` in
/// errors, in pieces of at most [`COPY_CHUNK`] bytes. Errors: [`VolumeError::Io`] of the read
/// or of the write.
pub fn copy_header_area(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<(), VolumeError> {
    let len = lh.header_area_len();
    let mut buf = vec![0u8; len.min(COPY_CHUNK) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(COPY_CHUNK) as usize;
        read_step(file, path, &mut buf[..n], at, "read header area")?;
        out.write_all(&buf[..n]).map_err(|e| VolumeError::Io {
            op: "write header backup",
            path: out_path.to_owned(),
            offset: at,
            source: e,
        })?;
        at += n as u64;
    }
    Ok(())
}

/// A header backup to check or restore: bytes in memory, or a file read in pieces of at most
/// [`COPY_CHUNK`] bytes (a backup is as long as its data offset, which has no bound).
#[derive(Clone, Copy)]
pub enum BackupSource<'a> {
    /// The whole backup in memory.
    Bytes(&'a [u8]),
    /// An open backup file.
    File(&'a File),
}

impl<'a> From<&'a [u8]> for BackupSource<'a> {
    fn from(b: &'a [u8]) -> Self {
        BackupSource::Bytes(b)
    }
}

impl<'a> From<&'a Vec<u8>> for BackupSource<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        BackupSource::Bytes(b)
    }
}

impl<'a> From<&'a File> for BackupSource<'a> {
    fn from(f: &'a File) -> Self {
        BackupSource::File(f)
    }
}

impl BackupSource<'_> {
    /// Length in bytes.
    fn len(&self) -> std::io::Result<u64> {
        match self {
            BackupSource::Bytes(b) => Ok(b.len() as u64),
            BackupSource::File(f) => Ok(f.metadata()?.len()),
        }
    }

    /// Fill `buf` from byte `at`; `UnexpectedEof` past the end.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match self {
            BackupSource::Bytes(b) => {
                let src = usize::try_from(at)
                    .ok()
                    .and_then(|a| b.get(a..a.checked_add(buf.len())?))
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
            BackupSource::File(f) => f.read_exact_at(buf, at),
        }
    }
}

/// Check a header backup (the bytes of `cryptsetup luksHeaderBackup`): at least one valid
/// metadata copy, and exactly as long as its data offset. Returns the valid copy with the
/// higher `seqid`. Errors: [`VolumeError::Corrupt`] naming what is wrong, with `backup` as path.
pub fn check_backup<'a>(
    backup: &Path,
    source: impl Into<BackupSource<'a>>,
) -> Result<(BinaryHeader, Metadata), VolumeError> {
    let source = source.into();
    let corrupt = |reason: String| VolumeError::Corrupt {
        path: backup.to_owned(),
        reason,
    };
    let read = |len: u64, at: u64| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len as usize];
        source.read_at(&mut buf, at).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "too short".to_string(),
            _ => format!("read failed: {e}"),
        })?;
        Ok(buf)
    };
    // `hdr_size` is one of the allowed sizes (at most 4 MiB) once the binary header decodes.
    let copy_at = |at: u64| -> Result<(BinaryHeader, Metadata), String> {
        let first = read(format::header::BINARY_HEADER_SIZE as u64, at)?;
        let h = BinaryHeader::decode(&first).map_err(|e| e.to_string())?;
        format::decode_copy(&read(h.hdr_size, at)?, at).map_err(|e| e.to_string())
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
    let len = source
        .len()
        .map_err(|e| corrupt(format!("cannot read the backup's length: {e}")))?;
    if len != want {
        return Err(corrupt(format!(
            "backup is {len} bytes, its header says the header area is {want}",
        )));
    }
    Ok((h, md))
}

/// Check that a header backup fits the volume whose header it would replace, as cryptsetup's
/// `luksHeaderRestore` does: the same data segment (offset, size or `dynamic`, sector size,
/// cipher, `iv_tweak`) and the same layout (`hdr_size`, `keyslots_size`). Restoring a backup
/// that differs would move the start of the data or reshape the header over it. A different
/// UUID or volume key is not checked here (the caller asks for confirmation).
///
/// Errors: [`VolumeError::InvalidArgument`] naming the first difference, with cryptsetup's
/// wording ("Data offset differ on device and backup, restore failed.", "Binary header with
/// keyslot areas size differ on device and backup, restore failed.").
pub fn check_backup_fits(
    device: (&BinaryHeader, &Metadata),
    backup: (&BinaryHeader, &Metadata),
) -> Result<(), VolumeError> {
    let (dh, dmd) = device;
    let (bh, bmd) = backup;
    let (Some(ds), Some(bs)) = (dmd.segments.values().next(), bmd.segments.values().next()) else {
        return Err(VolumeError::InvalidArgument(
            "Data segment differ on device and backup, restore failed. (one has no data segment)"
                .into(),
        ));
    };
    if ds.offset != bs.offset {
        return Err(VolumeError::InvalidArgument(format!(
            "Data offset differ on device and backup, restore failed. (device: {} bytes, backup: {})",
            ds.offset, bs.offset
        )));
    }
    if dh.hdr_size != bh.hdr_size || dmd.config.keyslots_size != bmd.config.keyslots_size {
        return Err(VolumeError::InvalidArgument(format!(
            "Binary header with keyslot areas size differ on device and backup, restore failed. (device: hdr_size {} keyslots_size {}, backup: hdr_size {} keyslots_size {})",
            dh.hdr_size, dmd.config.keyslots_size, bh.hdr_size, bmd.config.keyslots_size
        )));
    }
    let show = |s: &format::metadata::Segment| {
        let size = match s.size {
            format::metadata::SegmentSize::Dynamic => "dynamic".to_string(),
            format::metadata::SegmentSize::Bytes(n) => n.to_string(),
        };
        format!(
            "size {size}, sector_size {}, cipher {}, iv_tweak {}",
            s.sector_size, s.encryption, s.iv_tweak
        )
    };
    let (d, b) = (show(ds), show(bs));
    if d != b {
        return Err(VolumeError::InvalidArgument(
            format::escape_for_terminal(&format!(
                "Data segment differ on device and backup, restore failed. (device: {d}; backup: {b})"
            ))
            .into_owned(),
        ));
    }
    Ok(())
}

/// Write a checked header backup over the image's header area (`header-restore`,
/// `format-spec.md` §7.7): the backup's keyslots area first, synced; then the backup's chosen
/// valid copy, re-encoded as the next version (`seqid` above the image's `image_seqid` and the
/// backup's own) to the secondary and the primary place, each synced — a damaged copy in the
/// backup is never written. The image must be longer than the backup (a detached header
/// file: at least as long). A restore stopped before its header writes leaves neither header able to open: run it again.
pub fn restore_header<'a>(
    file: &File,
    path: &Path,
    backup: impl Into<BackupSource<'a>>,
    image_seqid: Option<u64>,
) -> Result<(), VolumeError> {
    let backup = backup.into();
    let (h, md) = check_backup(path, backup)?;
    let read_backup = |buf: &mut [u8], at: u64| {
        backup.read_at(buf, at).map_err(|e| VolumeError::Io {
            op: "read header backup",
            path: path.to_owned(),
            offset: at,
            source: e,
        })
    };
    // check_backup made the backup exactly this long.
    let backup_len = header_area_len(&h, &md);
    let len = image_len(file, path)?;
    // A detached header file (data at offset 0 elsewhere) is exactly the backup's size.
    let detached = md.segments.values().next().is_some_and(|s| s.offset == 0);
    if len < backup_len || (len == backup_len && !detached) {
        return Err(VolumeError::InvalidArgument(format!(
            "the image ({len} bytes) is not larger than the header backup ({backup_len} bytes)"
        )));
    }
    let seqid = next_seqid(path, image_seqid.unwrap_or(0).max(h.seqid))?;
    let copies = encode_copies(path, &h, &md, seqid)?;
    for (c, at) in &copies {
        format::decode_copy(c, *at).map_err(|e| VolumeError::from_format(path, e))?;
    }
    let ks_start = 2 * h.hdr_size;
    // The keyslots area is compared and copied in pieces: the image's old area is kept as
    // its hash only, to tell after a failed write whether anything changed.
    let pieces = || {
        (ks_start..backup_len)
            .step_by(COPY_CHUNK as usize)
            .map(move |at| (at, (backup_len - at).min(COPY_CHUNK) as usize))
    };
    let mut img_buf = vec![0u8; (backup_len - ks_start).min(COPY_CHUNK) as usize];
    let mut bak_buf = img_buf.clone();
    let image_area_hash = |buf: &mut [u8]| -> std::io::Result<Vec<u8>> {
        let mut hash = Sha256::new();
        for (at, n) in pieces() {
            file.read_exact_at(&mut buf[..n], at)?;
            hash.update(&buf[..n]);
        }
        Ok(hash.finalize().to_vec())
    };
    let mut old_hash = Sha256::new();
    let mut same = true;
    for (at, n) in pieces() {
        read_step(file, path, &mut img_buf[..n], at, "read keyslots area")?;
        read_backup(&mut bak_buf[..n], at)?;
        old_hash.update(&img_buf[..n]);
        same &= img_buf[..n] == bak_buf[..n];
    }
    let old_hash = old_hash.finalize().to_vec();
    let again = "run header-restore again with the same backup".to_string();
    let replaced = (
        "the keyslots area is partly or wholly the backup's, so keyslots of the header in force may no longer open".to_string(),
        UpdateState::KeysDestroyed,
        again.clone(),
    );
    let keyslots_failed = |e, buf: &mut [u8]| match image_area_hash(buf) {
        Ok(now) if now == old_hash => unchanged(path, "the keyslots area was not overwritten", e),
        _ => update_error(path, replaced.1, replaced.0.clone(), again.clone(), e),
    };
    for (at, n) in pieces() {
        read_backup(&mut bak_buf[..n], at).map_err(|e| keyslots_failed(e, &mut img_buf))?;
        write_step(file, path, &bak_buf[..n], at, "keyslots area")
            .map_err(|e| keyslots_failed(e, &mut img_buf))?;
    }
    sync_step(file, path, "sync keyslots area").map_err(|e| keyslots_failed(e, &mut img_buf))?;
    let before = if same { nothing_before() } else { replaced };
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
