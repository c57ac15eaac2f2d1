//! Shared by the fuzz targets (and `tests/fuzz_regressions.rs`): an anonymous in-memory file
//! (memfd) standing in for an image, the reseal flag, and the names of error kinds.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

/// A memfd holding `bytes`, then extended (sparse) to at least `min_len` bytes.
pub fn mem_image(bytes: &[u8], min_len: u64) -> File {
    // SAFETY: memfd_create returns a new descriptor that we own, or -1.
    let fd = unsafe { libc::memfd_create(c"nbdcrypt-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes).unwrap();
    if (bytes.len() as u64) < min_len {
        f.set_len(min_len).unwrap();
    }
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

/// Recompute the checksum of the metadata copy at `at` if it carries a binary header whose
/// `hdr_size` fits in `b`, so that mutations of the JSON reach the JSON parser and the layout
/// checks instead of stopping at the checksum.
pub fn reseal(b: &mut [u8], at: usize) {
    use nbdcrypt_luks2::format::header::{seal, BinaryHeader, BINARY_HEADER_SIZE};
    if b.len() < at + BINARY_HEADER_SIZE {
        return;
    }
    if let Ok(h) = BinaryHeader::decode(&b[at..at + BINARY_HEADER_SIZE]) {
        if let Some(end) = at.checked_add(h.hdr_size as usize) {
            if end <= b.len() && h.hdr_size as usize >= BINARY_HEADER_SIZE {
                seal(&mut b[at..end]);
            }
        }
    }
}

/// `image` as the targets see it: with both metadata copies resealed (`reseal` at 0 and at the
/// primary's `hdr_size`) when bit 0 of `flags` is set.
pub fn resealed(flags: u8, image: &[u8]) -> Vec<u8> {
    use nbdcrypt_luks2::format::header::BinaryHeader;
    let mut b = image.to_vec();
    if flags & 1 != 0 {
        reseal(&mut b, 0);
        if let Ok(h) = BinaryHeader::decode(&b) {
            reseal(&mut b, h.hdr_size as usize);
        }
    }
    b
}

/// The name of `e`'s kind, for the result classes of `tests/fuzz_regressions.rs`.
pub fn volume_kind(e: &nbdcrypt_luks2::volume::VolumeError) -> &'static str {
    use nbdcrypt_luks2::volume::VolumeError;
    match e {
        VolumeError::Device { .. } => "Device",
        VolumeError::NotLuks { .. } => "NotLuks",
        VolumeError::Corrupt { .. } => "Corrupt",
        VolumeError::DetachedHeader { .. } => "DetachedHeader",
        VolumeError::Unsupported { .. } => "Unsupported",
        VolumeError::WrongPassphrase => "WrongPassphrase",
        VolumeError::NoUsableKeyslot { .. } => "NoUsableKeyslot",
        VolumeError::OutOfMemory { .. } => "OutOfMemory",
        VolumeError::InvalidArgument(_) => "InvalidArgument",
        VolumeError::Crypto(_) => "Crypto",
        _ => "other",
    }
}
