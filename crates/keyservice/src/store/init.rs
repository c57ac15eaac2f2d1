//! Creating a store (`nbdcrypt-keyd init`: schema, root key, CA, server certificate, first
//! admin token, in one transaction) and opening an existing one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::{params, TransactionBehavior};
use zeroize::Zeroizing;

use super::audit::{append_audit, AuditEntry};
use super::audit_policy::AuditPolicy;
use super::audit_schema::{ensure_audit_guards, AUDIT_GUARDS};
use super::conn::{
    now_ms, write_new, Store, CA_FILE, DB_FILE, ROOT_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE,
};
use super::error::{db, io, StoreError};
use super::join;
use super::root::{ca_key_aad, derive_root, root_check_aad, RootKey, RootSource};
use super::tokens::{new_token, token_digest};
use crate::pki;
use crate::wrap::{self, WrapError, KEY_LEN};

/// What `init` created (the admin token is shown once, never stored in clear).
pub struct InitOutput {
    /// The first admin token.
    pub admin_token: Zeroizing<String>,
}

/// The tables of a new store (join tokens: [`join::ensure_schema`]; the audit table's
/// triggers: [`AUDIT_GUARDS`]).
const SCHEMA: &str = "
CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE hosts (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
CREATE TABLE tokens (name TEXT PRIMARY KEY, role TEXT NOT NULL, digest BLOB NOT NULL UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
CREATE TABLE keks (name TEXT PRIMARY KEY, current INTEGER NOT NULL, min_unwrap INTEGER NOT NULL);
CREATE TABLE kek_versions (name TEXT NOT NULL REFERENCES keks(name), version INTEGER NOT NULL,
    sealed BLOB NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE volumes (uuid TEXT PRIMARY KEY, owner TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE kek_usage (uuid TEXT NOT NULL, slot INTEGER NOT NULL, kek TEXT NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY (uuid, slot));
CREATE TABLE escrow (uuid TEXT PRIMARY KEY, package TEXT NOT NULL, host TEXT NOT NULL,
    stored_ms INTEGER NOT NULL);
CREATE TABLE officers (name TEXT PRIMARY KEY, recipient TEXT NOT NULL);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
    prev BLOB NOT NULL, hash BLOB NOT NULL);
";

impl Store {
    /// Creates a store in `dir` (created if missing, must not hold one): database, root key
    /// (`root.key` unless a passphrase is given), CA (`ca.pem`), server certificate for
    /// `server_names` (`server.pem`, `server.key`), and a first admin token named `admin`.
    ///
    /// Errors: [`StoreError::AlreadyInitialised`], I/O, database, certificate generation.
    pub fn init(
        dir: &Path,
        root: &RootSource,
        server_names: &[String],
    ) -> Result<InitOutput, StoreError> {
        Store::init_valid(
            dir,
            root,
            server_names,
            &pki::Validity::days(pki::DEFAULT_CERT_DAYS),
        )
    }

    /// [`Store::init`] with the server certificate valid in `server_validity` (the CA for
    /// [`pki::CA_DAYS`]).
    ///
    /// Errors: as [`Store::init`].
    pub fn init_valid(
        dir: &Path,
        root: &RootSource,
        server_names: &[String],
        server_validity: &pki::Validity,
    ) -> Result<InitOutput, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        if dir.join(DB_FILE).exists() {
            return Err(StoreError::AlreadyInitialised(dir.to_path_buf()));
        }
        // The database is created 0600 before SQLite opens it (SQLite would create it 0644);
        // SQLite gives its `-wal` and `-shm` files the database file's permissions.
        write_new(&dir.join(DB_FILE), b"", 0o600)?;
        let mut conn = Store::connect(dir)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting init"))?;
        tx.execute_batch(SCHEMA).map_err(db("creating tables"))?;
        tx.execute_batch(AUDIT_GUARDS)
            .map_err(db("creating the audit table's triggers"))?;
        let key = match root {
            RootSource::KeyFile => {
                let k = Zeroizing::new(
                    nbdcrypt_luks2::crypto::random_bytes(KEY_LEN)
                        .map_err(|_| StoreError::Wrap(WrapError::Setup))?,
                );
                write_new(&dir.join(ROOT_KEY_FILE), &k, 0o600)?;
                tx.execute(
                    "INSERT INTO meta VALUES ('root_kind', CAST('file' AS BLOB))",
                    [],
                )
                .map_err(db("writing meta"))?;
                RootKey(k)
            }
            RootSource::Passphrase(p) => {
                let salt = nbdcrypt_luks2::crypto::random_bytes(32)
                    .map_err(|_| StoreError::Wrap(WrapError::Setup))?;
                tx.execute(
                    "INSERT INTO meta VALUES ('root_kind', CAST('argon2id' AS BLOB))",
                    [],
                )
                .map_err(db("writing meta"))?;
                tx.execute("INSERT INTO meta VALUES ('root_salt', ?1)", [&salt])
                    .map_err(db("writing meta"))?;
                derive_root(p, &salt)?
            }
        };
        let check = wrap::seal(&key.0, root_check_aad(), b"nbdcrypt-keyd")?;
        tx.execute("INSERT INTO meta VALUES ('root_check', ?1)", [&check])
            .map_err(db("writing meta"))?;
        let ca = pki::new_ca()?;
        let sealed_ca = wrap::seal(&key.0, ca_key_aad(), ca.key_pem.as_bytes())?;
        tx.execute("INSERT INTO meta VALUES ('ca_key', ?1)", [&sealed_ca])
            .map_err(db("writing meta"))?;
        let server = pki::server_cert(&ca.key_pem, server_names, server_validity)?;
        write_new(&dir.join(CA_FILE), ca.cert_pem.as_bytes(), 0o644)?;
        write_new(
            &dir.join(SERVER_CERT_FILE),
            server.cert_pem.as_bytes(),
            0o644,
        )?;
        write_new(&dir.join(SERVER_KEY_FILE), server.key_pem.as_bytes(), 0o600)?;
        let token = new_token()?;
        tx.execute(
            "INSERT INTO tokens (name, role, digest, created_ms) VALUES ('admin', 'admin', ?1, ?2)",
            params![token_digest(&token), now_ms()],
        )
        .map_err(db("storing the admin token"))?;
        append_audit(
            &tx,
            &AuditEntry {
                actor: "cli".into(),
                action: "init".into(),
                target: String::new(),
                outcome: "ok".into(),
                detail: format!(
                    "server names {}; admin token 'admin'",
                    server_names.join(",")
                ),
            },
        )?;
        tx.commit().map_err(db("committing init"))?;
        Ok(InitOutput { admin_token: token })
    }

    /// Opens the store in `dir`, adding what later versions added to the schema (join tokens,
    /// the audit table's INSERT guard; see `audit_schema.rs`).
    ///
    /// Errors: [`StoreError::NotInitialised`], database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if !dir.join(DB_FILE).exists() {
            return Err(StoreError::NotInitialised(dir.to_path_buf()));
        }
        let conn = Store::connect(dir)?;
        join::ensure_schema(&conn)?;
        ensure_audit_guards(&conn)?;
        Ok(Store {
            conn,
            dir: dir.to_path_buf(),
            audit_policy: AuditPolicy::default(),
            registration: super::conn::Registration::default(),
        })
    }
}
