//! The key service's store (`docs/keyservice-api.md` "Store"): one SQLite database
//! `keyd.db` in the data directory (WAL, `synchronous=FULL`, so a commit is on disk before the
//! reply that depends on it), beside `ca.pem`, `server.pem`, `server.key` and, for a key-file
//! root key, `root.key`.
//!
//! Secrets at rest: KEK material and the CA key are sealed (AES-256-GCM, [`super::wrap`]) under
//! the root key, which is either the 32 random bytes of `root.key` (mode 0600) or Argon2id of a
//! passphrase. Bearer tokens are stored as SHA-256 digests only (they are 32 random bytes, so a
//! fast hash is enough).
//!
//! Audit: table `audit` is append-only (triggers refuse UPDATE and DELETE); each row carries
//! `prev` (the previous row's hash, 32 zero bytes for the first) and `hash` = SHA-256 over
//! `prev ‖ seq ‖ time ‖ actor ‖ action ‖ target ‖ outcome ‖ detail` (integers 8-byte big
//! endian, text fields 4-byte big-endian length then UTF-8). Every change is written in one
//! transaction with its audit row ([`Store::with_audit`]), so either both are on disk or neither.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::pki::{self, Issued, PkiError};
use super::wrap::{self, WrapError, KEY_LEN};
use nbdcrypt_luks2::crypto::kdf::argon2_derive;
use nbdcrypt_luks2::crypto::Argon2Variant;

mod join;
pub use crate::api::{AuditRow, KekInfo, KekVersion, VerifyReport};
pub use join::JoinOutcome;

/// File name of the database in the data directory.
pub const DB_FILE: &str = "keyd.db";
/// File name of the root key file (key-file mode).
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// File name of the server certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File name of the server private key (mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";
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

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (including a failed audit write, which fails the whole operation).
    #[error("database {what}: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file of the data directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `init` on a directory that already holds a store.
    #[error("{} already holds a key service store", .0.display())]
    AlreadyInitialised(PathBuf),
    /// No store in the directory.
    #[error("{} holds no key service store (run `nbdcrypt-keyd init`)", .0.display())]
    NotInitialised(PathBuf),
    /// The root key file or passphrase does not open the store.
    #[error("the root key does not open this store ({0})")]
    RootKey(&'static str),
    /// A named object is missing.
    #[error("no {what} named {name:?}")]
    NotFound {
        /// `host`, `KEK`, `token`, ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A named object exists already.
    #[error("a {what} named {name:?} exists already")]
    Exists {
        /// `host`, `KEK`, `token`, ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// An argument is out of range (bad name, version, ...).
    #[error("{0}")]
    Invalid(String),
    /// Sealing or opening under the root key failed.
    #[error("root-key sealing: {0}")]
    Wrap(#[from] WrapError),
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { what, source }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the root key is obtained.
pub enum RootSource {
    /// `root.key` in the data directory (init creates it, mode 0600).
    KeyFile,
    /// Argon2id of this passphrase with the store's salt.
    Passphrase(Zeroizing<Vec<u8>>),
}

/// The unlocked root key (32 bytes, zeroised on drop).
pub struct RootKey(Zeroizing<Vec<u8>>);

/// One audit row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who: `host:NAME`, `token:NAME`, `cli`, or `anonymous`.
    pub actor: String,
    /// What: `unwrap`, `wrap`, `register`, `escrow-store`, `kek-create`, ...
    pub action: String,
    /// On what: a volume UUID, KEK, host or token name; may be empty.
    pub target: String,
    /// `ok`, or `refused STATUS: reason`, or `failed: reason`.
    pub outcome: String,
    /// More facts (keyslot, KEK version, ...); never a secret.
    pub detail: String,
}

/// What `init` created (the admin token is shown once, never stored in clear).
pub struct InitOutput {
    /// The first admin token.
    pub admin_token: Zeroizing<String>,
}

/// An open store.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

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
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Argon2id cost of a passphrase root key: 64 MiB, 3 passes, 1 lane (stored in the store).
const ARGON2: (u32, u32, u32) = (3, 65536, 1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SHA-256 of an audit row (see the module documentation for the layout).
fn row_hash(prev: &[u8], seq: i64, time_ms: i64, fields: [&str; 5]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    for f in fields {
        h.update((f.len() as u32).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().to_vec()
}

/// Appends `e` to the audit chain inside `tx`; returns its sequence number.
fn append_audit(tx: &Transaction<'_>, e: &AuditEntry) -> Result<i64, StoreError> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("reading the audit chain"))?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, vec![0u8; 32]),
    };
    let t = now_ms();
    let fields = [
        e.actor.as_str(),
        e.action.as_str(),
        e.target.as_str(),
        e.outcome.as_str(),
        e.detail.as_str(),
    ];
    let hash = row_hash(&prev, seq, t, fields);
    tx.execute(
        "INSERT INTO audit (seq, time_ms, actor, action, target, outcome, detail, prev, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![seq, t, e.actor, e.action, e.target, e.outcome, e.detail, prev, hash],
    )
    .map_err(db("writing the audit row"))?;
    Ok(seq)
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} name {name:?}: 1 to 64 characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// SHA-256 of a bearer token's text.
fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> Result<Zeroizing<String>, StoreError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut raw[..]).map_err(|_| StoreError::Wrap(WrapError::Setup))?;
    Ok(Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
    )))
}

fn root_check_aad() -> &'static [u8] {
    b"nbdcrypt-keyd/root-check"
}

