//! Header updates that never lose the last good state (`format-spec.md` §7): key material is
//! written and synced before the header that points at it; a new metadata version (`seqid` + 1)
//! goes to the secondary copy, is synced, then to the primary, synced. Every write and every
//! sync here is a numbered *step*; a test hook stops the process right after a chosen step.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::crypto::digest::verify_digest;
use crate::crypto::keyslot::{unwrap_key, wrap_key, KeyslotParams};
use crate::crypto::{HashAlg, VolumeKey};
use crate::format::header::{BinaryHeader, Copy};
use crate::format::metadata::{Id, Metadata};
use crate::format::{self, af_material_len, AF_STRIPES, VOLUME_KEY_SIZE};

use super::format::{choose_kdf, keyslot_json, KdfChoice};
use super::outcome::{commit_failed, retry_fix, update_error, Commit};
use super::{LoadedHeader, UpdateState, VolumeError};

/// Environment variable of the crash test hook: with `NBDCRYPT_FAULT_STEP=N` the process aborts
/// right after the N-th write or sync step of a header update (counting from 1), as a power cut
/// would stop it. Honoured only in debug builds (the tests' binary), never in a release build.
pub const FAULT_STEP_ENV: &str = "NBDCRYPT_FAULT_STEP";

/// The most keyslots a LUKS2 header holds here (cryptsetup's limit).
pub const MAX_KEYSLOTS: u32 = 32;

static STEPS: AtomicU32 = AtomicU32::new(0);

fn step(what: &str) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if !cfg!(debug_assertions) {
        return;
    }
    if let Some(stop) = std::env::var(FAULT_STEP_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        if n == stop {
            eprintln!("nbdcrypt: fault injection: stopping after step {n} ({what})");
            std::process::abort();
        }
    }
}

/// Write `data` at byte `at` of the image: one step.
pub(crate) fn write_step(
    file: &File,
    path: &Path,
    data: &[u8],
    at: u64,
    what: &str,
) -> Result<(), VolumeError> {
    super::store::write_all_at(file, data, at).map_err(|e| VolumeError::Io {
        op: "write",
        path: path.to_owned(),
        offset: at,
        source: e,
    })?;
    step(what);
    Ok(())
}

/// Read all of `buf` from byte `at` of the image, through the fault hook of `store.rs` as the
/// writes and syncs are (not a numbered step: a read changes nothing). Errors:
/// [`VolumeError::Io`] with `op` (what was being read, e.g. `"read keyslot area"`) and `at`.
pub(crate) fn read_step(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    at: u64,
    op: &'static str,
) -> Result<(), VolumeError> {
    super::store::read_exact_at(file, buf, at).map_err(|e| VolumeError::Io {
        op,
        path: path.to_owned(),
        offset: at,
        source: e,
    })
}

