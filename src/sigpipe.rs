//! Writing to a closed pipe (`nbdcrypt dump IMAGE | head -3`, `nbdcrypt-keyd audit list |
//! head`) ends the process quietly, as it does `cat`: Rust starts every program with SIGPIPE
//! ignored, so `println!` on a closed pipe panicked with "failed printing to stdout: Broken
//! pipe". Only commands that open no socket get this: a server, or a command that talks to a
//! key service, keeps SIGPIPE ignored, so a peer that hangs up is an `EPIPE` error on that one
//! connection (rustls writes with `writev`, which has no `MSG_NOSIGNAL`), never a silent death.

/// Restores SIGPIPE's default action (end the process) for this process.
pub fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL is async-signal-safe and touches no
    // memory of ours; it runs before any thread that writes to a pipe is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
