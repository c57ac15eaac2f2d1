//! Reading and writing both metadata copies of an image (`format-spec.md` §2.3, §7): the
//! reader picks the valid copy with the higher `seqid` and validates it against the image
//! ([`load_header`]); the writer encodes a new metadata version as both copies and writes them
//! in crash-safe order, each followed by a sync ([`prepare`], [`write_copies`]). Which bytes
//! make a copy is the `format` layer's; committing a version and reporting a failed commit
//! is `commit.rs`'s.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::header::{
    BinaryHeader, Copy, ALLOWED_HDR_SIZES, BINARY_HEADER_SIZE, MAGIC_PRIMARY, MAGIC_SECONDARY,
};
use crate::format::metadata::Metadata;
use crate::format::{self, probe, DataSegment, FormatError};

use super::error::VolumeError;
use super::store::{image_len, sync_step, write_step};

/// A metadata copy chosen after reading both (`format-spec.md` §2.3), validated against the
/// image, plus what the reader noticed on the way.
#[derive(Debug, Clone)]
pub struct LoadedHeader {
    /// The binary header of the chosen copy.
    pub header: BinaryHeader,
    /// Its JSON metadata.
    pub metadata: Metadata,
    /// The data segment as exported.
    pub segment: DataSegment,
    /// Image length in bytes when read.
    pub image_len: u64,
    /// The highest `seqid` of any copy whose checksum holds, chosen or not: a new version is
    /// numbered above it, so no stale copy can win after an interrupted update.
    pub max_seqid: u64,
    /// Human-readable warnings (a damaged copy, differing `seqid`s). Nothing is repaired.
    pub warnings: Vec<String>,
    /// Read from a detached header file (`--header`): the data segment is in another file.
    pub detached: bool,
}

impl LoadedHeader {
    /// Length in bytes of the header area: both metadata copies and the keyslots area
    /// (`2 × hdr_size + keyslots_size`), or the data offset when that is larger in an image
    /// holding its own header. This is what a header backup holds (`format-spec.md` §7.7).
    pub fn header_area_len(&self) -> u64 {
        header_area_len(&self.header, &self.metadata)
    }

    /// Whether the header carries cryptsetup's persistent `allow-discards` flag (LUKS2
    /// `config.flags`, set by `cryptsetup refresh --persistent --allow-discards`).
    pub fn allow_discards(&self) -> bool {
        self.metadata
            .config
            .flags
            .iter()
            .flatten()
            .any(|f| f == "allow-discards")
    }
}

/// [`LoadedHeader::header_area_len`] of one metadata copy.
pub(crate) fn header_area_len(h: &BinaryHeader, md: &Metadata) -> u64 {
    let areas = 2 * h.hdr_size + md.config.keyslots_size;
    match md.segments.values().next() {
        Some(seg) if seg.offset > areas => seg.offset,
        _ => areas,
    }
}