fn ca_key_aad() -> &'static [u8] {
    b"nbdcrypt-keyd/ca-key"
}

impl Store {
    fn connect(dir: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(dir.join(DB_FILE)).map_err(db("opening"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(db("setting the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("setting WAL mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("setting synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db("enabling foreign keys"))?;
        Ok(conn)
    }

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
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        if dir.join(DB_FILE).exists() {
            return Err(StoreError::AlreadyInitialised(dir.to_path_buf()));
        }
        let mut conn = Store::connect(dir)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting init"))?;
        tx.execute_batch(SCHEMA).map_err(db("creating tables"))?;
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
        let server = pki::server_cert(&ca.key_pem, server_names)?;
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

    /// Opens the store in `dir`.
    ///
    /// Errors: [`StoreError::NotInitialised`], database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if !dir.join(DB_FILE).exists() {
            return Err(StoreError::NotInitialised(dir.to_path_buf()));
        }
        let conn = Store::connect(dir)?;
        join::ensure_schema(&conn)?;
        Ok(Store {
            conn,
            dir: dir.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(db("reading meta"))
    }

    /// Whether the root key comes from a passphrase (`true`) or `root.key`.
    pub fn root_is_passphrase(&self) -> Result<bool, StoreError> {
        Ok(self.meta("root_kind")?.as_deref() == Some(b"argon2id"))
    }

    /// Unlocks the root key: reads `root.key`, or derives it from `passphrase`, and checks it.
    ///
    /// Errors: [`StoreError::RootKey`] (wrong passphrase or key file, or the one that is needed
    /// is missing), I/O.
    pub fn unlock(&self, passphrase: Option<&[u8]>) -> Result<RootKey, StoreError> {
        let key = if self.root_is_passphrase()? {
            let p = passphrase.ok_or(StoreError::RootKey(
                "this store's root key is a passphrase: give --root-passphrase-file",
            ))?;
            let salt = self
                .meta("root_salt")?
                .ok_or(StoreError::RootKey("salt missing"))?;
            derive_root(p, &salt)?
        } else {
            let path = self.dir.join(ROOT_KEY_FILE);
            let k = Zeroizing::new(fs::read(&path).map_err(io(&path))?);
            if k.len() != KEY_LEN {
                return Err(StoreError::RootKey("root.key is not 32 bytes"));
            }
            RootKey(k)
        };
        let check = self
            .meta("root_check")?
            .ok_or(StoreError::RootKey("check value missing"))?;
        wrap::open(&key.0, root_check_aad(), &check)
            .map_err(|_| StoreError::RootKey("wrong passphrase or key file"))?;
        Ok(key)
    }

    /// Runs `f` and appends `entry` in one IMMEDIATE transaction; commits only if both
    /// succeed. `f` may change `entry` (to fill in details it learns).
    ///
    /// Errors: whatever `f` returns, or the database's (the change is then not made).
    pub fn with_audit<T>(
        &mut self,
        mut entry: AuditEntry,
        f: impl FnOnce(&Transaction<'_>, &mut AuditEntry) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let out = f(&tx, &mut entry)?;
        append_audit(&tx, &entry)?;
        tx.commit().map_err(db("committing"))?;
        Ok(out)
    }

    /// Appends one audit row on its own (a refusal, which changes nothing else).
    ///
    /// Errors: database.
    pub fn audit(&mut self, entry: AuditEntry) -> Result<i64, StoreError> {
        self.with_audit(entry, |_, _| Ok(()))?;
        self.conn
            .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
            .map_err(db("reading the audit chain"))
    }

    /// Audit rows with `seq > after`, at most `limit`, in order.
    ///
    /// Errors: database.
    pub fn audit_list(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, time_ms, actor, action, target, outcome, detail, prev, hash
                 FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db("reading the audit log"))?;
        let rows = st
            .query_map(params![after, limit], |r| {
                Ok(AuditRow {
                    seq: r.get(0)?,
                    time_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: r.get(6)?,
                    prev: pki::hex(&r.get::<_, Vec<u8>>(7)?),
                    hash: pki::hex(&r.get::<_, Vec<u8>>(8)?),
                })
            })
            .map_err(db("reading the audit log"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("reading the audit log"))
    }

    /// Checks the whole chain: numbers 1, 2, ... without gaps, each `prev` equal to the
    /// previous row's `hash`, each `hash` recomputed from the row. Reports the first bad row.
    ///
    /// Errors: database.
    pub fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, time_ms, actor, action, target, outcome, detail, prev, hash
                 FROM audit ORDER BY seq",
            )
            .map_err(db("reading the audit log"))?;
        let mut rows = st.query([]).map_err(db("reading the audit log"))?;
        let mut expect_prev = vec![0u8; 32];
        let mut n = 0i64;
        let bad = |seq: i64, n: i64, why: String| VerifyReport {
            rows: n,
            ok: false,
            bad_seq: Some(seq),
            problem: Some(why),
        };
        while let Some(r) = rows.next().map_err(db("reading the audit log"))? {
            let get = |i| -> Result<String, StoreError> {
                r.get::<_, String>(i).map_err(db("reading the audit log"))
            };
            let seq: i64 = r.get(0).map_err(db("reading the audit log"))?;
            let time_ms: i64 = r.get(1).map_err(db("reading the audit log"))?;
            let fields = [get(2)?, get(3)?, get(4)?, get(5)?, get(6)?];
            let prev: Vec<u8> = r.get(7).map_err(db("reading the audit log"))?;
            let hash: Vec<u8> = r.get(8).map_err(db("reading the audit log"))?;
            n += 1;
            if seq != n {
                return Ok(bad(n, n, format!("row {n} is missing (next row is {seq})")));
            }
            if prev != expect_prev {
                return Ok(bad(seq, n, "its link to the previous row is wrong".into()));
            }
            let f = [
                fields[0].as_str(),
                fields[1].as_str(),
                fields[2].as_str(),
                fields[3].as_str(),
                fields[4].as_str(),
            ];
            if row_hash(&prev, seq, time_ms, f) != hash {
                return Ok(bad(seq, n, "its content does not match its hash".into()));
            }
            expect_prev = hash;
        }
        Ok(VerifyReport {
            rows: n,
            ok: true,
            bad_seq: None,
            problem: None,
        })
    }

    fn ca_key(&self, root: &RootKey) -> Result<Zeroizing<String>, StoreError> {
        let sealed = self
            .meta("ca_key")?
            .ok_or(StoreError::RootKey("CA key missing"))?;
        let pem = wrap::open(&root.0, ca_key_aad(), &sealed)?;
        Ok(Zeroizing::new(
            String::from_utf8(pem.to_vec()).map_err(|_| StoreError::RootKey("CA key garbled"))?,
        ))
    }

    /// Issues a client certificate for a new host `name` and records its fingerprint.
    ///
    /// Errors: [`StoreError::Exists`], [`StoreError::Invalid`] name, database, certificate.
    pub fn host_add(&mut self, root: &RootKey, name: &str) -> Result<Issued, StoreError> {
        check_name("host", name)?;
        let ca_key = self.ca_key(root)?;
        let issued = pki::host_cert(&ca_key, name)?;
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
            Ok(())
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

    fn new_kek_version(
        tx: &Transaction<'_>,
        root: &RootKey,
        name: &str,
        version: u32,
    ) -> Result<(), StoreError> {
        let material = Zeroizing::new(
            nbdcrypt_luks2::crypto::random_bytes(KEY_LEN)
                .map_err(|_| StoreError::Wrap(WrapError::Setup))?,
        );
        let sealed = wrap::seal(&root.0, &wrap::kek_at_rest_aad(name, version), &material)?;
        tx.execute(
            "INSERT INTO kek_versions (name, version, sealed, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, version, sealed, now_ms()],
        )
        .map_err(db("storing the KEK version"))?;
        Ok(())
    }

    /// Creates KEK `name` with version 1.
    ///
    /// Errors: [`StoreError::Exists`], database.
    pub fn kek_create(&mut self, root: &RootKey, name: &str) -> Result<(), StoreError> {
        check_name("KEK", name)?;
        self.with_audit(cli_entry("kek-create", name, "version 1"), |tx, _| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO keks (name, current, min_unwrap) VALUES (?1, 1, 1)",
                    [name],
                )
                .map_err(db("creating the KEK"))?;
            if n == 0 {
                return Err(StoreError::Exists {
                    what: "KEK",
                    name: name.into(),
                });
            }
            Store::new_kek_version(tx, root, name, 1)
        })
    }

    /// Adds a version to KEK `name` and makes it current; returns it.
    ///
    /// Errors: [`StoreError::NotFound`], database.
    pub fn kek_rotate(&mut self, root: &RootKey, name: &str) -> Result<u32, StoreError> {
        self.with_audit(cli_entry("kek-rotate", name, ""), |tx, e| {
            let cur: u32 = tx
                .query_row("SELECT current FROM keks WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db("reading the KEK"))?
                .ok_or_else(|| StoreError::NotFound {
                    what: "KEK",
                    name: name.into(),
                })?;
            let v = cur + 1;
            Store::new_kek_version(tx, root, name, v)?;
            tx.execute(
                "UPDATE keks SET current = ?1 WHERE name = ?2",
                params![v, name],
            )
            .map_err(db("rotating the KEK"))?;
            e.detail = format!("version {v}");
            Ok(v)
        })
    }

    /// Sets the lowest version of KEK `name` that still unwraps (1 ..= current).
    ///
    /// Errors: [`StoreError::NotFound`], [`StoreError::Invalid`], database.
    pub fn kek_set_min_unwrap(&mut self, name: &str, min: u32) -> Result<(), StoreError> {
        let info = self.kek_show(name)?;
        if min < 1 || min > info.current {
            return Err(StoreError::Invalid(format!(
                "--min-unwrap-version {min}: KEK {name:?} has versions 1 to {}",
                info.current
            )));
        }
        self.with_audit(
            cli_entry("kek-set", name, &format!("min-unwrap-version {min}")),
            |tx, _| {
                tx.execute(
                    "UPDATE keks SET min_unwrap = ?1 WHERE name = ?2",
                    params![min, name],
                )
                .map_err(db("updating the KEK"))?;
                Ok(())
            },
        )
    }

    /// KEK `name`: current version, minimum unwrap version, and keyslots per version.
    ///
    /// Errors: [`StoreError::NotFound`], database.
    pub fn kek_show(&self, name: &str) -> Result<KekInfo, StoreError> {
        let (current, min): (u32, u32) = self
            .conn
            .query_row(
                "SELECT current, min_unwrap FROM keks WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading the KEK"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "KEK",
                name: name.into(),
            })?;
        let mut st = self
            .conn
            .prepare(
                "SELECT v.version, (SELECT count(*) FROM kek_usage u WHERE u.kek = v.name AND u.version = v.version)
                 FROM kek_versions v WHERE v.name = ?1 ORDER BY v.version",
            )
            .map_err(db("reading the KEK"))?;
        let versions = st
            .query_map([name], |r| {
                Ok(KekVersion {
                    version: r.get(0)?,
                    keyslots: r.get(1)?,
                })
            })
            .map_err(db("reading the KEK"))?
            .collect::<Result<_, _>>()
            .map_err(db("reading the KEK"))?;
        Ok(KekInfo {
            name: name.into(),
            current,
            min_unwrap_version: min,
            versions,
        })
    }

    /// The material of KEK `name` version `version` (`None` for an unknown name or
    /// version), opened with the root key.
    ///
    /// Errors: database, [`StoreError::Wrap`] if the sealed material does not open.
    pub fn kek_material(
        &self,
        root: &RootKey,
        name: &str,
        version: u32,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sealed FROM kek_versions WHERE name = ?1 AND version = ?2",
                params![name, version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the KEK"))?;
        match sealed {
            None => Ok(None),
            Some(s) => Ok(Some(wrap::open(
                &root.0,
                &wrap::kek_at_rest_aad(name, version),
                &s,
            )?)),
        }
    }

    /// The owner (host name) of volume `uuid`, if registered.
    ///
    /// Errors: database.
    pub fn volume_owner(&self, uuid: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT owner FROM volumes WHERE uuid = ?1", [uuid], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db("reading the volume"))
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

    /// The escrow package of volume `uuid`, if any.
    ///
    /// Errors: database.
    pub fn escrow_package(&self, uuid: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT package FROM escrow WHERE uuid = ?1", [uuid], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db("reading the escrow package"))
    }
}

/// Registers volume `uuid` for `host` inside `tx` (no-op if already its own).
///
/// Errors: database.
pub fn register_volume(tx: &Transaction<'_>, uuid: &str, host: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO volumes (uuid, owner, created_ms) VALUES (?1, ?2, ?3)",
        params![uuid, host, now_ms()],
    )
    .map_err(db("registering the volume"))?;
    Ok(())
}

/// Records that keyslot `slot` of `uuid` now uses `kek` version `version`, inside `tx`.
///
/// Errors: database.
pub fn record_usage(
    tx: &Transaction<'_>,
    uuid: &str,
    slot: u32,
    kek: &str,
    version: u32,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO kek_usage (uuid, slot, kek, version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uuid, slot) DO UPDATE SET kek = excluded.kek, version = excluded.version",
        params![uuid, slot, kek, version],
    )
    .map_err(db("recording KEK usage"))?;
    Ok(())
}

/// Stores (replaces) the escrow package of `uuid`, inside `tx`.
///
/// Errors: database.
pub fn store_escrow(
    tx: &Transaction<'_>,
    uuid: &str,
    host: &str,
    package: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO escrow (uuid, package, host, stored_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uuid) DO UPDATE SET package = excluded.package, host = excluded.host,
             stored_ms = excluded.stored_ms",
        params![uuid, package, host, now_ms()],
    )
    .map_err(db("storing the escrow package"))?;
    Ok(())
}

fn cli_entry(action: &str, target: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        actor: "cli".into(),
        action: action.into(),
        target: target.into(),
        outcome: "ok".into(),
        detail: detail.into(),
    }
}

fn derive_root(passphrase: &[u8], salt: &[u8]) -> Result<RootKey, StoreError> {
    let (t, m, p) = ARGON2;
    let k = argon2_derive(
        Argon2Variant::Argon2id,
        t,
        m,
        p,
        passphrase,
        salt,
        &[],
        &[],
        KEY_LEN,
    )
    .map_err(|_| StoreError::RootKey("Argon2id failed"))?;
    Ok(RootKey(Zeroizing::new(k.expose().to_vec())))
}
