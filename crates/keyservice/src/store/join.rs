//! One-time join tokens (`docs/keyservice-api.md` "Joining"): `host join-token NAME` stores the
//! SHA-256 of a random token with an expiry; a host without a certificate redeems it once at
//! `POST /v1/join` with its own P-256 public key and gets a client certificate for NAME. The
//! private key never leaves the host.

use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::audit::AuditEntry;
use super::conn::{check_name, now_ms, Store};
use super::error::{db, StoreError};
use super::root::RootKey;
use super::tokens::{new_token, token_digest, TOKEN_PREFIX};
use crate::pki;
use crate::refusal::Refusal;

/// Prefix of join tokens as printed (`nbj_` + 43 base64url characters).
pub const JOIN_PREFIX: &str = "nbj_";

/// Creates the join token table in stores made before it existed, and its `cert_days` column
/// (days the certificate issued for the token is valid; NULL: the default) in tables made
/// before that.
pub(super) fn ensure_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS join_tokens (digest BLOB PRIMARY KEY, host TEXT NOT NULL,
             expires_ms INTEGER NOT NULL, used_ms INTEGER, created_ms INTEGER NOT NULL,
             cert_days INTEGER);",
    )
    .map_err(db("creating the join token table"))?;
    let has_days: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('join_tokens') WHERE name = 'cert_days'",
            [],
            |r| Ok(r.get::<_, i64>(0)? > 0),
        )
        .map_err(db("reading the join token table"))?;
    if !has_days {
        conn.execute_batch("ALTER TABLE join_tokens ADD COLUMN cert_days INTEGER;")
            .map_err(db("adding cert_days to the join token table"))?;
    }
    Ok(())
}

/// What redeeming a join token gave.
pub enum JoinOutcome {
    /// A certificate for `host` (PEM), recorded and audited.
    Issued {
        /// The host name.
        host: String,
        /// Its client certificate.
        cert_pem: String,
    },
    /// Refused: the caller writes the audit row (`actor`, and the refusal's outcome).
    Refused {
        /// `anonymous` or `join:HOST`.
        actor: String,
        /// Which refusal.
        refusal: Refusal,
        /// Why.
        detail: String,
    },
}

impl Store {
    /// Creates a one-time join token for new host `name`, valid `ttl_secs` seconds; returns
    /// its text (shown once; only its SHA-256 is stored).
    ///
    /// Errors: [`StoreError::Exists`] when the host exists, [`StoreError::Invalid`] name or
    /// TTL, database.
    pub fn join_token_add(
        &mut self,
        name: &str,
        ttl_secs: u64,
    ) -> Result<Zeroizing<String>, StoreError> {
        self.join_token_add_days(name, ttl_secs, pki::DEFAULT_CERT_DAYS)
    }

