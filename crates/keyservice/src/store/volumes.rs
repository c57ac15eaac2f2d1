//! Registered volumes and their escrow packages (`docs/keyservice-api.md` "Endpoints",
//! "Volume ownership", "Escrow and recovery"): a volume's owner host, registering it, the
//! administrator assigning it to another host and listing volumes, and storing and reading
//! the sealed escrow package (which the service cannot open).

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::audit::cli_entry;
use super::conn::{now_ms, Store};
use super::error::{db, StoreError};

/// One registered volume, as `volume list` prints it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    /// The volume's UUID (lower case).
    pub uuid: String,
    /// The host that owns it: it alone may wrap, unwrap and store escrow.
    pub owner: String,
    /// When it was registered or last assigned (ms since the Unix epoch).
    pub created_ms: i64,
    /// The host that stored its escrow package, if one is stored.
    pub escrow_stored_by: Option<String>,
}

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

    /// Assigns volume `uuid` (any case; stored lower case) to host `host`, registering it if
    /// needed: the administrator's answer to a host that registered another's volume first.
    /// Returns the previous owner, if any. Audited (`volume-assign`).
    ///
    /// Errors: [`StoreError::Invalid`] for a string that is not a volume UUID,
    /// [`StoreError::NotFound`] host, database.
    pub fn volume_assign(&mut self, uuid: &str, host: &str) -> Result<Option<String>, StoreError> {
        if !crate::server::is_volume_uuid(uuid) {
            return Err(StoreError::Invalid(format!(
                "{uuid:?} is not a volume UUID"
            )));
        }
        let uuid = uuid.to_ascii_lowercase();
        if !self.host_exists(host)? {
            return Err(StoreError::NotFound {
                what: "host",
                name: host.into(),
            });
        }
        let previous = self.volume_owner(&uuid)?;
        let detail = match &previous {
            Some(p) => format!("host {host} (was {p})"),
            None => format!("host {host} (was unregistered)"),
        };
        self.with_audit(cli_entry("volume-assign", &uuid, &detail), |tx, _| {
            tx.execute(
                "INSERT INTO volumes (uuid, owner, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (uuid) DO UPDATE SET owner = excluded.owner,
                     created_ms = excluded.created_ms",
                params![uuid, host, now_ms()],
            )
            .map_err(db("assigning the volume"))?;
            Ok(())
        })?;
        Ok(previous)
    }

    /// Every registered volume, by UUID.
    ///
    /// Errors: database.
    pub fn volume_list(&self) -> Result<Vec<VolumeInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT v.uuid, v.owner, v.created_ms, e.host FROM volumes v
                 LEFT JOIN escrow e ON e.uuid = v.uuid ORDER BY v.uuid",
            )
            .map_err(db("reading volumes"))?;
        let rows = st
            .query_map([], |r| {
                Ok(VolumeInfo {
                    uuid: r.get(0)?,
                    owner: r.get(1)?,
                    created_ms: r.get(2)?,
                    escrow_stored_by: r.get(3)?,
                })
            })
            .map_err(db("reading volumes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("reading volumes"))
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

/// Registers volume `uuid` for `host` inside `tx` (no-op if already its own). The owner is
/// read back in the same transaction, so of two hosts registering at once only one succeeds.
///
/// Errors: [`StoreError::Exists`] (`what` "volume", `name` the owner) when another host owns
/// it; database.
pub fn register_volume(tx: &Transaction<'_>, uuid: &str, host: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO volumes (uuid, owner, created_ms) VALUES (?1, ?2, ?3)",
        params![uuid, host, now_ms()],
    )
    .map_err(db("registering the volume"))?;
    let owner: String = tx
        .query_row("SELECT owner FROM volumes WHERE uuid = ?1", [uuid], |r| {
            r.get(0)
        })
        .map_err(db("registering the volume"))?;
    if owner != host {
        return Err(StoreError::Exists {
            what: "volume",
            name: owner,
        });
    }
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
