//! The server's configuration and listener errors ([`NbdError`]): everything [`crate::serve`],
//! [`crate::Exports::new`] and socket activation ([`crate::activation`]) can refuse before or
//! while serving. A session's own failures are [`crate::SessionError`].

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of [`serve`](crate::serve), [`Exports::new`](crate::Exports::new) and socket
/// activation.
#[derive(Debug, Error)]
pub enum NbdError {
    /// No listener was given.
    #[error("no listen address given")]
    NoListeners,
    /// Binding a listener failed (address in use, permission, missing directory, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address, as `tcp:IP:PORT` or `unix:PATH`.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The Unix socket path exists and is not a socket; it is not deleted.
    #[error("cannot listen on unix:{}: path exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// The Unix socket path is a socket another process is serving on.
    #[error("cannot listen on unix:{}: another server is listening there", .0.display())]
    SocketInUse(PathBuf),
    /// An inherited descriptor ([`Listen::Fd`](crate::Listen::Fd)) is not a listening TCP or Unix stream socket.
    #[error("cannot listen on fd:{fd}: {reason}")]
    NotAListener {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead, or the error of the check.
        reason: String,
    },
    /// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` are malformed (sd_listen_fds(3)).
    #[error("socket activation: {0}")]
    Activation(String),
    /// No export was given.
    #[error("no export given")]
    NoExports,
    /// A configured export name is longer than 4096 bytes (proto.md "Conventions").
    #[error("export name is {0} bytes, longer than 4096")]
    NameTooLong(usize),
    /// Two exports have the same name (or a later export is named `""`, which always selects
    /// the first).
    #[error("export name {0:?} is given twice (\"\" always names the first export)")]
    DuplicateExport(String),
    /// The pid file could not be written; nothing was served.
    #[error("cannot write pid file {}: {source}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The final flush of an export at shutdown failed (every export is still flushed).
    #[error("flushing export {export:?} at shutdown: {source}")]
    Flush {
        /// The export's name.
        export: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}
