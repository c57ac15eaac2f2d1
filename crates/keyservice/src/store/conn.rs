//! The open store: its data directory, the names of the files in it, the SQLite connection
//! (WAL, `synchronous=FULL`, foreign keys), the `meta` table, and the small helpers every part
//! of the store shares (clock, name rule, writing a new file).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};

use super::error::{db, io, StoreError};

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

/// An open store.
pub struct Store {
    pub(super) conn: Connection,
    pub(super) dir: PathBuf,
    pub(super) audit_policy: super::audit_policy::AuditPolicy,
    /// Whether hosts may register volumes themselves ([`Registration`]).
    pub(super) registration: Registration,
}

/// Who registers a volume to a host (`serve --registration`, `docs/keyservice-api.md`
/// "Volume ownership").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// The first host that registers a UUID owns it; a squatted UUID is given back by the
    /// administrator's `volume assign`.
    #[default]
    Open,
    /// Only the administrator registers (`volume assign UUID --host H`); a host's
    /// `POST /v1/volumes` succeeds only for a volume already assigned to it, so no host can
    /// take a UUID first.
    Admin,
}

impl Store {
    /// Who may register volumes ([`Registration::Open`] unless set).
    pub fn registration(&self) -> Registration {
        self.registration
    }

    /// Sets who may register volumes (the `serve` command's `--registration`).
    pub fn set_registration(&mut self, r: Registration) {
        self.registration = r;
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Checks an object name: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
///
/// Errors: [`StoreError::Invalid`] naming `what`.
pub(super) fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
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

/// Creates `path` (it must not exist, not even as a symlink) with `mode`, writes `bytes` and
/// syncs ([`nbdcrypt_luks2::fsutil::write_new`]).
///
/// Errors: [`StoreError::Io`].
pub(super) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    nbdcrypt_luks2::fsutil::write_new(path, bytes, mode).map_err(io(path))
}

impl Store {
    /// Opens the SQLite database of `dir` with the store's settings. The database and its
    /// `-wal` and `-shm` files are made 0600 first where they are more open (a store of an
    /// earlier version); SQLite creates `-wal` and `-shm` with the database's permissions.
    pub(super) fn connect(dir: &Path) -> Result<Connection, StoreError> {
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.join(format!("{DB_FILE}{suffix}"));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io(&p))?;
                }
                _ => {}
            }
        }
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

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `meta` value of key `k`.
    pub(super) fn meta(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(db("reading meta"))
    }
}
