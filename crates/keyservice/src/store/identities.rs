//! Hosts and recovery officers (`docs/keyservice-api.md` "Identities and roles"): issuing a
//! host's client certificate from the store's CA, revoking it, recognising a host by its
//! certificate fingerprint, and the officers' `age` recipients.

use rusqlite::{params, OptionalExtension};

use super::audit::cli_entry;
use super::conn::{check_name, now_ms, Store};
use super::error::{db, StoreError};
use super::root::RootKey;
use crate::pki::{self, Issued, Validity};

impl Store {
    /// [`Store::host_add_valid`] for [`pki::DEFAULT_CERT_DAYS`].
    ///
    /// Errors: as [`Store::host_add_valid`].
    pub fn host_add(&mut self, root: &RootKey, name: &str) -> Result<Issued, StoreError> {
        self.host_add_valid(root, name, &Validity::days(pki::DEFAULT_CERT_DAYS))
    }

    /// Issues a client certificate (valid in `v`) and key for a new host `name` and records
    /// its fingerprint.
    ///
    /// Errors: [`StoreError::Exists`], [`StoreError::Invalid`] name, database, certificate.
    pub fn host_add_valid(
        &mut self,
        root: &RootKey,
        name: &str,
        v: &Validity,
    ) -> Result<Issued, StoreError> {
        self.host_add_with(root, name, v, |_| Ok(()))
    }

    /// [`Store::host_add_valid`] that calls `deliver` with the new key and certificate (to
    /// write them out) after the host's row is inserted and before it is committed: if
    /// `deliver` fails, nothing is recorded or audited and the name stays free.
    ///
    /// Errors: as [`Store::host_add_valid`], and `deliver`'s.
    pub fn host_add_with(
        &mut self,
        root: &RootKey,
        name: &str,
        v: &Validity,
        deliver: impl FnOnce(&Issued) -> Result<(), StoreError>,
    ) -> Result<Issued, StoreError> {
        check_name("host", name)?;
        let ca_key = self.ca_key(root)?;
        let issued = pki::host_cert(&ca_key, name, v)?;
        let fpr = pki::fingerprint(&issued.cert_der);
        self.with_audit(cli_entry("host-add", name, &fpr), |tx, _| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO hosts (name, fingerprint, created_ms) VALUES (?1, ?2, ?3)",
                    params![name, fpr, now_ms()],
                )
                .map_err(db("adding the host"))?;
            if n == 0 {
                return Err(StoreError::Exists {
                    what: "host",
                    name: name.into(),
                });
            }
            deliver(&issued)
        })?;
        Ok(issued)
    }

    /// Renews host `name`'s certificate: a new key and certificate (valid in `v`) replace the
    /// old ones, which are refused from the next request on. The host keeps its name, so the
    /// volumes it owns and their wrapped secrets keep working with the new certificate.
    /// Audited (`host-renew`, the new fingerprint).
    ///
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Invalid`] for a revoked host (renewal
    /// does not undo a revocation); database, certificate.
    pub fn host_renew(
        &mut self,
        root: &RootKey,
        name: &str,
        v: &Validity,
    ) -> Result<Issued, StoreError> {
        self.host_renew_with(root, name, v, |_| Ok(()))
    }

    /// [`Store::host_renew`] that calls `deliver` with the new key and certificate before the
    /// change is committed: if `deliver` fails, the old certificate stays the host's.
    ///
    /// Errors: as [`Store::host_renew`], and `deliver`'s.
    pub fn host_renew_with(
        &mut self,
        root: &RootKey,
        name: &str,
        v: &Validity,
        deliver: impl FnOnce(&Issued) -> Result<(), StoreError>,
    ) -> Result<Issued, StoreError> {
        let revoked: Option<bool> = self
            .conn
            .query_row("SELECT revoked FROM hosts WHERE name = ?1", [name], |r| {
                Ok(r.get::<_, i64>(0)? != 0)
            })
            .optional()
            .map_err(db("looking up the host"))?;
        match revoked {
            None => {
                return Err(StoreError::NotFound {
                    what: "host",
                    name: name.into(),
                })
            }
            Some(true) => {
                return Err(StoreError::Invalid(format!(
                    "host {name} is revoked; a revoked host is not renewed"
                )))
            }
            Some(false) => {}
        }
        let ca_key = self.ca_key(root)?;
        let issued = pki::host_cert(&ca_key, name, v)?;
        let fpr = pki::fingerprint(&issued.cert_der);
        self.with_audit(cli_entry("host-renew", name, &fpr), |tx, _| {
            tx.execute(
                "UPDATE hosts SET fingerprint = ?1 WHERE name = ?2 AND revoked = 0",
                params![fpr, name],
            )
            .map_err(db("renewing the host"))?;
            deliver(&issued)
        })?;
        Ok(issued)
    }

    /// Revokes host `name`: its certificate is refused from the next request on.
    ///
    /// Errors: [`StoreError::NotFound`], database.
    pub fn host_revoke(&mut self, name: &str) -> Result<(), StoreError> {
        self.with_audit(cli_entry("host-revoke", name, ""), |tx, _| {
            let n = tx
                .execute("UPDATE hosts SET revoked = 1 WHERE name = ?1", [name])
                .map_err(db("revoking the host"))?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "host",
                    name: name.into(),
                });
            }
            Ok(())
        })
    }

    /// The host with this certificate fingerprint: `(name, revoked)`.
    ///
    /// Errors: database.
    pub fn host_by_fingerprint(&self, fpr: &str) -> Result<Option<(String, bool)>, StoreError> {
        self.conn
            .query_row(
                "SELECT name, revoked FROM hosts WHERE fingerprint = ?1",
                [fpr],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()
            .map_err(db("looking up the host"))
    }

    /// Whether host `name` exists (revoked or not).
    ///
    /// Errors: database.
    pub(super) fn host_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM hosts WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map_err(db("looking up the host"))?
            .is_some())
    }

    /// Adds officer `name` with `age` recipient `recipient` (`age1...`).
    ///
    /// Errors: [`StoreError::Exists`], [`StoreError::Invalid`] recipient, database.
    pub fn officer_add(&mut self, name: &str, recipient: &str) -> Result<(), StoreError> {
        check_name("officer", name)?;
        if recipient.parse::<age::x25519::Recipient>().is_err() {
            return Err(StoreError::Invalid(format!(
                "{recipient:?} is not an age X25519 recipient (age1...)"
            )));
        }
        self.with_audit(cli_entry("officer-add", name, recipient), |tx, _| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO officers (name, recipient) VALUES (?1, ?2)",
                    params![name, recipient],
                )
                .map_err(db("adding the officer"))?;
            if n == 0 {
                return Err(StoreError::Exists {
                    what: "officer",
                    name: name.into(),
                });
            }
            Ok(())
        })
    }

    /// Every officer: `(name, recipient)`.
    ///
    /// Errors: database.
    pub fn officers(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT name, recipient FROM officers ORDER BY name")
            .map_err(db("reading officers"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db("reading officers"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("reading officers"))
    }
}
