//! Command-line arguments shared by several `nbdcrypt` commands (clap derive): the detached
//! header, how an existing keyslot is unlocked, the KDF of a new keyslot, the discard policy,
//! and the value parsers (sizes, sector sizes, `NAME=PATH`). Flattened into each command's
//! own arguments; nothing here runs a command.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::volume::{self, KdfChoice, KdfKind};

use super::unlock::KeySource;

/// `--header FILE`: a detached LUKS2 header (`format-spec.md` §1.1).
#[derive(clap::Args)]
pub struct HeaderArg {
    /// Detached LUKS2 header file (as cryptsetup's --header): the header and keyslots are read
    /// from (and written to) FILE, and IMAGE holds only the encrypted data, from offset 0.
    #[arg(long, value_name = "FILE")]
    pub header: Option<PathBuf>,
}

/// `--pbkdf`: the password-based KDF of a new keyslot.
#[derive(Clone, Copy, ValueEnum)]
pub enum PbkdfArg {
    Argon2id,
    Argon2i,
    Pbkdf2,
}

/// How an existing keyslot is opened: a passphrase, or a recovery key.
#[derive(clap::Args)]
pub struct Unlocker {
    /// Read the passphrase from FILE byte for byte (`-` = all of stdin). Without it: a terminal
    /// prompt, or one line of stdin.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Unlock with a recovery key instead of a passphrase: from FILE, or typed at the prompt.
    #[arg(long, value_name = "FILE", num_args = 0..=1, conflicts_with = "key_file")]
    pub recovery_key: Option<Option<PathBuf>>,
}

impl Unlocker {
    /// Where the secret comes from: `--recovery-key`, else `--key-file`, else the prompt.
    pub fn source(&self) -> KeySource {
        match (&self.recovery_key, &self.key_file) {
            (Some(f), _) => KeySource::Recovery(f.clone()),
            (None, Some(f)) => KeySource::KeyFile(f.clone()),
            (None, None) => KeySource::Prompt,
        }
    }
}

/// [`Unlocker`] and `--key-slot`: which keyslot to try.
#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub unlock: Unlocker,
    /// Try only this keyslot.
    #[arg(long, short = 'S', value_name = "N", value_parser = parse_keyslot)]
    pub key_slot: Option<u32>,
}

/// KDF cost of a new keyslot, with cryptsetup's flag names, units and defaults.
#[derive(clap::Args)]
pub struct KdfArgs {
    /// Password-based KDF of the new keyslot.
    #[arg(long, value_enum, default_value = "argon2id")]
    pbkdf: PbkdfArg,
    /// Benchmark the KDF to take this long to unlock, milliseconds.
    #[arg(long, short = 'i', value_name = "MS", default_value_t = 2000)]
    iter_time: u32,
    /// Argon2 memory cost in KiB (capped at half of RAM).
    #[arg(long, value_name = "KIB", default_value_t = 1 << 20)]
    pbkdf_memory: u32,
    /// Argon2 parallel lanes (1-4, at most the CPU count).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pbkdf_parallel: u32,
    /// PBKDF2 iterations or Argon2 time cost; skips the benchmark.
    #[arg(long, value_name = "N")]
    pbkdf_force_iterations: Option<u32>,
}

impl KdfArgs {
    /// The volume layer's KDF choice for these flags.
    pub fn choice(&self) -> KdfChoice {
        KdfChoice {
            kind: match self.pbkdf {
                PbkdfArg::Argon2id => KdfKind::Argon2id,
                PbkdfArg::Argon2i => KdfKind::Argon2i,
                PbkdfArg::Pbkdf2 => KdfKind::Pbkdf2,
            },
            iter_time_ms: self.iter_time,
            memory_kib: self.pbkdf_memory,
            parallel: self.pbkdf_parallel,
            force_iterations: self.pbkdf_force_iterations,
        }
    }
}

/// cryptsetup's warning on discards, word for word (`cryptsetup-open(8)` of cryptsetup 2.6,
/// `--allow-discards`), as a literal for `concat!`.
macro_rules! cryptsetup_discard_warning {
    () => {
        "This command can have a negative security impact because it can make \
         filesystem-level operations visible on the physical device. For example, information \
         leaking filesystem type, used space, etc. may be extractable from the physical device \
         if the discarded blocks can be located later. If in doubt, do not use it."
    };
}

