//! nbdcrypt: LUKS2 volume images served as NBD block devices, in userspace.
//!
//! Layers, each importing only the ones before it:
//! [`format`] (bytes ↔ types) → [`crypto`] (secrets, KDFs, keyslots, XTS) → [`volume`] (the image
//! file) → [`nbd`] (protocol codec, session, listener) → [`keyservice`] (the `nbdcrypt-keyd`
//! key service and its client) → [`cli`].
//!
//! [`keyservice`] and [`cli`] exist only with the `cli` feature (on by default; Cargo.toml).

#[cfg(feature = "cli")]
pub mod cli;
pub mod crypto;
pub mod format;
#[cfg(feature = "cli")]
pub mod keyservice;
pub mod nbd;
pub mod volume;
