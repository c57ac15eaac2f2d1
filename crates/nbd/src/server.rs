//! Listeners: accept NBD clients on TCP and Unix sockets (bound here, or inherited through
//! systemd socket activation), one task per connection up to a connection limit, one log line
//! per connection, a pid file, and a graceful shutdown (proto.md "Termination of the session
//! during option haggling"; the server finishes in-flight requests before closing, as DISC
//! requires).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::admission::{Admission, Refusal, Watched, DEFAULT_MAX_HANDSHAKES};
use crate::budget::MemoryBudget;
pub use crate::error::NbdError;
use crate::export::{BlockExport, ExportConfig, Exports};
use crate::refusals::{Note, RefusalLog, REFUSAL_LOG_INTERVAL};
use crate::session::{run_admitted, SessionEnd, SessionError, SessionOptions, SessionStats};
use crate::tls::TlsConfig;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, e.g. `127.0.0.1:10809` (10809 is the IANA NBD port).
    Tcp(SocketAddr),
    /// A Unix stream socket path. A stale socket file (no server answering) is replaced; a live
    /// socket or a file that is not a socket is an error and is left alone. Removed on shutdown.
    Unix(PathBuf),
    /// A listening stream socket (TCP or Unix, told apart with `getsockname`) that this process
    /// already has open, e.g. from systemd socket activation ([`super::activation`]). [`serve`]
    /// takes ownership of the descriptor and closes it on shutdown; a Unix socket's file is
    /// left in place (its owner, e.g. systemd, manages it). Give each descriptor only once.
    Fd {
        /// The descriptor (3 and up under socket activation).
        fd: RawFd,
        /// Its name from `LISTEN_FDNAMES`, if any (only for messages).
        name: Option<String>,
    },
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Fd { fd, name: None } => write!(f, "fd:{fd}"),
            Listen::Fd { fd, name: Some(n) } => write!(f, "fd:{fd} ({n})"),
        }
    }
}

/// Default of [`ServerOptions::max_connections`]: qemu's default for its NBD server since
/// CVE-2024-7409 (enough for multi-connection clients such as `nbdcopy`, which use 4 to 16).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// Server-wide settings of [`serve`] (new ones are added here, not to `serve`'s signature).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Most client connections past the handshake at once, over all listeners (under
    /// `TlsMode::Require` with a client CA: authenticated ones). Connections still in the
    /// handshake are counted apart ([`ServerOptions::max_handshakes`]), so they cannot take
    /// these slots. When all are taken, a client's GO is answered `NBD_REP_ERR_POLICY` and the
    /// connection closed ([`crate::admission`]); refusals are logged, rate-limited
    /// ([`crate::refusals`]). 0 = no limit. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Most connections in the handshake at once, over all listeners. When all these slots
    /// are taken, a newcomer evicts the handshaking connection silent longest (no byte for
    /// [`EVICT_SILENCE`](crate::admission::EVICT_SILENCE) or more), or else is closed before
    /// the greeting. 0 = no limit. Default [`DEFAULT_MAX_HANDSHAKES`].
    pub max_handshakes: usize,
    /// Close connections in the transmission phase that send no request for this long while
    /// none is in flight ([`SessionOptions::idle_limit`]). `None` (the default): never.
    pub idle_limit: Option<Duration>,
    /// The server-wide budget of buffered READ/WRITE bytes, in bytes ([`crate::budget`]):
    /// request and reply buffers stay under this plus
    /// [`CONN_FLOOR_BYTES`](crate::budget::CONN_FLOOR_BYTES) per connection. `None`: only the
    /// per-connection limits. Default [`default_max_buffered`](crate::budget::default_max_buffered)
    /// (a quarter of RAM, 32 MiB to 2 GiB).
    pub max_buffered: Option<usize>,
    /// Write this process's id (decimal, newline-terminated) to this file once every listener
    /// is bound, so a reader of the file knows the sockets accept; removed when [`serve`]
    /// returns. Written atomically (a temporary file renamed over it).
    pub pid_file: Option<PathBuf>,
    /// The TLS mode and acceptor of every connection ([`TlsConfig::off`], the default, for
    /// none); a failed TLS handshake ends only that connection.
    pub tls: TlsConfig,
    /// Close connections that have not finished the handshake within this time (see
    /// [`SessionOptions::handshake_limit`]); `None`: no limit. Default
    /// [`DEFAULT_HANDSHAKE_LIMIT`].
    pub handshake_limit: Option<Duration>,
    /// Serve READs/WRITEs of at most this many bytes inline on each connection's reader,
    /// whatever the export's own limit ([`SessionOptions::inline_limit`]); `Some(0)`: none.
    /// `None` (the default): each export's [`BlockExport::inline_limit`].
    pub inline_limit: Option<u32>,
}

