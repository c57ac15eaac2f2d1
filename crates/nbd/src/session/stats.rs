//! The counters of one session ([`SessionStats`]) for the server's per-connection log line:
//! what was negotiated and how much was moved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// What one session negotiated and moved, for the per-connection log line. Filled in while
/// the session runs (request tasks update the counters concurrently); read it after
/// [`run_session`](super::run_session) returns.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Name of the export the client selected (the configured name, also when it asked for
    /// `""`); unset if the session never reached the transmission phase.
    pub export: OnceLock<String>,
    /// Structured replies were negotiated (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: AtomicBool,
    /// `base:allocation` was selected for the export in use (`NBD_OPT_SET_META_CONTEXT`).
    pub meta_context: AtomicBool,
    /// The connection runs over TLS (set once the `STARTTLS` upgrade is done).
    pub tls: AtomicBool,
    /// Requests received in the transmission phase (every command, DISC and refused ones
    /// included).
    pub requests: AtomicU64,
    /// Bytes of READ data sent for successful READs.
    pub bytes_read: AtomicU64,
    /// Bytes of WRITE payload that were written successfully.
    pub bytes_written: AtomicU64,
}

impl SessionStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
