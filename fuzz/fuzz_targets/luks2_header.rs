//! LUKS2 binary header + JSON metadata parser, layout and profile checks, and the selection
//! of a copy from an image (`volume::load_header`).
//!
//! Input: one flag byte (bit 0: recompute both copies' checksums, so JSON mutations get past
//! the checksum), then the first bytes of an image (a seed is the 32 KiB of both copies of a
//! cryptsetup-made header). Property: no panic; whatever decodes re-encodes and decodes to the
//! same metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

#[path = "bodies/luks2_header.rs"]
mod body;

fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