/// Default [`ServerOptions::handshake_limit`]: 10 s, as qemu-nbd's `--handshake-limit`.
pub const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            pid_file: None,
            tls: TlsConfig::off(),
            handshake_limit: Some(DEFAULT_HANDSHAKE_LIMIT),
            inline_limit: None,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            idle_limit: None,
            max_buffered: Some(crate::budget::default_max_buffered()),
        }
    }
}

enum Bound {
    Tcp(TcpListener),
    /// The listener and, when we created the socket file, its path (removed at shutdown).
    Unix(UnixListener, Option<PathBuf>),
}

impl Bound {
    /// Remove the socket file this server created, if any.
    fn remove_socket_file(&self) {
        if let Bound::Unix(_, Some(p)) = self {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Where it listens, for the log.
    fn local(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|e| format!("tcp:? ({e})")),
            Bound::Unix(l, _) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".into(),
                },
                Err(e) => format!("unix:? ({e})"),
            },
        }
    }
}

fn bind_err(l: &Listen, source: io::Error) -> NbdError {
    NbdError::Bind {
        addr: l.to_string(),
        source,
    }
}

/// Prepare a Unix socket path: replace a stale socket, refuse a live one or a non-socket
/// ([`crate::preflight::unix_path_state`]).
fn clear_unix_path(path: &Path) -> Result<(), NbdError> {
    match crate::preflight::unix_path_state(path)? {
        crate::preflight::UnixPath::Free => Ok(()),
        crate::preflight::UnixPath::Stale => {
            debug!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|e| NbdError::Bind {
                addr: format!("unix:{}", path.display()),
                source: e,
            })
        }
    }
}

async fn bind(l: &Listen) -> Result<Bound, NbdError> {
    match l {
        Listen::Tcp(a) => TcpListener::bind(a)
            .await
            .map(Bound::Tcp)
            .map_err(|e| bind_err(l, e)),
        Listen::Unix(p) => {
            clear_unix_path(p)?;
            UnixListener::bind(p)
                .map(|u| Bound::Unix(u, Some(p.clone())))
                .map_err(|e| bind_err(l, e))
        }
        Listen::Fd { fd, .. } => adopt_fd(*fd),
    }
}

/// `getsockopt(fd, SOL_SOCKET, opt)` as an int.
fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Take ownership of an inherited listening socket: check that it is a listening stream
/// socket, tell TCP from Unix with `getsockname`, make it non-blocking and close-on-exec.
fn adopt_fd(fd: RawFd) -> Result<Bound, NbdError> {
    let not = |reason: String| NbdError::NotAListener { fd, reason };
    let ty = sockopt_int(fd, libc::SO_TYPE).map_err(|e| not(format!("not a socket ({e})")))?;
    if ty != libc::SOCK_STREAM {
        return Err(not(format!("socket type {ty} is not SOCK_STREAM")));
    }
    let listening = sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| not(e.to_string()))?;
    if listening == 0 {
        return Err(not("the socket is not listening".into()));
    }
    // SAFETY: a zeroed sockaddr_storage is a valid out-buffer of the given length.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writes of the sizes given.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(not(io::Error::last_os_error().to_string()));
    }
    // SAFETY: fcntl on a descriptor we checked is an open socket.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(not(io::Error::last_os_error().to_string()));
    }
    let family = libc::c_int::from(ss.ss_family);
    use std::os::fd::FromRawFd;
    match family {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: the caller hands the descriptor over ([`Listen::Fd`]); it is an open
            // listening TCP socket, owned from here on by the listener.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(|e| not(e.to_string()))?;
            TcpListener::from_std(l)
                .map(Bound::Tcp)
                .map_err(|e| not(e.to_string()))
        }
        libc::AF_UNIX => {
            // SAFETY: as above, for a listening Unix stream socket.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(|e| not(e.to_string()))?;
            UnixListener::from_std(l)
                .map(|u| Bound::Unix(u, None))
                .map_err(|e| not(e.to_string()))
        }
        f => Err(not(format!("address family {f} is neither TCP nor Unix"))),
    }
}