/// `fdatasync` the image: one step.
pub(crate) fn sync_step(file: &File, path: &Path, what: &str) -> Result<(), VolumeError> {
    super::store::sync_data(file).map_err(|e| VolumeError::Io {
        op: "fdatasync",
        path: path.to_owned(),
        offset: 0,
        source: e,
    })?;
    step(what);
    Ok(())
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
fn prepare(
    path: &Path,
    lh: &LoadedHeader,
    md: &Metadata,
) -> Result<Vec<(Vec<u8>, u64)>, VolumeError> {
    let mut copies = encode_copies(path, &lh.header, md, lh.max_seqid + 1)?;
    // The new version must itself pass every check a reader applies.
    for (bytes, at) in &copies {
        format::decode_copy(bytes, *at).map_err(|e| VolumeError::from_format(path, e))?;
    }
    if lh.header.copy == Copy::Secondary {
        copies.reverse(); // the primary was the damaged one: rewrite it first
    }
    Ok(copies)
}

/// Commit `md` as the next metadata version of the image loaded as `lh` ([`prepare`], then
/// [`write_prepared`]).
fn commit(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    md: &Metadata,
    before: Before,
) -> Result<(), VolumeError> {
    let copies = prepare(path, lh, md)?;
    write_prepared(file, path, lh, &copies, before)
}

/// What a failed commit that left the previous metadata in force means: the detail, state
/// and fix of its [`VolumeError::Update`].
type Before = (String, UpdateState, String);

/// Nothing written before the commit is used by the metadata in force.
fn nothing_before() -> Before {
    (
        "the previous header is in force".into(),
        UpdateState::Unchanged,
        retry_fix(),
    )
}

/// [`write_copies`] of `copies` from [`prepare`]; a failure becomes [`VolumeError::Update`]
/// with the state read back (`outcome.rs`), `before` when the new version is not in force.
fn write_prepared(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    copies: &[(Vec<u8>, u64)],
    before: Before,
) -> Result<(), VolumeError> {
    let c = Commit {
        new_seqid: lh.max_seqid + 1,
        hdr_size: lh.header.hdr_size,
    };
    write_copies(file, path, copies).map_err(|e| commit_failed(file, path, &c, e, before))
}

/// A failure before anything the metadata in force uses was written.
fn unchanged(path: &Path, detail: &str, e: VolumeError) -> VolumeError {
    update_error(path, UpdateState::Unchanged, detail.into(), retry_fix(), e)
}

/// Parameters (KDF chosen or benchmarked) and place of a new 512-bit `luks2` keyslot area:
/// `(params, offset, size)`, size rounded up to 4096 bytes. Errors: bad KDF costs; no room
/// left in the keyslots area.
fn new_area(lh: &LoadedHeader, kdf: &KdfChoice) -> Result<(KeyslotParams, u64, u64), VolumeError> {
    let params = KeyslotParams {
        kdf: choose_kdf(kdf)?,
        area_key_size: VOLUME_KEY_SIZE,
        key_size: VOLUME_KEY_SIZE,
        stripes: AF_STRIPES,
        af_hash: HashAlg::Sha256,
    };
    let size = af_material_len(VOLUME_KEY_SIZE as u64, AF_STRIPES as u64).div_ceil(4096) * 4096;
    let at = free_area(lh, size).ok_or_else(|| {
        VolumeError::InvalidArgument("no room left in the keyslots area for a new keyslot".into())
    })?;
    Ok((params, at, size))
}

/// A 4096-aligned free byte range of `size` bytes in the keyslots area, first fit.
fn free_area(lh: &LoadedHeader, size: u64) -> Option<u64> {
    let start = 2 * lh.header.hdr_size;
    let end = start + lh.metadata.config.keyslots_size;
    let mut used: Vec<(u64, u64)> = lh
        .metadata
        .keyslots
        .values()
        .map(|k| (k.area.offset, k.area.offset + k.area.size))
        .collect();
    used.sort();
    let mut at = start;
    for (a, b) in used {
        if at + size <= a {
            return Some(at);
        }
        at = at.max(b.div_ceil(4096) * 4096);
    }
    (at + size <= end).then_some(at)
}

/// The digest bound to the data segment, by id.
fn segment_digest_id(path: &Path, md: &Metadata) -> Result<Id, VolumeError> {
    let d = format::segment_digest(md).map_err(|e| VolumeError::from_format(path, e))?;
    Ok(Id(d.id))
}

/// Check that `vk` is this volume's key (the segment digest, constant time).
pub fn verify_volume_key(path: &Path, lh: &LoadedHeader, vk: &[u8]) -> Result<(), VolumeError> {
    let d = format::segment_digest(&lh.metadata).map_err(|e| VolumeError::from_format(path, e))?;
    if vk.len() != VOLUME_KEY_SIZE
        || !verify_digest(HashAlg::Sha256, d.iterations, &d.salt, vk, &d.digest)?
    {
        return Err(VolumeError::InvalidArgument(
            "the volume key does not match this volume's digest".into(),
        ));
    }
    Ok(())
}

/// What [`add_keyslot`] creates.
pub struct NewKeyslot<'a> {
    /// The new keyslot's passphrase.
    pub passphrase: &'a [u8],
    /// Its id, or `None` for the lowest free one.
    pub slot: Option<u32>,
    /// KDF and cost.
    pub kdf: &'a KdfChoice,
    /// A token to add in the same commit (its `keyslots` is set to the new slot).
    pub token: Option<serde_json::Value>,
}

/// Add a `luks2` keyslot holding `vk` under `new.passphrase` (`format-spec.md` §7.1): the area is
/// written, synced, read back and unlocked in memory with `new_pass` before the header that
/// refers to it is committed. With `token`, that JSON object is added as a new token in the same
/// commit, its `keyslots` set to the new slot. Returns the keyslot id (`slot`, or the lowest
/// free one).
///
/// Errors: [`VolumeError::InvalidArgument`] for a slot in use or out of range, "All key slots
/// full." at [`MAX_KEYSLOTS`], no room in the keyslots area, bad KDF costs;
/// [`VolumeError::Io`] on write failures (the header is then unchanged).
pub fn add_keyslot(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    vk: &VolumeKey,
    new: NewKeyslot<'_>,
) -> Result<u32, VolumeError> {
    let NewKeyslot {
        passphrase: new_pass,
        slot,
        kdf,
        token,
    } = new;
    let id = pick_slot(lh, slot)?;
    let (params, at, size) = new_area(lh, kdf)?;
    let mut md = lh.metadata.clone();
    md.keyslots
        .insert(Id(id), keyslot_json(&params.kdf, at, size));
    let did = segment_digest_id(path, &md)?;
    let digest = md.digests.get_mut(&did).expect("digest exists");
    digest.keyslots.push(id.to_string());
    digest
        .keyslots
        .sort_by_key(|k| k.parse::<u32>().unwrap_or(u32::MAX));
    if let Some(mut t) = token {
        t["keyslots"] = serde_json::json!([id.to_string()]);
        let tid = (0..)
            .find(|n| !md.tokens.contains_key(&Id(*n)))
            .expect("a free token id");
        md.tokens.insert(Id(tid), t);
    }
    // Everything that can be refused is checked before the first byte is written.
    let copies = prepare(path, lh, &md)?;
    write_area(file, path, &params, new_pass, vk, at)
        .map_err(|e| unchanged(path, "the new keyslot area lies in unused space", e))?;
    write_prepared(file, path, lh, &copies, nothing_before())?;
    Ok(id)
}

