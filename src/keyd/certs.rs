//! Certificates on the `nbdcrypt-keyd` command line (`docs/keyservice-api.md` "Certificate
//! lifetimes"): the `--cert-days` flag, writing a host's new key and certificate (committed to
//! the store only once its files are written), and
//! `server-cert renew`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::error::KeydError;
use super::files::write_file;
use crate::keyservice::pki::{self, Issued, Validity};
use crate::keyservice::store::{RootKey, Store, StoreError, CA_FILE};

/// `--cert-days DAYS`: 1 to [`pki::MAX_CERT_DAYS`].
pub fn cert_days(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if (1..=pki::MAX_CERT_DAYS).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of days from 1 to {}",
            pki::MAX_CERT_DAYS
        )),
    }
}

/// `server-cert` subcommands.
#[derive(Subcommand)]
pub enum ServerCertCmd {
    /// Replace server.pem and server.key with a new key and certificate from the store's CA;
    /// restart `serve` to use them (clients keep trusting ca.pem).
    Renew {
        /// DNS name or IP address clients use to reach the server (repeatable, required: a
        /// renewal must not change the names clients connect by; the current ones: `openssl
        /// x509 -noout -ext subjectAltName -in DATA-DIR/server.pem`).
        #[arg(long = "server-name", required = true)]
        server_names: Vec<String>,
        /// Days the certificate is valid for (1 to 3650).
        #[arg(long, value_name = "DAYS", default_value_t = pki::DEFAULT_CERT_DAYS,
              value_parser = cert_days)]
        cert_days: u32,
    },
}

/// Runs a `server-cert` subcommand.
///
/// Errors: the store's ([`KeydError::Store`]).
pub fn server_cert(
    cmd: &ServerCertCmd,
    store: &mut Store,
    root: &RootKey,
) -> Result<(), KeydError> {
    match cmd {
        ServerCertCmd::Renew {
            server_names,
            cert_days,
        } => {
            let names = server_names.clone();
            store.server_cert_renew(root, &names, &Validity::days(*cert_days))?;
            println!(
                "server certificate for {} renewed, valid {cert_days} days; restart \
                 `nbdcrypt-keyd serve` to use it",
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// `--server-name` values, or localhost, 127.0.0.1 and ::1 when none is given.
pub fn default_names(names: &[String]) -> Vec<String> {
    if names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        names.to_vec()
    }
}

/// The files `host add` and `host renew` write into `--out-dir`, the layout `nbdcrypt` reads
/// by default from `/etc/nbdcrypt/keyservice` and `join` writes: `host.key` (0600),
/// `host.pem` and `ca.pem`.
pub struct HostFiles {
    /// The directory (created 0700 when missing).
    pub dir: PathBuf,
}

impl HostFiles {
    /// The files in `dir`: (key, certificate, CA).
    fn paths(&self) -> [PathBuf; 3] {
        [
            self.dir.join("host.key"),
            self.dir.join("host.pem"),
            self.dir.join(CA_FILE),
        ]
    }

    /// Refuses before anything changes if one of the files exists (or is a symlink).
    ///
    /// Errors: [`KeydError::Io`] (already exists) naming the file.
    pub fn check_free(&self) -> Result<(), KeydError> {
        for p in self.paths() {
            if p.symlink_metadata().is_ok() {
                return Err(KeydError::Io {
                    path: p,
                    source: std::io::ErrorKind::AlreadyExists.into(),
                });
            }
        }
        Ok(())
    }

    /// Creates the directory (0700, with its parents) if missing and writes the key (0600),
    /// the certificate and the CA certificate `ca_pem`, each created new without following a
    /// symlink. On failure the files written so far are removed again.
    ///
    /// Errors: [`KeydError::Io`] naming the directory or file.
    pub fn write(&self, issued: &Issued, ca_pem: &[u8]) -> Result<(), KeydError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| KeydError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let [key, cert, ca] = self.paths();
        let files: [(&Path, &[u8], u32); 3] = [
            (&key, issued.key_pem.as_bytes(), 0o600),
            (&cert, issued.cert_pem.as_bytes(), 0o644),
            (&ca, ca_pem, 0o644),
        ];
        for (n, (path, bytes, mode)) in files.iter().enumerate() {
            if let Err(e) = write_file(path, bytes, *mode) {
                self.remove(n);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes the first `n` files (after a failure: the store did not record them).
    pub fn remove(&self, n: usize) {
        for p in self.paths().iter().take(n) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Says where the files are.
    pub fn announce(&self, name: &str, days: u32) {
        let [key, cert, ca] = self.paths();
        println!(
            "host {name}: certificate {} key {} CA {} (valid {days} days)",
            cert.display(),
            key.display(),
            ca.display()
        );
    }
}

/// Issues (`renew` false: `host add`) or renews host `name`'s certificate, writing its files
/// into `files` before the store commits: a failed write leaves the store unchanged (no host
/// recorded, no audit row, the name still free), and a failed commit removes the files.
///
/// Errors: the files' ([`KeydError::Io`]) or the store's ([`KeydError::Store`]).
pub fn issue_host(
    store: &mut Store,
    root: &RootKey,
    name: &str,
    v: &Validity,
    files: &HostFiles,
    ca_pem: &[u8],
    renew: bool,
) -> Result<(), KeydError> {
    files.check_free()?;
    let written = std::cell::Cell::new(false);
    let deliver = |issued: &Issued| {
        files.write(issued, ca_pem).map_err(|e| match e {
            KeydError::Io { path, source } => StoreError::Io { path, source },
            other => StoreError::Invalid(other.to_string()),
        })?;
        written.set(true);
        Ok(())
    };
    let r = if renew {
        store.host_renew_with(root, name, v, deliver)
    } else {
        store.host_add_with(root, name, v, deliver)
    };
    if let Err(e) = r {
        if written.get() {
            files.remove(3);
        }
        return Err(e.into());
    }
    Ok(())
}
