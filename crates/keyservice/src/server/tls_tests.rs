//! The server's TLS configuration against client certificates by lifetime: a host certificate
//! from the store's CA is accepted while valid and refused once expired or not yet valid
//! (rustls checks the dates; certificates are issued with a finite [`Validity`]).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use time::{Duration, OffsetDateTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::listen::tls_config;
use crate::pki::{self, Validity};
use crate::store;

/// Whether the server accepts a TLS handshake from a client presenting a host certificate
/// valid in `v`, issued by the server's CA.
fn handshake_with_host_cert(v: Validity) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::new_ca().unwrap();
    let server = pki::server_cert(&ca.key_pem, &["localhost".into()], &Validity::days(1)).unwrap();
    std::fs::write(dir.path().join(store::CA_FILE), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join(store::SERVER_CERT_FILE), &server.cert_pem).unwrap();
    std::fs::write(
        dir.path().join(store::SERVER_KEY_FILE),
        server.key_pem.as_bytes(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(tls_config(dir.path()).unwrap());

    let host = pki::host_cert(&ca.key_pem, "hostA", &v).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(host.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(host.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let connector = TlsConnector::from(Arc::new(client));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, _client) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(acceptor.accept(a), connector.connect(name, b))
        })
        .await
        .expect("handshake finished");
        server.is_ok()
    })
}

#[test]
fn a_valid_host_certificate_is_accepted() {
    assert!(handshake_with_host_cert(Validity::days(1)));
}

#[test]
fn an_expired_host_certificate_is_refused() {
    let now = OffsetDateTime::now_utc();
    assert!(!handshake_with_host_cert(Validity {
        not_before: now - Duration::days(400),
        not_after: now - Duration::days(1),
    }));
}

#[test]
fn a_host_certificate_not_yet_valid_is_refused() {
    let now = OffsetDateTime::now_utc();
    assert!(!handshake_with_host_cert(Validity {
        not_before: now + Duration::days(1),
        not_after: now + Duration::days(400),
    }));
}
