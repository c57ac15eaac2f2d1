//! Checkpointed pruning of the audit log (`nbdcrypt-keyd audit prune`, `docs/keyservice-api.md`
//! "Audit log"): rows are removed only up to a signed checkpoint row, which stays as the log's
//! new first row and anchors the chain (its signature covers its `prev`, the hash of the last
//! row removed). A new checkpoint, signed after the prune, records the new first row, so
//! removing more rows later without the root key shows in `audit verify`.

use rusqlite::TransactionBehavior;

use super::audit::{append_audit, cli_entry};
use super::audit_schema::AUDIT_GUARDS;
use super::checkpoint::{append_checkpoint, log_checkpoint, CHECKPOINT_ACTION};
use super::conn::{now_ms, Store};
use super::error::{db, StoreError};
use super::root::RootKey;
use crate::api::AuditCheckpoint;

/// Which rows `audit prune` may remove (always only up to a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneRule {
    /// Up to the newest checkpoint at least this many days old.
    BeforeDays(u32),
    /// Up to the newest checkpoint that leaves at least this many rows.
    KeepRows(i64),
}

/// What a prune did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Rows removed (0: no checkpoint qualified; nothing changed, nothing written).
    pub removed: i64,
    /// The log's first row now (the anchor checkpoint row).
    pub first: i64,
    /// The checkpoint signed after the prune (`None` when nothing was removed).
    pub checkpoint: Option<AuditCheckpoint>,
}

impl Store {
    /// Removes the rows before the newest checkpoint row that `rule` allows, after checking
    /// the whole log (a broken log is not pruned: that could erase the evidence), then appends
    /// an `audit-prune` row and a new checkpoint, all in one transaction.
    ///
    /// Errors: [`StoreError::AuditBroken`], [`StoreError::RootKey`], [`StoreError::Checkpoint`],
    /// database.
    pub fn audit_prune(
        &mut self,
        root: &RootKey,
        rule: PruneRule,
    ) -> Result<PruneReport, StoreError> {
        let report = self.audit_verify()?;
        if !report.ok {
            return Err(StoreError::AuditBroken {
                seq: report.bad_seq.unwrap_or(0),
                problem: report.problem.unwrap_or_default(),
            });
        }
        let last = self.audit_last_seq()?;
        let (sql, bound) = match rule {
            PruneRule::BeforeDays(d) => (
                "SELECT max(seq) FROM audit WHERE action = ?1 AND actor IN ('server', 'cli')
                 AND time_ms <= ?2",
                now_ms() - i64::from(d) * 86_400_000,
            ),
            PruneRule::KeepRows(n) => (
                "SELECT max(seq) FROM audit WHERE action = ?1 AND actor IN ('server', 'cli')
                 AND seq <= ?2",
                last - n.max(1) + 1,
            ),
        };
        let anchor: Option<i64> = self
            .conn
            .query_row(sql, rusqlite::params![CHECKPOINT_ACTION, bound], |r| {
                r.get(0)
            })
            .map_err(db("finding the checkpoint to prune to"))?;
        let anchor = match anchor {
            Some(a) if a > report.first => a,
            _ => {
                return Ok(PruneReport {
                    removed: 0,
                    first: report.first,
                    checkpoint: None,
                })
            }
        };
        let ca_key = self.ca_key(root)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        tx.execute_batch("DROP TRIGGER IF EXISTS audit_no_delete;")
            .map_err(db("lifting the delete guard"))?;
        let removed = tx
            .execute("DELETE FROM audit WHERE seq < ?1", [anchor])
            .map_err(db("pruning the audit log"))? as i64;
        tx.execute_batch(AUDIT_GUARDS)
            .map_err(db("restoring the delete guard"))?;
        append_audit(
            &tx,
            &cli_entry(
                "audit-prune",
                "",
                &format!(
                    "removed rows {} to {}; checkpoint row {anchor} anchors the log",
                    report.first,
                    anchor - 1
                ),
            ),
        )?;
        let cp = append_checkpoint(&tx, &ca_key, "cli")?;
        tx.commit().map_err(db("committing the prune"))?;
        log_checkpoint(&cp);
        Ok(PruneReport {
            removed,
            first: anchor,
            checkpoint: Some(cp),
        })
    }
}
