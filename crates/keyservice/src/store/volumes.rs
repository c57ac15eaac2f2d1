//! Registered volumes and their escrow packages (`docs/keyservice-api.md` "Endpoints",
//! "Escrow and recovery"): a volume's owner host, registering it, and storing and reading the
//! sealed escrow package (which the service cannot open).

use rusqlite::{params, OptionalExtension, Transaction};

use super::conn::{now_ms, Store};
use super::error::{db, StoreError};

impl Store {
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
