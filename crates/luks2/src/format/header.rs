//! The LUKS2 binary header: one 4096-byte block at the start of each metadata copy
//! (`format-spec.md` §2, LUKS2 on-disk format §2.1). All integers are big-endian.

use sha2::{Digest, Sha256};

use super::FormatError;

/// Size of the binary header block in bytes; the JSON area follows it.
pub const BINARY_HEADER_SIZE: usize = 4096;
/// Magic of the primary copy (offset 0).
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary copy (offset = `hdr_size`).
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// Metadata area sizes (binary header + JSON area, bytes) that LUKS2 allows; the secondary copy
/// starts at the same offset as the size.
pub const ALLOWED_HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1024 << 10,
    2048 << 10,
    4096 << 10,
];
/// Byte offset of the 64-byte checksum field inside the binary header.
pub const CSUM_OFFSET: usize = 448;
/// Length of the checksum field in bytes (a SHA-256 fills the first 32, the rest is zero).
pub const CSUM_LEN: usize = 64;

/// Which of the two metadata copies a header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// At offset 0, magic `LUKS\xba\xbe`.
    Primary,
    /// At offset `hdr_size`, magic `SKUL\xba\xbe`.
    Secondary,
}

impl std::fmt::Display for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Copy::Primary => "primary",
            Copy::Secondary => "secondary",
        })
    }
}

/// A decoded LUKS2 binary header (`format-spec.md` §2). Strings are the NUL-terminated text of
/// their fixed-size fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// Which copy the magic says this is.
    pub copy: Copy,
    /// Size of this metadata copy in bytes (binary header + JSON area), one of [`ALLOWED_HDR_SIZES`].
    pub hdr_size: u64,
    /// Sequence id; incremented on every update, the copy with the higher one wins.
    pub seqid: u64,
    /// Label, at most 47 bytes.
    pub label: String,
    /// Checksum algorithm name; we accept only `sha256`.
    pub checksum_alg: String,
    /// Per-copy random salt (64 bytes).
    pub salt: [u8; 64],
    /// Volume UUID text, at most 39 bytes.
    pub uuid: String,
    /// Subsystem, at most 47 bytes.
    pub subsystem: String,
    /// Physical byte offset of this copy; must equal where it was read.
    pub hdr_offset: u64,
    /// Stored checksum field (64 bytes; SHA-256 uses the first 32).
    pub csum: [u8; 64],
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn text_field(b: &[u8], at: usize, len: usize, name: &str) -> Result<String, FormatError> {
    let raw = &b[at..at + len];
    let end = raw.iter().position(|&c| c == 0).ok_or_else(|| {
        FormatError::Corrupt(format!("binary header field {name} is not NUL-terminated"))
    })?;
    String::from_utf8(raw[..end].to_vec())
        .map_err(|_| FormatError::Corrupt(format!("binary header field {name} is not UTF-8")))
}

