//! Keyslot commands with cryptsetup's names minus the `luks` prefix: `add-key`, `change-key`,
//! `remove-key`, `kill-slot`. Each takes the image with the header-write locks (a served image
//! is busy, exit 5), unlocks what it needs in memory, and changes the header through the
//! crash-safe update of `volume` (`format-spec.md` §7).

use std::path::Path;

use crate::crypto::SecretBytes;
use crate::volume::{self, Access, KdfChoice, LoadedHeader, NewKeyslot, VolumeError};

use super::passphrase::{read_passphrase, unlock_with_tries, Prompt, Source};
use super::CliError;

pub(super) fn open_for_update(
    image: &Path,
    header: Option<&Path>,
) -> Result<(std::fs::File, std::path::PathBuf, LoadedHeader), CliError> {
    let (o, lh) = super::open_loaded(image, header, Access::HeaderWrite)?;
    Ok((o.header, o.header_path, lh))
}

/// `add-key`: see the CLI help.
pub fn add_key(
    image: &Path,
    header: Option<&Path>,
    source: Source<'_>,
    new_keyfile: Option<&Path>,
    volume_key_file: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let vk = match volume_key_file {
        Some(f) => {
            let vk = SecretBytes::new(std::fs::read(f).map_err(|e| {
                CliError::Usage(format!("cannot read volume key file {}: {e}", f.display()))
            })?);
            volume::verify_volume_key(&hpath, &lh, vk.expose())?;
            vk
        }
        None => {
            unlock_with_tries(source, image, |p| {
                super::try_unlock(&file, &hpath, &lh, p, None)
            })?
            .key
        }
    };
    add_passphrase_keyslot(&file, &hpath, &lh, &vk, image, new_keyfile, slot, kdf)?;
    Ok(())
}

/// The second half of `add-key` (and of `recover`): reads the new passphrase (`new_keyfile`
/// byte for byte, or the prompt for `image`), adds a keyslot for `vk` under it (`slot`, or the
/// lowest free one) with `kdf`, and says so. `vk` must already be known to be the volume key.
///
/// Returns the new keyslot's number. Errors: as [`read_passphrase`] and
/// [`volume::add_keyslot`].
#[allow(clippy::too_many_arguments)]
pub(super) fn add_passphrase_keyslot(
    file: &std::fs::File,
    hpath: &Path,
    lh: &LoadedHeader,
    vk: &SecretBytes,
    image: &Path,
    new_keyfile: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<u32, CliError> {
    let new = read_passphrase(new_keyfile, Prompt::New(image))?;
    let id = volume::add_keyslot(
        file,
        hpath,
        lh,
        vk,
        NewKeyslot {
            passphrase: new.expose(),
            slot,
            kdf,
            token: None,
        },
    )?;
    eprintln!("Key slot {id} created.");
    Ok(id)
}

/// `change-key`: see the CLI help.
pub fn change_key(
    image: &Path,
    header: Option<&Path>,
    source: Source<'_>,
    new_keyfile: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let old = unlock_with_tries(source, image, |p| {
        super::try_unlock(&file, &hpath, &lh, p, slot)
    })?;
    let new = read_passphrase(new_keyfile, Prompt::New(image))?;
    volume::change_keyslot(&file, &hpath, &lh, old.keyslot, &old.key, new.expose(), kdf)?;
    eprintln!("Key slot {} changed.", old.keyslot);
    Ok(())
}

/// `remove-key`: see the CLI help.
pub fn remove_key(
    image: &Path,
    header: Option<&Path>,
    source: Source<'_>,
    batch: bool,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let k = unlock_with_tries(source, image, |p| {
        super::try_unlock(&file, &hpath, &lh, p, None)
    })?;
    if lh.metadata.keyslots.len() == 1 && !batch {
        return Err(CliError::Usage(format!(
            "keyslot {} is the last one: the volume would become unusable (add --batch-mode to remove it anyway)",
            k.keyslot
        )));
    }
    volume::kill_keyslot(&file, &hpath, &lh, k.keyslot)?;
    eprintln!("Key slot {} removed.", k.keyslot);
    Ok(())
}

/// `kill-slot`: see the CLI help.
pub fn kill_slot(
    image: &Path,
    header: Option<&Path>,
    slot: u32,
    source: Source<'_>,
    batch: bool,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    if !lh
        .metadata
        .keyslots
        .contains_key(&crate::format::metadata::Id(slot))
    {
        return Err(VolumeError::InvalidArgument(format!("keyslot {slot} is not in use")).into());
    }
    if !batch {
        // Proof of authority: a passphrase that opens some other keyslot.
        let others: Vec<u32> = lh
            .metadata
            .keyslots
            .keys()
            .map(|k| k.0)
            .filter(|k| *k != slot)
            .collect();
        if others.is_empty() {
            return Err(CliError::Usage(format!(
                "keyslot {slot} is the last one: the volume would become unusable (add --batch-mode to kill it anyway)"
            )));
        }
        unlock_with_tries(source, image, |p| {
            for o in &others {
                match super::try_unlock(&file, &hpath, &lh, p, Some(*o)) {
                    Ok(k) => return Ok(k),
                    Err(
                        VolumeError::WrongPassphrase
                        | VolumeError::NoUsableKeyslot { .. }
                        | VolumeError::Unsupported { .. }
                        | VolumeError::OutOfMemory { .. },
                    ) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(VolumeError::WrongPassphrase)
        })?;
    }
    volume::kill_keyslot(&file, &hpath, &lh, slot)?;
    eprintln!("Key slot {slot} removed.");
    Ok(())
}

/// `erase`: see the CLI help.
pub fn erase(image: &Path, header: Option<&Path>, batch: bool) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    super::confirm(
        &format!(
            "erasing {} wipes every keyslot: no passphrase will open it",
            image.display()
        ),
        batch,
    )?;
    volume::erase(&file, &hpath, &lh)?;
    eprintln!("All keyslots of {} erased.", image.display());
    Ok(())
}

/// `header-backup`: see the CLI help.
pub fn header_backup(image: &Path, header: Option<&Path>, backup: &Path) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (o, lh) = super::open_loaded(image, header, Access::Inspect)?;
    let bytes = volume::header_bytes(&o.header, &o.header_path, &lh)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(backup)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", backup.display())))?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", backup.display())))?;
    eprintln!(
        "Header of {} saved to {}.",
        image.display(),
        backup.display()
    );
    Ok(())
}