fn pick_slot(lh: &LoadedHeader, slot: Option<u32>) -> Result<u32, VolumeError> {
    match slot {
        Some(s) if s >= MAX_KEYSLOTS => Err(VolumeError::InvalidArgument(format!(
            "keyslot {s} is out of range (0..{})",
            MAX_KEYSLOTS - 1
        ))),
        Some(s) if lh.metadata.keyslots.contains_key(&Id(s)) => Err(VolumeError::InvalidArgument(
            format!("keyslot {s} is already in use"),
        )),
        Some(s) => Ok(s),
        None => (0..MAX_KEYSLOTS)
            .find(|s| !lh.metadata.keyslots.contains_key(&Id(*s)))
            .ok_or_else(|| VolumeError::InvalidArgument("All key slots full.".into())),
    }
}

/// Wrap `vk`, write the area at `at`, sync, and prove it unlocks with `pass` from the disk.
fn write_area(
    file: &File,
    path: &Path,
    params: &KeyslotParams,
    pass: &[u8],
    vk: &VolumeKey,
    at: u64,
) -> Result<(), VolumeError> {
    let material = wrap_key(params, pass, vk.expose())?;
    write_step(file, path, &material, at, "keyslot area")?;
    sync_step(file, path, "sync keyslot area")?;
    let mut back = vec![0u8; material.len()];
    read_step(file, path, &mut back, at, "read back keyslot area")?;
    let again = unwrap_key(params, pass, &back)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(again.expose(), vk.expose())) {
        return Err(VolumeError::Io {
            op: "verify keyslot area",
            path: path.to_owned(),
            offset: at,
            source: std::io::Error::other("the keyslot area read back does not unlock"),
        });
    }
    Ok(())
}

/// Overwrite a keyslot's area with random bytes and sync: one write, one sync step.
fn wipe_area(file: &File, path: &Path, lh: &LoadedHeader, slot: u32) -> Result<(), VolumeError> {
    let ks = &lh.metadata.keyslots[&Id(slot)];
    let noise = crate::crypto::random_bytes(ks.area.size as usize)?;
    write_step(file, path, &noise, ks.area.offset, "wipe keyslot area")?;
    sync_step(file, path, "sync wiped keyslot area")
}

/// Drop the `nbdcrypt-recovery` tokens of `slot` and those left naming no keyslot: a recovery
/// token without its recovery keyslot means nothing. Other tokens are kept, as cryptsetup does.
fn drop_recovery_tokens(md: &mut Metadata, slot: u32) {
    let name = serde_json::Value::from(slot.to_string());
    md.tokens.retain(|_, t| {
        t["type"] != format::RECOVERY_TOKEN
            || t["keyslots"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && !a.contains(&name))
    });
}

