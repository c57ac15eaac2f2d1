//! Opening an image and unlocking a keyslot, shared by every command that needs the volume
//! key: where the secret comes from ([`KeySource`]), the tries at a prompt
//! ([`unlock_with_tries`]), the `--pbkdf-memory-limit` and
//! `--unlock-time-limit` every unlock obeys ([`try_unlock`]),
//! opening an image with its locks ([`open_loaded`], [`open_for_update`]), and the `YES`
//! question of destructive commands ([`confirm`]). Unlock through the key service is in
//! `keyservice.rs`; reading a passphrase is in `passphrase.rs`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::crypto::kdf::DEFAULT_UNLOCK_TIME_LIMIT_SECS;
use crate::volume::{self, Access, LoadedHeader, UnlockedKey, VolumeError};

use super::error::CliError;
use super::passphrase::{read_passphrase, Prompt};
use super::service_args::ServiceIdentity;

/// Passphrase attempts at a terminal prompt (cryptsetup's `--tries` default).
const TRIES: u32 = 3;

/// Where the secret that unlocks a keyslot comes from, built once from a command's flags.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `--key-file FILE`: a passphrase, byte for byte (`-` = all of stdin).
    KeyFile(PathBuf),
    /// `--recovery-key [FILE]`: a recovery key (`format-spec.md` §9.1) from FILE, or (`None`)
    /// prompted / one stdin line; checked group by group before any KDF runs.
    Recovery(Option<PathBuf>),
    /// No key flag, with a key service identity (`open`, `serve`): through the key service
    /// when the header has an `nbdcrypt-keyservice` token (`format-spec.md` §9.2), else (or
    /// when that fails at a terminal) as [`KeySource::Prompt`].
    KeyService(ServiceIdentity),
    /// No key flag: a passphrase from the terminal prompt, or one line of stdin.
    Prompt,
}

impl KeySource {
    /// The file the secret is read from (`None`: the prompt or one stdin line).
    pub fn file(&self) -> Option<&Path> {
        match self {
            KeySource::KeyFile(f) => Some(f),
            KeySource::Recovery(f) => f.as_deref(),
            KeySource::KeyService(_) | KeySource::Prompt => None,
        }
    }

    /// Whether the secret is a recovery key rather than a passphrase.
    pub fn is_recovery(&self) -> bool {
        matches!(self, KeySource::Recovery(_))
    }
}

/// `--pbkdf-memory-limit`, set once at start.
static MEMORY_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// Sets `--pbkdf-memory-limit` (KiB; `None`: half of RAM) for every later [`try_unlock`].
/// Only the first call counts.
pub fn set_memory_limit(kib: Option<u64>) {
    let _ = MEMORY_LIMIT.set(kib);
}

/// `--unlock-time-limit`, set once at start.
static TIME_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// Sets `--unlock-time-limit` (seconds of estimated KDF work per try; `None`:
/// [`DEFAULT_UNLOCK_TIME_LIMIT_SECS`]) for every later [`try_unlock`]. Only the first call counts.
pub fn set_time_limit(secs: Option<u64>) {
    let _ = TIME_LIMIT.set(secs);
}

/// [`volume::unlock_limited`] with the command line's memory and time limits.
pub fn try_unlock(
    file: &std::fs::File,
    image: &Path,
    lh: &LoadedHeader,
    passphrase: &[u8],
    keyslot: Option<u32>,
) -> Result<UnlockedKey, VolumeError> {
    if ANNOUNCE_KDF.take() {
        if let Some(ms) = volume::unlock_time_ms(lh, keyslot).filter(|ms| *ms >= ANNOUNCE_MIN_MS) {
            eprintln!("deriving key, about {} s", ms.div_ceil(1000));
        }
    }
    let limit = MEMORY_LIMIT.get().copied().flatten();
    volume::unlock_limited(file, image, lh, passphrase, keyslot, limit, time_limit())
}