fn put_text(b: &mut [u8], at: usize, len: usize, s: &str, name: &str) -> Result<(), FormatError> {
    if s.len() >= len || s.as_bytes().contains(&0) {
        return Err(FormatError::Invalid(format!(
            "{name} must be at most {} bytes without NUL",
            len - 1
        )));
    }
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

impl BinaryHeader {
    /// Decode the first [`BINARY_HEADER_SIZE`] bytes of a metadata copy.
    ///
    /// Errors: [`FormatError::NotLuks`] when the magic is neither copy's, [`FormatError::Corrupt`]
    /// for a version other than 2, an `hdr_size` not in [`ALLOWED_HDR_SIZES`], or a malformed text
    /// field; [`FormatError::Unsupported`] for a checksum algorithm other than `sha256`.
    pub fn decode(b: &[u8]) -> Result<BinaryHeader, FormatError> {
        if b.len() < BINARY_HEADER_SIZE {
            return Err(FormatError::Corrupt(format!(
                "binary header is {} bytes, expected {BINARY_HEADER_SIZE}",
                b.len()
            )));
        }
        let copy = if b[..6] == MAGIC_PRIMARY {
            Copy::Primary
        } else if b[..6] == MAGIC_SECONDARY {
            Copy::Secondary
        } else {
            return Err(FormatError::NotLuks);
        };
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 2 {
            return Err(FormatError::Unsupported(format!(
                "LUKS version {version} is not supported (only LUKS2)"
            )));
        }
        let hdr_size = be_u64(b, 8);
        if !ALLOWED_HDR_SIZES.contains(&hdr_size) {
            return Err(FormatError::Corrupt(format!(
                "hdr_size {hdr_size} is not a LUKS2 metadata size"
            )));
        }
        let checksum_alg = text_field(b, 72, 32, "checksum_alg")?;
        if checksum_alg != "sha256" {
            return Err(FormatError::Unsupported(format!(
                "header checksum algorithm {checksum_alg} is not supported"
            )));
        }
        let mut salt = [0u8; 64];
        salt.copy_from_slice(&b[104..168]);
        let mut csum = [0u8; 64];
        csum.copy_from_slice(&b[CSUM_OFFSET..CSUM_OFFSET + CSUM_LEN]);
        Ok(BinaryHeader {
            copy,
            hdr_size,
            seqid: be_u64(b, 16),
            label: text_field(b, 24, 48, "label")?,
            checksum_alg,
            salt,
            uuid: text_field(b, 168, 40, "uuid")?,
            subsystem: text_field(b, 208, 48, "subsystem")?,
            hdr_offset: be_u64(b, 256),
            csum,
        })
    }

    /// Encode into a [`BINARY_HEADER_SIZE`]-byte block; the checksum field is written as stored in
    /// `self.csum` (use [`seal`] to fill it). Errors: [`FormatError::Invalid`] when a text field is
    /// too long for its slot.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut b = vec![0u8; BINARY_HEADER_SIZE];
        b[..6].copy_from_slice(match self.copy {
            Copy::Primary => &MAGIC_PRIMARY,
            Copy::Secondary => &MAGIC_SECONDARY,
        });
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&self.hdr_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.seqid.to_be_bytes());
        put_text(&mut b, 24, 48, &self.label, "label")?;
        put_text(&mut b, 72, 32, &self.checksum_alg, "checksum_alg")?;
        b[104..168].copy_from_slice(&self.salt);
        put_text(&mut b, 168, 40, &self.uuid, "uuid")?;
        put_text(&mut b, 208, 48, &self.subsystem, "subsystem")?;
        b[256..264].copy_from_slice(&self.hdr_offset.to_be_bytes());
        b[CSUM_OFFSET..CSUM_OFFSET + CSUM_LEN].copy_from_slice(&self.csum);
        Ok(b)
    }
}

/// SHA-256 of a whole metadata copy (`hdr_size` bytes: binary header + JSON area) with the
/// checksum field taken as zero (`format-spec.md` §2.2).
pub fn checksum(area: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&area[..CSUM_OFFSET]);
    h.update([0u8; CSUM_LEN]);
    h.update(&area[CSUM_OFFSET + CSUM_LEN..]);
    h.finalize().into()
}

/// Check the stored checksum of a metadata copy (`hdr_size` bytes). Errors:
/// [`FormatError::Corrupt`] naming the mismatch.
pub fn verify_checksum(area: &[u8]) -> Result<(), FormatError> {
    let want = checksum(area);
    let stored = &area[CSUM_OFFSET..CSUM_OFFSET + CSUM_LEN];
    // cryptsetup compares only the digest's 32 bytes; the rest of the field is not checked.
    if stored[..32] != want {
        return Err(FormatError::Corrupt("header checksum mismatch".into()));
    }
    Ok(())
}

/// Fill in the checksum of a complete metadata copy in place (`area.len()` = `hdr_size`).
pub fn seal(area: &mut [u8]) {
    let sum = checksum(area);
    area[CSUM_OFFSET..CSUM_OFFSET + CSUM_LEN].fill(0);
    area[CSUM_OFFSET..CSUM_OFFSET + 32].copy_from_slice(&sum);
}
