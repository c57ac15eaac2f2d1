//! `nbdcrypt format`: create a LUKS2 volume (keyslot 0) in an image, asking before an existing
//! header is overwritten; then, as asked, escrow its volume key (`escrow.rs`) and wipe it
//! (`wipe.rs`).

use std::path::{Path, PathBuf};

use crate::format::escape_for_terminal;
use crate::format::probe::Signature;
use crate::format::DEFAULT_DATA_OFFSET;
use crate::volume::{self, Access, FormatOptions, VolumeError};

use super::args::{parse_sector_size, parse_size, HeaderArg, KdfArgs};
use super::error::CliError;
use super::escrow;
use super::passphrase::{read_passphrase, Prompt};
use super::service_args::ServiceIdentityArgs;
use super::unlock::{confirm, open_loaded, try_unlock};
use super::wipe;

/// `nbdcrypt format`.
#[derive(clap::Args)]
pub struct FormatArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// Create or extend the image to this size (bytes, or with K/M/G/T suffix, binary units);
    /// the volume is this minus the 16 MiB header (as cryptsetup on a file).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Make the volume this big (bytes, or K/M/G/T, binary units): the image file is created
    /// or extended to the volume plus the 16 MiB header (with --header, the volume alone), so
    /// a 1 GiB disk copied in fits (as `qemu-img create -f luks` sizes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "size")]
    volume_size: Option<u64>,
    /// Passphrase file, used byte for byte (`-` = all of stdin).
    #[arg(long, short = 'd', value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Encryption sector size in bytes.
    #[arg(long, default_value_t = 512, value_parser = parse_sector_size)]
    sector_size: u32,
    #[command(flatten)]
    kdf: KdfArgs,
    /// Volume label (at most 47 bytes).
    #[arg(long)]
    label: Option<String>,
    /// Then write encrypted zeros over the whole volume (as `nbdcrypt wipe`): it reads as
    /// zeros and the image's free space hides nothing. Interrupted, it is continued with
    /// `nbdcrypt wipe IMAGE --resume`.
    #[arg(long)]
    wipe: bool,
    /// Then escrow the volume key and UUID to the key service at URL (repeatable, tried in
    /// order), as `nbdcrypt escrow`; the service is checked before formatting.
    #[arg(long, value_name = "URL")]
    escrow: Vec<String>,
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl FormatArgs {
    /// Runs `format`: the question, the escrow preflight, the passphrase, the volume, then
    /// the escrow and the wipe.
    /// `batch_mode`: the global `--batch-mode` (no question before overwriting).
    pub fn run(self, batch_mode: bool) -> Result<(), CliError> {
        let image = self.image;
        confirm_overwrite(self.header.header.as_deref().unwrap_or(&image), batch_mode)?;
        let escrow_to = if self.escrow.is_empty() {
            None
        } else {
            let args = self.service.args(&self.escrow)?;
            escrow::preflight(&args)?;
            Some(args)
        };
        let size = match self.volume_size {
            Some(v) if self.header.header.is_some() => Some(v),
            Some(v) => Some(
                v.checked_add(DEFAULT_DATA_OFFSET)
                    .ok_or_else(|| CliError::Usage(format!("--volume-size {v} is too large")))?,
            ),
            None => self.size,
        };
        if size.is_none() && !image.exists() {
            return Err(CliError::Hinted(
                Box::new(CliError::Usage(format!(
                    "{} does not exist and no size was given",
                    escape_for_terminal(&image.display().to_string())
                ))),
                "give --volume-size SIZE (the volume, e.g. 1G) or --size SIZE (the whole file, header included)".into(),
            ));
        }
        let pass = read_passphrase(self.key_file.as_deref(), Prompt::New(&image))?;
        let opts = FormatOptions {
            size,
            sector_size: self.sector_size,
            kdf: self.kdf.choice(),
            label: self.label,
            header: self.header.header,
        };
        let uuid = volume::format(&image, &opts, pass.expose())?;
        let (_, lh) = open_loaded(&image, opts.header.as_deref(), Access::Inspect)?;
        let bytes = lh.segment.size;
        eprintln!(
            "formatted {} as LUKS2 (UUID {uuid}): volume {} ({bytes} bytes)",
            image.display(),
            indicatif::HumanBytes(bytes)
        );
        if let Some(args) = &escrow_to {
            escrow::after_format(
                &image,
                opts.header.as_deref(),
                pass.expose(),
                args,
                self.wipe,
            )?;
        }
        if self.wipe {
            let (o, lh) = open_loaded(&image, opts.header.as_deref(), Access::WriteExclusive)?;
            let key = try_unlock(&o.header, &o.header_path, &lh, pass.expose(), Some(0))?;
            wipe::wipe_volume(o, &lh, key, &image, false)?;
        }
        Ok(())
    }
}

/// Ask before `format` overwrites an existing LUKS header or recognisable data — a file
/// system, partition table, swap area, LVM volume ([`volume::probe_content`], cryptsetup's
/// "already contains a '...' superblock signature"). cryptsetup always asks; we ask only when
/// there is something to lose. `--batch-mode` skips the question.
fn confirm_overwrite(image: &Path, batch: bool) -> Result<(), CliError> {
    let Ok(file) = volume::open_image(image, Access::Inspect) else {
        return Ok(());
    };
    let found = volume::probe_content(&file);
    if let Some(found) = found.filter(|s| !matches!(s, Signature::Luks1 | Signature::Luks2)) {
        let what = format!(
            "{} already contains {} ('{}' signature); formatting destroys it",
            image.display(),
            found.describe(),
            found.name()
        );
        return confirm(&escape_for_terminal(&what), batch);
    }
    let has_header = matches!(
        volume::load_header(&file, image),
        Ok(_)
            | Err(VolumeError::Corrupt { .. })
            | Err(VolumeError::DetachedHeader { .. })
            | Err(VolumeError::Unsupported { .. })
    );
    if !has_header {
        return Ok(());
    }
    confirm(
        &format!(
            "{} already holds a LUKS header; formatting destroys it and every keyslot",
            image.display()
        ),
        batch,
    )
}
