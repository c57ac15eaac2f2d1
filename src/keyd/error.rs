//! The errors of `nbdcrypt-keyd` commands: one [`KeydError`] variant per failure class;
//! every one exits 1 (usage errors are clap's, exit 2).

use std::path::PathBuf;

use crate::keyservice::server;
use crate::keyservice::store::StoreError;

/// A failure of an `nbdcrypt-keyd` command (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum KeydError {
    /// From the store (database, root key, certificates).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// From the HTTPS server of `serve`.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// A file (or the runtime) that cannot be read, created or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or what was being started).
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `audit verify` found a row that breaks the hash chain.
    #[error("audit chain broken at row {seq}: {problem}")]
    AuditBroken {
        /// The row's sequence number.
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
    /// `join` failed (bad arguments, files in the way, or the service's refusal).
    #[error("join: {0}")]
    Join(String),
}
