//! The errors of `nbdcrypt` commands and their exit codes: [`CliError`], one variant per
//! failure class, each mapped to the documented exit code ([`CliError::exit_code`]) and, where
//! one helps, to a hint line ([`CliError::hint`]).
//!
//! Exit codes (as cryptsetup's, `cryptsetup(8)` "RETURN CODES"): 0 success; 1 wrong parameters
//! or an invalid volume; 2 no key available with this passphrase; 3 out of memory; 4 wrong
//! device (image missing or unreadable); 5 device busy; 130 interrupted.

use std::path::{Path, PathBuf};

use crate::volume::VolumeError;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: wrong parameters, or not a valid (or supported) LUKS volume.
pub const EXIT_INVALID: i32 = 1;
/// Exit code: no keyslot opens with this passphrase.
pub const EXIT_NO_KEY: i32 = 2;
/// Exit code: out of memory.
pub const EXIT_NO_MEMORY: i32 = 3;
/// Exit code: wrong device (the image is missing or unreadable).
pub const EXIT_WRONG_DEVICE: i32 = 4;
/// Exit code: the image is in use by another process.
pub const EXIT_BUSY: i32 = 5;
/// Exit code: stopped by SIGINT or SIGTERM before finishing (`wipe`; 128 + SIGINT, as shells).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A failure of a command, already classified for its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments, or a file or service that cannot be used (exit 1).
    #[error("{0}")]
    Usage(String),
    /// A key file (or stdin) holds more than `limit` bytes (exit 1).
    #[error("key file {what} is larger than {limit} bytes")]
    KeyFileTooLarge {
        /// The file's path, or `stdin`.
        what: String,
        /// The largest key read, bytes.
        limit: u64,
    },
    /// A destructive command was not confirmed: no terminal to ask and no `--batch-mode`
    /// (exit 1). `what` says what would be lost.
    #[error("{what}; add --batch-mode to go ahead")]
    NotConfirmed {
        /// What the command would destroy.
        what: String,
    },
    /// The question of a destructive command was answered with something other than `YES`
    /// (exit 1).
    #[error("operation aborted")]
    Aborted,
    /// Every key service endpoint failed (exit 1); one line per endpoint, each escaped for
    /// the terminal (it quotes the endpoint URL of a header token).
    #[error("no key service endpoint worked:\n  {}", failures.iter().map(|f| crate::format::escape_for_terminal(f)).collect::<Vec<_>>().join("\n  "))]
    NoEndpoint {
        /// Each endpoint's failure, in the order tried.
        failures: Vec<String>,
    },
    /// From the volume layer.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// From the NBD server.
    #[error(transparent)]
    Nbd(#[from] crate::nbd::NbdError),
    /// TLS certificate, key or CA files that cannot be used (exit 1).
    #[error(transparent)]
    Tls(#[from] crate::nbd::TlsError),
    /// The kernel NBD device of `open --connect` and `close` (exit 4 for a missing or wrong
    /// device, 5 for a busy one, else 1).
    #[error(transparent)]
    Kernel(#[from] crate::nbd::kernel::KernelError),
    /// Stopped by a signal before finishing; the text says how to resume (exit 130).
    #[error("{0}")]
    Interrupted(String),
    /// Unlock through the key service failed and there is no terminal to fall back to a
    /// passphrase prompt (exit 2, as no usable key); lists every endpoint's failure.
    #[error("{0}")]
    KeyService(String),
    /// An error with a hint that depends on the input (shown instead of the generic one).
    #[error("{0}")]
    Hinted(Box<CliError>, String),
    /// An error of one export of `serve`, naming it; exit code and hint are the inner error's.
    #[error("{}", export_message(name, image, source))]
    Export {
        /// Export name.
        name: String,
        /// Its image.
        image: PathBuf,
        /// What went wrong.
        source: Box<CliError>,
    },
}

/// `export NAME: ERROR`, with the image added when the error does not already name it.
fn export_message(name: &str, image: &Path, e: &CliError) -> String {
    if e.names_path(image) {
        format!("export {name}: {e}")
    } else {
        format!("export {name} ({}): {e}", image.display())
    }
}

/// Whether the message of `v` names `path` (the path fields its text shows).
fn volume_error_names(v: &VolumeError, path: &Path) -> bool {
    match v {
        VolumeError::Device { path: p, .. }
        | VolumeError::NotLuks { path: p, .. }
        | VolumeError::Corrupt { path: p, .. }
        | VolumeError::DetachedHeader { path: p, .. }
        | VolumeError::Unsupported { path: p, .. }
        | VolumeError::NoUsableKeyslot { path: p, .. }
        | VolumeError::Busy { path: p }
        | VolumeError::Io { path: p, .. } => p == path,
        // Its text starts with its source's.
        VolumeError::Update { source, .. } => volume_error_names(source, path),
        _ => false,
    }
}

impl CliError {
    /// Whether this error's message already names `path` (so `serve` need not add it).
    fn names_path(&self, path: &Path) -> bool {
        match self {
            CliError::Volume(v) => volume_error_names(v, path),
            CliError::Hinted(inner, _) => inner.names_path(path),
            _ => false,
        }
    }

    /// The documented exit code of this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Hinted(inner, _) | CliError::Export { source: inner, .. } => {
                inner.exit_code()
            }
            CliError::Usage(_)
            | CliError::KeyFileTooLarge { .. }
            | CliError::NotConfirmed { .. }
            | CliError::Aborted
            | CliError::NoEndpoint { .. }
            | CliError::Nbd(_)
            | CliError::Tls(_) => EXIT_INVALID,
            CliError::Kernel(k) => {
                use crate::nbd::kernel::KernelError as K;
                match k {
                    K::NoModule(_) | K::NotNbd(_) => EXIT_WRONG_DEVICE,
                    K::Busy { .. } => EXIT_BUSY,
                    K::NotConnected(_) | K::Call { .. } => EXIT_INVALID,
                }
            }
            CliError::Interrupted(_) => EXIT_INTERRUPTED,
            CliError::KeyService(_) => EXIT_NO_KEY,
            CliError::Volume(v) => match v {
                VolumeError::WrongPassphrase => EXIT_NO_KEY,
                VolumeError::OutOfMemory { .. } => EXIT_NO_MEMORY,
                VolumeError::Device { .. } => EXIT_WRONG_DEVICE,
                VolumeError::Busy { .. } => EXIT_BUSY,
                _ => EXIT_INVALID,
            },
        }
    }

    /// The line printed after the error as `hint: ...`, if any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            CliError::Hinted(_, h) => Some(h),
            CliError::Export { source, .. } => source.hint(),
            CliError::Volume(v) => match v {
                VolumeError::WrongPassphrase => {
                    Some("check the passphrase; a --key-file is used byte for byte, a trailing newline included")
                }
                VolumeError::NotLuks { found: None, .. } => Some("create a volume with `nbdcrypt format IMAGE`"),
                VolumeError::NotLuks { found: Some(_), .. } => Some("this is not an nbdcrypt volume; `nbdcrypt format` would destroy what it holds"),
                VolumeError::DetachedHeader { .. } => {
                    Some("a detached header needs its data file: nbdcrypt COMMAND DATA-FILE --header HEADER-FILE")
                }
                VolumeError::Corrupt { .. } => Some("restore a header backup (`nbdcrypt header-restore`), or try `nbdcrypt repair` on a copy of the image"),
                VolumeError::Busy { .. } => Some("another nbdcrypt (or cryptsetup) has the image open; stop it first"),
                VolumeError::OutOfMemory { .. } => Some("free memory, or add a keyslot with a smaller --pbkdf-memory"),
                VolumeError::TooSlow { .. } => Some("a header from an untrusted source may ask for hours of KDF work; if this one is yours, raise --unlock-time-limit"),
                VolumeError::Update { fix, .. } => Some(fix),
                _ => None,
            },
            CliError::Kernel(crate::nbd::kernel::KernelError::Call { source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                Some("connecting and disconnecting NBD devices needs root (CAP_SYS_ADMIN)")
            }
            CliError::Tls(_) => Some(
                "--tls-cert, --tls-key and --tls-ca take PEM files as openssl writes them (see docs/tls.md)",
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export error adds the image unless the inner error names it already, by its path
    /// field (not by searching the text: a key file named after the image is not the image).
    #[test]
    fn export_errors_name_the_image_once() {
        let img = PathBuf::from("/v/a.img");
        let export = |source: CliError| CliError::Export {
            name: "a".into(),
            image: img.clone(),
            source: Box::new(source),
        };
        let busy = export(VolumeError::Busy { path: img.clone() }.into());
        assert_eq!(
            busy.to_string(),
            "export a: /v/a.img is in use by another process"
        );
        assert_eq!(busy.exit_code(), EXIT_BUSY);
        let wrong = export(VolumeError::WrongPassphrase.into());
        assert_eq!(
            wrong.to_string(),
            "export a (/v/a.img): No key available with this passphrase."
        );
        assert_eq!(wrong.exit_code(), EXIT_NO_KEY);
        let key = export(CliError::Usage(
            "cannot read key file /v/a.img.key: gone".into(),
        ));
        assert_eq!(
            key.to_string(),
            "export a (/v/a.img): cannot read key file /v/a.img.key: gone"
        );
        let hinted = export(CliError::Hinted(
            Box::new(
                VolumeError::NotLuks {
                    path: img.clone(),
                    found: None,
                }
                .into(),
            ),
            "h".into(),
        ));
        assert_eq!(
            hinted.to_string(),
            "export a: /v/a.img is not a valid LUKS device"
        );
        assert_eq!(hinted.hint(), Some("h"));
    }

    /// The typed usage errors keep the texts and exit code of the `Usage` strings they replace.
    #[test]
    fn typed_usage_errors_keep_their_text_and_exit_code() {
        let cases = [
            (
                CliError::KeyFileTooLarge {
                    what: "stdin".into(),
                    limit: 8 << 20,
                },
                "key file stdin is larger than 8388608 bytes",
            ),
            (
                CliError::NotConfirmed {
                    what: "x holds a header".into(),
                },
                "x holds a header; add --batch-mode to go ahead",
            ),
            (CliError::Aborted, "operation aborted"),
            (
                CliError::NoEndpoint {
                    failures: vec!["u1: refused".into(), "u2: timeout".into()],
                },
                "no key service endpoint worked:\n  u1: refused\n  u2: timeout",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.exit_code(), EXIT_INVALID);
            assert_eq!(e.hint(), None);
        }
    }
}
