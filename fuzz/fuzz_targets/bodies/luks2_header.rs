//! The body of the `luks2_header` fuzz target (`fuzz_targets/luks2_header.rs`, which documents
//! the input and the property), shared with `tests/fuzz_regressions.rs`. Needs the crate root
//! to include `fuzz_targets/common.rs` as `mod common`.

use crate::common;
use nbdcrypt_luks2::format::{self, header::BinaryHeader};
use std::path::Path;

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

fn format_kind(e: &format::FormatError) -> &'static str {
    match e {
        format::FormatError::NotLuks => "NotLuks",
        format::FormatError::Corrupt(_) => "Corrupt",
        format::FormatError::Unsupported(_) => "Unsupported",
        format::FormatError::Invalid(_) => "Invalid",
    }
}

/// Run the target on `data`. Returns the result class `P+S+L`: `decode_copy` of the primary
/// and of the secondary copy (`ok`, the error kind, or `none` without a binary header) and
/// `load_header` of the whole input (`ok` or the error kind); `short` for an empty input.
/// Panics where the target's property fails.
pub fn run(data: &[u8]) -> String {
    let Some((&flags, rest)) = data.split_first() else {
        return "short".into();
    };
    let b = common::resealed(flags, rest);
    let _ = format::decode_json_area(&b);
    let mut copies = ["none", "none"];
    if let Ok(h) = BinaryHeader::decode(&b) {
        let _ = h.encode();
        let size = h.hdr_size as usize;
        for (i, at) in [0, size].into_iter().enumerate() {
            if let Some(copy) = b.get(at..at.saturating_add(size)) {
                copies[i] = match format::decode_copy(copy, at as u64) {
                    Ok((hdr, md)) => {
                        exercise(&hdr, &md);
                        "ok"
                    }
                    Err(e) => format_kind(&e),
                };
            }
        }
    }
    let f = common::mem_image(&b, 0);
    let load = match nbdcrypt_luks2::volume::load_header(&f, Path::new("fuzz.img")) {
        Ok(lh) => {
            exercise(&lh.header, &lh.metadata);
            "ok"
        }
        Err(e) => common::volume_kind(&e),
    };
    format!("{}+{}+{load}", copies[0], copies[1])
}
