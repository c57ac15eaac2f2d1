//! The unlock path: header selection, keyslot profile, KDF, keyslot-area decryption, AF merge
//! and digest check (`volume::unlock`), on images whose KDF costs are cheap.
//!
//! Input: a flag byte (bit 0: recompute the checksums of both copies), a passphrase length
//! byte `n`, `n` passphrase bytes, then the first bytes of an image (header copies and
//! keyslot areas; it is extended, sparse, to 17 MiB). Inputs asking for expensive KDFs
//! (PBKDF2 over 2000 iterations, Argon2 over 1 MiB or 4 passes) are skipped: their refusal is
//! covered by tests/hostile_headers.rs. Property: no panic; an unlocked key opens the volume.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdcrypt::format::{self, header::BinaryHeader};
use nbdcrypt::volume;
use std::path::Path;

#[path = "common.rs"]
mod common;

fn cheap(md: &format::metadata::Metadata) -> bool {
    md.digests.values().all(|d| d.iterations <= 2000)
        && md.keyslots.values().all(|k| match &k.kdf {
            None => true,
            Some(kdf) => {
                kdf.iterations.unwrap_or(0) <= 2000
                    && kdf.memory.unwrap_or(0) <= 1024
                    && kdf.time.unwrap_or(0) <= 4
                    && kdf.cpus.unwrap_or(0) <= 4
            }
        })
}

fuzz_target!(|data: &[u8]| {
    let [flags, n, rest @ ..] = data else {
        return;
    };
    let n = (*n as usize).min(rest.len());
    let (pass, image) = rest.split_at(n);
    let mut b = image.to_vec();
    if flags & 1 != 0 {
        common::reseal(&mut b, 0);
        if let Ok(h) = BinaryHeader::decode(&b) {
            common::reseal(&mut b, h.hdr_size as usize);
        }
    }
    let path = Path::new("fuzz.img");
    let f = common::mem_image(&b, 17 << 20);
    let Ok(lh) = volume::load_header(&f, path) else {
        return;
    };
    if !cheap(&lh.metadata) {
        return;
    }
    if let Ok(key) = volume::unlock(&f, path, &lh, pass, None, Some(1024)) {
        let vol = volume::Volume::new(f, path, &lh, key, true).expect("an unlocked volume opens");
        let mut buf = vec![0u8; vol.sector_size() as usize];
        if vol.size() >= buf.len() as u64 {
            vol.read_at(&mut buf, 0).expect("read of the first sector");
        }
    }
});
