//! The key service's store (`docs/keyservice-api.md` "Store"): one SQLite database
//! `keyd.db` in the data directory (WAL, `synchronous=FULL`, so a commit is on disk before the
//! reply that depends on it), beside `ca.pem`, `server.pem`, `server.key` and, for a key-file
//! root key, `root.key`.
//!
//! Secrets at rest: KEK material and the CA key are sealed (AES-256-GCM, [`super::wrap`]) under
//! the root key, which is either the 32 random bytes of `root.key` (mode 0600) or Argon2id of a
//! passphrase. Bearer tokens are stored as SHA-256 digests only (they are 32 random bytes, so a
//! fast hash is enough).
//!
//! Audit: table `audit` is append-only (triggers refuse UPDATE, DELETE and an INSERT that does
//! not extend it, so REPLACE too); each row carries
//! `prev` (the previous row's hash, 32 zero bytes for the first) and `hash` = SHA-256 over
//! `prev ‖ seq ‖ time ‖ actor ‖ action ‖ target ‖ outcome ‖ detail` (integers 8-byte big
//! endian, text fields 4-byte big-endian length then UTF-8). Every change is written in one
//! transaction with its audit row ([`Store::with_audit`]), so either both are on disk or neither.
//! Fields over [`FIELD_CAP`] bytes are capped; signed checkpoints seal the chain, and pruning
//! removes rows only up to one.
//!
//! Files, one concern each: `conn` (the open store, its files, shared helpers), `error`,
//! `init` (schema, creating and opening), `root` (root key and CA key), `audit` (the chain),
//! `audit_fields` (the field cap), `audit_schema` (the table's triggers), `checkpoint` (signed
//! checkpoints), `audit_verify`, `audit_prune`, `audit_policy` (the server's audit bounds),
//! `tokens` (people's bearer tokens and [`Role`]), `identities` (hosts and officers),
//! `inventory` (listing hosts, tokens and officers; removing hosts and officers), `keks`
//! (KEK versions and usage), `volumes` (owners, assignment and escrow), `join` (one-time join
//! tokens), `server_cert` (renewing the server certificate).
//! None imports this file; it only re-exports.

mod audit;
mod audit_fields;
mod audit_policy;
mod audit_prune;
mod audit_schema;
mod audit_verify;
mod checkpoint;
mod conn;
mod error;
mod identities;
mod init;
mod inventory;
mod join;
mod keks;
mod root;
mod server_cert;
mod tokens;
mod volumes;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod tests;

pub use crate::api::{AuditCheckpoint, AuditRow, KekInfo, KekVersion, VerifyReport};
pub use audit::AuditEntry;
pub use audit_fields::{cap_field, FIELD_CAP};
pub use audit_policy::AuditPolicy;
pub use audit_prune::{PruneReport, PruneRule};
pub use checkpoint::CheckpointVerifier;
pub use conn::Registration;
pub use conn::{Store, CA_FILE, DB_FILE, ROOT_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE};
pub use error::StoreError;
pub use init::InitOutput;
pub use inventory::{HostInfo, OfficerInfo, TokenInfo};
pub use join::{JoinOutcome, JOIN_PREFIX};
pub use keks::record_usage;
pub use root::{RootKey, RootSource};
pub use tokens::{Role, TOKEN_PREFIX};
pub use volumes::{register_volume, store_escrow, VolumeInfo};