    /// [`Store::join_token_add`] whose certificate, once redeemed, is valid `cert_days` days
    /// (1 to [`pki::MAX_CERT_DAYS`]).
    ///
    /// Errors: as [`Store::join_token_add`]; [`StoreError::Invalid`] days.
    pub fn join_token_add_days(
        &mut self,
        name: &str,
        ttl_secs: u64,
        cert_days: u32,
    ) -> Result<Zeroizing<String>, StoreError> {
        check_name("host", name)?;
        if cert_days == 0 || cert_days > pki::MAX_CERT_DAYS {
            return Err(StoreError::Invalid(format!(
                "--cert-days takes 1 to {} days",
                pki::MAX_CERT_DAYS
            )));
        }
        if ttl_secs == 0 || ttl_secs > 30 * 86400 {
            return Err(StoreError::Invalid(
                "--ttl takes 1 to 2592000 seconds (30 days)".into(),
            ));
        }
        if self.host_exists(name)? {
            return Err(StoreError::Exists {
                what: "host",
                name: name.into(),
            });
        }
        let raw = new_token()?;
        let token = Zeroizing::new(format!(
            "{JOIN_PREFIX}{}",
            raw.trim_start_matches(TOKEN_PREFIX)
        ));
        let digest = token_digest(&token);
        let now = now_ms();
        let expires = now + (ttl_secs as i64) * 1000;
        let entry = AuditEntry {
            actor: "cli".into(),
            action: "join-token-add".into(),
            target: name.into(),
            outcome: "ok".into(),
            detail: format!("expires in {ttl_secs} s; certificate {cert_days} days"),
        };
        self.with_audit(entry, |tx, _| {
            tx.execute(
                "INSERT INTO join_tokens (digest, host, expires_ms, created_ms, cert_days)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest, name, expires, now, cert_days],
            )
            .map_err(db("storing the join token"))?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Redeems join `token` for the host's P-256 public key `point` (uncompressed, 65 bytes):
    /// refuses an unknown token ([`Refusal::BadJoinToken`]), a used one
    /// ([`Refusal::JoinTokenUsed`]), an expired one ([`Refusal::JoinTokenExpired`]), a host that
    /// exists already ([`Refusal::HostExists`]) and a bad key ([`Refusal::BadRequest`]);
    /// otherwise issues the certificate and, in one transaction, records the host, marks the
    /// token used and appends the `join` audit row.
    ///
    /// Errors: database, root key (the CA key).
    pub fn join_redeem(
        &mut self,
        root: &RootKey,
        token: &str,
        point: &[u8],
    ) -> Result<JoinOutcome, StoreError> {
        let digest = token_digest(token);
        let row: Option<(String, i64, Option<i64>, Option<u32>)> = self
            .conn
            .query_row(
                "SELECT host, expires_ms, used_ms, cert_days FROM join_tokens WHERE digest = ?1",
                [&digest],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("looking up the join token"))?;
        let refused = |actor: String, refusal, detail: String| {
            Ok(JoinOutcome::Refused {
                actor,
                refusal,
                detail,
            })
        };
        let Some((host, expires, used, cert_days)) = row else {
            return refused(
                "anonymous".into(),
                Refusal::BadJoinToken,
                "unknown join token".into(),
            );
        };
        let actor = format!("join:{host}");
        if let Some(at) = used {
            return refused(
                actor,
                Refusal::JoinTokenUsed,
                format!("the join token of host {host} was used at {at} ms"),
            );
        }
        if now_ms() >= expires {
            return refused(
                actor,
                Refusal::JoinTokenExpired,
                format!("the join token of host {host} expired at {expires} ms"),
            );
        }
        if self.host_exists(&host)? {
            return refused(
                actor,
                Refusal::HostExists,
                format!("host {host} exists already"),
            );
        }
        let ca_key = self.ca_key(root)?;
        let (cert_pem, der) = match pki::host_cert_for_key(
            &ca_key,
            &host,
            point,
            &pki::Validity::days(cert_days.unwrap_or(pki::DEFAULT_CERT_DAYS)),
        ) {
            Ok(c) => c,
            Err(e) => return refused(actor, Refusal::BadRequest, e.to_string()),
        };
        let fpr = pki::fingerprint(&der);
        let entry = AuditEntry {
            actor,
            action: "join".into(),
            target: host.clone(),
            outcome: "ok".into(),
            detail: format!("certificate {fpr}"),
        };
        self.with_audit(entry, |tx, _| {
            let n = tx
                .execute(
                    "UPDATE join_tokens SET used_ms = ?1 WHERE digest = ?2 AND used_ms IS NULL",
                    params![now_ms(), digest],
                )
                .map_err(db("using the join token"))?;
            if n != 1 {
                return Err(StoreError::Invalid(
                    "the join token was used meanwhile".into(),
                ));
            }
            tx.execute(
                "INSERT INTO hosts (name, fingerprint, created_ms) VALUES (?1, ?2, ?3)",
                params![host, fpr, now_ms()],
            )
            .map_err(db("adding the host"))?;
            Ok(())
        })?;
        Ok(JoinOutcome::Issued { host, cert_pem })
    }
}
