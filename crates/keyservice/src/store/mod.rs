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
//! Audit: table `audit` is append-only (triggers refuse UPDATE and DELETE); each row carries
//! `prev` (the previous row's hash, 32 zero bytes for the first) and `hash` = SHA-256 over
//! `prev ‖ seq ‖ time ‖ actor ‖ action ‖ target ‖ outcome ‖ detail` (integers 8-byte big
//! endian, text fields 4-byte big-endian length then UTF-8). Every change is written in one
//! transaction with its audit row ([`Store::with_audit`]), so either both are on disk or neither.
//!
//! Files, one concern each: `conn` (the open store, its files, shared helpers), `error`,
//! `init` (schema, creating and opening), `root` (root key and CA key), `audit` (the chain),
//! `tokens` (people's bearer tokens and [`Role`]), `identities` (hosts and officers), `keks`
//! (KEK versions and usage), `volumes` (owners, assignment and escrow), `join` (one-time join
//! tokens), `server_cert` (renewing the server certificate).
//! None imports this file; it only re-exports.

mod audit;
mod conn;
mod error;
mod identities;
mod init;
mod join;
mod keks;
mod root;
mod server_cert;
mod tokens;
mod volumes;

#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod tests;

pub use crate::api::{AuditRow, KekInfo, KekVersion, VerifyReport};
pub use audit::AuditEntry;
pub use conn::{Store, CA_FILE, DB_FILE, ROOT_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE};
pub use error::StoreError;
pub use init::InitOutput;
pub use join::{JoinOutcome, JOIN_PREFIX};
pub use keks::record_usage;
pub use root::{RootKey, RootSource};
pub use tokens::{Role, TOKEN_PREFIX};
pub use volumes::{register_volume, store_escrow, VolumeInfo};
