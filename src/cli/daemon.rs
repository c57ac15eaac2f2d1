//! `--fork`: run in the background once ready, so the caller knows the server is serving.
//!
//! The process forks before anything else happens (before any thread exists, before the
//! image is opened and locked: POSIX locks and rayon's thread pool do not survive a fork).
//! The parent waits on a pipe: the child writes one byte once it is ready (listening, the
//! pid file written, or the kernel device connected) and the parent exits 0; if the child
//! exits first (a wrong passphrase, a busy image, an address in use: the child prints the
//! error itself on the shared stderr), the parent exits with the child's exit code. Once
//! ready, the child starts its own session (`setsid`) and points stdin and stdout at
//! `/dev/null`; stderr stays where it was (the log, e.g. the journal or a file).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use super::error::CliError;

/// The child's side: [`Readiness::ready`] tells the waiting parent. Without `--fork` it does
/// nothing.
#[derive(Debug, Default)]
pub struct Readiness {
    pipe: Option<OwnedFd>,
}

impl Readiness {
    /// Tell the parent the server is ready (it exits 0), then detach from the terminal.
    /// Idempotent; a no-op in the foreground.
    pub fn ready(&mut self) {
        let Some(fd) = self.pipe.take() else {
            return;
        };
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(b"R");
        drop(f);
        // SAFETY: setsid/open/dup2 on descriptors we own; results are best effort.
        unsafe {
            libc::setsid();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::close(null);
            }
        }
    }
}

/// With `fork`, fork: the parent waits for readiness and exits (it never returns); the child
/// returns its [`Readiness`]. Without `fork`, returns a no-op [`Readiness`]. Call before any
/// thread is started and before files are locked.
pub fn fork_if(fork: bool) -> Result<Readiness, CliError> {
    if !fork {
        return Ok(Readiness::default());
    }
    let mut fds = [0; 2];
    // SAFETY: fds is valid for two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(CliError::Usage(format!(
            "--fork: pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: both descriptors are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Nothing buffered may be written twice.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: the process is single-threaded here (the caller's contract), so the child may
    // run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CliError::Usage(format!(
            "--fork: fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(rd);
        return Ok(Readiness { pipe: Some(wr) });
    }
    drop(wr);
    let mut f = std::fs::File::from(rd);
    let mut b = [0u8; 1];
    let ready = loop {
        match f.read(&mut b) {
            Ok(1) => break true,
            Ok(_) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if ready {
        std::process::exit(super::error::EXIT_OK);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = if r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        libc::WEXITSTATUS(status)
    } else {
        eprintln!("nbdcrypt: the background process ended before it was ready");
        super::error::EXIT_INVALID
    };
    std::process::exit(code);
}
