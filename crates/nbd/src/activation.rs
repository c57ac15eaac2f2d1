//! systemd socket activation: the listening sockets a service manager passed to this process,
//! as `sd_listen_fds(3)` reads them (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; the
//! descriptors are 3, 4, … 3+N-1).
//!
//! The server serves them like its own listeners ([`Listen::Fd`]: TCP or Unix, told apart
//! with `getsockname`). The variables are removed from the environment whenever `LISTEN_FDS`
//! or `LISTEN_PID` is present (as `sd_listen_fds(1)` does), so child processes do not inherit
//! them, and each descriptor is made close-on-exec.

use std::os::fd::RawFd;

use crate::error::NbdError;
use crate::server::Listen;

/// First inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Most descriptors accepted from `LISTEN_FDS` (a sanity bound; systemd passes a handful).
const MAX_FDS: u32 = 1024;

/// The sockets passed to this process by socket activation, in descriptor order, or an empty
/// list when there are none for us (`LISTEN_PID` unset or another process's pid, `LISTEN_FDS`
/// unset or 0).
///
/// Call it once, before other threads start (it changes the environment), and hand each
/// returned [`Listen::Fd`] to [`super::serve`] once: the server takes ownership of the
/// descriptors. Names come from `LISTEN_FDNAMES` (colon-separated) when it has one per
/// descriptor, else none.
///
/// Errors: [`NbdError::Activation`] when `LISTEN_PID` or `LISTEN_FDS` is not a number, or a
/// descriptor in the range is not open.
pub fn listen_fds() -> Result<Vec<Listen>, NbdError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    if pid.is_none() && fds.is_none() {
        return Ok(Vec::new());
    }
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| NbdError::Activation(format!("LISTEN_PID={pid:?} is not a process id")))?;
    if pid != std::process::id() {
        tracing::debug!(
            pid,
            "LISTEN_PID names another process: not socket-activated"
        );
        return Ok(Vec::new());
    }
    let n: u32 = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_FDS)
        .ok_or_else(|| NbdError::Activation(format!("LISTEN_FDS={fds:?} is not a count")))?;
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let names_fit = names.len() == n as usize;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(NbdError::Activation(format!(
                "LISTEN_FDS={n} but descriptor {fd} is not open: {}",
                std::io::Error::last_os_error()
            )));
        }
        let name = names_fit.then(|| names[i as usize].clone());
        out.push(Listen::Fd { fd, name });
    }
    Ok(out)
}