/// How a session ended, for the log line: `disc`, `abort`, `client-closed`, `shutdown`,
/// `io-error` or `protocol-error`, with the error's text for the last two.
fn end_text(r: &Result<SessionEnd, SessionError>) -> (&'static str, Option<String>) {
    match r {
        Ok(SessionEnd::Disconnected) => ("disc", None),
        Ok(SessionEnd::Aborted) => ("abort", None),
        Ok(SessionEnd::ClientClosed) => ("client-closed", None),
        Ok(SessionEnd::Shutdown) => ("shutdown", None),
        Ok(SessionEnd::Idle) => ("idle", None),
        Ok(SessionEnd::Evicted) => ("evicted", None),
        Ok(SessionEnd::Refused) => ("refused", None),
        Err(SessionError::Io(e)) => ("io-error", Some(e.to_string())),
        Err(e) => ("protocol-error", Some(e.to_string())),
    }
}

/// The export field of the log line: the name quoted, or `-` when none was selected.
struct ExportField<'a>(Option<&'a str>);

impl std::fmt::Display for ExportField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n:?}"),
            None => f.write_str("-"),
        }
    }
}

/// The one line per connection (info level): peer, export (`-` if none was selected),
/// negotiated options (`tls`, `structured`, `meta_context`), duration in milliseconds, bytes
/// read and written (READ/WRITE payload), requests, how it ended (`end`) and, for an error,
/// its text (`error`). Secrets never appear here.
fn log_connection(
    peer: &str,
    stats: &SessionStats,
    elapsed: Duration,
    r: &Result<SessionEnd, SessionError>,
) {
    let export = ExportField(stats.export.get().map(String::as_str));
    let (end, error) = end_text(r);
    macro_rules! line {
        ($($error:tt)*) => {
            info!(
                peer = %peer,
                export = %export,
                tls = stats.tls.load(Ordering::Relaxed),
                structured = stats.structured.load(Ordering::Relaxed),
                meta_context = stats.meta_context.load(Ordering::Relaxed),
                duration_ms = elapsed.as_millis() as u64,
                bytes_read = stats.bytes_read.load(Ordering::Relaxed),
                bytes_written = stats.bytes_written.load(Ordering::Relaxed),
                requests = stats.requests.load(Ordering::Relaxed),
                end = %end,
                $($error)*
                "connection closed"
            )
        };
    }
    match error {
        Some(e) => line!(error = ?e,),
        None => line!(),
    }
    // Protocol errors (a misbehaving client, a failed TLS handshake) are also warnings, so
    // they show at the default log level; I/O errors (a client that vanished) are not.
    if let Err(e) = r {
        if !matches!(e, SessionError::Io(_)) {
            warn!(peer = %peer, error = %e, "session ended by protocol error");
        }
    }
}

