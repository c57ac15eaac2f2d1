//! `nbdcrypt test-passphrase`: check that a passphrase (or recovery key) opens a keyslot;
//! exit 0 if one does, 2 if none does.

use std::path::PathBuf;

use crate::volume::Access;

use super::args::{HeaderArg, KeyArgs};
use super::error::CliError;
use super::passphrase::Prompt;
use super::unlock::{open_loaded, try_unlock, unlock_with_tries};

/// `nbdcrypt test-passphrase`.
#[derive(clap::Args)]
pub struct TestPassphraseArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    key: KeyArgs,
}

impl TestPassphraseArgs {
    /// Runs `test-passphrase`.
    pub fn run(self) -> Result<(), CliError> {
        let (image, key) = (self.image, self.key);
        let (o, lh) = open_loaded(&image, self.header.header.as_deref(), Access::Inspect)?;
        let k = unlock_with_tries(
            &key.unlock.source(),
            &image,
            Prompt::Unlock(&image),
            |pass| try_unlock(&o.header, &o.header_path, &lh, pass, key.key_slot),
        )?;
        eprintln!("Key slot {} unlocked.", k.keyslot);
        Ok(())
    }
}
