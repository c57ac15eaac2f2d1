//! Whole-header commands: `erase` (wipe every keyslot), `header-backup`, `header-restore`
//! (cryptsetup's backup format, both ways) and `repair` (rewrite a damaged header copy from
//! the good one). Each writes through the crash-safe updates of `volume` (`format-spec.md`
//! §7) with the header-write locks, so a served image is busy (exit 5).

use std::path::{Path, PathBuf};

use crate::volume::{self, Access};

use super::args::HeaderArg;
use super::error::CliError;
use super::unlock::{confirm, open_for_update, open_loaded};

/// `nbdcrypt erase`.
#[derive(clap::Args)]
pub struct EraseArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
}

impl EraseArgs {
    /// Runs `erase`.
    /// `batch_mode`: the global `--batch-mode` (no confirmation).
    pub fn run(self, batch_mode: bool) -> Result<(), CliError> {
        erase(&self.image, self.header.header.as_deref(), batch_mode)
    }
}

/// `nbdcrypt header-backup`.
#[derive(clap::Args)]
pub struct HeaderBackupArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// The backup file to create (must not exist).
    #[arg(long, value_name = "FILE")]
    header_backup_file: PathBuf,
}

impl HeaderBackupArgs {
    /// Runs `header-backup`.
    pub fn run(self) -> Result<(), CliError> {
        header_backup(
            &self.image,
            self.header.header.as_deref(),
            &self.header_backup_file,
        )
    }
}

/// `nbdcrypt header-restore`.
#[derive(clap::Args)]
pub struct HeaderRestoreArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    header_backup_file: PathBuf,
}

impl HeaderRestoreArgs {
    /// Runs `header-restore`.
    /// `batch_mode`: the global `--batch-mode` (restore even a backup of another volume).
    pub fn run(self, batch_mode: bool) -> Result<(), CliError> {
        header_restore(
            &self.image,
            self.header.header.as_deref(),
            &self.header_backup_file,
            batch_mode,
        )
    }
}

/// `nbdcrypt repair`.
#[derive(clap::Args)]
pub struct RepairArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
}

impl RepairArgs {
    /// Runs `repair`.
    pub fn run(self) -> Result<(), CliError> {
        repair(&self.image, self.header.header.as_deref())
    }
}

/// `erase`: see the CLI help.
fn erase(image: &Path, header: Option<&Path>, batch: bool) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    confirm(
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
fn header_backup(image: &Path, header: Option<&Path>, backup: &Path) -> Result<(), CliError> {
    let (o, lh) = open_loaded(image, header, Access::Inspect)?;
    // A new file, never a symlink's target (read-only: a backup is not edited), written in
    // pieces (the header area is as long as the data offset) and synced; removed on failure.
    let mut out = nbdcrypt_luks2::fsutil::create_new(backup, 0o400)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", backup.display())))?;
    let copied = volume::copy_header_area(&o.header, &o.header_path, &lh, &mut out, backup)
        .and_then(|()| {
            out.sync_all().map_err(|e| volume::VolumeError::Io {
                op: "fsync",
                path: backup.to_owned(),
                offset: 0,
                source: e,
            })
        });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(backup);
        return Err(e.into());
    }
    eprintln!(
        "Header of {} saved to {}.",
        image.display(),
        backup.display()
    );
    Ok(())
}

/// `header-restore`: see the CLI help.
fn header_restore(
    image: &Path,
    header: Option<&Path>,
    backup: &Path,
    batch: bool,
) -> Result<(), CliError> {
    // Read in pieces, never whole: a backup is as long as its data offset.
    let bytes = std::fs::File::open(backup)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", backup.display())))?;
    let (backup_hdr, backup_md) = volume::check_backup(backup, &bytes)?;
    let o = volume::OpenedImage::open(image, header, Access::HeaderWrite)?;
    let (file, hpath) = (&o.header, o.header_path.as_path());
    // A valid header of another volume (another volume key) is not overwritten by accident,
    // nor a file without a valid header (cryptsetup asks too).
    let image_seqid = match o.load() {
        Ok(lh) => {
            // Another data offset or layout would move or overwrite the start of the data:
            // refused even with --batch-mode, as cryptsetup does. Nothing is written.
            volume::check_backup_fits((&lh.header, &lh.metadata), (&backup_hdr, &backup_md))?;
            if lh.header.uuid != backup_hdr.uuid && !batch {
                return Err(CliError::Usage(format!(
                    "the backup's UUID {} is not {}'s UUID {}: it belongs to another volume (add --batch-mode to restore it anyway)",
                    crate::format::escape_for_terminal(&backup_hdr.uuid),
                    image.display(),
                    crate::format::escape_for_terminal(&lh.header.uuid),
                )));
            }
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
            confirm(
                &format!(
                    "{} holds no valid LUKS2 header; restoring overwrites its first {} bytes",
                    image.display(),
                    bytes.metadata().map(|m| m.len()).unwrap_or(0)
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
fn repair(image: &Path, header: Option<&Path>) -> Result<(), CliError> {
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