/// `header-restore`: see the CLI help.
pub fn header_restore(
    image: &Path,
    header: Option<&Path>,
    backup: &Path,
    batch: bool,
) -> Result<(), CliError> {
    let bytes = std::fs::read(backup)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", backup.display())))?;
    let (_, backup_md) = volume::check_backup(backup, &bytes)?;
    let o = volume::OpenedImage::open(image, header, Access::HeaderWrite)?;
    let (file, hpath) = (&o.header, o.header_path.as_path());
    // A valid header of another volume (another volume key) is not overwritten by accident,
    // nor a file without a valid header (cryptsetup asks too).
    let image_seqid = match o.load() {
        Ok(lh) => {
            let digest = |md| {
                crate::format::segment_digest(md)
                    .map(|d| (d.salt, d.digest))
                    .ok()
            };
            if digest(&lh.metadata) != digest(&backup_md) && !batch {
                return Err(CliError::Usage(format!(
                    "the backup's volume key digest does not match {}'s data segment: it belongs to another volume (add --batch-mode to restore it anyway)",
                    image.display()
                )));
            }
            Some(lh.max_seqid)
        }
        Err(_) => {
            super::confirm(
                &format!(
                    "{} holds no valid LUKS2 header; restoring overwrites its first {} bytes",
                    image.display(),
                    bytes.len()
                ),
                batch,
            )?;
            None
        }
    };
    // A failed write is a `VolumeError::Update` naming the state and what to run.
    volume::restore_header(file, hpath, &bytes, image_seqid)?;
    eprintln!(
        "Header of {} restored from {}.",
        image.display(),
        backup.display()
    );
    Ok(())
}

/// `repair`: see the CLI help.
pub fn repair(image: &Path, header: Option<&Path>) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    if volume::repair(&file, &hpath, &lh)? {
        eprintln!("Both header copies of {} rewritten.", image.display());
    } else {
        eprintln!(
            "Both header copies of {} are good; nothing to repair.",
            image.display()
        );
    }
    Ok(())
}

/// `recovery-key add`: see the CLI help and `format-spec.md` §9.1. With `escrow`, the escrow
/// package (volume key, UUID and this recovery key, `format-spec.md` §9.3) is uploaded before
/// the keyslot is written, so a failed upload changes nothing (see [`super::escrow`]).
pub fn recovery_key_add(
    image: &Path,
    header: Option<&Path>,
    source: Source<'_>,
    slot: Option<u32>,
    kdf: &KdfChoice,
    escrow: Option<&super::keyservice::ServiceArgs<'_>>,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let vk = unlock_with_tries(source, image, |p| {
        super::try_unlock(&file, &hpath, &lh, p, None)
    })?
    .key;
    let key = crate::crypto::recovery::generate().map_err(VolumeError::from)?;
    let id: String = crate::crypto::random_bytes(4)
        .map_err(VolumeError::from)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = serde_json::json!({
        "type": crate::format::RECOVERY_TOKEN,
        "keyslots": [],
        "recovery_id": id,
    });
    let slot = match escrow {
        None => slot,
        Some(service) => {
            // The package names the keyslot, so it is chosen now (the header lock is held).
            let slot = match slot {
                Some(s) => s,
                None => super::escrow::lowest_free_slot(&lh)?,
            };
            let recovery = super::escrow::RecoveryEntry {
                keyslot: slot,
                recovery_id: id.clone(),
                password: String::from_utf8_lossy(key.expose()).into_owned(),
            };
            super::escrow::escrow_volume(&lh.header.uuid, &vk, Some(recovery), service)
                .map_err(|e| {
                    CliError::Hinted(
                        Box::new(e),
                        format!(
                            "nothing changed: {} has no new recovery key (the package is uploaded before the keyslot is written); run the command again when the key service works",
                            image.display()
                        ),
                    )
                })?;
            Some(slot)
        }
    };
    let n = volume::add_keyslot(
        &file,
        &hpath,
        &lh,
        &vk,
        NewKeyslot {
            passphrase: key.expose(),
            slot,
            kdf,
            token: Some(token),
        },
    )
    .map_err(|e| match escrow {
        None => CliError::from(e),
        Some(_) => CliError::Hinted(
            Box::new(e.into()),
            "the escrow package was uploaded but the keyslot was not written: the package's recovery password opens nothing, its volume key still recovers the volume (`nbdcrypt recover`); run `recovery-key add --escrow` again".into(),
        ),
    })?;
    eprintln!("Recovery key stored in key slot {n} (recovery id {id}). Write it down now; it is not shown again:");
    println!("{}", String::from_utf8_lossy(key.expose()));
    Ok(())
}
