//! The audit log's bounds that an operator may change ([`AuditPolicy`], `serve`'s flags; see
//! `docs/threat-model.md` and `docs/reliability.md`): how often the server seals the log with
//! a signed checkpoint, and how unauthenticated refusals are aggregated.

use super::conn::Store;

/// Default rows between checkpoints while the server appends rows (`--audit-checkpoint-rows`).
pub const DEFAULT_CHECKPOINT_ROWS: i64 = 1000;
/// Default seconds between checkpoints while rows are appended (`--audit-checkpoint-secs`).
pub const DEFAULT_CHECKPOINT_SECS: u64 = 300;
/// Default aggregation window of unauthenticated refusals, seconds (`--audit-refusal-window`).
pub const DEFAULT_REFUSAL_WINDOW_SECS: u64 = 60;
/// Default number of (source, action, refusal) entries aggregated at once
/// (`--audit-refusal-sources`); the oldest is written out and dropped to make room.
pub const DEFAULT_REFUSAL_SOURCES: usize = 1024;

/// How the server bounds and seals its audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// A checkpoint once this many rows follow the last one (checked every second).
    pub checkpoint_rows: i64,
    /// A checkpoint once this many seconds passed since the last one, if rows followed it.
    pub checkpoint_secs: u64,
    /// Unauthenticated refusals of one source, action and kind within this many seconds after
    /// the first (which is written at once) are counted and written as one row `×N`.
    pub refusal_window_secs: u64,
    /// At most this many aggregation entries; the oldest is written out to make room.
    pub refusal_sources: usize,
}

impl Default for AuditPolicy {
    fn default() -> AuditPolicy {
        AuditPolicy {
            checkpoint_rows: DEFAULT_CHECKPOINT_ROWS,
            checkpoint_secs: DEFAULT_CHECKPOINT_SECS,
            refusal_window_secs: DEFAULT_REFUSAL_WINDOW_SECS,
            refusal_sources: DEFAULT_REFUSAL_SOURCES,
        }
    }
}

impl Store {
    /// The audit policy the server started on this store uses ([`AuditPolicy::default`]
    /// unless set).
    pub fn audit_policy(&self) -> AuditPolicy {
        self.audit_policy
    }

    /// Sets the audit policy (the `serve` command's flags), values clamped to at least 1.
    pub fn set_audit_policy(&mut self, p: AuditPolicy) {
        self.audit_policy = AuditPolicy {
            checkpoint_rows: p.checkpoint_rows.max(1),
            checkpoint_secs: p.checkpoint_secs.max(1),
            refusal_window_secs: p.refusal_window_secs.max(1),
            refusal_sources: p.refusal_sources.max(1),
        };
    }
}
