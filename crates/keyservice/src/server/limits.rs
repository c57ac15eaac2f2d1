//! The connection bounds of `nbdcrypt-keyd serve` (`docs/threat-model.md`, `docs/reliability.md`,
//! `docs/keyservice-api.md` "Connection bounds"): the cap on open connections and the TLS
//! handshake, request-header and idle timeouts, and fitting the cap under the process's file
//! descriptor limit (raised from its soft to its hard value at start).

use std::time::Duration;

/// Descriptors kept free of connections for the database, the listening socket, the runtime
/// and a newcomer that is accepted before a stalled connection is evicted for it.
pub const FD_RESERVE: u64 = 64;

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// How long a connection must have been stalled (TLS handshake or first request header) before
/// a newcomer at the cap may evict it.
pub const MIN_STALL: Duration = Duration::from_secs(1);

/// How often at most an over-cap summary is logged.
pub const OVER_CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The bounds on connections `serve` enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open connections at most (`--max-connections`, default 4096, lowered to fit the
    /// descriptor limit).
    pub max_connections: usize,
    /// Time to complete the TLS handshake from accept (`--tls-handshake-timeout`, default 5 s).
    pub handshake_timeout: Duration,
    /// Time to send a complete request header, counted from when the server starts waiting
    /// for it (after the handshake or the previous response) (`--header-read-timeout`,
    /// default 10 s).
    pub header_read_timeout: Duration,
    /// A connection that sends no byte for this long while no request is in progress is
    /// closed (`--idle-timeout`, default 30 s; the header-read timeout applies as well).
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The cap that fits under a descriptor limit of `fd_limit`: `cap`, or `fd_limit -
/// FD_RESERVE` (at least 1) if that is smaller. Returns `(cap, lowered)`.
pub fn fit_cap(cap: usize, fd_limit: u64) -> (usize, bool) {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if cap > room {
        (room, true)
    } else {
        (cap.max(1), false)
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit in force
/// afterwards (`None` if it cannot be read; unlimited as `u64::MAX`).
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                "could not raise the open-file limit from {} to {}",
                lim.rlim_cur,
                lim.rlim_max
            );
        }
    }
    Some(if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    })
}

/// `limits` with the cap fitted under the descriptor limit (raised first, see
/// [`raise_fd_limit`]); a warning is logged when the cap is lowered.
pub fn fit_to_fd_limit(mut limits: ServeLimits) -> ServeLimits {
    let Some(fds) = raise_fd_limit() else {
        return limits;
    };
    let (cap, lowered) = fit_cap(limits.max_connections, fds);
    if lowered {
        tracing::warn!(
            "--max-connections {} does not fit under the open-file limit {fds} minus \
             {FD_RESERVE} kept in reserve: serving at most {cap} connections",
            limits.max_connections
        );
    }
    limits.max_connections = cap;
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_descriptor_limit() {
        assert_eq!(fit_cap(4096, 1_048_576), (4096, false));
        assert_eq!(fit_cap(4096, 1024), (1024 - FD_RESERVE as usize, true));
        assert_eq!(fit_cap(100, 164), (100, false));
        assert_eq!(fit_cap(101, 164), (100, true));
        assert_eq!(fit_cap(10, 3), (1, true));
        assert_eq!(fit_cap(0, u64::MAX), (1, false));
    }
}
