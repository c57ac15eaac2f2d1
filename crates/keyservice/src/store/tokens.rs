//! People's bearer tokens (`docs/keyservice-api.md` "Identities and roles"): [`Role`], making
//! a token (`nbk_` + 32 random bytes, base64url; only its SHA-256 is stored), revoking it and
//! looking it up.

use std::str::FromStr;

use base64::Engine;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::audit::cli_entry;
use super::conn::{check_name, now_ms, Store};
use super::error::{db, StoreError};
use crate::wrap::WrapError;

/// Prefix of bearer tokens as printed (`nbk_` + 43 base64url characters).
pub const TOKEN_PREFIX: &str = "nbk_";

/// Role of a person holding a bearer token (`docs/keyservice-api.md` "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the audit log and KEK usage.
    Admin,
    /// Fetches escrow packages (recovery officer).
    Officer,
    /// Reads and verifies the audit log.
    Auditor,
}

impl Role {
    /// `admin`, `officer` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "officer" => Ok(Role::Officer),
            "auditor" => Ok(Role::Auditor),
            _ => Err(format!("unknown role {s:?} (admin, officer or auditor)")),
        }
    }
}

/// SHA-256 of a bearer (or join) token's text.
pub(super) fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token text: [`TOKEN_PREFIX`] and 32 random bytes in base64url.
///
/// Errors: [`StoreError::Wrap`] when the system RNG fails.
pub(super) fn new_token() -> Result<Zeroizing<String>, StoreError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut raw[..]).map_err(|_| StoreError::Wrap(WrapError::Setup))?;
    Ok(Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
    )))
}

impl Store {
    /// Creates bearer token `name` of `role`; returns its text (shown once).
    ///
    /// Errors: [`StoreError::Exists`], database.
    pub fn token_add(&mut self, name: &str, role: Role) -> Result<Zeroizing<String>, StoreError> {
        check_name("token", name)?;
        let token = new_token()?;
        let digest = token_digest(&token);
        self.with_audit(cli_entry("token-add", name, role.as_str()), |tx, _| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO tokens (name, role, digest, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![name, role.as_str(), digest, now_ms()],
                )
                .map_err(db("adding the token"))?;
            if n == 0 {
                return Err(StoreError::Exists {
                    what: "token",
                    name: name.into(),
                });
            }
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes bearer token `name`.
    ///
    /// Errors: [`StoreError::NotFound`], database.
    pub fn token_revoke(&mut self, name: &str) -> Result<(), StoreError> {
        self.with_audit(cli_entry("token-revoke", name, ""), |tx, _| {
            let n = tx
                .execute("UPDATE tokens SET revoked = 1 WHERE name = ?1", [name])
                .map_err(db("revoking the token"))?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "token",
                    name: name.into(),
                });
            }
            Ok(())
        })
    }

    /// The unrevoked token with this text: `(name, role)`.
    ///
    /// Errors: database.
    pub fn token_lookup(&self, token: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT name, role FROM tokens WHERE digest = ?1 AND revoked = 0",
                [token_digest(token)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("looking up the token"))?;
        Ok(row.and_then(|(n, r)| r.parse().ok().map(|r| (n, r))))
    }
}
