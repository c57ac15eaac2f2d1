//! The unlock path: header selection, keyslot profile, KDF, keyslot-area decryption, AF merge
//! and digest check (`volume::unlock`), on images whose KDF costs are cheap.
//!
//! Input: a flag byte (bit 0: recompute the checksums of both copies), a passphrase length
//! byte `n`, `n` passphrase bytes, then the first bytes of an image (header copies and
//! keyslot areas; it is extended, sparse, to 17 MiB). Inputs asking for expensive KDFs
//! (PBKDF2 over 2000 iterations, Argon2 over 1 MiB or 4 passes) are skipped: their refusal is
//! covered by tests/it/bad_input.rs. Property: no panic; an unlocked key opens the volume.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

#[path = "bodies/keyslot_unlock.rs"]
mod body;

fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