fn read_exact(file: &File, len: u64, at: u64, image_len: u64) -> Result<Vec<u8>, FormatError> {
    if at.checked_add(len).is_none_or(|end| end > image_len) {
        return Err(FormatError::Corrupt(format!(
            "image is truncated: {len} bytes of metadata at offset {at} do not fit in {image_len} bytes"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, at)
        .map_err(|e| FormatError::Corrupt(format!("read of {len} bytes at {at} failed: {e}")))?;
    Ok(buf)
}

/// What an open image's first [`probe::PROBE_BYTES`] look like ([`probe::probe`]): a file
/// system, partition table, swap, LVM or LUKS signature, so `format` can warn before it
/// destroys them. Never writes; a read error is "nothing recognised".
pub fn probe_content(file: &File) -> Option<probe::Signature> {
    let image_len = file.metadata().ok()?.len();
    probe_head(file, image_len)
}

/// [`probe_content`] for a file of `image_len` bytes.
fn probe_head(file: &File, image_len: u64) -> Option<probe::Signature> {
    let len = image_len.min(probe::PROBE_BYTES as u64);
    let mut head = vec![0u8; len as usize];
    file.read_exact_at(&mut head, 0).ok()?;
    probe::probe(&head)
}

/// Read and check the copy at `at`; `Ok(None)` when there is no magic of the expected kind there.
fn read_copy(
    file: &File,
    at: u64,
    image_len: u64,
    want: Copy,
) -> Result<Option<(BinaryHeader, Metadata)>, FormatError> {
    // A file too short for a binary header is "no header" unless it starts with a magic.
    let avail = image_len.saturating_sub(at).min(BINARY_HEADER_SIZE as u64);
    if avail < 6 {
        return Ok(None);
    }
    let first = read_exact(file, avail, at, image_len)?;
    let magic = match want {
        Copy::Primary => &MAGIC_PRIMARY,
        Copy::Secondary => &MAGIC_SECONDARY,
    };
    if !first.starts_with(magic) {
        return Ok(None);
    }
    if avail < BINARY_HEADER_SIZE as u64 {
        return Err(FormatError::Corrupt(format!(
            "image is truncated: {image_len} bytes end inside the {want} header at {at}"
        )));
    }
    let bh = match BinaryHeader::decode(&first) {
        Err(FormatError::NotLuks) => return Ok(None),
        Err(e) => return Err(e),
        Ok(h) if h.copy != want => return Ok(None),
        Ok(h) => h,
    };
    if want == Copy::Secondary && bh.hdr_size != at {
        return Err(FormatError::Corrupt(format!(
            "secondary header at {at} declares hdr_size {}",
            bh.hdr_size
        )));
    }
    let all = read_exact(file, bh.hdr_size, at, image_len)?;
    format::decode_copy(&all, at).map(Some)
}

/// Read both metadata copies of an open image, keep the valid one with the higher `seqid`
/// (`format-spec.md` §2.3) and validate it against the image (`format::validate`). Never writes.
///
/// Errors: [`VolumeError::NotLuks`] when neither copy has a LUKS2 magic,
/// [`VolumeError::Corrupt`] when both are damaged (the reason names both failures) or the layout
/// is inconsistent, [`VolumeError::Unsupported`] outside the profile, [`VolumeError::Device`]
/// when the file's size cannot be read.
///
/// The data segment lies in the same file: a segment inside the header area (a detached
/// header's, offset 0) is refused as [`VolumeError::DetachedHeader`].
pub fn load_header(file: &File, path: &Path) -> Result<LoadedHeader, VolumeError> {
    load_header_from(file, path, None)
}

/// [`load_header`] for a detached header (cryptsetup `--header`, `format-spec.md` §1.1): the
/// metadata and keyslots are read from `header` at `header_path`, and the data segment is
/// placed in a separate data file of `data_len` bytes (usually at offset 0).
/// [`LoadedHeader::image_len`] is then the data file's length. Errors: as [`load_header`],
/// naming `header_path`.
pub fn load_detached_header(
    header: &File,
    header_path: &Path,
    data_len: u64,
) -> Result<LoadedHeader, VolumeError> {
    load_header_from(header, header_path, Some(data_len))
}

fn load_header_from(
    file: &File,
    path: &Path,
    data_len: Option<u64>,
) -> Result<LoadedHeader, VolumeError> {
    let image_len = image_len(file, path)?;
    let primary = read_copy(file, 0, image_len, Copy::Primary);
    // The secondary sits at the primary's hdr_size. Only when the primary is unusable are the
    // other allowed sizes scanned, as cryptsetup does (a copy planted elsewhere must not win
    // over a valid primary).
    let mut offsets: Vec<u64> = Vec::new();
    if let Ok(Some((h, _))) = &primary {
        offsets.push(h.hdr_size);
    } else {
        if let Ok(b) = read_exact(file, BINARY_HEADER_SIZE as u64, 0, image_len) {
            if let Ok(h) = BinaryHeader::decode(&b) {
                offsets.push(h.hdr_size);
            }
        }
        for s in ALLOWED_HDR_SIZES {
            if !offsets.contains(&s) {
                offsets.push(s);
            }
        }
    }
    let mut secondary: Result<Option<(BinaryHeader, Metadata)>, FormatError> = Ok(None);
    for at in offsets {
        match read_copy(file, at, image_len, Copy::Secondary) {
            Ok(None) => continue,
            other => {
                secondary = other;
                break;
            }
        }
    }
    let mut warnings = Vec::new();
    let (header, metadata) = match (primary, secondary) {
        (Ok(Some(p)), Ok(Some(s))) => {
            if p.0.seqid != s.0.seqid {
                warnings.push(format!(
                    "header copies differ (primary seqid {}, secondary seqid {}); using the newer",
                    p.0.seqid, s.0.seqid
                ));
            } else if p.1 != s.1 || !same_binary_fields(&p.0, &s.0) {
                // A tie: no copy is newer. The primary wins, as in cryptsetup.
                warnings.push(format!(
                    "header copies differ at the same seqid {}; using the primary",
                    p.0.seqid
                ));
            }
            if s.0.seqid > p.0.seqid {
                s
            } else {
                p
            }
        }
        (Ok(Some(p)), s) => {
            warnings.push(format!(
                "secondary header is damaged ({}); using the primary",
                describe(s)
            ));
            p
        }
        (p, Ok(Some(s))) => {
            warnings.push(format!(
                "primary header is damaged ({}); using the secondary",
                describe(p)
            ));
            s
        }
        (Ok(None), Ok(None)) => {
            return Err(VolumeError::NotLuks {
                path: path.to_owned(),
                found: probe_head(file, image_len),
            })
        }
        (p, s) => {
            // An unsupported LUKS version or checksum in a copy is more useful than "corrupt".
            for r in [&p, &s] {
                if let Err(FormatError::Unsupported(reason)) = r {
                    return Err(VolumeError::Unsupported {
                        path: path.to_owned(),
                        reason: reason.clone(),
                    });
                }
            }
            return Err(VolumeError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "both header copies are damaged: primary: {}; secondary: {}",
                    describe(p),
                    describe(s)
                ),
            });
        }
    };
    let header_end = 2 * header.hdr_size + metadata.config.keyslots_size;
    let segment = format::data_segment(&metadata, data_len.unwrap_or(image_len))
        .map_err(|e| VolumeError::from_format(path, e))?;
    if data_len.is_none() && segment.offset < header_end {
        return Err(VolumeError::DetachedHeader {
            path: path.to_owned(),
            data_offset: segment.offset,
        });
    }
    let max_seqid = [0, header.hdr_size]
        .into_iter()
        .filter_map(|at| checksummed_seqid(file, at, image_len))
        .fold(header.seqid, u64::max);
    Ok(LoadedHeader {
        header,
        metadata,
        segment,
        image_len: data_len.unwrap_or(image_len),
        detached: data_len.is_some(),
        max_seqid,
        warnings,
    })
}

/// Whether two copies' binary headers agree on everything but what differs by position
/// (magic, `hdr_offset`), the per-copy salt (cryptsetup writes two) and the checksum.
fn same_binary_fields(a: &BinaryHeader, b: &BinaryHeader) -> bool {
    a.hdr_size == b.hdr_size
        && a.label == b.label
        && a.subsystem == b.subsystem
        && a.uuid == b.uuid
        && a.checksum_alg == b.checksum_alg
}

/// The `seqid` of the copy at `at` if its binary header decodes and its checksum holds.
fn checksummed_seqid(file: &File, at: u64, image_len: u64) -> Option<u64> {
    let first = read_exact(file, BINARY_HEADER_SIZE as u64, at, image_len).ok()?;
    let h = BinaryHeader::decode(&first).ok()?;
    let all = read_exact(file, h.hdr_size, at, image_len).ok()?;
    format::header::verify_checksum(&all).ok()?;
    Some(h.seqid)
}

fn describe(r: Result<Option<(BinaryHeader, Metadata)>, FormatError>) -> String {
    match r {
        Ok(Some(_)) => "valid".into(),
        Ok(None) => "no header magic".into(),
        Err(e) => e.to_string(),
    }
}

/// The `seqid` of the primary copy (at 0) and of the secondary copy (at `hdr_size`) of an open
/// image, `None` for a copy that is missing or fails a check: what a reader sees now (used
/// after a failed update, `outcome.rs`). Errors: [`VolumeError::Device`] when the size cannot
/// be read.
pub(crate) fn copy_seqids(
    file: &File,
    path: &Path,
    hdr_size: u64,
) -> Result<(Option<u64>, Option<u64>), VolumeError> {
    let image_len = image_len(file, path)?;
    let seqid = |at, want| match read_copy(file, at, image_len, want) {
        Ok(Some((h, _))) => Some(h.seqid),
        _ => None,
    };
    Ok((seqid(0, Copy::Primary), seqid(hdr_size, Copy::Secondary)))
}

/// The `seqid` of the next metadata version after `current` (the highest valid copy's).
/// Errors: [`VolumeError::Unsupported`] when `current` is `u64::MAX`: the next one would
/// wrap to 0 and lose to every older copy ("higher seqid wins"), so nothing is written.
pub(crate) fn next_seqid(path: &Path, current: u64) -> Result<u64, VolumeError> {
    current
        .checked_add(1)
        .ok_or_else(|| VolumeError::Unsupported {
            path: path.to_owned(),
            reason: format!(
                "header seqid {current} is the largest possible: an update would wrap it to 0 \
                 (restore a header backup or re-create the volume)"
            ),
        })
}

/// Encode both metadata copies of `md` from `base` (its `hdr_size`, UUID, label, subsystem)
/// with `seqid`, each with a fresh salt. Errors: [`VolumeError::InvalidArgument`] when the JSON
/// does not fit the area.
pub(crate) fn encode_copies(
    path: &Path,
    base: &BinaryHeader,
    md: &Metadata,
    seqid: u64,
) -> Result<Vec<(Vec<u8>, u64)>, VolumeError> {
    let mut copies = Vec::new();
    for (copy, at) in [(Copy::Secondary, base.hdr_size), (Copy::Primary, 0)] {
        let mut salt = [0u8; 64];
        salt.copy_from_slice(&crate::crypto::random_bytes(64)?);
        let hdr = BinaryHeader {
            copy,
            seqid,
            salt,
            hdr_offset: at,
            csum: [0; 64],
            ..base.clone()
        };
        let bytes = format::encode_copy(&hdr, md).map_err(|e| match e {
            format::FormatError::Invalid(m) => VolumeError::InvalidArgument(m),
            other => VolumeError::from_format(path, other),
        })?;
        copies.push((bytes, at));
    }
    Ok(copies)
}

/// Write `copies` in the order given, each followed by a sync.
pub(crate) fn write_copies(
    file: &File,
    path: &Path,
    copies: &[(Vec<u8>, u64)],
) -> Result<(), VolumeError> {
    for (bytes, at) in copies {
        let which = if *at == 0 { "primary" } else { "secondary" };
        write_step(file, path, bytes, *at, &format!("{which} header"))?;
        sync_step(file, path, &format!("sync {which} header"))?;
    }
    Ok(())
}

/// Encode and check `md` as the next metadata version of the image loaded as `lh`: `seqid`
/// above every copy whose checksum holds, and in write order — the copy that was *not* chosen
/// (damaged, or equal) first, so a torn write never hits the only good copy.
pub(crate) fn prepare(
    path: &Path,
    lh: &LoadedHeader,
    md: &Metadata,
) -> Result<Vec<(Vec<u8>, u64)>, VolumeError> {
    let mut copies = encode_copies(path, &lh.header, md, next_seqid(path, lh.max_seqid)?)?;
    // The new version must itself pass every check a reader applies.
    for (bytes, at) in &copies {
        format::decode_copy(bytes, *at).map_err(|e| VolumeError::from_format(path, e))?;
    }
    if lh.header.copy == Copy::Secondary {
        copies.reverse(); // the primary was the damaged one: rewrite it first
    }
    Ok(copies)
}
