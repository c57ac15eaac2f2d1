//! Versioned key-encryption keys (`docs/keyservice-api.md` "Administration", "Wrapped
//! blobs"): creating a KEK, rotating it (a new current version; older ones still unwrap),
//! retiring old versions, reading its information and a version's material (sealed under the
//! root key), and recording which version each keyslot last used.

use rusqlite::{params, OptionalExtension, Transaction};
use zeroize::Zeroizing;

use super::audit::cli_entry;
use super::conn::{check_name, now_ms, Store};
use super::error::{db, StoreError};
use super::root::RootKey;
use crate::api::{KekInfo, KekVersion};
use crate::wrap::{self, WrapError, KEY_LEN};

impl Store {
    /// Adds version `version` of KEK `name` with fresh random material, sealed under `root`.
    ///
    /// Errors: [`StoreError::Wrap`], database.
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
