//! LUKS2 volumes, byte-compatible with cryptsetup: the lower three layers of nbdcrypt, each
//! importing only the ones before it (ARCHITECTURE.md):
//! [`format`] (bytes ↔ types: the binary headers and the JSON metadata, no I/O, no keys) →
//! [`crypto`] (secrets, KDFs, the AF splitter, keyslots, digests, XTS) → [`volume`] (the image
//! file: create, unlock, keyslot and header changes, sector I/O).
//! Beside them, [`fsutil`] creates every file the tools write without following a symlink
//! (used by the crates above too).
//!
//! No async and no network: the NBD server (`nbdcrypt-nbd`) and the key service
//! (`nbdcrypt-keyservice`) sit above it, and the `nbdcrypt` package adapts a [`volume::Volume`]
//! to an NBD export.

pub mod crypto;
pub mod format;
pub mod fsutil;
pub mod volume;
