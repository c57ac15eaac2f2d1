//! The store's error type ([`StoreError`], one variant per failure class) and the two
//! adapters the other files use to attach context to SQLite and file errors.

use std::path::{Path, PathBuf};

use crate::pki::PkiError;
use crate::wrap::WrapError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (including a failed audit write, which fails the whole operation).
    #[error("database {what}: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file of the data directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `init` on a directory that already holds a store.
    #[error("{} already holds a key service store", .0.display())]
    AlreadyInitialised(PathBuf),
    /// No store in the directory.
    #[error("{} holds no key service store (run `nbdcrypt-keyd init`)", .0.display())]
    NotInitialised(PathBuf),
    /// The root key file or passphrase does not open the store.
    #[error("the root key does not open this store ({0})")]
    RootKey(&'static str),
    /// A named object is missing.
    #[error("no {what} named {name:?}")]
    NotFound {
        /// `host`, `KEK`, `token`, ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A named object exists already.
    #[error("a {what} named {name:?} exists already")]
    Exists {
        /// `host`, `KEK`, `token`, ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// An argument is out of range (bad name, version, ...).
    #[error("{0}")]
    Invalid(String),
    /// Sealing or opening under the root key failed.
    #[error("root-key sealing: {0}")]
    Wrap(#[from] WrapError),
    /// An audit checkpoint could not be made, read or checked (the CA key or certificate is
    /// unusable, the log is empty, a checkpoint file does not parse).
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
    /// The audit chain is broken where an operation needs it whole (`audit prune`).
    #[error("audit chain broken at row {seq}: {problem}")]
    AuditBroken {
        /// The first bad row.
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Maps a SQLite error to [`StoreError::Db`] saying what was being done.
pub(super) fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { what, source }
}

/// Maps an I/O error on `path` to [`StoreError::Io`].
pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
