//! Keyslot changes (`format-spec.md` §7.1–§7.3): adding a keyslot (with a token in the same
//! commit), changing a keyslot's passphrase, and killing a keyslot. Each writes key material
//! before the metadata that points at it and wipes what the metadata no longer uses, so the
//! last good state is never lost; every write and sync is a step of the crash hook
//! (`store.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::crypto::VolumeKey;
use crate::format;
use crate::format::metadata::{Id, Metadata};

use super::commit::{commit, nothing_before, write_prepared};
use super::error::{UpdateState, VolumeError};
use super::header_io::{next_seqid, prepare, LoadedHeader};
use super::keyslot_create::{free_area, keyslot_json, new_area, write_area, KdfChoice};
use super::outcome::{unchanged, update_error};
use super::store::{read_step, sync_step, write_step};

/// The most keyslots a LUKS2 header holds here (cryptsetup's limit).
pub const MAX_KEYSLOTS: u32 = 32;

/// The digest bound to the data segment, by id.
fn segment_digest_id(path: &Path, md: &Metadata) -> Result<Id, VolumeError> {
    let d = format::segment_digest(md).map_err(|e| VolumeError::from_format(path, e))?;
    Ok(Id(d.id))
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
    // Refused before the area is wiped: the header could not list the change.
    next_seqid(path, lh.max_seqid)?;
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
