//! Shared by the fuzz targets: an anonymous in-memory file (memfd) standing in for an image.

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
    use nbdcrypt::format::header::{seal, BinaryHeader, BINARY_HEADER_SIZE};
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
