//! Serving the API: the rustls configuration (client certificates optional, checked against
//! the store's CA when presented) and the accept loop (TLS handshake, the peer's certificate
//! fingerprint handed to the routes, one hyper HTTP/1.1 connection per client) until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::app::App;
use super::conn_table::Admission;
use super::connection::{serve_connection, Conns};
use super::limits::{fit_to_fd_limit, ServeLimits};
use super::routes::router;
use crate::store::{self, RootKey, Store};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key file of the data directory is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The rustls configuration: `server.pem`/`server.key`, client certificates optional and, when
/// presented, checked against `ca.pem`.
///
/// Errors: [`ServeError::Tls`].
pub fn tls_config(dir: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(store::SERVER_CERT_FILE))
            .map_err(|e| tls(store::SERVER_CERT_FILE, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls(store::SERVER_CERT_FILE, &e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join(store::SERVER_KEY_FILE))
        .map_err(|e| tls(store::SERVER_KEY_FILE, &e))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join(store::CA_FILE))
        .map_err(|e| tls(store::CA_FILE, &e))?
    {
        roots
            .add(c.map_err(|e| tls(store::CA_FILE, &e))?)
            .map_err(|e| tls(store::CA_FILE, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls("client verifier", &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listen` until SIGINT or SIGTERM, within `limits` (the connection cap
/// fitted under the descriptor limit first, [`fit_to_fd_limit`]). Prints `listening on
/// https://ADDR` to stderr once the socket is bound (port 0 picks a free port, printed).
///
/// Errors: [`ServeError`] before serving starts.
pub async fn serve(
    store: Store,
    root: RootKey,
    listen: &str,
    limits: ServeLimits,
) -> Result<(), ServeError> {
    let limits = fit_to_fd_limit(limits);
    let acceptor = TlsAcceptor::from(tls_config(store.dir())?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen.into(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen.into(),
        source,
    })?;
    eprintln!("nbdcrypt-keyd: listening on https://{local}");
    let app = App::start(store, root);
    let routes = router(app.clone());
    let conns = Arc::new(Mutex::new(Conns::new(limits.max_connections)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServeError::Tls(format!("signal handler: {e}")))?;
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let now = Instant::now();
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        let admission = c.table.admit(now);
        if let Some(s) = c.log.note(admission, now) {
            tracing::warn!(
                "connection cap {} reached: {} stalled connections closed for newcomers, \
                 {} newcomers refused",
                limits.max_connections,
                s.evicted,
                s.refused
            );
        }
        let id = match admission {
            Admission::Admit(id) => id,
            Admission::Evict { victim, new } => {
                if let Some(h) = c.aborts.remove(&victim) {
                    h.abort();
                }
                new
            }
            Admission::Refuse => {
                tracing::debug!("{addr}: refused, connection cap reached");
                continue;
            }
        };
        let task = tokio::spawn(serve_connection(
            tcp,
            addr,
            acceptor.clone(),
            routes.clone(),
            limits,
            conns.clone(),
            id,
        ));
        if c.table.contains(id) {
            c.aborts.insert(id, task.abort_handle());
        }
    }
    app.shutdown();
    eprintln!("nbdcrypt-keyd: stopped");
    Ok(())
}
