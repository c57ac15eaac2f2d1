//! The audit table's guards, created by `init` and added on open to stores made before them:
//! triggers that refuse UPDATE and DELETE, and one that refuses any INSERT whose `seq` is not
//! above every row's. The last blocks `INSERT OR REPLACE` (and `REPLACE`), which would
//! otherwise overwrite a row: SQLite's REPLACE deletes the old row without firing DELETE
//! triggers. Triggers keep honest tools and mistakes from rewriting the log; someone who can
//! drop them is caught by the hash chain and the signed checkpoints (`audit_verify.rs`).

use rusqlite::Connection;

use super::error::{db, StoreError};

/// The guards, each `IF NOT EXISTS` (run at every open: a dropped trigger comes back).
/// `prune` alone lifts `audit_no_delete` inside its transaction (`audit_prune.rs`).
pub(super) const AUDIT_GUARDS: &str = "
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE INSERT ON audit
    WHEN NEW.seq IS NULL OR NEW.seq <= (SELECT coalesce(max(seq), 0) FROM audit)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Adds missing guards to the audit table of an existing store (a store made before the
/// INSERT guard, or one whose triggers were dropped). The rows themselves need no change:
/// the old chain stays valid and the first checkpoint written after this seals it.
///
/// Errors: database.
pub(super) fn ensure_audit_guards(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(AUDIT_GUARDS)
        .map_err(db("adding the audit table's triggers"))
}
