//! `nbdcrypt-keyd audit ...` (`docs/keyservice-api.md` "Audit log"): list rows, verify the
//! chain and its signed checkpoints (optionally against a checkpoint kept off the host), print
//! the newest checkpoint for off-host storage, and prune up to a checkpoint.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::keyservice::store::{
    AuditCheckpoint, CheckpointVerifier, PruneRule, Store, StoreError, CA_FILE,
};

use super::error::KeydError;
use super::{unlock, Cli};

#[derive(Subcommand)]
pub(super) enum AuditCmd {
    /// Print rows as JSON lines.
    List {
        /// Only rows after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Check the hash chain and every checkpoint's signature; exit 1 naming the first bad row.
    /// Rows after the newest checkpoint are reported as unsealed.
    Verify {
        /// The CA certificate that signs checkpoints (default: the store's ca.pem; give a copy
        /// kept elsewhere, as hosts have, to not trust the data directory).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// A checkpoint printed earlier by `audit checkpoint` and kept off the host: the log
        /// must still hold its row with its hash (catches truncation and rollback past it).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Print the newest checkpoint as JSON, to store off the host.
    Checkpoint {
        /// Sign a new checkpoint first (needs the root key).
        #[arg(long)]
        new: bool,
    },
    /// Remove old rows, only up to a checkpoint, which stays as the log's anchor; the chain is
    /// verified first and a new checkpoint is signed after (needs the root key).
    #[command(group(clap::ArgGroup::new("rule").required(true).args(["before_days", "keep_rows"])))]
    Prune {
        /// Up to the newest checkpoint at least DAYS old.
        #[arg(long, value_name = "DAYS")]
        before_days: Option<u32>,
        /// Up to the newest checkpoint that leaves at least N rows.
        #[arg(long, value_name = "N")]
        keep_rows: Option<i64>,
    },
}

/// A checkpoint file as `audit checkpoint` wrote it.
fn read_checkpoint(path: &Path) -> Result<AuditCheckpoint, KeydError> {
    let bytes = std::fs::read(path).map_err(|source| KeydError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| KeydError::Store(StoreError::Checkpoint(format!("{}: {e}", path.display()))))
}

/// Runs `audit CMD` on the store of `cli`.
pub(super) fn run(cli: &Cli, cmd: &AuditCmd) -> Result<(), KeydError> {
    let mut store = Store::open(&cli.data_dir)?;
    match cmd {
        AuditCmd::List { after } => {
            for r in store.audit_list(*after, i64::MAX)? {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
        }
        AuditCmd::Verify { ca, checkpoint } => {
            let ca = ca.clone().unwrap_or_else(|| cli.data_dir.join(CA_FILE));
            let pem = std::fs::read(&ca).map_err(|source| KeydError::Io {
                path: ca.clone(),
                source,
            })?;
            let verifier = CheckpointVerifier::from_pem(&pem)?;
            let external = checkpoint.as_deref().map(read_checkpoint).transpose()?;
            let r = store.audit_verify_with(&verifier, external.as_ref())?;
            if let (Some(seq), Some(problem)) = (r.bad_seq, r.problem) {
                return Err(KeydError::AuditBroken { seq, problem });
            }
            let last = r.first + r.rows - 1;
            let sealed = match r.sealed_through {
                Some(s) => format!("sealed through row {s} by {} checkpoints", r.checkpoints),
                None => "no checkpoint yet".into(),
            };
            let mut line = format!(
                "audit chain ok: {} rows (rows {} to {last}), {sealed}; {} rows unsealed",
                r.rows, r.first, r.unsealed
            );
            if let Some(x) = external {
                line.push_str(&format!("; holds the checkpoint of row {}", x.seq));
            }
            println!("{line}");
        }
        AuditCmd::Checkpoint { new } => {
            let cp = if *new {
                let root = unlock(cli, &store)?;
                Some(store.audit_checkpoint(&root, "cli")?)
            } else {
                store.audit_latest_checkpoint()?
            };
            let cp = cp.ok_or_else(|| {
                StoreError::Checkpoint("the log has no checkpoint yet (use --new)".into())
            })?;
            println!("{}", serde_json::to_string(&cp).unwrap_or_default());
        }
        AuditCmd::Prune {
            before_days,
            keep_rows,
        } => {
            let rule = match (before_days, keep_rows) {
                (Some(d), _) => PruneRule::BeforeDays(*d),
                (None, Some(n)) => PruneRule::KeepRows(*n),
                (None, None) => unreachable!("clap requires --before-days or --keep-rows"),
            };
            let root = unlock(cli, &store)?;
            let p = store.audit_prune(&root, rule)?;
            if p.removed == 0 {
                println!(
                    "nothing to prune: no checkpoint qualifies; the log starts at row {}",
                    p.first
                );
            } else {
                println!(
                    "pruned {} rows; the log starts at checkpoint row {}",
                    p.removed, p.first
                );
                if let Some(cp) = p.checkpoint {
                    println!("{}", serde_json::to_string(&cp).unwrap_or_default());
                }
            }
        }
    }
    Ok(())
}
