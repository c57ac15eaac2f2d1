//! The key service `nbdcrypt-keyd` (`docs/keyservice-api.md`): versioned KEKs that wrap
//! keyslot secrets for registered volumes, escrow of sealed recovery packages, and a hash-chained
//! audit log of every release and refusal.
//!
//! Layering: above `nbdcrypt-luks2` (it uses its secrets and KDFs), beside `nbdcrypt-nbd`, below
//! the `nbdcrypt` package (whose `keyd` module is the `nbdcrypt-keyd` command line). [`store`] is
//! the SQLite store (root key, KEKs, identities, audit chain), [`pki`] the CA and certificates,
//! [`server`] the HTTPS API, [`client`] the client the volume CLI uses, [`api`] the request and
//! reply bodies both share, [`refusal`] every way the server refuses (status, problem type,
//! audit outcome), [`wrap`] the AES-256-GCM sealing of keyslot secrets and KEKs.
//!
//! The service never holds anything that alone opens a volume: it holds KEKs (which only open
//! blobs that the volume's owner keeps in its LUKS2 token) and escrow packages sealed to
//! recovery officers' `age` keys, which it cannot open.

pub mod api;
pub mod client;
pub mod pki;
pub mod refusal;
pub mod server;
pub mod store;
pub mod token_file;
pub mod wrap;

pub use refusal::Refusal;
pub use store::{Role, Store, StoreError};
