//! LUKS2 binary header + JSON metadata parser, layout and profile checks, and the selection
//! of a copy from an image (`volume::load_header`).
//!
//! Input: one flag byte (bit 0: recompute both copies' checksums, so JSON mutations get past
//! the checksum), then the first bytes of an image (a seed is the 32 KiB of both copies of a
//! cryptsetup-made header). Property: no panic; whatever decodes re-encodes and decodes to the
//! same metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdcrypt::format::{self, header::BinaryHeader};
use std::path::Path;

#[path = "common.rs"]
mod common;

fn exercise(hdr: &BinaryHeader, md: &format::metadata::Metadata) {
    for len in [0, 1 << 20, 17 << 20, u64::MAX] {
        let _ = format::data_segment(md, len);
    }
    let _ = format::segment_digest(md);
    for id in md.keyslots.keys() {
        let _ = format::keyslot_profile(md, id.0);
    }
    if let Ok(bytes) = format::encode_copy(hdr, md) {
        let (_, again) = format::decode_copy(&bytes, hdr.hdr_offset)
            .expect("a copy we encoded from decoded metadata must decode");
        assert_eq!(&again, md, "metadata changed in a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    if flags & 1 != 0 {
        common::reseal(&mut b, 0);
        if let Ok(h) = BinaryHeader::decode(&b) {
            common::reseal(&mut b, h.hdr_size as usize);
        }
    }
    let _ = format::decode_json_area(&b);
    if let Ok(h) = BinaryHeader::decode(&b) {
        let _ = h.encode();
        let size = h.hdr_size as usize;
        for at in [0, size] {
            if let Some(copy) = b.get(at..at.saturating_add(size)) {
                if let Ok((hdr, md)) = format::decode_copy(copy, at as u64) {
                    exercise(&hdr, &md);
                }
            }
        }
    }
    let f = common::mem_image(&b, 0);
    if let Ok(lh) = nbdcrypt::volume::load_header(&f, Path::new("fuzz.img")) {
        exercise(&lh.header, &lh.metadata);
    }
});
