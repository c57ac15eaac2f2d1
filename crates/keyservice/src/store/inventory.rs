//! The administrator's inventory of identities (`docs/keyservice-api.md` "Administration"):
//! listing hosts, tokens and officers (never a token's digest), and removing a host or an
//! officer. Removals are audited; a host that owns volumes is not removed.

use rusqlite::params;
use serde::Serialize;

use super::audit::cli_entry;
use super::conn::Store;
use super::error::{db, StoreError};

/// One host, as `host list` prints it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The host's name.
    pub name: String,
    /// SHA-256 of its current certificate (hex).
    pub fingerprint: String,
    /// Whether its certificate is refused (`host revoke`).
    pub revoked: bool,
    /// When it was added (ms since the Unix epoch).
    pub created_ms: i64,
    /// How many registered volumes it owns.
    pub volumes: i64,
}

/// One bearer token, as `token list` prints it: never the token or its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token's (person's) name.
    pub name: String,
    /// admin, officer or auditor.
    pub role: String,
    /// Whether it is refused (`token revoke`).
    pub revoked: bool,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
}

/// One recovery officer, as `officer list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfficerInfo {
    /// The officer's name.
    pub name: String,
    /// The `age1...` recipient escrow packages are sealed to.
    pub recipient: String,
}

impl Store {
    /// Every host, by name, with the number of volumes it owns.
    ///
    /// Errors: database.
    pub fn host_list(&self) -> Result<Vec<HostInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT h.name, h.fingerprint, h.revoked, h.created_ms,
                        (SELECT count(*) FROM volumes v WHERE v.owner = h.name)
                 FROM hosts h ORDER BY h.name",
            )
            .map_err(db("reading hosts"))?;
        let rows = st
            .query_map([], |r| {
                Ok(HostInfo {
                    name: r.get(0)?,
                    fingerprint: r.get(1)?,
                    revoked: r.get::<_, i64>(2)? != 0,
                    created_ms: r.get(3)?,
                    volumes: r.get(4)?,
                })
            })
            .map_err(db("reading hosts"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading hosts"))
    }

    /// Every bearer token, by name (without its digest).
    ///
    /// Errors: database.
    pub fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT name, role, revoked, created_ms FROM tokens ORDER BY name")
            .map_err(db("reading tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenInfo {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    revoked: r.get::<_, i64>(2)? != 0,
                    created_ms: r.get(3)?,
                })
            })
            .map_err(db("reading tokens"))?;
        rows.collect::<Result<_, _>>().map_err(db("reading tokens"))
    }

    /// Every officer, by name.
    ///
    /// Errors: database.
    pub fn officer_list(&self) -> Result<Vec<OfficerInfo>, StoreError> {
        Ok(self
            .officers()?
            .into_iter()
            .map(|(name, recipient)| OfficerInfo { name, recipient })
            .collect())
    }

    /// Removes host `name`: its certificate is refused from the next request on and the name
    /// is free again. Refused while it owns volumes (`volume assign` them to another host
    /// first), so no volume is left without an owner. Audited (`host-remove`).
    ///
    /// Errors: [`StoreError::NotFound`], [`StoreError::Invalid`] (owns volumes), database.
    pub fn host_remove(&mut self, name: &str) -> Result<(), StoreError> {
        let owned: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM volumes WHERE owner = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(db("counting the host's volumes"))?;
        if owned > 0 {
            return Err(StoreError::Invalid(format!(
                "host {name} owns {owned} volume(s): `volume assign UUID --host OTHER` them \
                 first (`volume list` shows them)"
            )));
        }
        self.with_audit(cli_entry("host-remove", name, ""), |tx, _| {
            let n = tx
                .execute(
                    "DELETE FROM hosts WHERE name = ?1 AND NOT EXISTS
                     (SELECT 1 FROM volumes WHERE owner = ?1)",
                    params![name],
                )
                .map_err(db("removing the host"))?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "host",
                    name: name.into(),
                });
            }
            Ok(())
        })
    }

    /// Removes officer `name`: escrow packages sealed from now on no longer include them
    /// (packages sealed before still open with their identity). Audited (`officer-remove`).
    ///
    /// Errors: [`StoreError::NotFound`], database.
    pub fn officer_remove(&mut self, name: &str) -> Result<(), StoreError> {
        self.with_audit(cli_entry("officer-remove", name, ""), |tx, _| {
            let n = tx
                .execute("DELETE FROM officers WHERE name = ?1", [name])
                .map_err(db("removing the officer"))?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "officer",
                    name: name.into(),
                });
            }
            Ok(())
        })
    }
}
