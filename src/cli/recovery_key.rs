//! `nbdcrypt recovery-key add`: a recovery key (BitLocker's recovery-password format,
//! `format-spec.md` §9.1) generated, stored as a new keyslot with an `nbdcrypt-recovery`
//! token, and printed once; with `--escrow`, sealed to the key service's officers first.

use std::path::{Path, PathBuf};

use crate::volume::{self, KdfChoice, NewKeyslot, VolumeError};

use super::args::{HeaderArg, KdfArgs, Unlocker};
use super::error::CliError;
use super::escrow;
use super::passphrase::Prompt;
use super::service_args::{ServiceArgs, ServiceIdentityArgs};
use super::unlock::{open_for_update, try_unlock, unlock_with_tries, KeySource};

/// `nbdcrypt recovery-key ...`.
#[derive(clap::Subcommand)]
pub enum RecoveryAction {
    /// Generate a recovery key (48 digits, 8 groups of 6), store it as a new keyslot with an
    /// `nbdcrypt-recovery` token, and print it once.
    #[command(after_help = super::docs::EX_RECOVERY_ADD)]
    Add(RecoveryAddArgs),
}

impl RecoveryAction {
    /// Runs the action.
    pub fn run(self) -> Result<(), CliError> {
        match self {
            RecoveryAction::Add(a) => a.run(),
        }
    }
}

/// `nbdcrypt recovery-key add`.
#[derive(clap::Args)]
pub struct RecoveryAddArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    unlock: Unlocker,
    /// The new keyslot's number (default: the lowest free one).
    #[arg(long, short = 'S', value_name = "N", value_parser = super::args::parse_keyslot)]
    key_slot: Option<u32>,
    #[command(flatten)]
    kdf: KdfArgs,
    /// Escrow the volume key, UUID and this recovery key to the key service at URL
    /// (repeatable, tried in order) before the keyslot is written: if the upload fails,
    /// nothing changes.
    #[arg(long, value_name = "URL")]
    escrow: Vec<String>,
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl RecoveryAddArgs {
    /// Runs `recovery-key add`.
    pub fn run(self) -> Result<(), CliError> {
        let escrow = match self.escrow.is_empty() {
            true => None,
            false => Some(self.service.args(&self.escrow)?),
        };
        recovery_key_add(
            &self.image,
            self.header.header.as_deref(),
            &self.unlock.source(),
            self.key_slot,
            &self.kdf.choice(),
            escrow.as_ref(),
        )
    }
}

/// `recovery-key add`: see the CLI help and `format-spec.md` §9.1. With `escrow`, the escrow
/// package (volume key, UUID and this recovery key, `format-spec.md` §9.3) is uploaded before
/// the keyslot is written, so a failed upload changes nothing (see `escrow.rs`).
fn recovery_key_add(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
    slot: Option<u32>,
    kdf: &KdfChoice,
    escrow: Option<&ServiceArgs<'_>>,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let vk = unlock_with_tries(source, image, Prompt::Existing, |p| {
        try_unlock(&file, &hpath, &lh, p, None)
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
                None => escrow::lowest_free_slot(&lh)?,
            };
            let recovery = escrow::RecoveryEntry {
                keyslot: slot,
                recovery_id: id.clone(),
                password: String::from_utf8_lossy(key.expose()).into_owned(),
            };
            escrow::escrow_volume(&lh.header.uuid, &vk, Some(recovery), service)
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
