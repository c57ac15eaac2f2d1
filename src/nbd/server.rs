//! Listeners: accept NBD clients on TCP and Unix sockets, one task per connection, and shut
//! down gracefully (proto.md "Termination of the session during option haggling"; the server
//! finishes in-flight requests before closing, as DISC requires).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use super::session::{run_session, SessionError};
use super::{BlockExport, ExportConfig, TlsConfig};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, e.g. `127.0.0.1:10809` (10809 is the IANA NBD port).
    Tcp(SocketAddr),
    /// A Unix stream socket path. A stale socket file (no server answering) is replaced; a live
    /// socket or a file that is not a socket is an error and is left alone. Removed on shutdown.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Errors of [`serve`].
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
    /// The configured export name is longer than 4096 bytes (proto.md "Conventions").
    #[error("export name is {0} bytes, longer than 4096")]
    NameTooLong(usize),
    /// The final flush of the export at shutdown failed.
    #[error("flushing the export at shutdown: {0}")]
    Flush(#[source] io::Error),
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

fn bind_err(l: &Listen, source: io::Error) -> NbdError {
    NbdError::Bind {
        addr: l.to_string(),
        source,
    }
}

/// Prepare a Unix socket path: replace a stale socket, refuse a live one or a non-socket.
fn clear_unix_path(path: &Path) -> Result<(), NbdError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NbdError::Bind {
            addr: format!("unix:{}", path.display()),
            source: e,
        }),
        Ok(m) if !m.file_type().is_socket() => Err(NbdError::NotASocket(path.to_owned())),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(NbdError::SocketInUse(path.to_owned()));
            }
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
                .map(|u| Bound::Unix(u, p.clone()))
                .map_err(|e| bind_err(l, e))
        }
    }
}

fn log_end(r: Result<super::SessionEnd, SessionError>) {
    match r {
        Ok(end) => debug!(?end, "session ended"),
        Err(SessionError::Io(e)) => debug!(error = %e, "session ended by I/O error"),
        Err(e) => warn!(error = %e, "session ended by protocol error"),
    }
}

/// Accept loop of one listener; returns after shutdown once all its sessions have ended.
async fn accept_loop(
    bound: Bound,
    export: Arc<dyn BlockExport>,
    config: Arc<ExportConfig>,
    tls: TlsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            a = async {
                match &bound {
                    Bound::Tcp(l) => l.accept().await.map(|(s, a)| {
                        let _ = s.set_nodelay(true);
                        (Conn::Tcp(s), a.to_string())
                    }),
                    Bound::Unix(l, p) => l.accept().await.map(|(s, _)| (Conn::Unix(s), p.display().to_string())),
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
        next_id += 1;
        let span = tracing::debug_span!("nbd_conn", id = next_id, peer = %peer);
        let (export, config, shutdown) = (export.clone(), config.clone(), shutdown.clone());
        let tls = tls.clone();
        sessions.spawn(
            async move {
                debug!("connected");
                let r = match conn {
                    Conn::Tcp(s) => run_session(s, export, config, tls, shutdown).await,
                    Conn::Unix(s) => run_session(s, export, config, tls, shutdown).await,
                };
                log_end(r);
            }
            .instrument(span),
        );
    }
    if let Bound::Unix(_, p) = &bound {
        let _ = std::fs::remove_file(p);
    }
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

/// How long shutdown waits for sessions to finish their in-flight requests and send the
/// replies. A client that stops reading its replies would otherwise block shutdown forever;
/// after this its connection is dropped (its unreplied requests may still complete).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Serve `export` on every listener until `shutdown` completes.
///
/// All listeners are bound before any client is accepted; a binding failure returns a typed
/// error naming the address ([`NbdError::Bind`], [`NbdError::NotASocket`],
/// [`NbdError::SocketInUse`]) and nothing is served. Each client runs in its own task
/// ([`run_session`]); a misbehaving client loses only its own connection.
///
/// When `shutdown` completes: stop accepting, let in-flight requests finish (their replies are
/// sent; connections still busy after [`SHUTDOWN_GRACE`] are dropped), close every connection
/// (sessions still negotiating are dropped), flush the export,
/// remove the Unix socket files, then return `Ok(())`. Errors after startup:
/// [`NbdError::Flush`].
///
/// `shutdown` is first polled once every listener is bound and accepting, so it may also
/// announce readiness (the CLI prints its banner there).
///
/// `tls` is the TLS mode and acceptor of every connection ([`TlsConfig::off`] for none); a
/// failed TLS handshake ends only that connection.
pub async fn serve(
    listeners: Vec<Listen>,
    export: Arc<dyn BlockExport>,
    config: ExportConfig,
    tls: TlsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NbdError> {
    if listeners.is_empty() {
        return Err(NbdError::NoListeners);
    }
    if config.name.len() > super::proto::MAX_STRING {
        return Err(NbdError::NameTooLong(config.name.len()));
    }
    let mut bound = Vec::with_capacity(listeners.len());
    for l in &listeners {
        match bind(l).await {
            Ok(b) => bound.push(b),
            Err(e) => {
                for b in bound {
                    if let Bound::Unix(_, p) = b {
                        let _ = std::fs::remove_file(p);
                    }
                }
                return Err(e);
            }
        }
        info!(listen = %l, "listening");
    }
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = JoinSet::new();
    for b in bound {
        loops.spawn(accept_loop(
            b,
            export.clone(),
            config.clone(),
            tls.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    let export2 = export.clone();
    match tokio::task::spawn_blocking(move || export2.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(NbdError::Flush(e)),
        Err(e) => Err(NbdError::Flush(io::Error::other(e.to_string()))),
    }
}
