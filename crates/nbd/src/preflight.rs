//! Checks of a server's listeners and pid file before its caller spends time on anything else
//! (a passphrase prompt, seconds of KDF): a busy TCP port, a Unix socket path that another
//! server answers on or that is no socket, and a pid file that cannot be created are reported
//! first. The checks are advisory: [`crate::server::serve`] binds and writes for real later and
//! still reports anything that changed in between.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::error::NbdError;
use crate::server::Listen;

/// What is at a Unix socket path a server is to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixPath {
    /// Nothing: bind creates the socket.
    Free,
    /// A socket nobody answers on (left by a server that died): bind replaces it.
    Stale,
}

/// What is at `path`, or why a server cannot bind there: [`NbdError::NotASocket`] for a file
/// that is not a socket (never removed), [`NbdError::SocketInUse`] for a socket a server
/// answers on, [`NbdError::Bind`] when it cannot be looked up.
pub fn unix_path_state(path: &Path) -> Result<UnixPath, NbdError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UnixPath::Free),
        Err(e) => Err(NbdError::Bind {
            addr: format!("unix:{}", path.display()),
            source: e,
        }),
        Ok(m) if !m.file_type().is_socket() => Err(NbdError::NotASocket(path.to_owned())),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(NbdError::SocketInUse(path.to_owned()))
        }
        Ok(_) => Ok(UnixPath::Stale),
    }
}

/// Checks that every listener can be bound now: a TCP address is bound and released (so a port
/// in use, or one this user may not bind, is [`NbdError::Bind`] naming it); a Unix path is
/// checked by [`unix_path_state`]; an inherited descriptor ([`Listen::Fd`]) is left to
/// [`crate::server::serve`], which adopts it.
pub fn check_listeners(listeners: &[Listen]) -> Result<(), NbdError> {
    for l in listeners {
        match l {
            Listen::Tcp(a) => {
                std::net::TcpListener::bind(a).map_err(|source| NbdError::Bind {
                    addr: l.to_string(),
                    source,
                })?;
            }
            Listen::Unix(p) => {
                unix_path_state(p)?;
            }
            Listen::Fd { .. } => {}
        }
    }
    Ok(())
}

/// Checks that the pid file can be written where [`crate::server::write_pid_file`] will write
/// it: a temporary file beside it is created (without following symlinks) and removed.
/// Errors: [`NbdError::PidFile`] (a missing or read-only directory, ...).
pub fn check_pid_file(path: &Path) -> Result<(), NbdError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.check", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|source| NbdError::PidFile {
            path: path.to_owned(),
            source,
        })?;
    drop(created);
    // Only the file this call created is removed (a failed create_new removes nothing).
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_and_a_bad_socket_path_are_found_before_serving() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = Listen::Tcp(taken.local_addr().unwrap());
        let err = check_listeners(&[busy]).unwrap_err();
        assert!(matches!(err, NbdError::Bind { .. }), "{err}");
        drop(taken);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        let err = check_listeners(&[Listen::Unix(file.clone())]).unwrap_err();
        assert!(matches!(err, NbdError::NotASocket(_)), "{err}");
        assert!(file.exists(), "never removed");

        let live = dir.path().join("live.sock");
        let server = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let err = check_listeners(&[Listen::Unix(live.clone())]).unwrap_err();
        assert!(matches!(err, NbdError::SocketInUse(_)), "{err}");
        drop(server); // the socket file stays: now stale
        assert_eq!(unix_path_state(&live).unwrap(), UnixPath::Stale);
        assert_eq!(
            unix_path_state(&dir.path().join("free.sock")).unwrap(),
            UnixPath::Free
        );
        let free = Listen::Tcp("127.0.0.1:0".parse().unwrap());
        check_listeners(&[free, Listen::Unix(live)]).unwrap();
    }

    #[test]
    fn a_pid_file_in_a_missing_directory_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_pid_file(&dir.path().join("no/such/dir/x.pid")).unwrap_err();
        assert!(matches!(err, NbdError::PidFile { .. }), "{err}");
        check_pid_file(&dir.path().join("x.pid")).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file left"
        );
    }
}
