//! Signed audit checkpoints (`docs/keyservice-api.md` "Audit log"): a row, actor `server` or
//! `cli`, action `checkpoint`, whose detail carries an ECDSA P-256 signature by the store's CA
//! key over the row count (the `seq` of the row before it), that row's hash (the checkpoint
//! row's own `prev`), the first row of the log and the time. Rewriting, deleting or
//! truncating rows up to a checkpoint then needs the CA key to go unnoticed.
//!
//! Why the CA key and not a MAC under a key derived from the root key: a signature is checked
//! with the public `ca.pem`, which auditors and every host already hold, so verifying needs no
//! secret and whoever verifies cannot forge what they verify; and only a root-key holder can
//! sign, since the CA key is sealed under the root key (`root.rs`). The server (which holds the
//! root key) and the command line after it unlocks the root key write checkpoints.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::audit::{append_audit_at, audit_head, AuditEntry};
use super::conn::{now_ms, Store, CA_FILE};
use super::error::{db, io, StoreError};
use super::root::RootKey;
use crate::api::AuditCheckpoint;
use crate::pki;

/// The action of a checkpoint row.
pub const CHECKPOINT_ACTION: &str = "checkpoint";

/// Domain separation of the signed message (no other signature by the CA key starts so).
const DOMAIN: &[u8] = b"nbdcrypt-keyd audit checkpoint v1\0";

/// The message a checkpoint signs: [`DOMAIN`] ‖ `seq` ‖ `head` (32 bytes) ‖ `first` ‖
/// `time_ms` (integers 8-byte big endian).
pub(super) fn checkpoint_message(seq: i64, head: &[u8], first: i64, time_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 56);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&first.to_be_bytes());
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

/// The detail of a checkpoint row (JSON): what the row does not already hold.
#[derive(Serialize, Deserialize)]
struct CheckpointDetail {
    first: i64,
    signature: String,
}

/// Whether a row is a checkpoint: action `checkpoint` by `server` or `cli` (no caller of the
/// API can write a row with those: its actor is `anonymous`, `join:`, `host:` or `token:`).
pub(super) fn is_checkpoint_row(actor: &str, action: &str) -> bool {
    action == CHECKPOINT_ACTION && (actor == "server" || actor == "cli")
}

/// The checkpoint a checkpoint row states (row `row`, stamped `time_ms`, `prev` its link),
/// or why its detail does not parse.
pub(super) fn checkpoint_of_row(
    row: i64,
    time_ms: i64,
    prev: &[u8],
    detail: &str,
) -> Result<AuditCheckpoint, String> {
    let d: CheckpointDetail =
        serde_json::from_str(detail).map_err(|e| format!("checkpoint detail: {e}"))?;
    Ok(AuditCheckpoint {
        seq: row - 1,
        head: pki::hex(prev),
        first: d.first,
        time_ms,
        row,
        signature: d.signature,
    })
}

/// Checks checkpoint signatures against the CA certificate (`ca.pem`): no secret needed.
pub struct CheckpointVerifier {
    ca_der: CertificateDer<'static>,
}

impl CheckpointVerifier {
    /// The verifier of the CA certificate in `pem` (the first certificate in it).
    ///
    /// Errors: [`StoreError::Checkpoint`] when `pem` holds no certificate.
    pub fn from_pem(pem: &[u8]) -> Result<CheckpointVerifier, StoreError> {
        let ca_der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| StoreError::Checkpoint("no certificate in the CA file".into()))?
            .map_err(|e| StoreError::Checkpoint(format!("CA file: {e}")))?;
        webpki::EndEntityCert::try_from(&ca_der)
            .map_err(|e| StoreError::Checkpoint(format!("CA certificate: {e}")))?;
        Ok(CheckpointVerifier { ca_der })
    }

    /// The verifier of the store's own `ca.pem`.
    ///
    /// Errors: I/O, [`StoreError::Checkpoint`].
    pub fn of_store(store: &Store) -> Result<CheckpointVerifier, StoreError> {
        let path = store.dir.join(CA_FILE);
        let pem = std::fs::read(&path).map_err(io(&path))?;
        CheckpointVerifier::from_pem(&pem)
    }

    /// Checks `cp`'s signature; `Err` says why it does not hold.
    pub fn check(&self, cp: &AuditCheckpoint) -> Result<(), String> {
        let head = unhex(&cp.head).ok_or("its head is not 32 bytes of hex")?;
        let sig = B64
            .decode(cp.signature.as_bytes())
            .map_err(|_| "its signature is not base64")?;
        let cert = webpki::EndEntityCert::try_from(&self.ca_der).map_err(|e| e.to_string())?;
        cert.verify_signature(
            webpki::ring::ECDSA_P256_SHA256,
            &checkpoint_message(cp.seq, &head, cp.first, cp.time_ms),
            &sig,
        )
        .map_err(|_| "its signature does not verify with the CA certificate".to_string())
    }
}