thread_local! {
    /// Set by [`unlock_with_tries`] right after a passphrase was typed at the terminal: the
    /// next [`try_unlock`] says how long its KDF will take, so the pause after the prompt is
    /// not mistaken for a hang.
    static ANNOUNCE_KDF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Shortest KDF that [`try_unlock`] announces after a prompt, ms (a shorter one goes
/// unnoticed).
const ANNOUNCE_MIN_MS: u64 = 1000;

/// `--unlock-time-limit`, or its default.
fn time_limit() -> u64 {
    TIME_LIMIT
        .get()
        .copied()
        .flatten()
        .unwrap_or(DEFAULT_UNLOCK_TIME_LIMIT_SECS)
}

/// [`volume::verify_volume_key_limited`] with the command line's time limit (a volume key
/// given directly, e.g. `--volume-key-file`).
pub fn try_verify_volume_key(
    image: &Path,
    lh: &LoadedHeader,
    vk: &[u8],
) -> Result<(), VolumeError> {
    volume::verify_volume_key_limited(image, lh, vk, time_limit())
}

/// Prints the header's warnings on stderr, one `warning: ` line each.
pub fn warn_all(warnings: &[String]) {
    for w in warnings {
        // Warnings may quote header strings.
        eprintln!("warning: {}", crate::format::escape_lines_for_terminal(w));
    }
}

/// Open `image` (with its detached `header`, if any) with the locks of `access` and read its
/// header, printing the header's warnings.
pub fn open_loaded(
    image: &Path,
    header: Option<&Path>,
    access: Access,
) -> Result<(volume::OpenedImage, LoadedHeader), CliError> {
    let o = volume::OpenedImage::open(image, header, access)?;
    let lh = o.load()?;
    warn_all(&lh.warnings);
    Ok((o, lh))
}

/// [`open_loaded`] with the header-write locks (a served image is busy, exit 5), for the
/// commands that change the header: the header file, its path and the loaded header.
pub fn open_for_update(
    image: &Path,
    header: Option<&Path>,
) -> Result<(std::fs::File, PathBuf, LoadedHeader), CliError> {
    let (o, lh) = open_loaded(image, header, Access::HeaderWrite)?;
    Ok((o.header, o.header_path, lh))
}

/// Ask for `YES` on a terminal (as cryptsetup); without a terminal, refuse unless `batch`.
///
/// Errors: [`CliError::NotConfirmed`] without a terminal, [`CliError::Aborted`] for any
/// other answer.
pub fn confirm(what: &str, batch: bool) -> Result<(), CliError> {
    if batch {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed { what: what.into() });
    }
    eprint!("WARNING: {what}.\nAre you sure? (Type 'yes' in capital letters): ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim() != "YES" {
        return Err(CliError::Aborted);
    }
    Ok(())
}

/// Read the secret from `source` (at a terminal: asking with `prompt`) and try it with
/// `unlock`; at a terminal prompt a wrong
/// passphrase (or a mistyped recovery key) is asked again, up to three times in all.
/// [`KeySource::KeyService`] reads a passphrase as [`KeySource::Prompt`] (the service was
/// tried before).
///
/// Errors: as [`read_passphrase`]; [`CliError::Usage`] naming the mistyped group of a
/// recovery key; the last error of `unlock`.
pub fn unlock_with_tries<T>(
    source: &KeySource,
    image: &Path,
    prompt: Prompt<'_>,
    mut unlock: impl FnMut(&[u8]) -> Result<T, VolumeError>,
) -> Result<T, CliError> {
    let file = source.file();
    let tries = if file.is_none() && std::io::stdin().is_terminal() {
        TRIES
    } else {
        1
    };
    let mut attempt = 1;
    loop {
        let pass = if source.is_recovery() {
            let typed = read_passphrase(file, Prompt::Recovery(image))?;
            match crate::crypto::recovery::parse(typed.expose()) {
                Ok(k) => k,
                Err(e) if attempt < tries => {
                    eprintln!("{e}");
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(CliError::Usage(e.to_string())),
            }
        } else {
            read_passphrase(file, prompt)?
        };
        ANNOUNCE_KDF.set(tries > 1);
        let r = unlock(pass.expose());
        ANNOUNCE_KDF.set(false);
        match r {
            Err(VolumeError::WrongPassphrase) if attempt < tries => {
                eprintln!("{}", VolumeError::WrongPassphrase);
                attempt += 1;
            }
            // Typed at the terminal: the key-file hint does not apply.
            Err(VolumeError::WrongPassphrase) if tries > 1 => {
                return Err(CliError::Hinted(
                    Box::new(VolumeError::WrongPassphrase.into()),
                    format!(
                        "{tries} tries failed; `nbdcrypt dump {}` lists the keyslots",
                        crate::format::escape_for_terminal(&image.display().to_string())
                    ),
                ));
            }
            // One line of a piped stdin: the key-file hint does not apply either.
            Err(VolumeError::WrongPassphrase) if file.is_none() && !source.is_recovery() => {
                return Err(CliError::Hinted(
                    Box::new(VolumeError::WrongPassphrase.into()),
                    "check the passphrase: without --key-file, one line of stdin is read, without its newline".into(),
                ));
            }
            Err(VolumeError::WrongPassphrase)
                if !source.is_recovery() && pass.expose().ends_with(b"\n") =>
            {
                let file = file.map_or("stdin".into(), |f| f.display().to_string());
                return Err(CliError::Hinted(
                    Box::new(VolumeError::WrongPassphrase.into()),
                    format!("{file} ends with a newline, which is part of the passphrase; if it should not be, remove it (e.g. `truncate -s -1 {file}`)"),
                ));
            }
            r => return Ok(r?),
        }
    }
}