/// cryptsetup's warning on discards; `dump`, `open` and `--help` repeat it where passdown
/// applies.
pub const CRYPTSETUP_DISCARD_WARNING: &str = cryptsetup_discard_warning!();

/// The long help of `--discard` (`open`, `demo`).
pub const DISCARD_LONG_HELP: &str = concat!(
    "What TRIM (discard) requests do.\n",
    "  ignore:   TRIM succeeds and changes nothing; nothing about usage leaks. Never-written \
     sectors read as decrypted noise, as under cryptsetup.\n",
    "  passdown: TRIM punches holes in the image file (the part of each request aligned to \
     4096 bytes, or to the sector size or the filesystem's block size if larger; fallocate \
     PUNCH_HOLE), which read back as zeroes and are reported as holes by \
     NBD block status (base:allocation). The holes show anyone who can read the image file, \
     without a key, which parts of the volume are unused (like cryptsetup --allow-discards).\n\n",
    "WARNING (cryptsetup-open(8) on --allow-discards): \"",
    cryptsetup_discard_warning!(),
    "\"\n\n",
    "The LUKS2 header flag allow-discards (cryptsetup --persistent --allow-discards) is not \
     honoured by itself: only --discard passdown discards."
);

/// `--discard` of `open` and `demo`.
#[derive(Clone, Copy, ValueEnum)]
pub enum DiscardArg {
    /// TRIM is a no-op (default).
    Ignore,
    /// TRIM punches holes in the image (leaks usage).
    Passdown,
}

impl DiscardArg {
    /// The volume layer's policy.
    pub fn policy(self) -> volume::Discard {
        match self {
            DiscardArg::Ignore => volume::Discard::Ignore,
            DiscardArg::Passdown => volume::Discard::Passdown,
        }
    }
}

/// Parse `NAME=PATH` (`--export`, `serve --key-file`): the name is everything before the first
/// `=` and must not be empty.
pub fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not NAME=PATH")),
    }
}

/// Parse a keyslot number: 0 to 31 (LUKS2 has 32 keyslots, `volume::MAX_KEYSLOTS`), so 40 is
/// "out of range", not "not active" (cryptsetup: "Key slot 40 is invalid").
pub fn parse_keyslot(s: &str) -> Result<u32, String> {
    let max = crate::volume::MAX_KEYSLOTS - 1;
    match s.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("keyslot {s} is out of range 0-{max}")),
    }
}

/// Parse `--sector-size`: 512 or 4096.
pub fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("sector size {s} is not supported (512 or 4096)")),
    }
}

/// Parse a size: bytes, or a number with a K/M/G/T suffix (powers of 1024; `KiB`, `M`, `MB`
/// all accepted as binary units, as `truncate -s` and cryptsetup do).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1G, 64M, 1048576)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown size unit {unit:?} in {s:?}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn named_paths_and_sector_sizes() {
        assert_eq!(
            parse_named_path("a=b=c"),
            Ok(("a".to_string(), PathBuf::from("b=c")))
        );
        assert!(parse_named_path("=x").is_err());
        assert!(parse_named_path("x=").is_err());
        assert!(parse_named_path("x").is_err());
        assert_eq!(parse_sector_size("4096"), Ok(4096));
        assert!(parse_sector_size("1024").is_err());
    }

    /// `--recovery-key` (with or without FILE) beats nothing else: clap refuses it beside
    /// `--key-file`; alone, each flag gives its source, and no flag the prompt.
    #[test]
    fn unlocker_flags_give_one_key_source() {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            u: Unlocker,
        }
        let source = |args: &[&str]| {
            <T as clap::Parser>::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
                .map(|t| t.u.source())
        };
        assert!(matches!(source(&[]).unwrap(), KeySource::Prompt));
        assert!(
            matches!(source(&["-d", "k"]).unwrap(), KeySource::KeyFile(f) if f == Path::new("k"))
        );
        assert!(matches!(
            source(&["--recovery-key"]).unwrap(),
            KeySource::Recovery(None)
        ));
        assert!(
            matches!(source(&["--recovery-key", "r"]).unwrap(), KeySource::Recovery(Some(f)) if f == Path::new("r"))
        );
        assert!(source(&["-d", "k", "--recovery-key"]).is_err());
    }
}