/// 32 bytes from 64 hex digits.
pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// ECDSA P-256 SHA-256 (ASN.1 DER) signature of `msg` by the CA key (PKCS#8 PEM).
fn sign(ca_key_pem: &str, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
    let der = Zeroizing::new(
        PrivatePkcs8KeyDer::from_pem_slice(ca_key_pem.as_bytes())
            .map_err(|e| StoreError::Checkpoint(format!("CA key: {e}")))?,
    );
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| StoreError::Checkpoint(format!("CA key: {e}")))?;
    let sig = key
        .sign(&rng, msg)
        .map_err(|_| StoreError::Checkpoint("signing failed".into()))?;
    Ok(sig.as_ref().to_vec())
}

/// Appends a checkpoint row by `actor` sealing every row before it, inside `tx`; returns it.
///
/// Errors: [`StoreError::Checkpoint`] (empty log, unusable key), database.
pub(super) fn append_checkpoint(
    tx: &Transaction<'_>,
    ca_key_pem: &str,
    actor: &str,
) -> Result<AuditCheckpoint, StoreError> {
    let (seq, head) =
        audit_head(tx)?.ok_or_else(|| StoreError::Checkpoint("the audit log is empty".into()))?;
    let first: i64 = tx
        .query_row("SELECT min(seq) FROM audit", [], |r| r.get(0))
        .map_err(db("reading the audit chain"))?;
    let t = now_ms();
    let sig = B64.encode(sign(ca_key_pem, &checkpoint_message(seq, &head, first, t))?);
    let detail = serde_json::to_string(&CheckpointDetail {
        first,
        signature: sig.clone(),
    })
    .map_err(|e| StoreError::Checkpoint(e.to_string()))?;
    let entry = AuditEntry {
        actor: actor.into(),
        action: CHECKPOINT_ACTION.into(),
        target: String::new(),
        outcome: "ok".into(),
        detail,
    };
    let row = append_audit_at(tx, &entry, t)?;
    Ok(AuditCheckpoint {
        seq,
        head: pki::hex(&head),
        first,
        time_ms: t,
        row,
        signature: sig,
    })
}

/// Logs a checkpoint as one `tracing` info line (JSON), so the journal holds an anchor off
/// the database.
pub(super) fn log_checkpoint(cp: &AuditCheckpoint) {
    tracing::info!(
        "audit checkpoint {}",
        serde_json::to_string(cp).unwrap_or_default()
    );
}

impl Store {
    /// Signs and appends a checkpoint by `actor` (`server` or `cli`) sealing every row so far,
    /// logs it (tracing info), and returns it.
    ///
    /// Errors: [`StoreError::RootKey`] (the CA key does not open), [`StoreError::Checkpoint`],
    /// database.
    pub fn audit_checkpoint(
        &mut self,
        root: &RootKey,
        actor: &str,
    ) -> Result<AuditCheckpoint, StoreError> {
        let ca_key = self.ca_key(root)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let cp = append_checkpoint(&tx, &ca_key, actor)?;
        tx.commit().map_err(db("committing the checkpoint"))?;
        log_checkpoint(&cp);
        Ok(cp)
    }

    /// The newest checkpoint in the log, as stored (not verified: see `audit_verify`).
    ///
    /// Errors: [`StoreError::Checkpoint`] for a checkpoint row that does not parse, database.
    pub fn audit_latest_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        let row: Option<(i64, i64, Vec<u8>, String)> = self
            .conn
            .query_row(
                "SELECT seq, time_ms, prev, detail FROM audit
                 WHERE action = ?1 AND actor IN ('server', 'cli') ORDER BY seq DESC LIMIT 1",
                [CHECKPOINT_ACTION],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("reading the audit log"))?;
        row.map(|(seq, t, prev, detail)| {
            checkpoint_of_row(seq, t, &prev, &detail).map_err(StoreError::Checkpoint)
        })
        .transpose()
    }

    /// The last row's `seq` (0 for an empty log).
    ///
    /// Errors: database.
    pub fn audit_last_seq(&self) -> Result<i64, StoreError> {
        Ok(audit_head(&self.conn)?.map(|(s, _)| s).unwrap_or(0))
    }
}