/// Accept loop of one listener; returns after shutdown once all its sessions have ended.
/// `admission` holds the handshake and established slots, `refusals` the rate limiter of the
/// refusal warnings (both shared by every listener).
async fn accept_loop(
    bound: Bound,
    exports: Arc<Exports>,
    admission: Arc<Admission>,
    refusals: Arc<Mutex<RefusalLog>>,
    session_opts: SessionOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            Some(r) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = r {
                    warn!(error = %e, "session task failed");
                }
                continue;
            }
            a = async {
                match &bound {
                    Bound::Tcp(l) => l.accept().await.map(|(s, a)| {
                        let _ = s.set_nodelay(true);
                        (Conn::Tcp(s), a.to_string())
                    }),
                    Bound::Unix(l, _) => l.accept().await.map(|(s, _)| (Conn::Unix(s), unix_peer(l))),
                }
            } => a,
        };
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ticket = match admission.admit() {
            Ok((t, evicted)) => {
                if evicted {
                    debug!(peer = %peer, "evicted the longest-silent handshake (--max-handshakes)");
                }
                t
            }
            Err(r) => {
                note_refusal(&refusals, &admission, r, &peer);
                drop(conn); // closed before the greeting
                continue;
            }
        };
        next_id += 1;
        let span = tracing::debug_span!("nbd_conn", id = next_id, peer = %peer);
        let (exports, shutdown) = (exports.clone(), shutdown.clone());
        let session_opts = session_opts.clone();
        let (admission, refusals) = (admission.clone(), refusals.clone());
        sessions.spawn(
            async move {
                debug!("connected");
                let stats = Arc::new(SessionStats::default());
                let start = Instant::now();
                let clock = ticket.clock();
                let (st, t) = (stats.clone(), Some(ticket));
                // The session holds its slots and gives them back as it ends.
                let r = match conn {
                    Conn::Tcp(s) => {
                        let s = Watched::new(s, clock);
                        run_admitted(s, exports, st, session_opts, shutdown, t).await
                    }
                    Conn::Unix(s) => {
                        let s = Watched::new(s, clock);
                        run_admitted(s, exports, st, session_opts, shutdown, t).await
                    }
                };
                if matches!(r, Ok(SessionEnd::Refused)) {
                    note_refusal(&refusals, &admission, Refusal::Connections, &peer);
                }
                log_connection(&peer, &stats, start.elapsed(), &r);
            }
            .instrument(span),
        );
    }
    bound.remove_socket_file();
    drop(bound); // stop accepting before draining
    let drain = async {
        while let Some(r) = sessions.join_next().await {
            if let Err(e) = r {
                warn!(error = %e, "session task failed");
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("sessions still busy after the shutdown grace period; dropping them");
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
}

/// Log a refused connection: the first at once, later ones in one summary per
/// [`REFUSAL_LOG_INTERVAL`] ([`RefusalLog`]).
fn note_refusal(log: &Mutex<RefusalLog>, admission: &Admission, why: Refusal, peer: &str) {
    let now = std::time::Instant::now();
    let (note, summary) = {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let summary = log.tick(now);
        (log.refuse(now, why.flag()), summary)
    };
    if let Some(s) = summary {
        warn!("{s}");
    }
    if note == Note::Log {
        let (max_handshakes, max_connections) = admission.limits();
        let what = match why {
            Refusal::Handshakes => "too many connections in the handshake",
            Refusal::Connections => "too many connections",
        };
        warn!(
            peer = %peer,
            max_handshakes,
            max_connections,
            "connection refused: {what} ({}); further refusals are summarised every {} s",
            why.flag(),
            REFUSAL_LOG_INTERVAL.as_secs()
        );
    }
}

/// Emit the refusal summary of each window that ended (every second, until `stop`).
async fn summarise_refusals(log: Arc<Mutex<RefusalLog>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        let summary = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(std::time::Instant::now());
        if let Some(s) = summary {
            warn!("{s}");
        }
    }
}

/// Descriptors kept out of the connection caps (listeners, the images, the runtime, logs).
const SPARE_FDS: u64 = 64;

/// Raise this process's soft limit of open descriptors (`RLIMIT_NOFILE`) to the hard limit,
/// so the connection caps, not the descriptor limit, decide which clients are served.
/// Returns the soft limit (`u64::MAX` if it cannot be read).
fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return u64::MAX;
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    rl.rlim_cur
}

/// The handshake cap that fits under `open_files` descriptors beside `max_connections`
/// established connections and [`SPARE_FDS`]: `max_handshakes` if it fits (0 = no limit
/// counts as not fitting), else what is left (at least 1). `max_connections` 0 (no limit):
/// unchanged, nothing can be reserved.
fn fit_handshakes(max_handshakes: usize, max_connections: usize, open_files: u64) -> usize {
    if max_connections == 0 {
        return max_handshakes;
    }
    let left = open_files.saturating_sub(max_connections as u64 + SPARE_FDS);
    let left = usize::try_from(left).unwrap_or(usize::MAX).max(1);
    match max_handshakes {
        0 => left,
        n => n.min(left),
    }
}

/// How long shutdown waits for sessions to finish their in-flight requests and send the
/// replies. A client that stops reading its replies would otherwise block shutdown forever;
/// after this its connection is dropped (its unreplied requests may still complete).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A Unix client has no address of its own; name it by the listening socket.
fn unix_peer(l: &UnixListener) -> String {
    match l
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned))
    {
        Some(p) => format!("unix:{}", p.display()),
        None => "unix".into(),
    }
}

