//! Verifying the audit log (`docs/keyservice-api.md` "Audit log"): the hash chain (numbers
//! without gaps, each `prev` the previous row's `hash`, each `hash` recomputed), every
//! checkpoint's signature (with `ca.pem`, no secret), where the log may start (row 1, or a
//! checkpoint row after a prune, as the newest checkpoint signed), and optionally that the log
//! still holds a checkpoint kept elsewhere (so truncating or rolling back past it shows).

use super::audit::row_hash;
use super::checkpoint::{checkpoint_of_row, is_checkpoint_row, CheckpointVerifier};
use super::conn::Store;
use super::error::{db, StoreError};
use crate::api::{AuditCheckpoint, VerifyReport};
use crate::pki;

/// One stored row as the verifier reads it.
struct Row {
    seq: i64,
    time_ms: i64,
    fields: [String; 5],
    prev: Vec<u8>,
    hash: Vec<u8>,
}

/// The verification walk: rows go in one at a time, in `seq` order; the first problem stops it.
struct Walk<'a> {
    verifier: &'a CheckpointVerifier,
    external: Option<&'a AuditCheckpoint>,
    report: VerifyReport,
    /// The next row's expected `seq` and `prev`, after the first row.
    expect: Option<(i64, Vec<u8>)>,
    last_seq: i64,
    newest: Option<AuditCheckpoint>,
}

/// Why verification stopped: the bad row and the problem.
type Bad = (i64, String);

impl Walk<'_> {
    fn row(&mut self, r: &Row) -> Result<(), Bad> {
        self.report.rows += 1;
        let [actor, action, ..] = &r.fields;
        let checkpoint = is_checkpoint_row(actor, action);
        match &self.expect {
            None => {
                self.report.first = r.seq;
                if r.seq == 1 {
                    if r.prev != [0u8; 32] {
                        return Err((1, "its link to the previous row is wrong".into()));
                    }
                } else if !checkpoint {
                    return Err((
                        r.seq,
                        format!(
                            "the log starts at row {} and that row is no checkpoint: rows \
                             before it were deleted",
                            r.seq
                        ),
                    ));
                }
                // A pruned log starts at a checkpoint row: its signature (below) covers its
                // `prev`, the hash of the last row pruned.
            }
            Some((next, prev)) => {
                if r.seq != *next {
                    return Err((
                        *next,
                        format!("row {next} is missing (next row is {})", r.seq),
                    ));
                }
                if r.prev != *prev {
                    return Err((r.seq, "its link to the previous row is wrong".into()));
                }
            }
        }
        let f = r.fields.each_ref().map(String::as_str);
        if row_hash(&r.prev, r.seq, r.time_ms, f) != r.hash {
            return Err((r.seq, "its content does not match its hash".into()));
        }
        if checkpoint {
            let cp = checkpoint_of_row(r.seq, r.time_ms, &r.prev, &r.fields[4])
                .map_err(|e| (r.seq, e))?;
            self.verifier
                .check(&cp)
                .map_err(|why| (r.seq, format!("checkpoint: {why}")))?;
            if cp.first > self.report.first {
                return Err((
                    r.seq,
                    format!("checkpoint: it says the log started at row {}", cp.first),
                ));
            }
            self.report.checkpoints += 1;
            self.newest = Some(cp);
        }
        if let Some(x) = self.external {
            if x.seq == r.seq && x.head != pki::hex(&r.hash) {
                return Err((
                    r.seq,
                    "it differs from the checkpoint kept elsewhere (the log was rewritten)".into(),
                ));
            }
        }
        self.last_seq = r.seq;
        self.expect = Some((r.seq + 1, r.hash.clone()));
        Ok(())
    }

    /// After the last row: the newest checkpoint must say where the log starts, and the log
    /// must reach the external checkpoint.
    fn end(&mut self) -> Result<(), Bad> {
        match &self.newest {
            Some(cp) => {
                self.report.sealed_through = Some(cp.seq);
                self.report.unsealed = self.last_seq - cp.row;
                if cp.first != self.report.first {
                    return Err((
                        self.report.first,
                        format!(
                            "the newest checkpoint (row {}) says the log starts at row {}, \
                             but it starts at row {}: rows were deleted",
                            cp.row, cp.first, self.report.first
                        ),
                    ));
                }
            }
            None => self.report.unsealed = self.report.rows,
        }
        if let Some(x) = self.external {
            if x.seq > self.last_seq {
                return Err((
                    x.seq,
                    format!(
                        "the log ends at row {} but the checkpoint kept elsewhere seals row {}: \
                         rows were truncated or rolled back",
                        self.last_seq, x.seq
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Store {
    /// Verifies the whole log against the store's own `ca.pem` ([`Store::audit_verify_with`]).
    ///
    /// Errors: database, the CA file unreadable.
    pub fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        let v = CheckpointVerifier::of_store(self)?;
        self.audit_verify_with(&v, None)
    }

    /// Verifies the whole log: the chain, each checkpoint's signature with `verifier`, where
    /// the log starts, and, with `external` (a checkpoint kept off the host, whose signature
    /// must hold), that the log still holds its row with its hash. Reports the first bad row,
    /// and how many rows follow the newest checkpoint (unsealed).
    ///
    /// Errors: database; [`StoreError::Checkpoint`] when `external`'s signature does not hold.
    pub fn audit_verify_with(
        &self,
        verifier: &CheckpointVerifier,
        external: Option<&AuditCheckpoint>,
    ) -> Result<VerifyReport, StoreError> {
        if let Some(x) = external {
            verifier
                .check(x)
                .map_err(|why| StoreError::Checkpoint(format!("the checkpoint file: {why}")))?;
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, time_ms, actor, action, target, outcome, detail, prev, hash
                 FROM audit ORDER BY seq",
            )
            .map_err(db("reading the audit log"))?;
        let mut rows = st.query([]).map_err(db("reading the audit log"))?;
        let mut walk = Walk {
            verifier,
            external,
            report: VerifyReport::default(),
            expect: None,
            last_seq: 0,
            newest: None,
        };
        let mut outcome = Ok(());
        while let Some(r) = rows.next().map_err(db("reading the audit log"))? {
            let text = |i| r.get::<_, String>(i).map_err(db("reading the audit log"));
            let row = Row {
                seq: r.get(0).map_err(db("reading the audit log"))?,
                time_ms: r.get(1).map_err(db("reading the audit log"))?,
                fields: [text(2)?, text(3)?, text(4)?, text(5)?, text(6)?],
                prev: r.get(7).map_err(db("reading the audit log"))?,
                hash: r.get(8).map_err(db("reading the audit log"))?,
            };
            outcome = walk.row(&row);
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = walk.end();
        }
        let mut report = walk.report;
        match outcome {
            Ok(()) => report.ok = true,
            Err((seq, why)) => {
                report.ok = false;
                report.bad_seq = Some(seq);
                report.problem = Some(why);
            }
        }
        Ok(report)
    }
}
