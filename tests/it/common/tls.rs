//! TLS test helpers: certificates made by the `openssl` command in a test's temp dir (a CA, a
//! server certificate for `localhost` and `127.0.0.1`, client certificates, a second
//! unrelated CA), directories laid out as libnbd and qemu expect them, rustls client
//! configurations, and the STARTTLS upgrade of a [`Raw`] connection.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::nbd::{run_ok, tool, Raw, REP_ACK};

/// A raw NBD connection after STARTTLS: rustls over the Unix socket.
pub type TlsRaw = Raw<StreamOwned<ClientConnection, UnixStream>>;

/// Option `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;

/// How a private key file is written, each the way openssl writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `openssl genpkey -algorithm RSA`: `BEGIN PRIVATE KEY` (PKCS#8).
    RsaPkcs8,
    /// `openssl genrsa -traditional`: `BEGIN RSA PRIVATE KEY` (PKCS#1).
    RsaPkcs1,
    /// `openssl ecparam -genkey`: `BEGIN EC PARAMETERS` then `BEGIN EC PRIVATE KEY` (SEC1).
    EcSec1,
    /// `openssl genpkey -algorithm EC`: `BEGIN PRIVATE KEY` (PKCS#8).
    EcPkcs8,
}

/// What a leaf certificate is for (its extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `serverAuth`, SAN `DNS:localhost, IP:127.0.0.1`.
    Server,
    /// `clientAuth`.
    Client,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Certificates in a directory: `ca` (the CA the server trusts and that signed the server's
/// certificate), `server`, `client` (signed by `ca`), `rogue-ca` and `rogue-client` (signed by
/// `rogue-ca`). Files are `NAME-cert.pem` and `NAME-key.pem`.
pub struct Pki {
    pub dir: PathBuf,
    serial: std::cell::Cell<u32>,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new(tool("openssl")).current_dir(dir).args(args));
}

impl Pki {
    /// Make the certificates in `dir` (which must exist); the server key is RSA PKCS#8.
    pub fn new(dir: &Path) -> Pki {
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
            serial: std::cell::Cell::new(1),
        };
        pki.ca("ca");
        pki.ca("rogue-ca");
        pki.leaf("server", "ca", KeyKind::RsaPkcs8, Role::Server);
        pki.leaf("client", "ca", KeyKind::EcPkcs8, Role::Client);
        pki.leaf("rogue-client", "rogue-ca", KeyKind::EcPkcs8, Role::Client);
        pki
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-cert.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    fn genkey(&self, name: &str, kind: KeyKind) {
        let key = format!("{name}-key.pem");
        match kind {
            KeyKind::RsaPkcs8 => openssl(
                &self.dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &key,
                ],
            ),
            KeyKind::RsaPkcs1 => {
                openssl(&self.dir, &["genrsa", "-traditional", "-out", &key, "2048"])
            }
            KeyKind::EcSec1 => openssl(
                &self.dir,
                &["ecparam", "-name", "prime256v1", "-genkey", "-out", &key],
            ),
            KeyKind::EcPkcs8 => openssl(
                &self.dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key,
                ],
            ),
        }
        let text = std::fs::read_to_string(self.key(name)).unwrap();
        let marker = match kind {
            KeyKind::RsaPkcs8 | KeyKind::EcPkcs8 => "-----BEGIN PRIVATE KEY-----",
            KeyKind::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
            KeyKind::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
        };
        assert!(
            text.contains(marker),
            "{kind:?} key without {marker}:\n{text}"
        );
    }

    /// A self-signed CA `NAME` (EC P-256).
    pub fn ca(&self, name: &str) {
        self.genkey(name, KeyKind::EcPkcs8);
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-new",
                "-sha256",
                "-days",
                "30",
                "-config",
                "openssl.cnf",
                "-extensions",
                "v3_ca",
                "-subj",
                &format!("/CN=nbdcrypt test {name}"),
                "-key",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}-cert.pem"),
            ],
        );
    }

    /// A certificate `NAME` with a `kind` key, signed by CA `ca`; returns (cert, key).
    pub fn leaf(&self, name: &str, ca: &str, kind: KeyKind, role: Role) -> (PathBuf, PathBuf) {
        self.genkey(name, kind);
        let csr = format!("{name}.csr");
        let cn = if role == Role::Server {
            "localhost"
        } else {
            name
        };
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-subj",
                &format!("/CN={cn}"),
                "-key",
                &format!("{name}-key.pem"),
                "-out",
                &csr,
            ],
        );
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-sha256",
                "-days",
                "30",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}-cert.pem"),
                "-CAkey",
                &format!("{ca}-key.pem"),
                "-set_serial",
                &serial.to_string(),
                "-extfile",
                "openssl.cnf",
                "-extensions",
                if role == Role::Server {
                    "server"
                } else {
                    "client"
                },
                "-out",
                &format!("{name}-cert.pem"),
            ],
        );
        (self.cert(name), self.key(name))
    }

    /// A directory as libnbd's `tls-certificates` and qemu's `tls-creds-x509,dir=` expect:
    /// `ca-cert.pem` (our CA), plus `client-cert.pem` and `client-key.pem` from certificate
    /// `client` if given.
    pub fn client_dir(&self, dirname: &str, client: Option<&str>) -> PathBuf {
        let d = self.dir.join(dirname);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.cert("ca"), d.join("ca-cert.pem")).unwrap();
        if let Some(c) = client {
            std::fs::copy(self.cert(c), d.join("client-cert.pem")).unwrap();
            std::fs::copy(self.key(c), d.join("client-key.pem")).unwrap();
        }
        d
    }

    /// A rustls client trusting `ca`, presenting certificate `client` if given; TLS 1.2 and
    /// 1.3, or only 1.2 with `tls12_only`.
    pub fn client_config(&self, client: Option<&str>, tls12_only: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.cert("ca")).unwrap())
            .unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::ALL_VERSIONS
        };
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let config = match client {
            None => b.with_no_client_auth(),
            Some(c) => {
                let certs = CertificateDer::pem_file_iter(self.cert(c))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.key(c)).unwrap();
                b.with_client_auth_cert(certs, key).unwrap()
            }
        };
        Arc::new(config)
    }
}

impl Raw<UnixStream> {
    /// Send `NBD_OPT_STARTTLS`, expect `NBD_REP_ACK`, then run the TLS handshake (server name
    /// `localhost`) over the same socket. Errors: the handshake's.
    pub fn starttls(mut self, config: Arc<ClientConfig>) -> std::io::Result<TlsRaw> {
        self.send_opt(OPT_STARTTLS, &[]);
        let (opt, rt, data) = self.opt_reply()?;
        assert_eq!((opt, rt), (OPT_STARTTLS, REP_ACK), "{data:?}");
        let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
            .map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, self.s);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Raw { s: tls })
    }
}