/// Write `pid_file` atomically (this process's id, decimal, newline-terminated): a temporary
/// file beside it, renamed over it. Errors: [`NbdError::PidFile`].
pub fn write_pid_file(path: &Path) -> Result<(), NbdError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| NbdError::PidFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover of an earlier process with our pid is removed (a symlink itself, never its
    // target); `create_new` + `O_NOFOLLOW` then refuse anything planted in between instead of
    // following it, and the rename replaces a symlink at `path` rather than writing through
    // it: the rule of `nbdcrypt_luks2::fsutil`, which this crate (no LUKS) cannot import.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, format!("{}\n", std::process::id()).as_bytes())
        .map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Removes the pid file when dropped (every way out of [`serve`] after it was written).
pub struct PidFileGuard(pub PathBuf);

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serve `exports` on every listener until `shutdown` completes.
///
/// `exports` are checked first ([`Exports::new`]: at least one, unique names of at most 4096
/// bytes; the first is the default export `""`). Then all listeners are bound before any
/// client is accepted; a binding failure returns a typed error naming the address
/// ([`NbdError::Bind`], [`NbdError::NotASocket`], [`NbdError::SocketInUse`],
/// [`NbdError::NotAListener`]) and nothing is served. Then the pid file, if any, is written
/// ([`NbdError::PidFile`]). Each client runs in its own task
/// ([`run_session`](crate::session::run_session)), up to `options.max_handshakes` in the
/// handshake and `options.max_connections` past it ([`crate::admission`]), their buffers
/// within `options.max_buffered` ([`crate::budget`]); a misbehaving client loses only its
/// own connection, and each connection ends with one info-level log line (peer, export,
/// negotiated options, duration, bytes, requests, how it ended).
///
/// When `shutdown` completes: stop accepting, let in-flight requests finish (their replies are
/// sent; connections still busy after [`SHUTDOWN_GRACE`] are dropped), close every connection
/// (sessions still negotiating are dropped), flush every export, remove the Unix socket files
/// this server created and the pid file, then return `Ok(())`. Errors after startup:
/// [`NbdError::Flush`] (the first export that failed; the others are flushed all the same).
///
/// `shutdown` is first polled once every listener is bound and accepting, so it may also
/// announce readiness (the CLI prints its banner there).
///
/// `options.tls` is the TLS mode and acceptor of every connection ([`TlsConfig::off`] for
/// none); a failed TLS handshake ends only that connection.
pub async fn serve(
    listeners: Vec<Listen>,
    exports: Vec<(ExportConfig, Arc<dyn BlockExport>)>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NbdError> {
    let exports = Arc::new(Exports::new(exports)?);
    if listeners.is_empty() {
        return Err(NbdError::NoListeners);
    }
    let mut bound: Vec<Bound> = Vec::with_capacity(listeners.len());
    let cleanup = |bound: Vec<Bound>| bound.iter().for_each(Bound::remove_socket_file);
    for l in &listeners {
        match bind(l).await {
            Ok(b) => {
                info!(listen = %l, addr = %b.local(), "listening");
                bound.push(b);
            }
            Err(e) => {
                cleanup(bound);
                return Err(e);
            }
        }
    }
    let _pid_guard = match &options.pid_file {
        Some(p) => {
            if let Err(e) = write_pid_file(p) {
                cleanup(bound);
                return Err(e);
            }
            Some(PidFileGuard(p.clone()))
        }
        None => None,
    };
    // Both caps must bind before the descriptor limit does: the handshake cap gives way.
    let open_files = raise_nofile();
    let max_handshakes =
        fit_handshakes(options.max_handshakes, options.max_connections, open_files);
    if max_handshakes != options.max_handshakes {
        warn!(
            open_files,
            max_handshakes,
            "--max-handshakes lowered to fit the open-file limit (ulimit -n) beside --max-connections"
        );
    }
    let admission = Admission::new(max_handshakes, options.max_connections);
    let refusals = Arc::new(Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)));
    let budget = options.max_buffered.map(MemoryBudget::new);
    if let Some(b) = &budget {
        debug!(max_buffered = b.capacity(), "server-wide buffer budget");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = JoinSet::new();
    for b in bound {
        loops.spawn(accept_loop(
            b,
            exports.clone(),
            admission.clone(),
            refusals.clone(),
            SessionOptions {
                tls: options.tls.clone(),
                handshake_limit: options.handshake_limit,
                inline_limit: options.inline_limit,
                idle_limit: options.idle_limit,
                budget: budget.clone(),
            },
            stop_rx.clone(),
        ));
    }
    loops.spawn(summarise_refusals(refusals, stop_rx.clone()));
    shutdown.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    let mut first_err = None;
    for e in exports.iter() {
        let export = e.export.clone();
        let r = match tokio::task::spawn_blocking(move || export.flush()).await {
            Ok(r) => r,
            Err(j) => Err(io::Error::other(j.to_string())),
        };
        if let Err(source) = r {
            warn!(export = %e.config.name, error = %source, "flush at shutdown failed");
            first_err.get_or_insert(NbdError::Flush {
                export: e.config.name.clone(),
                source,
            });
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_cap_fits_under_the_descriptor_limit() {
        assert_eq!(fit_handshakes(1000, 100, 1_048_576), 1000);
        assert_eq!(fit_handshakes(1000, 100, 1024), 1024 - 100 - 64);
        assert_eq!(fit_handshakes(0, 100, 1024), 1024 - 100 - 64);
        assert_eq!(fit_handshakes(1000, 2000, 1024), 1, "at least one");
        assert_eq!(fit_handshakes(1000, 0, 1024), 1000, "nothing to reserve");
    }
}
