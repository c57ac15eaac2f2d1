//! The body of the `keyslot_unlock` fuzz target (`fuzz_targets/keyslot_unlock.rs`, which
//! documents the input and the property), shared with `tests/fuzz_regressions.rs`. Needs the
//! crate root to include `fuzz_targets/common.rs` as `mod common`.

use crate::common;
use nbdcrypt_luks2::format;
use nbdcrypt_luks2::volume;
use std::path::Path;

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

/// Run the target on `data`. Returns the result class: `short` (no flag and length bytes),
/// `load-KIND` (`load_header` failed), `expensive` (skipped), `unlocked`, or the unlock error
/// kind. Panics where the target's property fails.
pub fn run(data: &[u8]) -> String {
    let [flags, n, rest @ ..] = data else {
        return "short".into();
    };
    let n = (*n as usize).min(rest.len());
    let (pass, image) = rest.split_at(n);
    let b = common::resealed(*flags, image);
    let path = Path::new("fuzz.img");
    let f = common::mem_image(&b, 17 << 20);
    let lh = match volume::load_header(&f, path) {
        Ok(lh) => lh,
        Err(e) => return format!("load-{}", common::volume_kind(&e)),
    };
    if !cheap(&lh.metadata) {
        return "expensive".into();
    }
    match volume::unlock(&f, path, &lh, pass, None, Some(1024)) {
        Ok(key) => {
            let vol =
                volume::Volume::new(f, path, &lh, key, true).expect("an unlocked volume opens");
            let mut buf = vec![0u8; vol.sector_size() as usize];
            if vol.size() >= buf.len() as u64 {
                vol.read_at(&mut buf, 0).expect("read of the first sector");
            }
            "unlocked".into()
        }
        Err(e) => common::volume_kind(&e).into(),
    }
}
