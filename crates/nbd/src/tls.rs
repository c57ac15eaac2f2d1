//! TLS policy of the server and the rustls acceptor behind `NBD_OPT_STARTTLS` (proto.md "TLS
//! support").
//!
//! [`TlsConfig`] is what [`super::serve`] needs: a [`TlsMode`] and, unless the mode is
//! [`TlsMode::Off`], a `tokio_rustls::TlsAcceptor` built from PEM files by
//! [`TlsConfig::from_files`]. The session ([`super::session`]) does the upgrade: after
//! `STARTTLS` → `NBD_REP_ACK` it runs the TLS handshake over the same stream and continues the
//! option haggling over TLS with every earlier negotiated state forgotten.
//!
//! Cryptography is rustls' `ring` provider, TLS 1.2 and 1.3 (proto.md "TLS versions": 1.2 MUST
//! be supported). Only x509 certificates: rustls has no TLS-PSK.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

/// The server's TLS mode, the same for every connection (proto.md "Server-side
/// requirements").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// NOTLS: `NBD_OPT_STARTTLS` is answered `NBD_REP_ERR_UNSUP`; everything is plain text.
    #[default]
    Off,
    /// TLS offered, plain text allowed (nbdkit's `--tls=on`; SELECTIVETLS with no TLS-only
    /// export): `STARTTLS` upgrades, a client that never sends it is served in plain text.
    On,
    /// FORCEDTLS: before the upgrade every option but `STARTTLS` and `ABORT` is answered
    /// `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` closes the connection.
    Require,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Require => "require",
        })
    }
}

impl FromStr for TlsMode {
    type Err = String;

    /// `off`, `on` or `require`.
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "on" => Ok(TlsMode::On),
            "require" => Ok(TlsMode::Require),
            _ => Err(format!("unknown TLS mode {s:?} (off, on or require)")),
        }
    }
}

/// The PEM files of [`TlsConfig::from_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediate certificates (`BEGIN CERTIFICATE`
    /// blocks, leaf first).
    pub cert: PathBuf,
    /// The private key of the leaf certificate: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA
    /// (`BEGIN RSA PRIVATE KEY`) or SEC1 EC (`BEGIN EC PRIVATE KEY`, P-256 or P-384); other
    /// blocks in the file (such as `EC PARAMETERS`) are skipped.
    pub key: PathBuf,
    /// With a CA file, every client must present a certificate that chains to one of its
    /// certificates (rustls' `WebPkiClientVerifier`); without, no client certificate is asked
    /// for.
    pub ca: Option<PathBuf>,
}

/// Why [`TlsConfig::from_files`] failed; every variant names the file.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read TLS {what} file {}: {source}", path.display())]
    Read {
        /// Which file: `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM block is broken (bad base64, missing `END` line, ...).
    #[error("TLS {what} file {} is not valid PEM: {detail}", path.display())]
    Pem {
        /// Which file: `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM parser's message.
        detail: String,
    },
    /// The certificate or CA file holds no `BEGIN CERTIFICATE` block.
    #[error("TLS {what} file {} contains no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// `certificate` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key block of a known kind.
    #[error(
        "TLS key file {} contains no PEM private key (PKCS#8 PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        .0.display()
    )]
    NoKey(PathBuf),
    /// rustls refused the certificate and key: unsupported key type, a key that does not belong
    /// to the certificate, or a certificate that does not parse as X.509.
    #[error("TLS certificate {} with key {}: {detail}", cert.display(), key.display())]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        detail: String,
    },
    /// A certificate of the CA file is not a usable trust anchor.
    #[error("TLS CA file {}: {detail}", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// rustls' or webpki's reason.
        detail: String,
    },
}

/// The server's TLS settings: a [`TlsMode`] and, unless it is [`TlsMode::Off`], the acceptor.
///
/// Cheap to clone (the rustls configuration is shared). `TlsConfig::default()` is
/// [`TlsConfig::off`].
#[derive(Clone, Default)]
pub struct TlsConfig {
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// NOTLS: `STARTTLS` answered `NBD_REP_ERR_UNSUP`.
    pub fn off() -> TlsConfig {
        TlsConfig::default()
    }

    /// `mode` with a ready rustls server configuration (for embedding and tests).
    /// [`TlsMode::Off`] ignores `config`.
    pub fn new(mode: TlsMode, config: Arc<ServerConfig>) -> TlsConfig {
        match mode {
            TlsMode::Off => TlsConfig::off(),
            _ => TlsConfig {
                mode,
                acceptor: Some(TlsAcceptor::from(config)),
            },
        }
    }

    /// `mode` with the certificate, key and optional client CA read from PEM files (see
    /// [`TlsFiles`], [`server_config`]). [`TlsMode::Off`] reads nothing.
    ///
    /// Errors: [`TlsError`], naming the file and the problem.
    pub fn from_files(mode: TlsMode, files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        if mode == TlsMode::Off {
            return Ok(TlsConfig::off());
        }
        Ok(TlsConfig::new(mode, server_config(files)?))
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// The acceptor, `None` exactly when the mode is [`TlsMode::Off`].
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
}

fn pem_err(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Every `BEGIN CERTIFICATE` block of a file, in order; at least one.
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key block (PKCS#8, PKCS#1 or SEC1) of a file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("key", path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => Ok(k),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey(path.to_owned())),
        Err(e) => Err(pem_err("key", path, e)),
    }
}

/// The rustls server configuration for `files`: TLS 1.2 and 1.3 on the `ring` provider, the
/// certificate chain and key, and a client-certificate verifier when `files.ca` is given
/// (every client must then present a certificate chaining to that CA).
///
/// Errors: [`TlsError`] naming the file: unreadable, not PEM, no certificate or key in it,
/// key not matching the certificate or of an unsupported type, CA not usable.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("certificate", &files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("CA", ca)? {
                roots.add(c).map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            detail: cert_key_detail(&e),
        })?;
    Ok(Arc::new(config))
}

/// A readable reason for rustls' refusal of a certificate/key pair.
fn cert_key_detail(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the key does not belong to the certificate".into()
        }
        rustls::Error::General(m) => format!("unusable key or certificate: {m}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_and_prints() {
        for m in [TlsMode::Off, TlsMode::On, TlsMode::Require] {
            assert_eq!(m.to_string().parse::<TlsMode>(), Ok(m));
        }
        assert!("yes".parse::<TlsMode>().is_err());
        assert_eq!(TlsMode::default(), TlsMode::Off);
    }

    #[test]
    fn missing_and_garbage_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("nbdcrypt-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"not a certificate\n").unwrap();
        let files = TlsFiles {
            cert: dir.join("missing.pem"),
            key: garbage.clone(),
            ca: None,
        };
        let e = server_config(&files).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let files = TlsFiles {
            cert: garbage.clone(),
            key: garbage.clone(),
            ca: None,
        };
        let e = server_config(&files).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let files = TlsFiles {
            cert: broken,
            key: garbage,
            ca: None,
        };
        let e = server_config(&files).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(TlsConfig::from_files(TlsMode::Off, &files).is_ok());
    }
}
