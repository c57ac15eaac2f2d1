//! nbdcrypt: LUKS2 volume images served as NBD block devices, in userspace.
//!
//! This package is the top of the workspace (ARCHITECTURE.md): the `nbdcrypt` and
//! `nbdcrypt-keyd` command lines ([`cli`], [`keyd`]) and the adapter that serves a volume as an
//! NBD export ([`export`]). The layers below are crates of their own, re-exported here under
//! their layer names: [`format`], [`crypto`] and [`volume`] (`nbdcrypt-luks2`), [`nbd`]
//! (`nbdcrypt-nbd`), [`keyservice`] (`nbdcrypt-keyservice`).

pub mod cli;
pub mod export;
pub mod keyd;
mod sigpipe;

pub use nbdcrypt_keyservice as keyservice;
pub use nbdcrypt_luks2::{crypto, format, volume};
pub use nbdcrypt_nbd as nbd;
