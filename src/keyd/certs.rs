//! Certificates on the `nbdcrypt-keyd` command line (`docs/keyservice-api.md` "Certificate
//! lifetimes"): the `--cert-days` flag, writing a host's new key and certificate, and
//! `server-cert renew`.

use std::path::Path;

use clap::Subcommand;

use super::error::KeydError;
use super::files::write_file;
use crate::keyservice::pki::{self, Issued, Validity};
use crate::keyservice::store::{RootKey, Store};

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

/// Refuses before anything changes if `out_dir` already has host `name`'s files.
///
/// Errors: [`KeydError::Io`] (already exists) naming the file.
pub fn check_host_files_free(name: &str, out_dir: &Path) -> Result<(), KeydError> {
    for f in [format!("{name}.pem"), format!("{name}.key")] {
        let p = out_dir.join(f);
        if p.exists() {
            return Err(KeydError::Io {
                path: p,
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
    }
    Ok(())
}

/// Writes host `name`'s new key (0600) and certificate into `out_dir` and says where.
///
/// Errors: [`KeydError::Io`].
pub fn write_host_files(
    name: &str,
    out_dir: &Path,
    issued: &Issued,
    days: u32,
) -> Result<(), KeydError> {
    let cert = out_dir.join(format!("{name}.pem"));
    let key = out_dir.join(format!("{name}.key"));
    write_file(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    println!(
        "host {name}: certificate {} key {} (valid {days} days)",
        cert.display(),
        key.display()
    );
    Ok(())
}
