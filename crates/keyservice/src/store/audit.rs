//! The audit chain (`docs/keyservice-api.md` "Audit log"): appending a row in the same
//! transaction as the change it records ([`Store::with_audit`]), with every field capped
//! ([`cap_field`]), and listing rows. `hash` = SHA-256 over `prev ‖ seq ‖ time ‖ actor ‖ action
//! ‖ target ‖ outcome ‖ detail` (integers 8-byte big endian, text 4-byte big-endian length then
//! UTF-8). Checkpoints: `checkpoint.rs`; verifying: `audit_verify.rs`; pruning:
//! `audit_prune.rs`; the table's triggers: `audit_schema.rs`.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::audit_fields::cap_field;
use super::conn::{now_ms, Store};
use super::error::{db, StoreError};
use crate::api::AuditRow;
use crate::pki;

/// One audit row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who: `host:NAME`, `token:NAME(ROLE)`, `join:HOST`, `cli`, or `anonymous`.
    pub actor: String,
    /// What: `unwrap`, `wrap`, `register`, `escrow-store`, `kek-create`, ...
    pub action: String,
    /// On what: a volume UUID, KEK, host or token name; may be empty.
    pub target: String,
    /// `ok`, or `refused STATUS: KIND` ([`crate::refusal::Refusal::audit_outcome`]).
    pub outcome: String,
    /// More facts (keyslot, KEK version, ...); never a secret.
    pub detail: String,
}

/// An `ok` row of the administration command line (actor `cli`).
pub(super) fn cli_entry(action: &str, target: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        actor: "cli".into(),
        action: action.into(),
        target: target.into(),
        outcome: "ok".into(),
        detail: detail.into(),
    }
}

/// SHA-256 of an audit row (see the module documentation for the layout).
pub(super) fn row_hash(prev: &[u8], seq: i64, time_ms: i64, fields: [&str; 5]) -> Vec<u8> {
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

/// Appends `e` to the audit chain inside `tx`, stamped now; returns its sequence number.
pub(super) fn append_audit(tx: &Transaction<'_>, e: &AuditEntry) -> Result<i64, StoreError> {
    append_audit_at(tx, e, now_ms())
}

/// The last row's `seq` and `hash` (`None` for an empty log).
pub(super) fn audit_head(conn: &Connection) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    conn.query_row(
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db("reading the audit chain"))
}

/// Appends `e` stamped `t` (Unix ms) inside `tx`, each field capped ([`cap_field`]); returns
/// its sequence number. The next `seq` follows the last row (1 for an empty log), and `prev`
/// is its hash (32 zero bytes for row 1).
pub(super) fn append_audit_at(
    tx: &Transaction<'_>,
    e: &AuditEntry,
    t: i64,
) -> Result<i64, StoreError> {
    let (seq, prev) = match audit_head(tx)? {
        Some((s, h)) => (s + 1, h),
        None => (1, vec![0u8; 32]),
    };
    let fields = [
        cap_field(&e.actor),
        cap_field(&e.action),
        cap_field(&e.target),
        cap_field(&e.outcome),
        cap_field(&e.detail),
    ];
    let hash = row_hash(&prev, seq, t, fields.each_ref().map(|f| f.as_ref()));
    let [actor, action, target, outcome, detail] = &fields;
    tx.execute(
        "INSERT INTO audit (seq, time_ms, actor, action, target, outcome, detail, prev, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![seq, t, actor, action, target, outcome, detail, prev, hash],
    )
    .map_err(db("writing the audit row"))?;
    Ok(seq)
}

impl Store {
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let seq = append_audit(&tx, &entry)?;
        tx.commit().map_err(db("committing"))?;
        Ok(seq)
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
}
