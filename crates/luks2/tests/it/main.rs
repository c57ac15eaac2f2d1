//! Integration tests of the `nbdcrypt-luks2` crate through its public API only: no binary, no
//! network, no external tool (OpenSSL's libcrypto is linked in as a differential oracle). One
//! test binary, one module per concern:
//!
//! - `crypto_kat`: known answers of the crypto layer (IEEE 1619 XTS, RFC 9106 Argon2, RFC 7914
//!   PBKDF2, the AF splitter, the keyslot area) and OpenSSL's XTS on long and parallel runs;
//! - `spec_examples`: the worked examples of `format-spec.md` §8, read from the document;
//! - `volume_model`: the volume's byte-granular data path against an in-memory model.
//!
//! `NBDCRYPT_XTS_IMPL=aesni|portable cargo test -p nbdcrypt-luks2 --test it` runs them on an XTS
//! path this CPU would not pick by itself (tests/run.sh does, for `crypto_kat` and
//! `volume_model`).

mod common;

mod crypto_kat;
mod spec_examples;
mod volume_model;
