//! Keyslot commands with cryptsetup's names minus the `luks` prefix: `add-key`, `change-key`,
//! `remove-key`, `kill-slot`. Each takes the image with the header-write locks (a served image
//! is busy, exit 5), unlocks what it needs in memory, and changes the header through the
//! crash-safe update of `volume` (`format-spec.md` §7).

use std::path::{Path, PathBuf};

use crate::crypto::SecretBytes;
use crate::volume::{self, KdfChoice, LoadedHeader, NewKeyslot, VolumeError};

use super::args::{HeaderArg, KdfArgs, Unlocker};
use super::error::CliError;
use super::passphrase::{read_passphrase, Prompt};
use super::service_args::ServiceIdentityArgs;
use super::unlock::{open_for_update, try_unlock, unlock_with_tries, KeySource};

/// `nbdcrypt add-key`.
#[derive(clap::Args)]
pub struct AddKeyArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    unlock: Unlocker,
    /// The new passphrase, from FILE byte for byte.
    #[arg(long, value_name = "FILE")]
    new_keyfile: Option<PathBuf>,
    /// Use the raw volume key in FILE (64 bytes) instead of an existing passphrase.
    #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
    volume_key_file: Option<PathBuf>,
    /// The new keyslot's number (default: the lowest free one).
    #[arg(long, short = 'S', value_name = "N", value_parser = super::args::parse_keyslot)]
    key_slot: Option<u32>,
    #[command(flatten)]
    kdf: KdfArgs,
    /// Instead of a new passphrase: a random secret wrapped by the key service at URL
    /// (repeatable, tried in order), stored in an `nbdcrypt-keyservice` token.
    #[arg(long = "key-service", value_name = "URL", requires = "kek",
          conflicts_with_all = ["new_keyfile", "volume_key_file"])]
    key_service: Vec<String>,
    /// The key service's KEK that wraps the secret (with --key-service).
    #[arg(long, value_name = "NAME")]
    kek: Option<String>,
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl AddKeyArgs {
    /// Runs `add-key`: through the key service with `--key-service`, else a passphrase keyslot.
    pub fn run(self) -> Result<(), CliError> {
        let header = self.header.header.as_deref();
        if !self.key_service.is_empty() {
            return super::keyservice::add_key(
                &self.image,
                header,
                &self.unlock.source(),
                &self.service.args(&self.key_service)?,
                self.kek.as_deref().unwrap_or_default(),
                self.key_slot,
            );
        }
        add_key(
            &self.image,
            header,
            &self.unlock.source(),
            self.new_keyfile.as_deref(),
            self.volume_key_file.as_deref(),
            self.key_slot,
            &self.kdf.choice(),
        )
    }
}

/// `nbdcrypt change-key`.
#[derive(clap::Args)]
pub struct ChangeKeyArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    unlock: Unlocker,
    /// The new passphrase, from FILE byte for byte.
    #[arg(long, value_name = "FILE")]
    new_keyfile: Option<PathBuf>,
    /// Only this keyslot.
    #[arg(long, short = 'S', value_name = "N", value_parser = super::args::parse_keyslot)]
    key_slot: Option<u32>,
    #[command(flatten)]
    kdf: KdfArgs,
}

impl ChangeKeyArgs {
    /// Runs `change-key`.
    pub fn run(self) -> Result<(), CliError> {
        change_key(
            &self.image,
            self.header.header.as_deref(),
            &self.unlock.source(),
            self.new_keyfile.as_deref(),
            self.key_slot,
            &self.kdf.choice(),
        )
    }
}

/// `nbdcrypt remove-key`.
#[derive(clap::Args)]
pub struct RemoveKeyArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    unlock: Unlocker,
}

impl RemoveKeyArgs {
    /// Runs `remove-key`.
    /// `batch_mode`: the global `--batch-mode` (allow removing the last keyslot).
    pub fn run(self, batch_mode: bool) -> Result<(), CliError> {
        remove_key(
            &self.image,
            self.header.header.as_deref(),
            &self.unlock.source(),
            batch_mode,
        )
    }
}

/// `nbdcrypt kill-slot`.
#[derive(clap::Args)]
pub struct KillSlotArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// Keyslot number (0-31).
    #[arg(value_parser = super::args::parse_keyslot)]
    slot: u32,
    #[command(flatten)]
    unlock: Unlocker,
}

impl KillSlotArgs {
    /// Runs `kill-slot`.
    /// `batch_mode`: the global `--batch-mode` (no passphrase of another slot asked).
    pub fn run(self, batch_mode: bool) -> Result<(), CliError> {
        kill_slot(
            &self.image,
            self.header.header.as_deref(),
            self.slot,
            &self.unlock.source(),
            batch_mode,
        )
    }
}

/// `add-key` with a passphrase (or `--volume-key-file`): see the CLI help.
fn add_key(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
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
            super::unlock::try_verify_volume_key(&hpath, &lh, vk.expose())?;
            vk
        }
        None => {
            unlock_with_tries(source, image, Prompt::Existing, |p| {
                try_unlock(&file, &hpath, &lh, p, None)
            })?
            .key
        }
    };
    add_passphrase_keyslot(&file, &hpath, &lh, &vk, new_keyfile, slot, kdf)?;
    Ok(())
}

/// The second half of `add-key` (and of `recover`): reads the new passphrase (`new_keyfile`
/// byte for byte, or "Enter new passphrase for key slot" at a terminal), adds a keyslot for `vk` under it (`slot`, or the
/// lowest free one) with `kdf`, and says so. `vk` must already be known to be the volume key.
///
/// Returns the new keyslot's number. Errors: as [`read_passphrase`] and
/// [`volume::add_keyslot`].
pub(super) fn add_passphrase_keyslot(
    file: &std::fs::File,
    hpath: &Path,
    lh: &LoadedHeader,
    vk: &SecretBytes,
    new_keyfile: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<u32, CliError> {
    let new = read_passphrase(new_keyfile, Prompt::NewSlot)?;
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
fn change_key(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
    new_keyfile: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let old = unlock_with_tries(source, image, Prompt::ToChange, |p| {
        try_unlock(&file, &hpath, &lh, p, slot)
    })?;
    let new = read_passphrase(new_keyfile, Prompt::Changed)?;
    volume::change_keyslot(&file, &hpath, &lh, old.keyslot, &old.key, new.expose(), kdf)?;
    eprintln!("Key slot {} changed.", old.keyslot);
    Ok(())
}

/// `remove-key`: see the CLI help.
fn remove_key(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
    batch: bool,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let k = unlock_with_tries(source, image, Prompt::ToDelete, |p| {
        try_unlock(&file, &hpath, &lh, p, None)
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
fn kill_slot(
    image: &Path,
    header: Option<&Path>,
    slot: u32,
    source: &KeySource,
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
        unlock_with_tries(source, image, Prompt::Remaining, |p| {
            for o in &others {
                match try_unlock(&file, &hpath, &lh, p, Some(*o)) {
                    Ok(k) => return Ok(k),
                    Err(
                        VolumeError::WrongPassphrase
                        | VolumeError::NoUsableKeyslot { .. }
                        | VolumeError::Unsupported { .. }
                        | VolumeError::OutOfMemory { .. }
                        | VolumeError::TooSlow { .. },
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
