//! Serving the API: the rustls configuration (client certificates optional, checked against
//! the store's CA when presented) and the accept loop (TLS handshake, the peer's certificate
//! fingerprint handed to the routes, one hyper HTTP/1.1 connection per client) until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::app::{App, Peer};
use super::routes::router;
use crate::pki;
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

/// Serves the API on `listen` until SIGINT or SIGTERM. Prints `listening on https://ADDR`
/// to stderr once the socket is bound (port 0 picks a free port, printed).
///
/// Errors: [`ServeError`] before serving starts.
pub async fn serve(store: Store, root: RootKey, listen: &str) -> Result<(), ServeError> {
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
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!("{addr}: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("{addr}: TLS handshake timed out");
                        return;
                    }
                };
            let fpr = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| pki::fingerprint(c));
            let svc =
                TowerToHyperService::new(routes.layer(Extension(Peer::new(fpr, Some(addr.ip())))));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!("{addr}: {e}");
            }
        });
    }
    app.shutdown();
    eprintln!("nbdcrypt-keyd: stopped");
    Ok(())
}
