//! Renewing the server certificate (`nbdcrypt-keyd server-cert renew`,
//! `docs/keyservice-api.md` "Certificate lifetimes"): a new key and certificate from the
//! store's CA replace `server.pem` and `server.key`; `serve` reads them when it starts.

use std::fs;

use super::audit::cli_entry;
use super::conn::{write_new, Store, SERVER_CERT_FILE, SERVER_KEY_FILE};
use super::error::{io, StoreError};
use super::root::RootKey;
use crate::pki::{self, Validity};

impl Store {
    /// Issues a new server certificate for `names` (valid in `v`) and key, and puts them in
    /// place of `server.pem` and `server.key` (each written to `NAME.new`, then renamed over
    /// the old file: the key first). A running `serve` keeps the old pair until restarted.
    /// Audited (`server-cert-renew`, the names).
    ///
    /// Errors: [`StoreError::Invalid`] with no name; I/O, certificate, database.
    pub fn server_cert_renew(
        &mut self,
        root: &RootKey,
        names: &[String],
        v: &Validity,
    ) -> Result<(), StoreError> {
        if names.is_empty() {
            return Err(StoreError::Invalid(
                "the server certificate needs at least one name".into(),
            ));
        }
        let ca_key = self.ca_key(root)?;
        let issued = pki::server_cert(&ca_key, names, v)?;
        let dir = self.dir().to_path_buf();
        self.with_audit(
            cli_entry("server-cert-renew", "", &names.join(",")),
            |_, _| {
                for (file, bytes, mode) in [
                    (SERVER_KEY_FILE, issued.key_pem.as_bytes(), 0o600),
                    (SERVER_CERT_FILE, issued.cert_pem.as_bytes(), 0o644),
                ] {
                    let path = dir.join(file);
                    let new = dir.join(format!("{file}.new"));
                    match fs::remove_file(&new) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(&new)(e))
                        }
                        _ => {}
                    }
                    write_new(&new, bytes, mode)?;
                    fs::rename(&new, &path).map_err(io(&path))?;
                }
                Ok(())
            },
        )
    }
}