/// Remove keyslot `slot` (`format-spec.md` §7.2): its area is overwritten with random bytes and
/// synced (revocation, LUKS2 spec §4.4), then the metadata without it is committed.
///
/// Errors: [`VolumeError::InvalidArgument`] when the slot is not in use.
pub fn kill_keyslot(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    slot: u32,
) -> Result<(), VolumeError> {
    if !lh.metadata.keyslots.contains_key(&Id(slot)) {
        return Err(VolumeError::InvalidArgument(format!(
            "keyslot {slot} is not in use"
        )));
    }
    let area = &lh.metadata.keyslots[&Id(slot)].area;
    let mut old = vec![0u8; area.size as usize];
    read_step(file, path, &mut old, area.offset, "read keyslot area")?;
    let img = path.display();
    let finish = format!("run `nbdcrypt kill-slot {img} {slot}` to finish removing it");
    wipe_area(file, path, lh, slot).map_err(|e| {
        let mut now = vec![0u8; old.len()];
        match file.read_exact_at(&mut now, area.offset) {
            Ok(()) if now == old => unchanged(path, "the keyslot area was not overwritten", e),
            _ => update_error(
                path,
                UpdateState::KeysDestroyed,
                format!("keyslot {slot}'s area is partly overwritten (its passphrase no longer opens) and the header still lists it"),
                finish.clone(),
                e,
            ),
        }
    })?;
    let mut md = lh.metadata.clone();
    md.keyslots.remove(&Id(slot));
    let name = slot.to_string();
    for d in md.digests.values_mut() {
        d.keyslots.retain(|k| *k != name);
    }
    for t in md.tokens.values_mut() {
        if let Some(ks) = t.get_mut("keyslots").and_then(|v| v.as_array_mut()) {
            ks.retain(|k| k.as_str() != Some(name.as_str()));
        }
    }
    drop_recovery_tokens(&mut md, slot);
    let before = (
        format!("keyslot {slot}'s area was wiped (its passphrase no longer opens) and the header still lists it"),
        UpdateState::KeysDestroyed,
        finish,
    );
    commit(file, path, lh, &md, before)
}

/// Replace the passphrase of keyslot `slot` (`format-spec.md` §7.3), as `cryptsetup
/// luksChangeKey`: the key goes to a new area (written, synced, verified), the metadata
/// pointing the slot at it is committed, then the old area is wiped.
///
/// Errors: as [`add_keyslot`].
pub fn change_keyslot(
    file: &File,
    path: &Path,
    lh: &LoadedHeader,
    slot: u32,
    vk: &VolumeKey,
    new_pass: &[u8],
    kdf: &KdfChoice,
) -> Result<(), VolumeError> {
    let (params, at, size) = new_area(lh, kdf)?;
    let mut md = lh.metadata.clone();
    let mut ks = keyslot_json(&params.kdf, at, size);
    ks.priority = md.keyslots[&Id(slot)].priority;
    md.keyslots.insert(Id(slot), ks);
    // The slot now holds a passphrase, not a recovery key.
    drop_recovery_tokens(&mut md, slot);
    let copies = prepare(path, lh, &md)?;
    write_area(file, path, &params, new_pass, vk, at)
        .map_err(|e| unchanged(path, "the new keyslot area lies in unused space", e))?;
    write_prepared(file, path, lh, &copies, nothing_before())?;
    wipe_area(file, path, lh, slot).map_err(|e| {
        let old = &lh.metadata.keyslots[&Id(slot)].area;
        // Where a later key change would put its new area: over the old one, or not.
        let after = LoadedHeader {
            metadata: md.clone(),
            ..lh.clone()
        };
        let fix = if free_area(&after, size) == Some(old.offset) {
            format!("run `nbdcrypt change-key {}` again once the disk has space: its new keyslot area goes over the old one", path.display())
        } else {
            "the old key material stays on the disk until that area is reused by a new keyslot".into()
        };
        update_error(
            path,
            UpdateState::TookEffect,
            format!(
                "the old keyslot area ({} bytes at offset {}) was not wiped: the old passphrase no longer opens, but its key material is still on the disk",
                old.size, old.offset
            ),
            fix,
            e,
        )
    })
}

/// Wipe every keyslot (as `cryptsetup erase`, `format-spec.md` §7.5): the whole keyslots area is
/// overwritten with random bytes and synced, then metadata without keyslots is committed (the
/// digest stays, bound to no keyslot). Afterwards no passphrase opens either header copy.
pub fn erase(file: &File, path: &Path, lh: &LoadedHeader) -> Result<(), VolumeError> {
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
    let want = super::header_io::header_area_len(&h, &md);
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
/// backup is never written. The image must be longer than the backup (a detached header file: at least as long). A restore stopped
/// before its header writes leaves neither header able to open: run it again.
pub fn restore_header(
    file: &File,
    path: &Path,
    bytes: &[u8],
    image_seqid: Option<u64>,
) -> Result<(), VolumeError> {
    let (h, md) = check_backup(path, bytes)?;
    let len = super::image_len(file, path)?;
    // A detached header file (data at offset 0 elsewhere) is exactly the backup's size.
    let detached = md.segments.values().next().is_some_and(|s| s.offset == 0);
    if len < bytes.len() as u64 || (len == bytes.len() as u64 && !detached) {
        return Err(VolumeError::InvalidArgument(format!(
            "the image ({len} bytes) is not larger than the header backup ({} bytes)",
            bytes.len()
        )));
    }
    let seqid = image_seqid.unwrap_or(0).max(h.seqid) + 1;
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
